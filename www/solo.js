// The single-tab training page (solo.html): starts the worker, shows what it reports, draws two small charts.
// All training happens in solo-worker.js; this file only routes messages and draws.

const query = new URLSearchParams(location.search);
const number = (name, fallback) => {
  const v = Number(query.get(name));
  return query.has(name) && Number.isFinite(v) ? v : fallback;
};
const config = {
  backend: query.get('backend') ?? 'auto',
  seed: number('seed', 1),
  batch: number('batch', 32),
  lr: number('lr', 0.1),
  epochs: number('epochs', 5),
};

const $ = (id) => document.getElementById(id);

/** Everything the page knows; browser tests read it as `window.easel`. */
const state = {
  config,
  ready: false,
  done: false,
  error: null,
  backend: null,
  adapter: null,
  fallbackReason: null,
  steps: 0,
  losses: [],
  evals: [],
  stepsPerSec: 0,
  samplesPerSec: 0,
};
window.easel = state;

const fmt = (v, digits) => (Number.isFinite(v) ? v.toFixed(digits) : '–');
const grouped = (v) => Math.round(v).toLocaleString('en-US');

function setStatus(text, isError = false) {
  $('status').textContent = text;
  $('status').classList.toggle('error', isError);
}

const worker = new Worker(new URL('./solo-worker.js', import.meta.url), { type: 'module' });
worker.onerror = (e) => {
  state.error = e.message || 'the training worker failed to start';
  setStatus(`Error: ${state.error}`, true);
};
worker.onmessage = (e) => {
  const m = e.data;
  switch (m.type) {
    case 'status':
      setStatus(m.text);
      break;
    case 'ready':
      Object.assign(state, {
        ready: true, backend: m.backend, adapter: m.adapter, fallbackReason: m.fallbackReason,
        batch: m.batch, totalSteps: m.totalSteps,
      });
      $('backend').textContent = m.backend === 'gpu' ? 'GPU (WebGPU)' : 'CPU (WebAssembly, 1 thread)';
      $('adapter').textContent = m.adapter;
      if (m.fallbackReason) {
        $('fallback').textContent = `Training on the CPU instead of the GPU. ${m.fallbackReason}`;
        $('fallback').hidden = false;
      }
      if (m.totalSteps > 0) {
        $('steps-of').textContent = `of ${grouped(m.totalSteps)} (${m.batch} digits each)`;
        $('epochs-of').textContent = `of ${m.epochs} ${m.epochs === 1 ? 'pass' : 'passes'} over the data`;
      } else {
        $('steps-of').textContent = `(${m.batch} digits each)`;
      }
      $('pause').disabled = false;
      setStatus('Training…');
      break;
    case 'progress':
      state.steps = m.step;
      for (const l of m.losses) state.losses.push(l);
      state.stepsPerSec = m.stepsPerSec;
      state.samplesPerSec = m.samplesPerSec;
      $('steps').textContent = grouped(m.step);
      $('epochs').textContent = fmt(m.epochs, 2);
      $('lr').textContent = m.lr.toPrecision(3);
      $('steps-per-sec').textContent = fmt(m.stepsPerSec, 1);
      $('samples-per-sec').textContent = grouped(m.samplesPerSec);
      if (m.losses.length) $('loss').textContent = fmt(mean(m.losses), 3);
      if (state.backend === 'gpu') {
        $('gpu-work').textContent = `${m.dispatchesPerStep} compute dispatches, `
          + `${m.readbacksPerStep} readbacks`;
        $('gpu-work-row').hidden = false;
      }
      redraw();
      break;
    case 'eval':
      state.evals.push({ step: m.step, accuracy: m.accuracy, loss: m.loss });
      $('accuracy').textContent = fmt(m.accuracy * 100, 1);
      $('test-loss').textContent = fmt(m.loss, 3);
      redraw();
      break;
    case 'done':
      state.done = true;
      $('pause').disabled = true;
      setStatus(`Finished: ${grouped(m.step)} steps.`);
      break;
    case 'error':
      state.error = m.message;
      setStatus(`Error: ${m.message}`, true);
      break;
  }
};

let paused = false;
$('pause').addEventListener('click', () => {
  paused = !paused;
  worker.postMessage({ type: paused ? 'pause' : 'resume' });
  $('pause').textContent = paused ? 'Resume' : 'Pause';
});

worker.postMessage({ type: 'start', config });

function mean(xs) {
  return xs.reduce((a, b) => a + b, 0) / xs.length;
}

// ---- Charts: a plain canvas line plot, redrawn at most once per frame. ----

let frameQueued = false;
function redraw() {
  if (frameQueued) return;
  frameQueued = true;
  requestAnimationFrame(() => {
    frameQueued = false;
    drawLoss();
    drawAccuracy();
  });
}
window.addEventListener('resize', redraw);

