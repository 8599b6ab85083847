// The teacher's dashboard. One WebSocket (/ws/dashboard) pushes a snapshot, then an update
// every half second; every control is a POST to /api/rooms/CODE/control. Charts are uPlot
// (loaded by teacher.html); the activity timeline is drawn in a uPlot draw hook, the one
// chart type uPlot lacks. PROTOCOL.md, "Teacher API", documents the messages.

import { setExplanation } from './explain.js';

const params = new URLSearchParams(location.search);
const ROOM = (params.get('room') || '').trim().toUpperCase();
const TOKEN = params.get('admin') || '';
/** `view=projector`: the layout for the class's screen (see setView). */
let projector = params.get('view') === 'projector';

/** Points kept per chart in the page (the run export has every point). */
const MAX_POINTS = 5000;
/** Width of the activity timeline, seconds. */
const TIMELINE_S = 60;
/** Samples of bytes/s kept (two a second: ten minutes). */
const MAX_RATES = 1200;
const SPAN_COLORS = { computing: '#1a56db', waiting: '#e8710a', barrier: '#a21caf', communicating: '#0f9d58' };
/** The staleness histogram's colours: accepted pushes, refused ones. */
const HIST_COLORS = { accepted: '#1a56db', refused: '#c5221f' };
/** How long a pairwise average stays drawn on the topology (fading), ms. */
const PAIR_WINDOW_MS = 3000;

// The settings form is built from the relay's schema (`schema` in the dashboard's
// snapshot, also `GET /api/settings`): its one owner is easel_protocol::settings::SCHEMA.

// Presets: predict, run, compare. Each sets the room's strategy (and settings), optionally
// makes the first `stragglers` devices wait 3 s per round, and starts a fresh named run, so
// the overlay picker can put it over the previous one. `ask` is the question to predict.
const PRESETS = [
  { name: 'async EASGD', settings: { strategy: 'easgd', tau_max: 16 }, ask: 'Does the slow device hold the class back?' },
  { name: 'sync FedAvg', settings: { strategy: 'fedavg' }, ask: 'Which reaches 90% first: sync or async?' },
  { name: 'FedAvg, fastest 2 of 3', settings: { strategy: 'fedavg:2' }, ask: 'Does dropping the slowest device cost accuracy?' },
  { name: 'async SGD', settings: { strategy: 'async_sgd', tau_max: 16 }, ask: 'Taking the center, or pulling toward it: which is steadier?' },
  { name: 'bounded staleness s=4', settings: { strategy: 'bounded', tau_max: 4 }, ask: 'How many pushes get refused?' },
  { name: 'FedBuff M=4', settings: { strategy: 'fedbuff:4', tau_max: 16 }, ask: 'Does buffering 4 updates smooth the curve?' },
  { name: 'ADACOMM', settings: { strategy: 'adacomm:32:4:10' }, ask: 'Does K fall as the loss falls?' },
  { name: 'SwarmSGD ring', settings: { strategy: 'swarm:ring' }, ask: 'Without any center, does the mean model still learn? Who talks to whom?' },
  { name: 'SwarmSGD complete graph', settings: { strategy: 'swarm:complete' }, ask: 'Does talking to anyone beat talking to two neighbours?' },
];
const STRAGGLER_MS = 3000;

// State the browser test reads.
const state = {
  connected: false,
  room: ROOM,
  run: null,
  runName: '',
  runStartedMs: 0,
  version: 0,
  devices: [],
  accuracy: null,
  evals: [],
  histogram: [],
  refusedHistogram: [],
  workRefused: null,
  pushes: 0,
  settings: null,
  codecs: [],
  /** Every setting the teacher may change: { key, label, unit, kind, min, max, step, help }. */
  schema: [],
  runs: [],
  spans: [],
  openSpans: [],
  rates: [],
  swarm: null,
  updates: 0,
  snapshots: 0,
  charts: {},
  lastError: null,
};
window.easelDashboard = state;

const $ = (id) => document.getElementById(id);

function api(path) {
  return `/api/rooms/${encodeURIComponent(ROOM)}${path}?admin=${encodeURIComponent(TOKEN)}`;
}

function toast(text, bad = false) {
  const t = $('toast');
  t.textContent = text;
  t.className = bad ? 't-toast t-toast-bad' : 't-toast';
  t.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { t.hidden = true; }, bad ? 8000 : 3000);
}

async function post(path, body) {
  const r = await fetch(api(path), {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify(body),
  });
  const json = await r.json().catch(() => ({}));
  if (!r.ok) {
    state.lastError = json.error || `HTTP ${r.status}`;
    toast(state.lastError, true);
    throw new Error(state.lastError);
  }
  return json;
}

const control = (cmd) => post('/control', cmd);

// ---- charts ------------------------------------------------------------------------------

const AXIS = { stroke: '#1d1d1f', grid: { stroke: '#e2e2de' }, ticks: { stroke: '#c8c8c4' }, font: '16px system-ui', labelFont: 'bold 16px system-ui' };
/** Axis text on the projector, px: read from the back of the room. */
const PROJECTOR_FONT_PX = 22;
/** The loss axis always shows at least [0, ln 10]: ln 10 ≈ 2.30 nats is a model that
 * guesses among the 10 digits, so 2.30 to 2.27 is drawn as the small step it is. */
const LOSS_FLOOR = Math.LN10;

function chartSize(el) {
  const w = Math.max(300, el.clientWidth || 300);
  if (projector && el.clientHeight > 0) {
    // The grid gives the box its height; the chart fills it, less its legend.
    const legend = el.querySelector('.u-legend')?.offsetHeight ?? 0;
    return { width: w, height: Math.max(120, el.clientHeight - legend - 4) };
  }
  return { width: w, height: Math.round(Math.min(320, Math.max(200, w * 0.42))) };
}

/** The width a y axis needs for its widest tick value at the projector's font. */
function axisWidth(u, values) {
  const ctx = axisWidth.ctx ??= document.createElement('canvas').getContext('2d');
  ctx.font = `${PROJECTOR_FONT_PX}px system-ui`;
  const widest = Math.max(0, ...(values ?? []).map((v) => ctx.measureText(String(v)).width));
  return Math.ceil(widest + 24); // ticks and gap; uPlot adds labelSize for the label
}

