// The browser benchmark's page side. `bench/browser/bench.mjs` (run by `cargo xtask
// bench-browser`) opens this page and calls `window.benchEasel(...)` or, after injecting
// TensorFlow.js, `window.benchTfjs(...)`. Both train lenet5-28 on the real training digits
// for a warm-up and then for a fixed wall time, and resolve to steady-state figures.

import init, { WebTrainer, cpu_isa, profile_cpu_step, train_flops_per_sample } from './pkg/easel_client.js';
import { initWasm } from './wasm-select.js';

const TRAIN = 8000;
const PIXELS = 784;

let digits = null;

/** The wasm build this page loaded (`?wasm=baseline|relaxed|auto`, see wasm-select.js). */
const wasmReady = initWasm(init, new URLSearchParams(location.search).get('wasm') ?? 'auto');

/** The bytes of /data/mnist.bin (see data/README.md), fetched once. */
async function mnistBytes() {
  if (!digits) {
    const resp = await fetch('/data/mnist.bin');
    if (!resp.ok) throw new Error(`HTTP ${resp.status} for /data/mnist.bin`);
    digits = new Uint8Array(await resp.arrayBuffer());
  }
  return digits;
}

function show(result) {
  document.getElementById('result').textContent = JSON.stringify(result, null, 2);
  return result;
}

/** Trains with Easel's wasm client on `backend` (`gpu` or `cpu`) and returns its figures. */
window.benchEasel = async ({ backend, batch, warmupSteps, seconds }) => {
  const wasm = await wasmReady;
  const trainer = await WebTrainer.create(await mnistBytes(), backend, 1, batch, 0.05, undefined);
  if (trainer.backend() !== backend) {
    throw new Error(`asked for ${backend} but got ${trainer.backend()}: ${trainer.fallback_reason()}`);
  }
  await trainer.train_steps(warmupSteps);
  await trainer.params(); // every warm-up step has finished
  // Chunks of a few steps keep the GPU's queue full without unbounded queueing.
  const chunk = backend === 'gpu' ? 4 : 8;
  let steps = 0;
  const t0 = performance.now();
  while (performance.now() - t0 < seconds * 1000) {
    await trainer.train_steps(chunk);
    steps += chunk;
  }
  await trainer.params(); // waits for the last queued step
  const wall = (performance.now() - t0) / 1000;
  const samplesPerS = (steps * batch) / wall;
  return show({
    engine: 'easel',
    backend,
    adapter: trainer.adapter(),
    wasm_build: wasm,
    cpu_isa: cpu_isa(),
    batch,
    steps,
    seconds: wall,
    samples_per_s: samplesPerS,
    steps_per_s: steps / wall,
    dispatches_per_step: backend === 'gpu' ? trainer.dispatches_per_step() : null,
    readbacks_per_step: backend === 'gpu' ? trainer.readbacks_per_step() : null,
    gflops: (samplesPerS * Number(train_flops_per_sample())) / 1e9,
  });
};

/** Times each layer operation of the wasm CPU step (`profile_cpu_step`, the measurement
 * `easel bench train --profile` makes natively) and returns its figures. */
window.profileEaselCpu = async ({ batch }) => {
  const wasm = await wasmReady;
  return show({ wasm_build: wasm, ...profile_cpu_step(await mnistBytes(), batch) });
};

/** The same network in TensorFlow.js (valid 5x5 convolutions, ReLU, 2x2 max pooling,
 * dense 256-120-84-10, softmax cross-entropy, plain SGD at 0.05). */
function tfjsLenet(tf) {
  const model = tf.sequential();
  model.add(tf.layers.conv2d({ inputShape: [28, 28, 1], filters: 6, kernelSize: 5, activation: 'relu' }));
  model.add(tf.layers.maxPooling2d({ poolSize: 2 }));
  model.add(tf.layers.conv2d({ filters: 16, kernelSize: 5, activation: 'relu' }));
  model.add(tf.layers.maxPooling2d({ poolSize: 2 }));
  model.add(tf.layers.flatten());
  model.add(tf.layers.dense({ units: 120, activation: 'relu' }));
  model.add(tf.layers.dense({ units: 84, activation: 'relu' }));
  model.add(tf.layers.dense({ units: 10 }));
  return model;
}

/** Trains the same model with TensorFlow.js (injected as `window.tf`) on `backend`. */
window.benchTfjs = async ({ backend, batch, warmupSteps, seconds }) => {
  const tf = window.tf;
  if (!(await tf.setBackend(backend))) throw new Error(`TensorFlow.js has no ${backend} backend here`);
  await tf.ready();
  const bytes = await mnistBytes();
  const model = tfjsLenet(tf);
  if (model.countParams() !== 44426) throw new Error(`the TF.js model has ${model.countParams()} parameters`);
  const optimizer = tf.train.sgd(0.05);
  let cursor = 0;
  const step = () => {
    const x = new Float32Array(batch * PIXELS);
    const y = new Float32Array(batch * 10);
    for (let b = 0; b < batch; b++) {
      const i = (cursor + b) % TRAIN;
      for (let p = 0; p < PIXELS; p++) x[b * PIXELS + p] = bytes[16 + i * PIXELS + p] / 255;
      y[b * 10 + bytes[16 + TRAIN * PIXELS + i]] = 1;
    }
    cursor = (cursor + batch) % TRAIN;
    return tf.tidy(() => {
      const xs = tf.tensor4d(x, [batch, 28, 28, 1]);
      const ys = tf.tensor2d(y, [batch, 10]);
      return optimizer.minimize(() => tf.losses.softmaxCrossEntropy(ys, model.apply(xs)), true);
    });
  };
  const run = async (n) => {
    let loss = null;
    for (let s = 0; s < n; s++) {
      if (loss) loss.dispose();
      loss = step();
    }
    const value = (await loss.data())[0];
    loss.dispose();
    return value;
  };
  await run(warmupSteps);
  let steps = 0;
  let loss = NaN;
  const t0 = performance.now();
  while (performance.now() - t0 < seconds * 1000) {
    loss = await run(4);
    steps += 4;
  }
  const wall = (performance.now() - t0) / 1000;
  const samplesPerS = (steps * batch) / wall;
  return show({
    engine: `tfjs ${tf.version.tfjs}`,
    backend,
    batch,
    steps,
    seconds: wall,
    samples_per_s: samplesPerS,
    steps_per_s: steps / wall,
    last_loss: loss,
    gflops: (samplesPerS * Number(train_flops_per_sample())) / 1e9,
  });
};

window.benchReady = wasmReady.then(() => true);
