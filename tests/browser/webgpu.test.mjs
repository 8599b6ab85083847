// Browser tests of the wasm client: WebGPU (SwiftShader) in headless Chromium against the CPU
// backend, the CPU fallback outside a secure context, and the training page on WebGPU.
//
// Environment: EASEL_BIN (the release `easel` binary; default $CARGO_TARGET_DIR/release/easel
// or target/release/easel), CHROMIUM (default /usr/bin/chromium). Screenshots go to artifacts/.
// Every request goes to 127.0.0.1: "classroom.test" is mapped there by Chromium's resolver.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
const EASEL_BIN = process.env.EASEL_BIN
  || join(process.env.CARGO_TARGET_DIR || join(ROOT, 'target'), 'release', 'easel');
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const ARTIFACTS = join(ROOT, 'artifacts');
const BUNDLE = join(ROOT, 'www', 'pkg', 'easel_client_bg.wasm');

/** The flags this machine's Chromium needs (see /work/shared/ENVIRONMENT.md); the user data
 * directory is passed separately, fresh for every browser. */
const CHROMIUM_FLAGS = [
  '--headless',
  '--no-sandbox',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--enable-unsafe-webgpu',
];

let server;
let port;
const cleanups = [];

/** Starts `easel serve` on a free port and resolves to that port. */
function startServer() {
  return new Promise((resolvePort, reject) => {
    // Loopback only, free ports, and a throw-away home for the self-signed certificate.
    const home = mkdtempSync(join(tmpdir(), 'easel-home-'));
    cleanups.push(() => rmSync(home, { recursive: true, force: true }));
    const child = spawn(EASEL_BIN, ['serve', '--http', '127.0.0.1:0', '--https', '127.0.0.1:0'], {
      cwd: ROOT,
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, EASEL_HOME: home },
    });
    server = child;
    let out = '';
    let err = '';
    const timer = setTimeout(
      () => reject(new Error(`easel serve printed no "listening on" line in 20 s:\n${out}${err}`)),
      20_000,
    );
    child.stdout.on('data', (d) => {
      out += d;
      const m = out.match(/^listening on http:\/\/127\.0\.0\.1:(\d+)\/$/m);
      if (m) {
        clearTimeout(timer);
        resolvePort(Number(m[1]));
      }
    });
    child.stderr.on('data', (d) => { err += d; });
    child.on('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`easel serve exited with status ${code} before listening:\n${err}`));
    });
    child.on('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
  });
}

/** A fresh headless Chromium with its own user data directory; closed after the tests. */
async function launch(extraFlags = []) {
  const userDataDir = mkdtempSync(join(tmpdir(), 'easel-chromium-'));
  const context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: CHROMIUM,
    headless: true,
    args: [...CHROMIUM_FLAGS, ...extraFlags],
    viewport: { width: 1000, height: 900 },
  });
  cleanups.push(async () => {
    await context.close().catch(() => {});
    rmSync(userDataDir, { recursive: true, force: true });
  });
  // Nothing may leave the machine: every request must go to the server under test.
  const outside = [];
  await context.route('**/*', (route) => {
    const url = new URL(route.request().url());
    const local = url.port === String(port)
      && (url.hostname === '127.0.0.1' || url.hostname === 'classroom.test');
    if (local) return route.continue();
    outside.push(url.href);
    return route.abort();
  });
  const page = context.pages()[0] ?? await context.newPage();
  const logs = [];
  page.on('console', (m) => logs.push(`[${m.type()}] ${m.text()}`));
  page.on('pageerror', (e) => logs.push(`[pageerror] ${e.message}`));
  // Uncaught errors (a wasm panic ends in one) mark the page as failed for waitInPage.
  await context.addInitScript(() => {
    window.addEventListener('error', (e) => { window.easelPageError ??= String(e.message); });
    window.addEventListener('unhandledrejection', (e) => {
      window.easelPageError ??= String(e.reason?.message ?? e.reason);
    });
  });
  return { context, page, logs, outside };
}

/** Waits for `fn` to hold in the page; fails at once when the page reports an error (a wasm
 * panic, an uncaught exception), and on time-out, with the page's state and console output. */
async function waitInPage(browser, fn, arg, timeout, what) {
  const failed = () => window.easel?.error || window.easelTest?.error || window.easelPageError;
  const state = () => browser.page.evaluate(() => JSON.stringify({
    easel: window.easel && { ...window.easel, losses: window.easel.losses?.slice(-20) },
    easelTest: window.easelTest,
    pageError: window.easelPageError,
  })).catch(() => '(page unreachable)');
  try {
    await browser.page.waitForFunction(
      ([src, a, failedSrc]) => (0, eval)(failedSrc)() || (0, eval)(src)(a),
      [fn.toString(), arg, failed.toString()],
      { timeout, polling: 250 },
    );
  } catch {
    throw new Error(`timed out after ${timeout / 1000} s waiting for ${what}\n`
      + `page state: ${await state()}\nconsole:\n${browser.logs.join('\n')}`);
  }
  const error = await browser.page.evaluate(failed);
  if (error) {
    throw new Error(`the page failed while waiting for ${what}: ${error}\n`
      + `page state: ${await state()}\nconsole:\n${browser.logs.join('\n')}`);
  }
}

async function screenshot(page, name) {
  mkdirSync(ARTIFACTS, { recursive: true });
  await page.screenshot({ path: join(ARTIFACTS, name), fullPage: true });
}

const mean = (xs) => xs.reduce((a, b) => a + b, 0) / xs.length;