/** Axes for the projector: larger text, and room for it. */
function projectorAxes(axes) {
  const font = `${PROJECTOR_FONT_PX}px system-ui`;
  const labelFont = `bold ${PROJECTOR_FONT_PX}px system-ui`;
  return axes.map((a, i) => {
    const vertical = i > 0 && (a.side ?? 3) % 2 === 1;
    const out = {
      ...a, font, labelFont, labelSize: PROJECTOR_FONT_PX + 12,
      size: vertical ? axisWidth : PROJECTOR_FONT_PX * 2,
    };
    // A vertical axis with a label per row (the timeline's device names): in a large class
    // the rows get closer than the text is tall, so only every n-th row is named.
    if (vertical && a.splits && typeof a.values === 'function') {
      out.values = (u, splits, ...rest) => {
        const vals = a.values(u, splits, ...rest);
        if (splits.length < 2) return vals;
        const scale = a.scale ?? 'y';
        const gap = Math.abs(u.valToPos(splits[1], scale) - u.valToPos(splits[0], scale));
        const every = Math.max(1, Math.ceil((PROJECTOR_FONT_PX * 1.15) / Math.max(1, gap)));
        return vals.map((v, k) => (k % every === 0 ? v : ''));
      };
    }
    return out;
  });
}

function makeChart(id, opts, data) {
  const el = $(id);
  const o = projector && opts.axes ? { ...opts, axes: projectorAxes(opts.axes) } : opts;
  const u = new uPlot({ ...chartSize(el), legend: { show: true, live: false }, ...o }, data, el);
  state.charts[id] = u;
  if (projector) u.setSize(chartSize(el)); // now that its legend is there
  boxes.observe(el);
  return u;
}

/** On the projector a chart's box gets its size from the grid, which changes as the rest
 * fills in (the QR code, the device rows): follow it, in the next frame, only when the size
 * differs (the box's size does not depend on the chart's, so this cannot loop). */
const boxes = new ResizeObserver((entries) => requestAnimationFrame(() => {
  if (!projector) return;
  for (const { target } of entries) {
    const u = state.charts[target.id];
    if (!u) continue;
    const next = chartSize(target);
    if (next.width !== u.width || next.height !== u.height) u.setSize(next);
  }
}));

const seconds = (ms) => (ms - state.runStartedMs) / 1000;

const acc = { x: [], accuracy: [], loss: [], overlay: null };
const pushSeries = { x: [], alpha: [], distance: [] };

function buildCharts() {
  for (const u of Object.values(state.charts)) u.destroy();
  state.charts = {};
  makeChart('chart-accuracy', {
    scales: {
      x: { time: false },
      acc: { range: [0, 100] },
      loss: { range: (u, min, max) => [0, Math.max(LOSS_FLOOR, Number.isFinite(max) ? max : 0) * 1.05] },
    },
    axes: [
      { ...AXIS, label: 'time since run start (s)' },
      { ...AXIS, scale: 'acc', label: 'accuracy (%)' },
      { ...AXIS, scale: 'loss', side: 1, grid: { show: false }, label: 'loss (nats)' },
    ],
    series: [
      { label: 't (s)' },
      { label: 'accuracy (%)', scale: 'acc', stroke: '#1a56db', width: 3, points: { show: true, size: 6 } },
      { label: 'loss', scale: 'loss', stroke: '#c5221f', width: 2, dash: [6, 4] },
      { label: 'overlay run accuracy (%)', scale: 'acc', stroke: '#7c3aed', width: 2, spanGaps: true, show: false },
    ],
  }, [[], [], [], []]);
  // Accepted and refused pushes side by side at each τ (refused ones are the relay's
  // refused_histogram: thrown away, or under bounded staleness not applied).
  makeChart('chart-histogram', {
    scales: { x: { time: false, range: (u, min, max) => [Math.min(-0.5, min - 0.5), max + 0.5] } },
    axes: [
      { ...AXIS, label: 'staleness τ (versions)', incrs: [1, 2, 5, 10, 20, 50, 100] },
      { ...AXIS, label: 'pushes' },
    ],
    series: [
      { label: 'τ' },
      { label: 'accepted', fill: `${HIST_COLORS.accepted}cc`, stroke: HIST_COLORS.accepted, paths: uPlot.paths.bars({ size: [0.45, 40], align: -1 }), points: { show: false } },
      { label: 'refused', fill: `${HIST_COLORS.refused}cc`, stroke: HIST_COLORS.refused, paths: uPlot.paths.bars({ size: [0.45, 40], align: 1 }), points: { show: false } },
    ],
  }, [[], [], []]);
  makeChart('chart-alpha', {
    scales: { x: { time: false }, y: { range: [0, 1] } },
    axes: [{ ...AXIS, label: 'time since run start (s)' }, { ...AXIS, label: 'α_eff' }],
    series: [{ label: 't (s)' }, { label: 'α_eff', stroke: '#0f9d58', paths: () => null, points: { show: true, size: 5, fill: '#0f9d58' } }],
  }, [[], []]);
  makeChart('chart-bytes', {
    scales: { x: { time: false } },
    axes: [{ ...AXIS, label: 'time since run start (s)' }, { ...AXIS, label: 'kB/s', size: 68 }],
    series: [
      { label: 't (s)' },
      { label: 'up (kB/s)', stroke: '#e8710a', width: 4 },
      { label: 'down (kB/s)', stroke: '#1a56db', width: 2, dash: [8, 5] },
    ],
  }, [[], [], []]);
  makeChart('chart-distance', {
    scales: { x: { time: false } },
    axes: [{ ...AXIS, label: 'time since run start (s)' }, { ...AXIS, label: '‖x̃(base) − x̃‖' }],
    series: [{ label: 't (s)' }, { label: 'distance', stroke: '#7c3aed', paths: () => null, points: { show: true, size: 5, fill: '#7c3aed' } }],
  }, [[], []]);
  makeChart('chart-activity', {
    legend: { show: false },
    cursor: { show: false },
    scales: { x: { time: false }, y: { range: () => [-0.5, Math.max(1, state.devices.length) - 0.5] } },
    axes: [
      { ...AXIS, label: 'seconds ago', incrs: [1, 2, 5, 10, 15, 30], values: (u, ticks) => ticks.map((t) => `${Math.round(t)}`) },
      {
        ...AXIS,
        size: 110,
        splits: () => state.devices.map((_, i) => i),
        values: () => state.devices.map((d) => d.name),
        grid: { show: false },
      },
    ],
    series: [{}, { show: false }],
    hooks: { draw: [drawActivity] },
  }, [[-TIMELINE_S, 0], [null, null]]);
}

