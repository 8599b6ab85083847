// Runs a check of the wasm client in the page and leaves the outcome in `window.easelTest`:
// `compare_gpu_with_cpu` (the default), or with `?suite=cpu` the CPU kernels against their
// f64 reference (`check_cpu_kernels`). `?wasm=baseline|relaxed|auto` picks the module
// (wasm-select.js); the outcome names the one that ran.

import init, { check_cpu_kernels, compare_gpu_with_cpu, cpu_isa } from './pkg/easel_client.js';
import { hasRelaxedSimd, initWasm } from './wasm-select.js';

const query = new URLSearchParams(location.search);
const steps = Number(query.get('steps') ?? 5);
const seed = Number(query.get('seed') ?? 1);
const batch = Number(query.get('batch') ?? 32);
const suite = query.get('suite') ?? 'gpu';
const cases = Number(query.get('cases') ?? 40);

window.easelTest = { done: false };

async function main() {
  const wasm = await initWasm(init, query.get('wasm') ?? 'auto');
  if (suite === 'cpu') {
    const t0 = performance.now();
    const isas = check_cpu_kernels(seed, cases);
    return {
      wasm_build: wasm, relaxed_simd: hasRelaxedSimd(), cpu_isa: cpu_isa(), isas, cases,
      seconds: (performance.now() - t0) / 1000,
    };
  }
  const resp = await fetch('/data/mnist.bin');
  if (!resp.ok) throw new Error(`HTTP ${resp.status} for /data/mnist.bin`);
  const data = new Uint8Array(await resp.arrayBuffer());
  const t0 = performance.now();
  const result = await compare_gpu_with_cpu(data, steps, seed, batch);
  result.seconds = (performance.now() - t0) / 1000;
  return result;
}

main().then(
  (result) => {
    window.easelTest = { done: true, result };
    document.getElementById('status').textContent = 'Done.';
    document.getElementById('result').textContent = JSON.stringify(result, null, 2);
  },
  (err) => {
    const error = String(err?.message ?? err);
    window.easelTest = { done: true, error };
    document.getElementById('status').textContent = `Error: ${error}`;
  },
);