before(async () => {
  assert.ok(existsSync(CHROMIUM), `Chromium is missing at ${CHROMIUM}: install it `
    + '(apt-get install -y chromium) or set CHROMIUM to its path');
  assert.ok(existsSync(EASEL_BIN), `the easel binary is missing at ${EASEL_BIN}: `
    + 'build it with `cargo build --release -p easel-relay` or set EASEL_BIN');
  assert.ok(existsSync(BUNDLE), `the wasm bundle is missing at ${BUNDLE}: run \`cargo xtask wasm\``);
  port = await startServer();
});

after(async () => {
  for (const cleanup of cleanups) await cleanup();
  if (server && server.exitCode === null) server.kill('SIGTERM');
});

test('WebGPU (SwiftShader) and the CPU backend train to the same parameters', { timeout: 150_000 }, async () => {
  const browser = await launch();
  const { page } = browser;
  await page.goto(`http://127.0.0.1:${port}/test.html?steps=5&seed=1`);
  await waitInPage(browser, () => window.easelTest?.done, null, 90_000, 'compare_gpu_with_cpu');
  await screenshot(page, 'compare-gpu-cpu.png');
  const outcome = await page.evaluate(() => window.easelTest);
  assert.equal(outcome.error, undefined,
    `compare_gpu_with_cpu failed: ${outcome.error}\nconsole:\n${browser.logs.join('\n')}`);
  const r = outcome.result;
  console.log('compare_gpu_with_cpu:', JSON.stringify(r));
  assert.match(r.adapter, /swiftshader|webgpu/i, `adapter "${r.adapter}" is not WebGPU on SwiftShader`);
  assert.equal(r.steps, 5);
  assert.ok(r.moved > 1e-4, `the steps barely changed the model (relative change ${r.moved})`);
  assert.ok(r.rel_l2_diff <= 1e-4,
    `GPU and CPU parameters differ: relative L2 ${r.rel_l2_diff}, max abs ${r.max_abs_diff}`);
  assert.ok(r.cpu_losses.length === 5 && r.cpu_losses.every(Number.isFinite),
    `CPU losses ${r.cpu_losses}`);
  assert.ok(r.gpu_losses.length === 5 && r.gpu_losses.every(Number.isFinite),
    `GPU losses ${r.gpu_losses}`);
  assert.deepEqual(browser.outside, [], 'requests left 127.0.0.1');
});

test('a LAN address (no secure context) falls back to the CPU and says why', { timeout: 150_000 }, async () => {
  const browser = await launch(['--host-resolver-rules=MAP classroom.test 127.0.0.1']);
  const { page } = browser;
  await page.goto(`http://classroom.test:${port}/?backend=auto`);
  await waitInPage(browser, () => window.easel?.ready, null, 60_000, 'the trainer');
  let state = await page.evaluate(() => window.easel);
  assert.equal(state.error, null, `the page reported an error: ${state.error}`);
  assert.equal(state.backend, 'cpu');
  assert.match(state.fallbackReason, /not a secure context/);
  const shown = await page.locator('#fallback').innerText();
  assert.ok(await page.locator('#fallback').isVisible(), 'the fallback reason is not shown');
  assert.match(shown, /https:\/\//, `the notice does not tell the student what to open: ${shown}`);
  await waitInPage(browser, () => window.easel.losses.length >= 20, null, 90_000, '20 training losses');
  await waitInPage(browser, () => window.easel.evals.length >= 1, null, 30_000, 'a test evaluation');
  state = await page.evaluate(() => window.easel);
  assert.ok(state.losses.every(Number.isFinite), 'losses are finite');
  assert.ok(state.stepsPerSec > 0, 'steps/s is reported');
  await screenshot(page, 'fallback-cpu.png');
  assert.deepEqual(browser.outside, [], 'requests left 127.0.0.1');
});

test('the training page trains on WebGPU at 127.0.0.1 and the loss goes down', { timeout: 240_000 }, async () => {
  const browser = await launch();
  const { page } = browser;
  await page.goto(`http://127.0.0.1:${port}/?backend=auto`);
  await waitInPage(browser, () => window.easel?.ready, null, 60_000, 'the trainer');
  const ready = await page.evaluate(() => window.easel);
  assert.equal(ready.error, null, `the page reported an error: ${ready.error}`);
  assert.equal(ready.backend, 'gpu', `fell back to the CPU: ${ready.fallbackReason}`);
  assert.equal(ready.fallbackReason, null);
  assert.match(await page.locator('#adapter').innerText(), /\S/);
  // The loss of the last 20 steps must be clearly below that of the first 20.
  await waitInPage(browser, () => {
    const l = window.easel.losses;
    const m = (xs) => xs.reduce((a, b) => a + b, 0) / xs.length;
    return l.length >= 60 && m(l.slice(-20)) < m(l.slice(0, 20)) - 0.3;
  }, null, 150_000, 'the training loss to fall by 0.3 nats');
  // The page stays responsive while the worker trains.
  const t0 = Date.now();
  await page.evaluate(() => new Promise((r) => requestAnimationFrame(r)));
  assert.ok(Date.now() - t0 < 1000, 'the page took over a second to draw a frame');
  const state = await page.evaluate(() => window.easel);
  console.log(`WebGPU page: ${state.losses.length} steps, first-20 loss ${mean(state.losses.slice(0, 20)).toFixed(3)}, `
    + `last-20 loss ${mean(state.losses.slice(-20)).toFixed(3)}, ${state.stepsPerSec.toFixed(1)} steps/s`);
  assert.ok(state.losses.every(Number.isFinite), 'losses are finite');
  await screenshot(page, 'webgpu-page.png');
  assert.deepEqual(browser.outside, [], 'requests left 127.0.0.1');
});