/** Draws the spans of every device as colored bars, one row per device. */
function drawActivity(u) {
  const ctx = u.ctx;
  const now = state.serverMs || Date.now();
  const rows = new Map(state.devices.map((d, i) => [d.id, i]));
  const h = Math.max(6, (u.valToPos(0, 'y', true) - u.valToPos(1, 'y', true)) * 0.7);
  ctx.save();
  ctx.beginPath();
  ctx.rect(u.bbox.left, u.bbox.top, u.bbox.width, u.bbox.height);
  ctx.clip();
  // The closed spans, then the rounds under way drawn up to now.
  for (const s of state.spans.concat(state.openSpans)) {
    const row = rows.get(s.worker);
    if (row === undefined) continue;
    const x0 = u.valToPos((s.start_ms - now) / 1000, 'x', true);
    const x1 = u.valToPos((s.end_ms - now) / 1000, 'x', true);
    const y = u.valToPos(row, 'y', true);
    ctx.fillStyle = SPAN_COLORS[s.kind] || '#888';
    ctx.fillRect(x0, y - h / 2, Math.max(1.5, x1 - x0), h);
  }
  ctx.restore();
}

function resizeCharts() {
  for (const [id, u] of Object.entries(state.charts)) u.setSize(chartSize($(id)));
}

function trim(arrays) {
  const extra = arrays[0].length - MAX_POINTS;
  if (extra > 0) for (const a of arrays) a.splice(0, extra);
}

function redrawCharts() {
  const c = state.charts;
  let data = [acc.x, acc.accuracy, acc.loss, acc.x.map(() => null)];
  if (acc.overlay) {
    data = uPlot.join([[acc.x, acc.accuracy, acc.loss], [acc.overlay.x, acc.overlay.y]]);
  }
  c['chart-accuracy'].setSeries(3, { show: !!acc.overlay });
  labelOverlay();
  c['chart-accuracy'].setData(data);
  c['chart-histogram'].setData(histogramData(state.histogram, state.refusedHistogram));
  c['chart-alpha'].setData([pushSeries.x, pushSeries.alpha]);
  c['chart-distance'].setData([pushSeries.x, pushSeries.distance]);
  c['chart-bytes'].setData([state.rates.map((r) => r.t), state.rates.map((r) => r.up), state.rates.map((r) => r.down)]);
  c['chart-activity'].setData([[-TIMELINE_S, 0], [null, null]]);
}

/** The histogram's columns: every τ either series has, ascending, and the accepted and
 * refused counts at each (null where none). */
function histogramData(accepted, refused) {
  const a = new Map(accepted);
  const r = new Map(refused);
  const taus = [...new Set([...a.keys(), ...r.keys()])].sort((x, y) => x - y);
  return [taus, taus.map((t) => a.get(t) ?? null), taus.map((t) => r.get(t) ?? null)];
}

// ---- data --------------------------------------------------------------------------------

function addEvals(evals) {
  for (const e of evals) {
    acc.x.push(seconds(e.wall_ms));
    acc.accuracy.push(100 * e.accuracy);
    acc.loss.push(Number.isFinite(e.loss) ? e.loss : null);
    state.evals.push(e);
    state.accuracy = e.accuracy;
  }
  trim([acc.x, acc.accuracy, acc.loss]);
  if (state.evals.length > MAX_POINTS) state.evals.splice(0, state.evals.length - MAX_POINTS);
}

function addPushes(pushes) {
  for (const p of pushes) {
    state.pushes += 1;
    if (!p.accepted) continue;
    pushSeries.x.push(seconds(p.wall_ms));
    pushSeries.alpha.push(p.alpha_eff);
    pushSeries.distance.push(p.view_distance);
  }
  trim([pushSeries.x, pushSeries.alpha, pushSeries.distance]);
}

function addSpans(spans) {
  const horizon = (state.serverMs || Date.now()) - TIMELINE_S * 1000;
  state.spans = state.spans.concat(spans).filter((s) => s.end_ms >= horizon);
}

function onSnapshot(m) {
  state.snapshots += 1;
  state.run = m.run.id;
  state.runName = m.run.name;
  state.runStartedMs = m.run.started_ms;
  state.serverMs = m.server_ms;
  state.codecs = m.codecs;
  state.schema = m.schema;
  state.evals = [];
  state.pushes = 0;
  state.spans = [];
  state.openSpans = [];
  state.rates = [];
  acc.x = []; acc.accuracy = []; acc.loss = [];
  pushSeries.x = []; pushSeries.alpha = []; pushSeries.distance = [];
  state.accuracy = null;
  $('room-code').textContent = m.room;
  $('join-code').textContent = m.room;
  $('qr').innerHTML = m.qr_svg || '<p>No QR code: the relay has no join address.</p>';
  const urls = $('join-urls');
  urls.replaceChildren(...m.join_urls.map((u) => {
    const li = document.createElement('li');
    li.textContent = u;
    if (u === m.qr_url) li.className = 't-url-main';
    return li;
  }));
  renderSettings(m.settings, true);
  renderRuns(m.runs, m.run.id);
  addEvals(m.evals);
  addPushes(m.pushes);
  addSpans(m.spans);
  onCommon(m);
}

function onUpdate(m) {
  state.updates += 1;
  state.serverMs = m.server_ms;
  addEvals(m.evals);
  addPushes(m.pushes);
  addSpans(m.spans);
  state.rates.push({ t: seconds(m.server_ms), up: m.bytes_per_s.in / 1000, down: m.bytes_per_s.out / 1000 });
  if (state.rates.length > MAX_RATES) state.rates.shift();
  renderSettings(m.settings, false);
  onCommon(m);
}

