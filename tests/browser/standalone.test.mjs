// The binary alone is the server: `easel` copied into an empty directory and started from
// there, with empty homes, no --www and no --data, serves a student tab that joins and trains.
// As root the checkout is also hidden from it (an empty tmpfs mounted over it in a private
// mount namespace), so nothing can come from the tree it was built in. And pages without
// the wasm bundle say what to run rather than never starting.
// Helpers and environment: relay.mjs. Every request goes to 127.0.0.1.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { copyFileSync, cpSync, existsSync, mkdtempSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  EASEL_BIN, ROOT, checkPrerequisites, cleanup, launch, startEasel, waitInPage,
} from './relay.mjs';

const dirs = [];
const freshDir = (name) => {
  const d = mkdtempSync(join(tmpdir(), `easel-${name}-`));
  dirs.push(d);
  return d;
};

/** The shell line that hides the checkout, then runs the binary: `$0` is the checkout. */
const HIDE = 'mount -t tmpfs none "$0" && ! test -e "$0/Cargo.toml" && exec "$@"';

/** Whether this process may hide the checkout with a private mount namespace (root only). */
function canHideCheckout() {
  if (process.getuid?.() !== 0) return false;
  const r = spawnSync('unshare', ['-m', 'sh', '-c', HIDE, ROOT, 'true'], { stdio: 'ignore' });
  return r.status === 0;
}

before(checkPrerequisites);
after(async () => {
  await cleanup();
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

test('the binary copied alone into an empty directory serves a tab that trains', { timeout: 120_000 }, async () => {
  const alone = freshDir('alone');
  const bin = join(alone, 'easel');
  copyFileSync(EASEL_BIN, bin);
  const hidden = canHideCheckout();
  if (!hidden) console.log('note: not root (or no unshare): the checkout stays visible, cwd is the empty directory');
  const home = freshDir('home');
  const easelHome = freshDir('easel-home');
  const env = { PATH: process.env.PATH, LANG: 'C.UTF-8', HOME: home, EASEL_HOME: easelHome };
  const s = await startEasel(
    ['serve', '--http', '127.0.0.1:0', '--https', '127.0.0.1:0'],
    [
      /^listening on http:\/\/127\.0\.0\.1:(\d+)\/$/m,
      /^room code: ([A-Z0-9]+)$/m,
      /^pages: (.*)$/m,
      /^digits: (.*)$/m,
    ],
    {
      cwd: alone,
      env,
      inheritEnv: false,
      command: hidden ? ['unshare', '-m', 'sh', '-c', HIDE, ROOT, bin] : [bin],
    },
  );
  const [http, room, pages, digits] = s.matches;
  assert.match(pages[1], /^built into easel \(\d+ files\)$/);
  assert.equal(digits[1], 'built into easel');
  assert.doesNotMatch(s.err(), /warning/, 'easel serve found something missing');
  assert.deepEqual(readdirSync(alone), ['easel'], 'easel wrote into the directory it runs from');
  const port = Number(http[1]);

  // What it serves is this checkout's current build, byte for byte.
  for (const [url, file] of [
    ['/pkg/easel_client_bg.wasm', 'www/pkg/easel_client_bg.wasm'],
    ['/data/mnist.bin', 'data/mnist.bin'],
    ['/index.html', 'www/index.html'],
  ]) {
    const resp = await fetch(`http://127.0.0.1:${port}${url}`);
    assert.equal(resp.status, 200, url);
    const served = Buffer.from(await resp.arrayBuffer());
    assert.ok(served.equals(readFileSync(join(ROOT, file))), `${url} differs from ${file}: rebuild easel`);
  }

  const browser = await launch(port);
  const tab = browser.page;
  await tab.goto(`http://127.0.0.1:${port}/?room=${room[1]}&backend=cpu`);
  await waitInPage(browser, () => window.easel?.state().joined, null, 30_000, 'the Welcome', tab);
  await waitInPage(browser, () => window.easel.state().accepted >= 2, null, 60_000, '2 accepted pushes', tab);
  const st = await tab.evaluate(() => window.easel.state());
  console.log(`standalone (${hidden ? 'checkout hidden' : 'checkout visible'}): worker ${st.worker_id}, `
    + `${st.pushes} pushes, ${st.accepted} accepted, backend ${st.backend}`);
  assert.equal(st.room, room[1]);
  assert.equal(st.refused, 0);
  assert.ok(existsSync(easelHome) && readdirSync(easelHome).length > 0,
    'the certificate went to EASEL_HOME');
  assert.deepEqual(browser.outside, [], 'requests left 127.0.0.1');
});

test('pages without the wasm bundle say what to run instead of never starting', { timeout: 60_000 }, async () => {
  // A www/ with the pages and the chart library but no pkg/, served with --www.
  const www = freshDir('www-nopkg');
  for (const f of readdirSync(join(ROOT, 'www'))) {
    if (/\.(html|js|css)$/.test(f)) copyFileSync(join(ROOT, 'www', f), join(www, f));
    else if (f === 'vendor') cpSync(join(ROOT, 'www', f), join(www, f), { recursive: true });
    else if (f === 'vendor') cpSync(join(ROOT, 'www', f), join(www, f), { recursive: true });
  }
  const s = await startEasel(
    ['serve', '--http', '127.0.0.1:0', '--https', 'off', '--www', www],
    [/^listening on http:\/\/127\.0\.0\.1:(\d+)\/$/m, /^room code: ([A-Z0-9]+)$/m],
    { env: { EASEL_HOME: freshDir('easel-home') } },
  );
  // Printed on stderr before the listeners start; the pipes may deliver it after stdout.
  for (let i = 0; i < 20 && !/warning/.test(s.err()); i++) await new Promise((r) => setTimeout(r, 100));
  assert.match(s.err(), /warning: the browser client is missing .*cargo xtask wasm/);
  const [http, room] = s.matches;
  const port = Number(http[1]);
  const browser = await launch(port);
  for (const [path, el] of [[`/?room=${room[1]}`, '#state'], ['/solo.html', '#status']]) {
    await browser.page.goto(`http://127.0.0.1:${port}${path}`);
    await browser.page.waitForFunction((sel) => /cargo xtask wasm/.test(document.querySelector(sel)?.textContent),
      el, { timeout: 20_000 }).catch(async () => {
      throw new Error(`${path} shows ${await browser.page.locator(el).innerText()}\n${browser.logs.join('\n')}`);
    });
  }
});
