// Browser tests of the wasm client's CPU path: its direct convolution kernels against the f64
// im2col + GEMM reference (`check_cpu_kernels`, the check the native unit tests make) in both
// modules `cargo xtask wasm` builds, the baseline simd128 one and the relaxed-SIMD one, and the
// choice between them. Helpers and environment: relay.mjs.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { checkPrerequisites, cleanup, launch as launchAt, startServer, waitInPage } from './relay.mjs';

let port;

before(async () => {
  checkPrerequisites();
  ({ port } = await startServer());
});

after(cleanup);

/** Opens test.html?suite=cpu with `wasm` and resolves to the outcome, failing on an error. */
async function checkKernels(browser, wasm) {
  const { page } = browser;
  await page.goto(`http://127.0.0.1:${port}/test.html?suite=cpu&wasm=${wasm}&seed=7&cases=40`);
  await waitInPage(browser, () => window.easelTest?.done, null, 120_000, `check_cpu_kernels (${wasm})`);
  const outcome = await page.evaluate(() => window.easelTest);
  assert.equal(outcome.error, undefined,
    `check_cpu_kernels (${wasm}) failed: ${outcome.error}\nconsole:\n${browser.logs.join('\n')}`);
  console.log(`check_cpu_kernels (${wasm}):`, JSON.stringify(outcome.result));
  return outcome.result;
}

test('the wasm CPU kernels match the f64 reference in both modules, and the relaxed one is chosen where it validates', { timeout: 300_000 }, async () => {
  const browser = await launchAt(port);
  const baseline = await checkKernels(browser, 'baseline');
  assert.equal(baseline.wasm_build, 'baseline');
  assert.equal(baseline.cpu_isa, 'simd128');
  assert.deepEqual(baseline.isas, ['simd128', 'portable']);

  const auto = await checkKernels(browser, 'auto');
  // This Chromium has relaxed SIMD; where a browser lacks it the page loads the baseline.
  assert.equal(auto.relaxed_simd, true, 'this Chromium should validate f32x4.relaxed_madd');
  assert.equal(auto.wasm_build, 'relaxed');
  assert.equal(auto.cpu_isa, 'simd128-relaxed');
  assert.deepEqual(auto.isas, ['simd128-relaxed', 'portable']);
  assert.deepEqual(browser.outside, [], 'requests left 127.0.0.1');
});

test('a browser without relaxed SIMD gets the baseline module', { timeout: 120_000 }, async () => {
  const browser = await launchAt(port);
  // This Chromium has relaxed SIMD and no flag turns it off any more, so the page is shown an
  // engine without it: one whose WebAssembly.validate rejects the probe module.
  await browser.page.addInitScript(() => {
    WebAssembly.validate = () => false;
  });
  const r = await checkKernels(browser, 'auto');
  assert.equal(r.relaxed_simd, false);
  assert.equal(r.wasm_build, 'baseline');
  assert.equal(r.cpu_isa, 'simd128');
});