function onCommon(m) {
  updateCurrentRun(m);
  state.version = m.version;
  state.histogram = m.histogram;
  state.refusedHistogram = m.refused_histogram ?? [];
  state.openSpans = m.open_spans ?? [];
  state.devices = m.devices;
  renderDevices();
  renderWorkRefused(m.work_refused ?? null);
  renderTopology(m.swarm ?? null);
  wordFor(!!m.swarm);
  $('head-version').textContent = String(m.version);
  $('head-accuracy').textContent = state.accuracy == null ? '–' : `${(100 * state.accuracy).toFixed(1)} %`;
  $('head-run').textContent = `#${state.run} ${state.runName}`;
  renderQuestion();
  redrawCharts();
}

// ---- devices -----------------------------------------------------------------------------

const STATE_LABEL = {
  training: 'training', delayed: 'delayed', paused: 'paused', disconnected: 'disconnected', removed: 'removed',
};
const fmt = (x, digits) => (x == null || !Number.isFinite(x) ? '–' : x.toFixed(digits));

function renderDevices() {
  const body = $('devices').tBodies[0];
  const seen = new Set();
  for (const d of state.devices) {
    seen.add(String(d.id));
    let tr = body.querySelector(`tr[data-id="${d.id}"]`);
    if (!tr) tr = deviceRow(d, body);
    const cell = (k) => tr.querySelector(`[data-k="${k}"]`);
    cell('name').textContent = d.name;
    showBackend(tr, d);
    const st = cell('state');
    const alert = d.alert;
    st.textContent = alert ? alert.label : (STATE_LABEL[d.state] || d.state);
    st.className = alert ? `t-state t-level-${alert.level}` : `t-state t-state-${d.state}`;
    tr.dataset.state = d.state;
    tr.dataset.level = alert ? alert.level : 'ok';
    showAlert(tr, d);
    cell('steps').textContent = fmt(d.steps_per_s, 1);
    cell('pushes').textContent = `${d.accepted} / ${d.pushes}`;
    const refused = cell('refused');
    refused.textContent = `${d.refused ?? 0} refused`;
    refused.classList.toggle('t-bad', (d.refused ?? 0) > 0);
    cell('tau').textContent = fmt(d.mean_tau, 2);
    showRecent(cell('recent'), d.recent ?? []);
    cell('distance').textContent = fmt(d.distance, 3);
    cell('seen').textContent = fmt(d.last_seen_s, 1);
    const slider = tr.querySelector('input[type=range]');
    if (document.activeElement !== slider && !slider.dataset.dragging) {
      slider.value = String(d.delay_ms);
      cell('delay').textContent = `${d.delay_ms} ms`;
    }
    const gone = d.state === 'removed' || d.state === 'disconnected';
    for (const el of tr.querySelectorAll('button, input')) el.disabled = gone;
    tr.querySelector('[data-act=pause]').textContent = d.state === 'paused' ? 'Resume' : 'Pause';
  }
  for (const tr of [...body.rows]) if (!seen.has(tr.dataset.id ?? tr.dataset.for)) tr.remove();
  $('no-devices').hidden = state.devices.length > 0;
  const live = state.devices.filter((d) => d.state !== 'removed' && d.state !== 'disconnected').length;
  $('dev-count').textContent = `${live} connected of ${state.devices.length}`;
}

/** The staleness of a device's last pushes, oldest first; a refused one struck and red. */
function showRecent(el, recent) {
  el.replaceChildren(...recent.map((m) => {
    const span = document.createElement(m.accepted ? 'span' : 's');
    span.textContent = String(m.tau);
    span.className = m.accepted ? 't-tau' : 't-tau t-tau-refused';
    span.title = m.accepted ? `accepted, τ = ${m.tau}` : `refused (code ${m.code}), τ = ${m.tau}`;
    return span;
  }));
  if (!recent.length) el.textContent = '–';
}

/** The device's alert row under it: why it is amber or red, in the relay's words. */
function showAlert(tr, d) {
  const alert = d.alert;
  if (!alert) {
    tr.alertRow?.remove();
    tr.alertRow = null;
    return;
  }
  if (!tr.alertRow) tr.alertRow = alertRow(d, tr.sub ?? tr);
  const row = tr.alertRow;
  row.className = `t-alert-row t-alert-${alert.level}`;
  const why = row.querySelector('[data-k=reason]');
  why.textContent = alert.reason;
  row.querySelector('[data-k=who]').textContent = d.name;
}

/** The room's banner: how much of the class's work the settings threw away, and the
 * settings changes (computed by the relay) that keep it, one button each. */
function renderWorkRefused(w) {
  state.workRefused = w;
  const el = $('refused-banner');
  el.hidden = !w;
  if (!w) return;
  $('refused-text').textContent = w.text;
  const key = JSON.stringify(w.fixes);
  const fixes = $('refused-fixes');
  if (fixes.dataset.key === key) return;
  fixes.dataset.key = key;
  fixes.replaceChildren(...w.fixes.map((f) => {
    const li = document.createElement('li');
    const b = document.createElement('button');
    b.type = 'button';
    b.textContent = f.label;
    b.addEventListener('click', async () => {
      try {
        const r = await control({ type: 'settings', ...f.settings });
        renderSettings(r.settings, false);
        toast(`${f.label}: ${f.detail}`);
      } catch { /* toast shown */ }
    });
    const small = document.createElement('span');
    small.textContent = f.detail;
    li.append(b, small);
    return li;
  }));
}

const BACKEND_NAME = { gpu: 'GPU', cpu: 'CPU' };

/** The backend cell (kind, backend and who chose it) and, for a browser tab, its second
 * row: the tab's reason with both measured speeds and the teacher's choice. */
function showBackend(tr, d) {
  const r = d.backend_report;
  const by = r && { measured: 'auto', only_cpu: 'no GPU', page: 'by address', teacher: 'by you' }[r.chosen_by];
  const name = document.createElement('strong');
  name.textContent = BACKEND_NAME[d.backend] ?? d.backend;
  const how = document.createElement('small');
  how.textContent = by ?? d.kind;
  tr.querySelector('[data-k=backend]').replaceChildren(name, how);
  if (!tr.sub) return;
  tr.sub.querySelector('[data-k=backend-why]').textContent = r ? r.why
    : 'The tab has not said yet which backend is faster here.';
  const select = tr.sub.querySelector('select');
  if (document.activeElement !== select) select.value = d.backend_choice ?? '';
  select.disabled = d.state === 'removed' || d.state === 'disconnected';
}

