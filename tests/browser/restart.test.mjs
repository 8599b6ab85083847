// The relay killed with SIGKILL mid-run and started again on the same database and port:
// a student tab and two native bots (`easel bots`, another process) come back by
// themselves as the same workers and have pushes accepted again, at center versions above
// any they were given before the kill (the version never goes backwards).
// Helpers and environment: relay.mjs. Every request goes to 127.0.0.1.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  ROOT, checkPrerequisites, cleanup, freePort, launch, startBots, startEasel, waitInPage,
} from './relay.mjs';

const home = mkdtempSync(join(tmpdir(), 'easel-restart-'));
before(checkPrerequisites);
after(async () => {
  await cleanup();
  rmSync(home, { recursive: true, force: true });
});

/** Accepted ledger rows `{worker, base, version, wall}`. */
async function accepted(port, room, admin) {
  const resp = await fetch(`http://127.0.0.1:${port}/api/rooms/${room}/ledger.csv?admin=${admin}`);
  assert.equal(resp.status, 200);
  const [head, ...lines] = (await resp.text()).trim().split('\n');
  const cols = head.split(',');
  const at = (name) => cols.indexOf(name);
  return lines.map((l) => l.split(',')).filter((f) => f[at('code')] === '0').map((f) => ({
    worker: Number(f[at('worker')]),
    base: Number(f[at('base')]),
    version: Number(f[at('version')]),
    wall: Number(f[at('wall_ms')]),
  }));
}

test('a tab and two bots resume as themselves after the relay is SIGKILLed and restarted', { timeout: 300_000 }, async () => {
  const port = await freePort();
  const serve = () => startEasel(
    ['serve', '--http', `127.0.0.1:${port}`, '--https', 'off', '--www', join(ROOT, 'www'),
      '--checkpoint-every', '1'],
    [/^room code: ([A-Z0-9]+)$/m, /^teacher .*?[?&]admin=([0-9a-f]+)/m],
    { env: { EASEL_HOME: home } },
  );
  const a = await serve();
  const room = a.matches[0][1];
  const admin = a.matches[1][1];
  const bots = await startBots(port, room, 2);
  const browser = await launch(port);
  const tab = browser.page;
  await tab.goto(`http://127.0.0.1:${port}/?room=${room}&backend=cpu`);
  const state = () => tab.evaluate(() => window.easel.state());
  await waitInPage(browser, () => window.easel?.state().accepted >= 2, null, 120_000,
    '2 accepted pushes from the tab', tab);
  let rows = [];
  for (let t = Date.now(); Date.now() - t < 60_000;) {
    rows = await accepted(port, room, admin);
    if (new Set(rows.map((r) => r.worker)).size >= 3) break;
    await new Promise((r) => setTimeout(r, 200));
  }
  const workers = [...new Set(rows.map((r) => r.worker))].sort((x, y) => x - y);
  assert.equal(workers.length, 3, `the tab and both bots pushed: ${workers}`);

  // Past a checkpoint (every second), then killed mid-run.
  await new Promise((r) => setTimeout(r, 1500));
  const tabBefore = await state();
  const ledgerBefore = await accepted(port, room, admin);
  const newestBefore = Math.max(...ledgerBefore.map((r) => r.version), tabBefore.center_version);
  a.child.kill('SIGKILL');
  await new Promise((r) => a.child.once('exit', r));
  const killedAt = Date.now();
  // Any version given out between that download and the kill is one of at most this many
  // more pushes (one version each).
  const givenBefore = newestBefore + ledgerBefore.length;
  await new Promise((r) => setTimeout(r, 500));
  assert.equal(bots.child.exitCode, null, 'easel bots keeps running while the relay is down');

  await serve();
  await waitInPage(browser, (n) => window.easel.state().welcomes > n, tabBefore.welcomes, 60_000,
    'a Welcome after the restart', tab);
  await waitInPage(browser, (n) => window.easel.state().accepted >= n, tabBefore.accepted + 2,
    120_000, '2 more accepted pushes from the tab after the restart', tab);
  const s = await state();
  assert.equal(s.worker_id, tabBefore.worker_id, 'the tab resumed as the same worker');
  assert.ok(s.center_version > givenBefore,
    `the tab's center version ${s.center_version} is above the ${givenBefore} given before the kill`);

  let after = [];
  for (let t = Date.now(); Date.now() - t < 60_000;) {
    after = (await accepted(port, room, admin)).filter((r) => r.wall > killedAt);
    if (workers.every((w) => after.some((r) => r.worker === w))) break;
    await new Promise((r) => setTimeout(r, 200));
  }
  for (const w of workers) assert.ok(after.some((r) => r.worker === w), `worker ${w} accepted after the restart`);
  for (const r of after) {
    assert.ok(workers.includes(r.worker), `worker ${r.worker} is new: a device joined again instead of resuming`);
    assert.ok(r.base > givenBefore && r.version > r.base,
      `worker ${r.worker}: a push from ${r.base} made ${r.version}, not above ${givenBefore}`);
  }
  assert.equal(bots.child.exitCode, null, 'easel bots still running');
  console.log(`workers ${workers} (tab ${s.worker_id}); newest version before the kill ${newestBefore}; `
    + `after the restart ${after.length} accepted pushes from versions ${Math.min(...after.map((r) => r.base))}; `
    + `tab center ${tabBefore.center_version} -> ${s.center_version}`);
});
