// Browser tests of the wasm client: WebGPU (SwiftShader) in headless Chromium against the CPU
// backend, the CPU fallback outside a secure context, and the single-tab training page
// (solo.html) on WebGPU. Helpers and environment: relay.mjs.
// Every request goes to 127.0.0.1: "classroom.test" is mapped there by Chromium's resolver.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  checkPrerequisites, cleanup, launch as launchAt, mean, screenshot, startServer, waitInPage,
} from './relay.mjs';

let port;
const launch = (flags) => launchAt(port, flags);

before(async () => {
  checkPrerequisites();
  ({ port } = await startServer());
});

after(cleanup);

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
  await page.goto(`http://classroom.test:${port}/solo.html?backend=auto`);
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

test('the single-tab page trains on WebGPU at 127.0.0.1 and the loss goes down', { timeout: 240_000 }, async () => {
  const browser = await launch();
  const { page } = browser;
  await page.goto(`http://127.0.0.1:${port}/solo.html?backend=auto`);
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