function deviceRow(d, body) {
  const tr = document.createElement('tr');
  tr.dataset.id = String(d.id);
  tr.innerHTML = `
    <td data-k="name" class="t-name"></td><td data-k="backend" class="t-backend"></td><td><span data-k="state"></span></td>
    <td data-k="steps" class="t-num"></td><td class="t-num t-pushes"><span data-k="pushes"></span><small data-k="refused"></small></td>
    <td data-k="tau" class="t-num"></td><td data-k="recent" class="t-recent"></td>
    <td data-k="distance" class="t-num"></td><td data-k="seen" class="t-num"></td>
    <td class="t-delay"><input type="range" min="0" max="10000" step="100" aria-label="artificial delay of ${d.name} in ms">
      <output data-k="delay"></output></td>
    <td class="t-actions"><button type="button" data-act="pause">Pause</button>
      <button type="button" data-act="remove" class="t-danger">Remove</button></td>`;
  const slider = tr.querySelector('input[type=range]');
  slider.addEventListener('pointerdown', () => { slider.dataset.dragging = '1'; });
  slider.addEventListener('input', () => {
    tr.querySelector('[data-k=delay]').textContent = `${slider.value} ms`;
  });
  slider.addEventListener('change', async () => {
    delete slider.dataset.dragging;
    try {
      await control({ type: 'delay', device: d.id, ms: Number(slider.value) });
      toast(`${d.name}: ${slider.value} ms delay after each round`);
    } catch { /* toast shown */ }
  });
  tr.querySelector('[data-act=pause]').addEventListener('click', async () => {
    const paused = tr.dataset.state === 'paused';
    await control({ type: paused ? 'resume' : 'pause', device: d.id }).catch(() => {});
  });
  tr.querySelector('[data-act=remove]').addEventListener('click', async () => {
    await control({ type: 'remove', device: d.id }).then(() => toast(`${d.name} removed`)).catch(() => {});
  });
  body.appendChild(tr);
  if (d.kind === 'browser') tr.sub = backendRow(d, body);
  return tr;
}

/** A device's alert row, put after `above` (its row, or its backend row); there only
 * while it has an alert. */
function alertRow(d, above) {
  const row = document.createElement('tr');
  row.className = 't-alert-row';
  row.dataset.for = String(d.id);
  row.innerHTML = `<td></td><td colspan="10" class="t-alert-why"><span aria-hidden="true">⚠</span>
    <strong data-k="who"></strong>: <span data-k="reason"></span></td>`;
  above.after(row);
  return row;
}

/** A browser tab's second row: why it trains on its backend, with both measured speeds
 * (the sentence its page shows), and the teacher's auto | gpu | cpu choice. */
function backendRow(d, body) {
  const sub = document.createElement('tr');
  sub.className = 't-sub';
  sub.dataset.for = String(d.id);
  sub.innerHTML = `<td></td><td colspan="10" class="t-backend-why"><span data-k="backend-why"></span>
    <label class="t-choice">backend <select data-k="backend-choice" aria-label="backend of ${d.name}">
      <option value="" disabled>the tab's own</option><option value="auto">auto (the faster)</option>
      <option value="gpu">GPU</option><option value="cpu">CPU</option></select></label></td>`;
  const choice = sub.querySelector('select');
  choice.addEventListener('change', async () => {
    try {
      await control({ type: 'backend', device: d.id, backend: choice.value });
      toast(`${d.name}: backend ${choice.value}, from its next round`);
    } catch { /* toast shown */ }
  });
  body.appendChild(sub);
  return sub;
}

// ---- SwarmSGD topology --------------------------------------------------------------------

// Under SwarmSGD there is no center: the relay evaluates the mean of the devices' models,
// a device's distance is from that mean, and its staleness counts the averages it missed.
const WORDS = {
  central: {
    'acc-h': 'Center test accuracy and loss <small>over time since the run started</small>',
    'head-accuracy-label': 'test accuracy', 'head-version-label': 'center version',
    'th-tau': 'mean staleness<br><small>versions</small>', 'th-distance': 'distance<br><small>‖xᵢ − x̃‖</small>',
    'dist-h': 'Elastic-consistency distance <small>‖x̃(base) − x̃‖ per push</small>',
  },
  swarm: {
    'acc-h': 'Mean model test accuracy and loss <small>SwarmSGD has no center: the mean of the devices\' models</small>',
    'head-accuracy-label': 'mean model accuracy', 'head-version-label': 'swarm version',
    'th-tau': 'mean staleness<br><small>averages missed</small>', 'th-distance': 'distance<br><small>‖xᵢ − mean‖</small>',
    'dist-h': 'Elastic-consistency distance <small>‖yᵢ − view‖ per push: averages its view missed</small>',
  },
};
// The headings' one-line explanations (explain.js) that change with the words.
const EXPLAIN = {
  central: {
    'acc-h': $('acc-h').dataset.explain,
    'th-tau': $('th-tau').dataset.explain,
    'th-distance': $('th-distance').dataset.explain,
  },
  swarm: {
    'acc-h': 'How often the mean of the devices\' models reads the test digits right (blue), and how wrong it is on average (red, the loss: 2.30 is guessing among 10 digits).',
    'th-tau': 'How many pairwise averages happened in the class while the device was computing, on average.',
    'th-distance': 'How far the device\'s model is from the mean of all the devices\' models: 0 means the same model.',
  },
};
let worded = 'central';
function wordFor(swarm) {
  const kind = swarm ? 'swarm' : 'central';
  if (kind === worded) return;
  worded = kind;
  for (const [id, html] of Object.entries(WORDS[kind])) $(id).innerHTML = html;
  for (const [id, text] of Object.entries(EXPLAIN[kind])) setExplanation($(id), text);
}

