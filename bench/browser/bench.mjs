// `cargo xtask bench-browser`: trains lenet5-28 at batch 64 in one headless Chromium tab, with
// Easel's wasm client on WebGPU (SwiftShader here) and on the CPU, and with TensorFlow.js 4.22
// on its WebGPU, WebGL and plain-JS CPU backends, and prints the steady-state figures as JSON.
//
// Right before and right after the wasm CPU run it also runs the native CPU path
// (`easel bench train --backend cpu --json`) and reports the wasm/native ratio. Standard output
// is exactly one JSON document; progress goes to standard error.
//
// Environment: EASEL_BIN (the release `easel` binary), CHROMIUM (default /usr/bin/chromium),
// BENCH_SECONDS (timed seconds per run, default 20), BENCH_BATCH (default 64), BENCH_ONLY=cpu
// (only the native and wasm CPU paths, without WebGPU and TF.js). Every request goes to 127.0.0.1.

import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const HERE = dirname(fileURLToPath(import.meta.url));
const ROOT = resolve(HERE, '..', '..');
const EASEL_BIN = process.env.EASEL_BIN || join(ROOT, 'target', 'release', 'easel');
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const SECONDS = Number(process.env.BENCH_SECONDS || 20);
const BATCH = Number(process.env.BENCH_BATCH || 64);
const TFJS = join(HERE, 'node_modules', '@tensorflow', 'tfjs', 'dist', 'tf.min.js');
const TFJS_WEBGPU = join(HERE, 'node_modules', '@tensorflow', 'tfjs-backend-webgpu', 'dist', 'tf-backend-webgpu.min.js');

/** What TF.js achieved here when the benchmark's targets were set (issue 4): samples/s. */
const TFJS_REFERENCE = { webgpu: 41, webgl: 313, cpu: 142 };

/** Starts `easel serve` on a free loopback port; resolves to `{ url, stop }`. */
function startRelay() {
  return new Promise((ok, fail) => {
    const home = mkdtempSync(join(tmpdir(), 'easel-bench-'));
    const child = spawn(EASEL_BIN, ['serve', '--http', '127.0.0.1:0', '--https', 'off'], {
      cwd: ROOT,
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, EASEL_HOME: home },
    });
    const stop = () => {
      child.kill();
      rmSync(home, { recursive: true, force: true });
    };
    let out = '';
    const timer = setTimeout(() => {
      stop();
      fail(new Error(`easel serve printed no "listening on" line in 20 s:\n${out}`));
    }, 20_000);
    const read = (d) => {
      out += d;
      const m = out.match(/listening on (http:\/\/127\.0\.0\.1:\d+\/)/);
      if (m) {
        clearTimeout(timer);
        ok({ url: m[1], stop });
      }
    };
    child.stdout.on('data', read);
    child.stderr.on('data', read);
    child.on('error', (e) => {
      clearTimeout(timer);
      fail(new Error(`cannot start ${EASEL_BIN} (run \`cargo xtask bench-browser\`): ${e.message}`));
    });
  });
}

/** Runs the native CPU path, `easel bench train --backend cpu --json`; resolves to its JSON. */
function benchNative() {
  process.stderr.write('==> Easel, CPU (native)…\n');
  const args = ['bench', 'train', '--backend', 'cpu', '--json', '--batch', String(BATCH), '--seconds', String(SECONDS)];
  const r = spawnSync(EASEL_BIN, args, { cwd: ROOT, encoding: 'utf8' });
  if (r.status !== 0) {
    const why = r.error ? r.error.message : (r.stderr || '').trim().split('\n').pop();
    process.stderr.write(`    failed: ${why}\n`);
    return { error: `easel ${args.join(' ')} failed: ${why}` };
  }
  const out = JSON.parse(r.stdout.trim().split('\n').pop());
  process.stderr.write(`    ${out.samples_per_sec.toFixed(0)} samples/s (${out.adapter})\n`);
  return out;
}

