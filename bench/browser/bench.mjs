// `cargo xtask bench-browser`: trains lenet5-28 at batch 64 in one headless Chromium tab, with
// Easel's wasm client on WebGPU (SwiftShader here) and on the CPU, and with TensorFlow.js 4.22
// on its WebGPU, WebGL and plain-JS CPU backends, and prints the steady-state figures as JSON.
//
// Right before and right after the wasm CPU runs it also runs the native CPU path
// (`easel bench train --backend cpu --json --profile`) and reports the wasm/native ratio. The
// wasm CPU path runs in the build the page picks (relaxed SIMD where Chromium has it, see
// www/wasm-select.js) and, when that is the relaxed one, in the baseline simd128 build too;
// each wasm build and the native path are also profiled per layer operation, and the profiles
// are printed side by side (stderr) and returned (`profile_comparison`). Standard output is
// exactly one JSON document; progress goes to standard error.
//
// Environment: EASEL_BIN (the release `easel` binary), CHROMIUM (default /usr/bin/chromium),
// BENCH_SECONDS (timed seconds per run, default 20), BENCH_BATCH (default 64), BENCH_ONLY=cpu
// (only the native and wasm CPU paths, without WebGPU and TF.js). Every request goes to 127.0.0.1.

import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { cpus, loadavg, tmpdir } from 'node:os';
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
    // The pages from the checkout (`--www`), so that what is measured is what is on disk.
    const args = ['serve', '--http', '127.0.0.1:0', '--https', 'off', '--www', join(ROOT, 'www')];
    const child = spawn(EASEL_BIN, args, {
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
  const args = ['bench', 'train', '--backend', 'cpu', '--json', '--profile', '--batch', String(BATCH), '--seconds', String(SECONDS)];
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

/**
 * The native and wasm per-op profiles side by side (microseconds per step, and wasm/native),
 * printed to stderr and returned as rows; null when a profile is missing.
 */
function compareProfiles(native, wasm, baseline) {
  if (!native || !wasm) return null;
  const us = (ops, op) => ops?.find((r) => r.op === op)?.us_per_step ?? null;
  const rows = native.map(({ op, us_per_step: n }) => {
    const w = us(wasm, op);
    const b = us(baseline, op);
    return { op, native_us: n, wasm_us: w, wasm_over_native: w / n, wasm_baseline_us: b };
  });
  const total = (k) => rows.reduce((a, r) => a + (r[k] ?? 0), 0);
  rows.push({
    op: 'total', native_us: total('native_us'), wasm_us: total('wasm_us'),
    wasm_over_native: total('wasm_us') / total('native_us'),
    wasm_baseline_us: baseline ? total('wasm_baseline_us') : null,
  });
  const f = (v) => (v === null ? '-' : v.toFixed(1)).padStart(9);
  process.stderr.write(`==> per-op profile, us/step: ${'native'.padStart(9)} ${'wasm'.padStart(9)} ${'x'.padStart(6)}`
    + `${baseline ? ' baseline'.padStart(10) : ''}\n`);
  for (const r of rows) {
    process.stderr.write(`    ${r.op.padEnd(28)} ${f(r.native_us)} ${f(r.wasm_us)} ${r.wasm_over_native.toFixed(2).padStart(6)}`
      + `${baseline ? ' ' + f(r.wasm_baseline_us) : ''}\n`);
  }
  return rows;
}

async function main() {
  const relay = await startRelay();
  const userDir = mkdtempSync(join(tmpdir(), 'easel-bench-chromium-'));
  const browser = await chromium.launchPersistentContext(userDir, {
    executablePath: CHROMIUM,
    headless: true,
    args: ['--no-sandbox', '--enable-unsafe-webgpu', '--enable-unsafe-swiftshader', '--disable-background-networking'],
  }).catch((e) => {
    // The relay is not left running when the browser does not start.
    relay.stop();
    rmSync(userDir, { recursive: true, force: true });
    throw e;
  });
  const results = {
    batch: BATCH,
    seconds_per_run: SECONDS,
    browser: browser.browser()?.version() ?? 'chromium',
    cpu: cpus()[0]?.model ?? null,
    // 1, 5 and 15-minute load averages when the runs start and when they end.
    load_average: { start: loadavg().map((v) => Number(v.toFixed(2))), end: null },
  };
  try {
    const run = async (label, fn, args, inject, query = '') => {
      const page = await browser.newPage();
      try {
        await page.goto(`${relay.url}bench.html${query}`);
        await page.evaluate(() => window.benchReady);
        for (const path of inject) await page.addScriptTag({ path });
        process.stderr.write(`==> ${label}…\n`);
        const r = await page.evaluate(([fn, args]) => window[fn](args), [fn, args]);
        process.stderr.write(r.ops
          ? `    ${r.us_per_step.toFixed(0)} us/step over ${r.steps} profiled steps (${r.isa})\n`
          : `    ${r.samples_per_s.toFixed(0)} samples/s (${r.steps} steps in ${r.seconds.toFixed(1)} s)\n`);
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
    // The native path right before and right after the wasm ones, so the machine's load is alike.
    const cpu = { ...common, backend: 'cpu', warmupSteps: 16 };
    const nativeBefore = benchNative();
    results.easel.cpu = await run('Easel, CPU (wasm)', 'benchEasel', cpu, []);
    results.easel.cpu.profile = await run('Easel, CPU (wasm), per-op profile', 'profileEaselCpu', { batch: BATCH }, []);
    if (results.easel.cpu.wasm_build === 'relaxed') {
      const q = '?wasm=baseline';
      results.easel.cpu_baseline_simd128 = await run('Easel, CPU (wasm, baseline simd128 build)', 'benchEasel', cpu, [], q);
      results.easel.cpu_baseline_simd128.profile = await run('Easel, CPU (wasm, baseline simd128 build), per-op profile', 'profileEaselCpu', { batch: BATCH }, [], q);
    }
    const nativeAfter = benchNative();
    results.easel.native_cpu = { before: nativeBefore, after: nativeAfter };
    const native = [nativeBefore, nativeAfter].map((r) => r.samples_per_sec).filter((v) => v > 0);
    const nativeMean = native.length ? native.reduce((a, b) => a + b) / native.length : null;
    const over = (r) => (r?.samples_per_s && nativeMean ? Number((r.samples_per_s / nativeMean).toFixed(3)) : null);
    const wasmOverNative = over(results.easel.cpu);
    const baselineOverNative = over(results.easel.cpu_baseline_simd128);
    process.stderr.write(`==> wasm CPU (${results.easel.cpu.wasm_build} build) / native CPU: ${wasmOverNative}`
      + (baselineOverNative === null ? '\n' : `; baseline simd128 build / native: ${baselineOverNative}\n`));
    results.profile_comparison = compareProfiles(nativeAfter.profile, results.easel.cpu.profile?.ops,
      results.easel.cpu_baseline_simd128?.profile?.ops);
    results.ratios = {
      easel_wasm_cpu_over_native_cpu: wasmOverNative,
      easel_wasm_baseline_simd128_over_native_cpu: baselineOverNative,
    };
    if (cpuOnly) {
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
      ...results.ratios,
      easel_cpu_over_tfjs_cpu: ratio(results.easel.cpu, peer('cpu')),
      easel_webgpu_over_tfjs_webgpu: ratio(results.easel.webgpu, peer('webgpu')),
      easel_webgpu_over_tfjs_webgl: ratio(results.easel.webgpu, peer('webgl')),
    };
    results.targets = {
      'wasm cpu >= 0.5x native cpu': wasmOverNative >= 0.5,
      'cpu >= 10x tfjs cpu': results.ratios.easel_cpu_over_tfjs_cpu >= 10,
      'webgpu >= 10x tfjs webgpu': results.ratios.easel_webgpu_over_tfjs_webgpu >= 10,
      'webgpu >= 2x tfjs webgl': results.ratios.easel_webgpu_over_tfjs_webgl >= 2,
    };
  } finally {
    results.load_average.end = loadavg().map((v) => Number(v.toFixed(2)));
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