const esc = (t) => String(t).replace(/[&<>"]/g, (c) => `&#${c.charCodeAt(0)};`);

/** The nodes in the order to put them on the circle: a ring's walk (so its edges are the
 * circle's sides, whatever the relay's labelling), else by id. */
function circleOrder(nodes, edges) {
  const nb = new Map(nodes.map((id) => [id, []]));
  for (const [a, b] of edges) { nb.get(a)?.push(b); nb.get(b)?.push(a); }
  if (nodes.length < 4 || edges.length !== nodes.length || [...nb.values()].some((x) => x.length !== 2)) return nodes;
  const order = [nodes[0]];
  for (let prev = null, cur = nodes[0]; order.length < nodes.length;) {
    const next = nb.get(cur).find((x) => x !== prev);
    if (next === nodes[0]) return nodes; // more than one cycle
    order.push(next);
    [prev, cur] = [cur, next];
  }
  return order;
}

/** The swarm's graph as an SVG: nodes on a circle, edges thin and grey, the pairwise averages
 * of the last PAIR_WINDOW_MS thick and fading with age, the newest pair's nodes highlighted. */
function renderTopology(s) {
  state.swarm = s;
  $('topo-card').hidden = !s;
  if (!s) return;
  const names = new Map(state.devices.map((d) => [d.id, d.name]));
  const name = (id) => names.get(id) ?? `#${id}`;
  const order = circleOrder(s.nodes, s.edges);
  const n = order.length;
  const big = n <= 12;
  const R = 160;
  const at = new Map(order.map((id, i) => {
    const a = (2 * Math.PI * i) / n - Math.PI / 2;
    return [id, { x: R * Math.cos(a), y: R * Math.sin(a), cos: Math.cos(a), sin: Math.sin(a) }];
  }));
  const line = (cls, a, b, style = '') => {
    const p = at.get(a);
    const q = at.get(b);
    return `<line class="${cls}" data-a="${a}" data-b="${b}" x1="${p.x.toFixed(1)}" y1="${p.y.toFixed(1)}" x2="${q.x.toFixed(1)}" y2="${q.y.toFixed(1)}"${style}/>`;
  };
  const now = state.serverMs || Date.now();
  const recent = s.pairs.filter((p) => now - p.wall_ms <= PAIR_WINDOW_MS && at.has(p.a) && at.has(p.b));
  const newest = recent.at(-1);
  const hot = new Set(newest ? [newest.a, newest.b] : []);
  const edges = s.edges.filter(([a, b]) => at.has(a) && at.has(b)).map(([a, b]) => line('edge', a, b)).join('');
  const pairs = recent.map((p) => line('pair', p.a, p.b,
    ` stroke-opacity="${Math.max(0.15, 1 - (now - p.wall_ms) / PAIR_WINDOW_MS).toFixed(2)}"`)).join('');
  const nodes = order.map((id) => {
    const { x, y, cos, sin } = at.get(id);
    const anchor = cos > 0.35 ? 'start' : cos < -0.35 ? 'end' : 'middle';
    const r = (big ? 14 : 9) + (hot.has(id) ? 6 : 0);
    return `<g class="node${hot.has(id) ? ' t-hot' : ''}" data-id="${id}"><circle cx="${x.toFixed(1)}" cy="${y.toFixed(1)}" r="${r}"/>`
      + `<text x="${(x + 26 * cos).toFixed(1)}" y="${(y + 26 * sin).toFixed(1)}" dy="0.35em" text-anchor="${anchor}">${esc(name(id))}</text></g>`;
  }).join('');
  $('topology').innerHTML = `<g${big ? '' : ' class="t-many"'}>${edges}${pairs}${nodes}</g>`;

  const count = s.exchanges.toLocaleString('en-US');
  const last = s.pairs.at(-1);
  const lastText = last
    ? `last: ${name(last.a)} ↔ ${name(last.b)}, ${(Math.max(0, now - last.wall_ms) / 1000).toFixed(1)} s ago`
    : 'no pairwise average yet';
  // One line of text; it wraps only between its parts.
  const parts = [`${s.graph} on ${n} device${n === 1 ? '' : 's'}`, `${count} pairwise averages`, lastText];
  $('topology-text').innerHTML = parts.map((t) => `<span>${esc(t)}</span>`).join(' · ');
  const note = $('topology-note');
  note.hidden = s.graph === s.topology;
  note.textContent = s.graph === 'none'
    ? `${s.topology} needs at least 2 devices: no pairs yet`
    : `${s.topology} needs more devices: using ${s.graph}`;
}

// ---- room controls -----------------------------------------------------------------------

// The partition picker: a scheme and its one number (Dirichlet's α: smaller is more skewed;
// classes' K: how many digits each device sees), read as the relay writes it
// (`iid`, `dirichlet:0.5`, `classes:2`).
const PARTITION_PARAMS = {
  dirichlet: { name: 'α', min: 0.01, max: 100, step: 0.1, value: 0.5 },
  classes: { name: 'K', min: 1, max: 10, step: 1, value: 2 },
};
let partitionEdited = false;

function partitionParam(kind, value) {
  const p = PARTITION_PARAMS[kind];
  $('partition-param-label').hidden = !p;
  if (!p) return;
  const input = $('partition-param');
  Object.assign(input, { min: p.min, max: p.max, step: p.step });
  input.value = String(value ?? p.value);
  $('partition-param-name').textContent = p.name;
}

function showPartition(scheme) {
  if (partitionEdited) return;
  const [kind, value] = String(scheme).split(':');
  $('partition-kind').value = kind;
  partitionParam(kind, value ?? null);
}

function partitionScheme() {
  const kind = $('partition-kind').value;
  return PARTITION_PARAMS[kind] ? `${kind}:${$('partition-param').value}` : kind;
}

function renderSettings(s, rebuild) {
  state.settings = s;
  const form = $('settings');
  if (rebuild || !form.elements.length) {
    form.replaceChildren();
    for (const f of state.schema) {
      const label = document.createElement('label');
      label.className = 't-field';
      label.title = f.help;
      label.innerHTML = `<span>${f.label} <small>${f.unit}</small></span>`;
      let input;
      if (f.kind === 'codec') {
        input = document.createElement('select');
        for (const c of state.codecs) input.add(new Option(c, c));
      } else {
        input = document.createElement('input');
        input.type = f.kind === 'bool' ? 'checkbox' : f.kind === 'text' ? 'text' : 'number';
        if (f.kind === 'int') input.step = '1';
        if (f.step) input.step = String(f.step);
        if (f.min !== undefined) input.min = String(f.min);
        if (f.max !== undefined && f.max !== null) input.max = String(f.max);
      }
      input.name = f.key;
      label.appendChild(input);
      form.appendChild(label);
    }
    const apply = document.createElement('button');
    apply.type = 'submit';
    apply.textContent = 'Apply settings';
    form.appendChild(apply);
  }
  showPartition(s.partition);
  for (const f of state.schema) {
    const input = form.elements[f.key];
    if (document.activeElement === input || input.dataset.edited) continue;
    if (f.kind === 'bool') input.checked = !!s[f.key];
    else input.value = String(s[f.key]);
  }
}

function readSettings() {
  const form = $('settings');
  const change = {};
  for (const f of state.schema) {
    const input = form.elements[f.key];
    let v;
    if (f.kind === 'bool') v = input.checked;
    else if (f.kind === 'int') v = parseInt(input.value, 10);
    else if (f.kind === 'number') v = parseFloat(input.value);
    else v = input.value.trim();
    if (v !== state.settings[f.key]) change[f.key] = v;
  }
  return change;
}

function wireControls() {
  const form = $('settings');
  form.addEventListener('input', (e) => { if (e.target.name) e.target.dataset.edited = '1'; });
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    const change = readSettings();
    if (!Object.keys(change).length) return toast('nothing changed');
    try {
      const r = await control({ type: 'settings', ...change });
      for (const el of form.elements) delete el.dataset.edited;
      renderSettings(r.settings, false);
      toast(`settings applied: ${Object.keys(change).join(', ')}`);
    } catch { /* toast shown */ }
  });
  $('partition-kind').addEventListener('change', () => {
    partitionEdited = true;
    partitionParam($('partition-kind').value, null);
  });
  $('partition-param').addEventListener('input', () => { partitionEdited = true; });
  $('apply-partition').addEventListener('click', () =>
    control({ type: 'partition', scheme: partitionScheme() }).then(() => {
      partitionEdited = false;
      toast('partition set; devices rejoin');
    }).catch(() => {}));
  $('pause-all').addEventListener('click', () => control({ type: 'pause' }).catch(() => {}));
  $('resume-all').addEventListener('click', () => control({ type: 'resume' }).catch(() => {}));
  $('reset').addEventListener('click', () => {
    // The one click that throws the class's model away asks first.
    if (!window.confirm('Start again from a fresh model? The current run ends; its exports stay.')) return;
    control({ type: 'reset', name: 'reset' }).then(() => toast('model reset: a new run started')).catch(() => {});
  });
  $('new-run').addEventListener('submit', async (e) => {
    e.preventDefault();
    try {
      const r = await post('/runs', { name: $('run-name').value, reset: $('run-reset').checked });
      toast(`run #${r.started} started`);
      $('run-name').value = '';
    } catch { /* toast shown */ }
  });
  renderPresets();
  $('overlay').addEventListener('change', () => loadOverlay($('overlay').value));
  $('download-model').href = api('/center.safetensors');
  window.addEventListener('resize', resizeCharts);
}

