// The training loop of the single-tab page (solo.html), in a module Web Worker so the page never freezes.
//
// Messages in:  {type: 'start', config: {backend, seed, batch, lr, epochs}}, {type: 'pause'},
//               {type: 'resume'}.
// Messages out: {type: 'status', text}, {type: 'ready', ...device facts},
//               {type: 'progress', ...}, {type: 'eval', ...}, {type: 'done'}, {type: 'error', message}.

import { WebTrainer } from './pkg/easel_client.js';
import { loadWasmAndDigits } from './boot.js';

/** Seconds of training per chunk the loop aims for: short enough to react to Pause at once. */
const CHUNK_SECONDS = 0.15;
/** Seconds between two evaluations on the test digits. */
const EVAL_EVERY_SECONDS = 3;
/** Seconds of recent chunks the speed is averaged over. */
const SPEED_WINDOW_SECONDS = 3;

let paused = false;
let wake = null;

self.onmessage = (e) => {
  const msg = e.data;
  if (msg.type === 'start') {
    run(msg.config).catch((err) => post({ type: 'error', message: String(err?.message ?? err) }));
  } else if (msg.type === 'pause') {
    paused = true;
  } else if (msg.type === 'resume') {
    paused = false;
    if (wake) wake();
  }
};

function post(msg) {
  self.postMessage(msg);
}

/** Lets queued messages (Pause) in between two chunks. */
function yieldToEvents() {
  return new Promise((resolve) => setTimeout(resolve, 0));
}

async function evaluate(trainer) {
  const ev = await trainer.evaluate();
  post({ type: 'eval', step: trainer.step(), accuracy: ev.accuracy, loss: ev.loss, digits: ev.digits });
}

async function run(config) {
  const bytes = await loadWasmAndDigits((text) => post({ type: 'status', text }));
  const trainer = await WebTrainer.create(
    bytes, config.backend, config.seed, config.batch, config.lr, config.epochs || undefined);
  const batch = trainer.batch();
  post({
    type: 'ready',
    backend: trainer.backend(),
    adapter: trainer.adapter(),
    fallbackReason: trainer.fallback_reason() ?? null,
    batch,
    totalSteps: trainer.total_steps(),
    epochs: config.epochs,
  });
  await evaluate(trainer);

  let chunk = 1;
  let lastEval = performance.now();
  const recent = []; // [steps, seconds] of recent chunks
  while (!trainer.finished()) {
    if (paused) {
      post({ type: 'status', text: 'Paused.' });
      await new Promise((resolve) => { wake = resolve; });
      wake = null;
      post({ type: 'status', text: 'Training…' });
    }
    const lr = trainer.current_lr();
    const before = trainer.step();
    const t0 = performance.now();
    const losses = await trainer.train_steps(chunk);
    const seconds = (performance.now() - t0) / 1000;
    const done = trainer.step() - before;

    recent.push([done, seconds]);
    let windowSteps = 0;
    let windowSeconds = 0;
    for (let i = recent.length - 1; i >= 0; i--) {
      windowSteps += recent[i][0];
      windowSeconds += recent[i][1];
      if (windowSeconds > SPEED_WINDOW_SECONDS) {
        recent.splice(0, i);
        break;
      }
    }
    const stepsPerSec = windowSeconds > 0 ? windowSteps / windowSeconds : 0;
    post({
      type: 'progress',
      step: trainer.step(),
      epochs: trainer.epochs_done(),
      losses: Array.from(losses),
      lr,
      stepsPerSec,
      samplesPerSec: stepsPerSec * batch,
      dispatchesPerStep: trainer.dispatches_per_step(),
      readbacksPerStep: trainer.readbacks_per_step(),
    });

    // Aim each chunk at CHUNK_SECONDS, growing or shrinking by at most a factor of two.
    const perStep = seconds / Math.max(done, 1);
    const target = Math.round(CHUNK_SECONDS / Math.max(perStep, 1e-6));
    chunk = Math.max(1, Math.min(chunk * 2, target, 1000));

    if (performance.now() - lastEval > EVAL_EVERY_SECONDS * 1000) {
      await evaluate(trainer);
      lastEval = performance.now();
    }
    await yieldToEvents();
  }
  await evaluate(trainer);
  post({ type: 'done', step: trainer.step() });
}
