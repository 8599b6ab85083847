// Runs compare_gpu_with_cpu in the page and leaves the outcome in `window.easelTest`.

import init, { compare_gpu_with_cpu } from './pkg/easel_client.js';

const query = new URLSearchParams(location.search);
const steps = Number(query.get('steps') ?? 5);
const seed = Number(query.get('seed') ?? 1);
const batch = Number(query.get('batch') ?? 32);

window.easelTest = { done: false };

async function main() {
  await init();
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