// ---- presets ------------------------------------------------------------------------------
function renderPresets() {
  const list = $('presets');
  list.replaceChildren(...PRESETS.map((p, i) => {
    const li = document.createElement('li');
    li.innerHTML = `<button type="button" data-preset="${i}"></button> <span class="t-muted"></span>`;
    li.firstChild.textContent = p.name;
    li.lastChild.textContent = p.ask;
    li.firstChild.addEventListener('click', () => runPreset(p));
    return li;
  }));
}

async function runPreset(p) {
  const stragglers = Math.max(0, Number($('preset-stragglers').value) || 0);
  try {
    const r = await control({ type: 'settings', ...p.settings });
    renderSettings(r.settings, false);
    const devices = (r.devices || []).map((d) => d.id);
    for (const [i, id] of devices.entries()) {
      await control({ type: 'delay', device: id, ms: i < stragglers ? STRAGGLER_MS : 0 });
    }
    const name = stragglers ? `${p.name}, ${stragglers} straggler${stragglers > 1 ? 's' : ''}` : p.name;
    const run = await post('/runs', { name, reset: true });
    state.preset = { name: p.name, run: run.started, strategy: r.settings.strategy };
    toast(`run #${run.started} "${name}" started. ${p.ask}`);
  } catch { /* toast shown */ }
}

// ---- runs --------------------------------------------------------------------------------

function renderRuns(runs, current) {
  state.runs = runs;
  const body = $('runs').tBodies[0];
  body.replaceChildren(...runs.slice().reverse().map((r) => {
    const tr = document.createElement('tr');
    tr.dataset.run = String(r.id);
    const best = r.best_accuracy == null ? '–' : `${(100 * r.best_accuracy).toFixed(1)} %`;
    tr.innerHTML = `<td>${r.id}</td><td></td><td class="t-num">${r.pushes}</td><td class="t-num">${best}</td>
      <td><a href="${api(`/runs/${r.id}.csv`)}">CSV</a> · <a href="${api(`/runs/${r.id}.json`)}">JSON</a></td>`;
    tr.cells[1].textContent = r.id === current ? `${r.name} (current)` : r.name;
    return tr;
  }));
  const sel = $('overlay');
  const chosen = sel.value;
  sel.replaceChildren(new Option('none', ''), ...runs.filter((r) => r.id !== current).map((r) => new Option(`#${r.id} ${r.name}`, String(r.id))));
  sel.value = runs.some((r) => String(r.id) === chosen && r.id !== current) ? chosen : '';
  if (!sel.value) acc.overlay = null;
}

/** Keeps the current run's row live between the run list's refreshes. */
function updateCurrentRun(m) {
  const run = state.runs.find((r) => r.id === state.run);
  if (!run) return;
  if (m.type === 'update') run.pushes += m.pushes.length;
  for (const e of m.evals) run.best_accuracy = Math.max(run.best_accuracy ?? 0, e.accuracy);
  const tr = $('runs').querySelector(`tr[data-run="${run.id}"]`);
  if (!tr) return;
  tr.cells[2].textContent = String(run.pushes);
  tr.cells[3].textContent = run.best_accuracy == null ? '–' : `${(100 * run.best_accuracy).toFixed(1)} %`;
}