async function main() {
  const relay = await startRelay();
  const userDir = mkdtempSync(join(tmpdir(), 'easel-bench-chromium-'));
  const browser = await chromium.launchPersistentContext(userDir, {
    executablePath: CHROMIUM,
    headless: true,
    args: ['--no-sandbox', '--enable-unsafe-webgpu', '--enable-unsafe-swiftshader', '--disable-background-networking'],
  });
  const results = { batch: BATCH, seconds_per_run: SECONDS, browser: browser.browser()?.version() ?? 'chromium' };
  try {
    const run = async (label, fn, args, inject) => {
      const page = await browser.newPage();
      try {
        await page.goto(`${relay.url}bench.html`);
        await page.evaluate(() => window.benchReady);
        for (const path of inject) await page.addScriptTag({ path });
        process.stderr.write(`==> ${label}…\n`);
        const r = await page.evaluate(([fn, args]) => window[fn](args), [fn, args]);
        process.stderr.write(`    ${r.samples_per_s.toFixed(0)} samples/s (${r.steps} steps in ${r.seconds.toFixed(1)} s)\n`);
        return r;
      } catch (e) {
        process.stderr.write(`    failed: ${e.message.split('\n')[0]}\n`);
        return { error: e.message.split('\n')[0] };
      } finally {
        await page.close();
      }
    };
    const common = { batch: BATCH, seconds: SECONDS };
    const cpuOnly = process.env.BENCH_ONLY === 'cpu';
    results.easel = {};
    if (!cpuOnly) {
      results.easel.webgpu = await run('Easel, WebGPU', 'benchEasel', { ...common, backend: 'gpu', warmupSteps: 8 }, []);
    }
    // The native path right before and right after the wasm one, so the machine's load is alike.
    const nativeBefore = benchNative();
    results.easel.cpu = await run('Easel, CPU (wasm)', 'benchEasel', { ...common, backend: 'cpu', warmupSteps: 16 }, []);
    const nativeAfter = benchNative();
    results.easel.native_cpu = { before: nativeBefore, after: nativeAfter };
    const native = [nativeBefore, nativeAfter].map((r) => r.samples_per_sec).filter((v) => v > 0);
    const nativeMean = native.length ? native.reduce((a, b) => a + b) / native.length : null;
    const wasmOverNative = results.easel.cpu.samples_per_s && nativeMean
      ? Number((results.easel.cpu.samples_per_s / nativeMean).toFixed(3)) : null;
    process.stderr.write(`==> wasm CPU / native CPU: ${wasmOverNative}\n`);
    if (cpuOnly) {
      results.ratios = { easel_wasm_cpu_over_native_cpu: wasmOverNative };
      results.targets = { 'wasm cpu >= 0.5x native cpu': wasmOverNative >= 0.5 };
      return;
    }
    results.tfjs = {
      webgpu: await run('TF.js, WebGPU', 'benchTfjs', { ...common, backend: 'webgpu', warmupSteps: 2 }, [TFJS, TFJS_WEBGPU]),
      webgl: await run('TF.js, WebGL', 'benchTfjs', { ...common, backend: 'webgl', warmupSteps: 4 }, [TFJS]),
      cpu: await run('TF.js, CPU (plain JS)', 'benchTfjs', { ...common, backend: 'cpu', warmupSteps: 2 }, [TFJS]),
    };
    const s = (r) => r?.samples_per_s;
    const ratio = (a, b) => (s(a) && b ? Number((s(a) / b).toFixed(2)) : null);
    const peer = (k) => s(results.tfjs[k]) ?? TFJS_REFERENCE[k];
    results.ratios = {
      easel_cpu_over_tfjs_cpu: ratio(results.easel.cpu, peer('cpu')),
      easel_webgpu_over_tfjs_webgpu: ratio(results.easel.webgpu, peer('webgpu')),
      easel_webgpu_over_tfjs_webgl: ratio(results.easel.webgpu, peer('webgl')),
      easel_wasm_cpu_over_native_cpu: wasmOverNative,
    };
    results.targets = {
      'wasm cpu >= 0.5x native cpu': wasmOverNative >= 0.5,
      'cpu >= 10x tfjs cpu': results.ratios.easel_cpu_over_tfjs_cpu >= 10,
      'webgpu >= 10x tfjs webgpu': results.ratios.easel_webgpu_over_tfjs_webgpu >= 10,
      'webgpu >= 2x tfjs webgl': results.ratios.easel_webgpu_over_tfjs_webgl >= 2,
    };
  } finally {
    await browser.close();
    rmSync(userDir, { recursive: true, force: true });
    relay.stop();
    console.log(JSON.stringify(results, null, 2));
  }
}

main().catch((e) => {
  console.error(`bench-browser: ${e.stack || e}`);
  process.exit(1);
});