/** Sizes the canvas backing store to its CSS box and returns a context in CSS pixels. */
function canvasContext(canvas) {
  const dpr = window.devicePixelRatio || 1;
  const { width, height } = canvas.getBoundingClientRect();
  if (canvas.width !== Math.round(width * dpr) || canvas.height !== Math.round(height * dpr)) {
    canvas.width = Math.round(width * dpr);
    canvas.height = Math.round(height * dpr);
  }
  const ctx = canvas.getContext('2d');
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, width, height);
  return { ctx, width, height };
}

const css = (name) => getComputedStyle(document.documentElement).getPropertyValue(name).trim();

/**
 * Draws axes and the series `lines` ([{points: [[x, y]], color, width}]) into `canvas`,
 * with `yLabel` on the y axis and steps on the x axis.
 */
function plot(canvas, lines, { yMin, yMax, xMax, yLabel, yFormat, ticks = 4 }) {
  const { ctx, width, height } = canvasContext(canvas);
  const pad = { left: 44, right: 8, top: 8, bottom: 30 };
  const w = width - pad.left - pad.right;
  const h = height - pad.top - pad.bottom;
  const X = (x) => pad.left + (x / xMax) * w;
  const Y = (y) => pad.top + h - ((y - yMin) / (yMax - yMin)) * h;
  ctx.font = '11px system-ui, sans-serif';
  ctx.fillStyle = css('--muted');
  ctx.strokeStyle = css('--line');
  ctx.lineWidth = 1;
  for (let i = 0; i <= ticks; i++) {
    const y = yMin + ((yMax - yMin) * i) / ticks;
    ctx.beginPath();
    ctx.moveTo(pad.left, Y(y));
    ctx.lineTo(pad.left + w, Y(y));
    ctx.stroke();
    ctx.textAlign = 'right';
    ctx.textBaseline = 'middle';
    ctx.fillText(yFormat(y), pad.left - 4, Y(y));
  }
  ctx.textAlign = 'left';
  ctx.textBaseline = 'alphabetic';
  ctx.fillText('0', pad.left, height - 14);
  ctx.textAlign = 'right';
  ctx.fillText(`${grouped(xMax)} steps`, pad.left + w, height - 14);
  ctx.textAlign = 'center';
  ctx.fillText(yLabel, pad.left + w / 2, height - 2);
  for (const line of lines) {
    if (!line.points.length) continue;
    ctx.strokeStyle = line.color;
    ctx.lineWidth = line.width;
    ctx.beginPath();
    line.points.forEach(([x, y], i) => (i ? ctx.lineTo(X(x), Y(y)) : ctx.moveTo(X(x), Y(y))));
    ctx.stroke();
    if (line.dots) {
      ctx.fillStyle = line.color;
      for (const [x, y] of line.points) ctx.fillRect(X(x) - 2, Y(y) - 2, 4, 4);
    }
  }
}

/** Averages `values` into at most `bins` points of [step, mean]. */
function binned(values, bins) {
  const per = Math.max(1, Math.ceil(values.length / bins));
  const out = [];
  for (let i = 0; i < values.length; i += per) {
    const slice = values.slice(i, i + per);
    out.push([i + slice.length / 2, mean(slice)]);
  }
  return out;
}

function drawLoss() {
  const canvas = $('loss-chart');
  const losses = state.losses;
  const raw = binned(losses, Math.max(50, Math.floor(canvas.clientWidth)));
  const smooth = [];
  let ema = null;
  const alpha = Math.min(1, 20 / Math.max(losses.length, 1) + 0.02);
  losses.forEach((l, i) => {
    ema = ema === null ? l : ema + alpha * (l - ema);
    if (i % Math.max(1, Math.floor(losses.length / 400)) === 0) smooth.push([i + 1, ema]);
  });
  const top = Math.ceil(Math.max(2.5, ...raw.map(([, y]) => y).filter(Number.isFinite)));
  plot(canvas, [
    { points: raw, color: css('--accent-soft'), width: 1 },
    { points: smooth, color: css('--accent'), width: 2 },
  ], {
    yMin: 0, yMax: top, ticks: top <= 4 ? top * 2 : top, xMax: Math.max(state.totalSteps || 0, losses.length, 1),
    yLabel: 'training loss (nats) by step', yFormat: (v) => v.toFixed(1),
  });
}

function drawAccuracy() {
  const points = state.evals.map((e) => [e.step, e.accuracy * 100]);
  plot($('acc-chart'), [{ points, color: css('--good'), width: 2, dots: true }], {
    yMin: 0, yMax: 100, xMax: Math.max(state.totalSteps || 0, state.steps, 1),
    yLabel: 'test accuracy (%) by step', yFormat: (v) => `${v.toFixed(0)}%`,
  });
}

redraw();