async function loadOverlay(id) {
  if (!id) {
    acc.overlay = null;
  } else {
    const r = await fetch(api(`/runs/${id}.json`)).then((x) => x.json());
    acc.overlay = {
      name: `#${id} ${state.runs.find((x) => String(x.id) === String(id))?.name ?? ''}`.trim(),
      x: r.evals.map((e) => (e.wall_ms - r.started_ms) / 1000),
      y: r.evals.map((e) => 100 * e.accuracy),
    };
  }
  redrawCharts();
}

/** Names the overlaid run in the chart's legend, so the projector says what is compared. */
function labelOverlay() {
  // The overlay is the chart's last series, so the legend's last row.
  const rows = state.charts['chart-accuracy']?.root.querySelectorAll('.u-legend .u-series') ?? [];
  const label = rows[rows.length - 1]?.querySelector('.u-label');
  if (label) label.textContent = acc.overlay ? `run ${acc.overlay.name} accuracy (%)` : 'overlay run accuracy (%)';
}

// ---- the projector view ------------------------------------------------------------------

/** Switches between the full dashboard and the projector view (`view=projector` in the
 * address, kept there so a reload or a second window opens the same view). The layout is
 * CSS (body.projector); the charts are rebuilt at the projector's font and sized to fill
 * their boxes. */
function setView(on) {
  projector = on;
  document.body.classList.toggle('projector', on);
  const toggle = $('view-toggle');
  toggle.textContent = on ? 'Full dashboard' : 'Projector view';
  toggle.setAttribute('aria-pressed', String(on));
  const url = new URL(location.href);
  if (on) url.searchParams.set('view', 'projector');
  else url.searchParams.delete('view');
  history.replaceState(null, '', url);
  if (Object.keys(state.charts).length) {
    buildCharts();
    redrawCharts();
  }
}

/** The question of the preset the current run was started from (by its name, so a
 * projector window learns it from the relay like any other), else what to do next. */
function renderQuestion() {
  const name = state.runName;
  const preset = PRESETS.find((p) => name === p.name || name.startsWith(`${p.name},`));
  const run = `run #${state.run} ${name}`;
  const text = preset ? preset.ask : 'No question for this run: start a preset to ask one.';
  if ($('question-run').textContent !== run) $('question-run').textContent = run;
  if ($('question-text').textContent !== text) $('question-text').textContent = text;
  $('question-card').dataset.preset = preset ? preset.name : '';
}

// ---- connection --------------------------------------------------------------------------

function setLink(text, cls) {
  const el = $('link-state');
  el.textContent = text;
  el.className = `t-pill ${cls}`;
}

function connect() {
  const proto = location.protocol === 'https:' ? 'wss' : 'ws';
  const ws = new WebSocket(`${proto}://${location.host}/ws/dashboard?room=${encodeURIComponent(ROOM)}&admin=${encodeURIComponent(TOKEN)}`);
  ws.onopen = () => { state.connected = true; setLink('live', 't-pill-ok'); };
  ws.onmessage = (e) => {
    const m = JSON.parse(e.data);
    if (m.type === 'snapshot') onSnapshot(m);
    else if (m.type === 'update') onUpdate(m);
  };
  ws.onclose = () => {
    state.connected = false;
    setLink('reconnecting…', 't-pill-wait');
    setTimeout(connect, 2000);
  };
}

async function refreshRuns() {
  try {
    const r = await fetch(api('/runs')).then((x) => x.json());
    renderRuns(r.runs, r.current);
  } catch { /* the next tick tries again */ }
}

// ---- saved rooms (the relay's database) -------------------------------------------------

function savedApi(path) {
  return `/api/saved/rooms${path}?admin=${encodeURIComponent(TOKEN)}`;
}

async function refreshSaved() {
  let r;
  try {
    r = await fetch(savedApi('')).then((x) => (x.ok ? x.json() : { rooms: [] }));
  } catch { return; /* the next tick tries again */ }
  const body = $('saved').tBodies[0];
  const rows = [];
  for (const room of r.rooms) {
    for (const run of room.runs.slice().reverse()) {
      const tr = document.createElement('tr');
      const base = `/${encodeURIComponent(room.code)}/runs/${run.id}`;
      tr.innerHTML = `<td></td><td></td><td class="t-num">${run.pushes}</td><td></td>
        <td><a href="${savedApi(`${base}.csv`)}">CSV</a> · <a href="${savedApi(`${base}.json`)}">JSON</a></td>`;
      tr.cells[0].textContent = room.code === ROOM ? `${room.code} (this room)` : room.code;
      tr.cells[1].textContent = `#${run.id} ${run.name}`;
      const at = new Date(room.updated_ms);
      tr.cells[3].textContent = at.toDateString() === new Date().toDateString()
        ? at.toLocaleTimeString() : at.toLocaleString();
      rows.push(tr);
    }
  }
  body.replaceChildren(...rows);
}

async function main() {
  if (!ROOM || !TOKEN) {
    $('no-token').hidden = false;
    setLink('no admin token', 't-pill-bad');
    return;
  }
  // Check the token before showing any control.
  const probe = await fetch(api('/runs'));
  if (probe.status === 401 || probe.status === 404) {
    $('no-token').hidden = false;
    const j = await probe.json().catch(() => ({}));
    $('no-token').querySelector('p').textContent = j.error || 'The relay refused this link.';
    setLink(probe.status === 401 ? 'wrong admin token' : 'no such room', 't-pill-bad');
    return;
  }
  $('dashboard').hidden = false;
  $('view-toggle').hidden = false;
  $('view-toggle').addEventListener('click', () => setView(!projector));
  setView(projector);
  buildCharts();
  wireControls();
  connect();
  setInterval(refreshRuns, 5000);
  refreshSaved();
  // As often as the relay checkpoints by default, so "pushes saved" keeps up with it.
  setInterval(refreshSaved, 5000);
}

main();
