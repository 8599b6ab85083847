// The student page: joins a room (`/?room=CODE`), shows what the room worker (worker.js)
// reports, charts the local loss with uPlot, and lets the student draw a digit for both
// models to read. Training and the connection live in worker.js; this file only routes
// messages and draws. `?backend=cpu|gpu|auto` picks the backend (auto by default).
// Every number says what it means on tap (explain.js).

import { setExplanation } from './explain.js';

const query = new URLSearchParams(location.search);
const room = (query.get('room') ?? '').trim().toUpperCase();
const backend = query.get('backend') ?? 'auto';
const $ = (id) => document.getElementById(id);

// ---- Without a room (or with a wrong one): the big field to type its code. ----

/** Shows the field, with `problem` above it (a code the relay does not know, kept in the
 * field to be corrected). */
function askForRoom(problem = null, typed = '') {
  $('student').hidden = true;
  $('room-title').hidden = true;
  $('join').hidden = false;
  $('join-problem').textContent = problem ?? '';
  $('join-problem').hidden = !problem;
  const input = $('room-input');
  input.value = typed;
  input.focus();
  input.select();
}

$('join').addEventListener('submit', (e) => {
  e.preventDefault();
  const code = $('room-input').value.trim().toUpperCase();
  if (!code) return;
  const q = new URLSearchParams(location.search);
  q.set('room', code);
  location.search = q.toString();
});

if (!room) {
  askForRoom();
} else {
  startStudent();
}

function startStudent() {
  $('student').hidden = false;
  $('room-title').hidden = false;
  $('room-code').textContent = room;
  document.title = `Easel: room ${room}`;

  /** The worker id and resume token of the last Welcome, kept for a reload of this tab. */
  const resumeKey = `easel.worker.${room}`;
  const stored = (() => {
    try {
      const s = JSON.parse(sessionStorage.getItem(resumeKey));
      return Number.isFinite(s?.id) && s.id > 0 && typeof s.token === 'string' ? s : null;
    } catch {
      return null;
    }
  })();

  /** Everything the page knows; browser tests read it through `window.easel.state()`. */
  const page = {
    room,
    status: 'starting',
    status_text: 'Starting…',
    error: null,
    problem: null,
    steps_per_sec: 0,
    samples_per_sec: 0,
    losses: [],
    /** Seconds (on the loss chart's clock) at which the class's model replaced this
     * device's (a RESYNC refusal: the teacher's reset, a new strategy, a relay restart). */
    resets: [],
    /** The round under way: `{phase: 'training' | 'done', steps, step, estimated}`. */
    round: null,
    prediction: null,
    resumed: false,
    /** Times the connection was lost and a reconnection scheduled. */
    reconnects: 0,
  };
  let stats = {};
  let device = {};

  const worker = new Worker(new URL('./worker.js', import.meta.url), { type: 'module' });
  window.easel = {
    get error() { return page.error; },
    state: () => ({ ...stats, ...device, ...page, losses: page.losses.slice() }),
    dropConnection: () => worker.postMessage({ type: 'drop' }),
    loseGpu: () => worker.postMessage({ type: 'lose-gpu' }),
  };

  worker.onerror = (e) => fail(e.message || 'the training worker failed to start');
  setUpQuestion(worker);
  worker.onmessage = (e) => {
    const m = e.data;
    switch (m.type) {
      case 'status':
        setState('starting', m.text);
        break;
      case 'device':
        device = { backend: m.backend, adapter: m.adapter, fallback_reason: m.fallbackReason,
          backend_report: m.report };
        showDevice();
        break;
      case 'welcome':
        sessionStorage.setItem(resumeKey, JSON.stringify({ id: m.workerId, token: m.token }));
        page.resumed = m.resumed;
        $('worker').textContent = `browser-${m.workerId}${m.resumed ? ' (resumed)' : ''}`;
        page.problem = null;
        $('problem').hidden = true;
        break;
      case 'state':
        setState(m.state, stateText(m));
        break;
      case 'stats':
        stats = m.stats;
        page.steps_per_sec = m.stepsPerSec;
        page.samples_per_sec = m.samplesPerSec;
        showStats();
        break;
      case 'loss':
        page.losses.push([m.seconds, m.loss]);
        chart.queue();
        break;
      case 'prediction':
        showPrediction(m);
        break;
      case 'problem': // null: the last problem is over
        page.problem = m.text;
        $('problem').textContent = m.text ?? '';
        $('problem').hidden = !m.text;
        break;
      case 'round':
        onRound(m);
        break;
      case 'resync':
        page.resets.push(m.seconds);
        $('reset-note').hidden = false;
        chart.queue();
        break;
      case 'fatal':
        fail(m.message);
        if (m.retype) askForRoom(m.message, room);
        break;
    }
  };
  worker.postMessage({
    type: 'start',
    config: { room, backend, seed: Number(query.get('seed') ?? 1) >>> 0,
      resume: stored },
  });

  // ---- Progress within a round. The worker says when a round starts (with K and this
  // device's time per step in its last rounds) and when it is sent; a round is one call into
  // the wasm session, so the step in between is estimated from that time. ----

  let roundStarted = 0;
  let roundStepMs = null;
  function onRound(m) {
    if (m.phase === 'start') {
      roundStarted = performance.now();
      roundStepMs = m.stepMs;
      page.round = { phase: 'training', steps: m.steps, step: 1, estimated: true, timing: !m.stepMs };
    } else if (m.phase === 'done') {
      page.round = { phase: 'done', steps: m.steps, step: m.steps, estimated: false, timing: false };
    } else {
      page.round = null;
      $('round-step').textContent = '–';
      $('round-progress').value = 0;
    }
    showRound();
  }
  function showRound() {
    const r = page.round;
    if (!r) return;
    if (r.phase === 'training' && roundStepMs) {
      const done = Math.min(r.steps - 1, Math.floor((performance.now() - roundStarted) / roundStepMs));
      r.step = done + 1;
      $('round-progress').value = done / r.steps;
    } else {
      $('round-progress').value = r.phase === 'done' ? 1 : 0;
    }
    let text;
    if (r.phase === 'done') text = `all ${r.steps} steps done: sent to the class`;
    else if (r.timing) text = `${r.steps} steps (the first round: timing this device)`;
    else text = `step ${r.step} of ${r.steps}`;
    if (page.status === 'paused') text = `paused by the teacher (${text})`;
    else if (page.status === 'delayed' && r.phase === 'done') text = `all ${r.steps} steps done: waiting (the teacher's delay), then sending`;
    $('round-step').textContent = text;
  }
  setInterval(showRound, 200);

  function fail(text) {
    page.error = text;
    setState('error', text);
    $('problem').textContent = text;
    $('problem').hidden = false;
  }

  function setState(status, text) {
    if (status === 'reconnecting' && page.status !== 'reconnecting') page.reconnects += 1;
    page.status = status;
    page.status_text = text;
    $('state').textContent = text;
    $('state').dataset.state = status;
  }

  function stateText(m) {
    switch (m.state) {
      case 'connecting': return 'Connecting to the room…';
      case 'reconnecting': return `Lost the connection. Reconnecting in ${m.seconds.toFixed(1)} s…`;
      case 'paused': return 'Paused by the teacher';
      case 'delayed': return `Delayed ${m.delayMs} ms by the teacher before each push (a straggler)`;
      case 'training': return m.delayMs > 0 ? `Training (delayed ${m.delayMs} ms before each push)` : 'Training';
      default: return m.state;
    }
  }

  function showDevice() {
    $('backend').textContent = device.backend === 'gpu' ? 'GPU (WebGPU)' : 'CPU (WebAssembly, 1 thread)';
    $('adapter').textContent = device.adapter;
    const report = device.backend_report;
    let why = null;
    if (report) {
      // The decision in words, with the speeds measured here (the same sentence the
      // teacher's dashboard shows for this device).
      why = report.why;
    } else if (backend === 'auto' && !device.fallback_reason) {
      why = 'Timing a few training steps on the GPU and on the CPU, to train on the faster…';
    } else if (device.fallback_reason) {
      why = device.backend === 'cpu' ? `Training on the CPU. ${device.fallback_reason}` : device.fallback_reason;
    } else if (device.backend === 'cpu' && backend === 'cpu') {
      why = 'Training on the CPU because the address asks for it (?backend=cpu).';
    }
    $('why').textContent = why ?? '';
    $('why').hidden = !why;
  }

  const fmt = (v, digits) => (v === null || v === undefined || !Number.isFinite(v) ? '–' : v.toFixed(digits));
  const grouped = (v) => Math.round(v).toLocaleString('en-US');
  function bytes(v, id) {
    const mb = v >= 1e6;
    $(id).textContent = mb ? (v / 1e6).toFixed(2) : (v / 1e3).toFixed(1);
    $(`${id}-unit`).textContent = mb ? 'MB' : 'KB';
  }

  // Under SwarmSGD there is no center: the model a push brings back is this tab's own,
  // averaged with one neighbour's, and staleness counts the averages it missed.
  const WORDS = {
    central: {
      'tau-label': 'Staleness τ of my pushes', 'alpha-label': 'Weight α<sub>eff</sub> of my last push',
      'alpha-unit': 'of the center', 'distance-label': 'Distance from the center',
      'distance-unit': '‖x − x̃‖ (L2)',
      'version-label': 'Center version', 'version-unit': 'merges so far',
      'guess-center-title': 'The class\'s model <small>(the center)</small>',
    },
    swarm: {
      'tau-label': 'Averages I missed', 'alpha-label': 'Weight of my model in the last average',
      'alpha-unit': 'pairwise average', 'distance-label': 'Moved by my last average',
      'distance-unit': '‖x − x<sub>after</sub>‖ (L2)',
      'version-label': 'Swarm version', 'version-unit': 'pushes so far',
      'guess-center-title': 'My model after averaging <small>(SwarmSGD has no center)</small>',
    },
  };
  const EXPLAIN = {
    central: {
      'tau-label': 'τ (tau): how many merges happened while I was computing. 0 means my work arrived on the newest model.',
      'alpha-label': 'α_eff: how much of my push the class\'s model took in. 1 would be all of it, 0 none; late pushes count less.',
      'distance-label': '‖x − x̃‖: how far my model is from the class\'s. 0 means the same model; it grows while I train on my own digits.',
      'version-label': 'How many times the class\'s model has changed: one merge of someone\'s push each time.',
    },
    swarm: {
      'tau-label': 'How many pairwise averages happened in the class while I was computing.',
      'alpha-label': 'How much of my model went into the last average with a neighbour: 0.5 is half mine, half theirs.',
      'distance-label': 'How far my last average moved my model: 0 means my neighbour\'s model was the same as mine.',
      'version-label': 'How many pushes the whole class has made so far (there is no center to count merges of).',
    },
  };
  let worded = null;
  function wordFor(strategy) {
    const kind = strategy === 'swarm' ? 'swarm' : 'central';
    if (kind === worded) return;
    worded = kind;
    for (const [id, html] of Object.entries(WORDS[kind])) $(id).innerHTML = html;
    for (const [id, text] of Object.entries(EXPLAIN[kind])) setExplanation($(id), text);
  }

  function showStats() {
    const s = stats;
    wordFor(s.strategy);
    if (s.worker_id !== null && s.worker_id !== undefined && $('worker').textContent === '–') {
      $('worker').textContent = `browser-${s.worker_id}`;
    }
    $('steps-per-sec').textContent = fmt(page.steps_per_sec, 1);
    $('samples-per-sec').textContent = grouped(page.samples_per_sec);
    $('pushes').textContent = grouped(s.pushes);
    $('push-split').textContent = `${grouped(s.accepted)} accepted, ${grouped(s.refused)} refused`;
    $('tau').textContent = s.last_tau ?? '–';
    $('tau-mean').textContent = s.strategy === 'swarm'
      ? `since my last push (mean ${fmt(s.mean_tau, 2)})`
      : `versions late (mean ${fmt(s.mean_tau, 2)})`;
    $('alpha').textContent = fmt(s.last_alpha_eff, 3);
    $('distance').textContent = fmt(s.distance_to_center, 3);
    // The session's loss is 0 until the first round ends: show nothing then.
    $('loss').textContent = s.pushes > 0 ? fmt(s.last_loss, 3) : '–';
    $('loss-unit').textContent = s.pushes > 0 ? 'nats, last round' : 'nats, after the first round';
    $('version').textContent = s.center_version ?? '–';
    bytes(s.bytes_up, 'bytes-up');
    bytes(s.bytes_down, 'bytes-down');
  }

  // ---- The loss chart (uPlot), redrawn at most once per frame. ----

  const chart = {
    plot: null,
    queued: false,
    queue() {
      if (this.queued) return;
      this.queued = true;
      requestAnimationFrame(() => {
        this.queued = false;
        const xs = page.losses.map(([t]) => t);
        const ys = page.losses.map(([, l]) => l);
        this.plot.setData([xs, ys]);
      });
    },
  };
  /** The moments the class's model replaced this device's, as dashed lines marked "reset". */
  function drawResets(u) {
    if (!page.resets.length) return;
    const { ctx, bbox } = u;
    ctx.save();
    ctx.strokeStyle = '#b3261e';
    ctx.fillStyle = '#b3261e';
    ctx.lineWidth = 2 * devicePixelRatio;
    ctx.setLineDash([6 * devicePixelRatio, 4 * devicePixelRatio]);
    ctx.font = `600 ${12 * devicePixelRatio}px system-ui, sans-serif`;
    ctx.textBaseline = 'top';
    const gap = 4 * devicePixelRatio;
    for (const t of page.resets) {
      const x = u.valToPos(t, 'x', true);
      if (!(x >= bbox.left && x <= bbox.left + bbox.width)) continue;
      ctx.beginPath();
      ctx.moveTo(x, bbox.top);
      ctx.lineTo(x, bbox.top + bbox.height);
      ctx.stroke();
      // The word on the line's right, or on its left near the chart's right edge.
      const right = x + gap + ctx.measureText('reset').width <= bbox.left + bbox.width;
      ctx.textAlign = right ? 'left' : 'right';
      ctx.fillText('reset', right ? x + gap : x - gap, bbox.top + gap);
    }
    ctx.restore();
  }
  const box = $('loss-chart');
  const size = () => ({ width: Math.max(200, box.clientWidth), height: 220 });
  chart.plot = new uPlot({
    ...size(),
    // The loss axis always shows at least [0, ln 10] (ln 10 ≈ 2.30 nats: guessing among 10
    // digits), so that 2.30 to 2.27 is not drawn as a plunge.
    scales: { x: { time: false }, y: { range: (u, min, max) => [0, Math.max(Math.LN10, Number.isFinite(max) ? max : 0) * 1.05] } },
    axes: [
      { label: 'seconds since this page started', size: 40 },
      { label: 'loss (nats)', size: 50 },
    ],
    series: [
      { label: 'time (s)', value: (u, v) => (v === null ? '–' : `${v.toFixed(0)} s`) },
      { label: 'local loss', stroke: '#1a73e8', width: 2, value: (u, v) => (v === null ? '–' : v.toFixed(3)) },
    ],
    legend: { show: true },
    hooks: { draw: [drawResets] },
  }, [[], []], box);
  // Follow the box's width. Resizing the chart inside the observer's callback would resize
  // the box again in the same frame (a "ResizeObserver loop" error): do it in the next frame,
  // and only when the width changed.
  let chartWidth = size().width;
  new ResizeObserver(() => requestAnimationFrame(() => {
    const next = size();
    if (next.width === chartWidth) return;
    chartWidth = next.width;
    chart.plot.setSize(next);
  })).observe(box);

  // ---- The drawing pad: mouse and touch through pointer events. ----

  const pad = $('draw');
  const ctx = pad.getContext('2d', { willReadFrequently: true });
  let drawing = false;
  let drawn = false;
  let last = null;
  const at = (e) => {
    const r = pad.getBoundingClientRect();
    return [(e.clientX - r.left) * (pad.width / r.width), (e.clientY - r.top) * (pad.height / r.height)];
  };
  pad.addEventListener('pointerdown', (e) => {
    e.preventDefault();
    pad.setPointerCapture(e.pointerId);
    drawing = true;
    last = at(e);
    stroke(last, last);
  });
  pad.addEventListener('pointermove', (e) => {
    if (!drawing) return;
    e.preventDefault();
    const p = at(e);
    stroke(last, p);
    last = p;
  });
  const end = () => {
    if (!drawing) return;
    drawing = false;
    ask();
  };
  pad.addEventListener('pointerup', end);
  pad.addEventListener('pointercancel', end);
  $('clear').addEventListener('click', () => {
    ctx.clearRect(0, 0, pad.width, pad.height);
    drawn = false;
    page.prediction = null;
    $('preview').getContext('2d').clearRect(0, 0, 28, 28);
    for (const id of ['guess-center', 'guess-own']) showGuess(id, null);
    $('draw-note').textContent = '';
  });

  function stroke([x0, y0], [x1, y1]) {
    ctx.strokeStyle = '#000';
    ctx.lineWidth = pad.width / 13;
    ctx.lineCap = 'round';
    ctx.lineJoin = 'round';
    ctx.beginPath();
    ctx.moveTo(x0, y0);
    ctx.lineTo(x1, y1);
    ctx.stroke();
    drawn = true;
  }

  /** Sends the drawing's ink (its alpha channel, 0 to 255) to the worker for both models. */
  function ask() {
    if (!drawn) return;
    const { data, width, height } = ctx.getImageData(0, 0, pad.width, pad.height);
    const gray = new Uint8Array(width * height);
    for (let i = 0; i < gray.length; i++) gray[i] = data[i * 4 + 3];
    worker.postMessage({ type: 'predict', gray, width, height }, [gray.buffer]);
  }
  // The models keep learning: ask again every two seconds while a digit is drawn.
  setInterval(ask, 2000);

  function showPrediction(m) {
    if (m.error) {
      $('draw-note').textContent = m.error;
      return;
    }
    page.prediction = { own: m.own, center: m.center };
    $('draw-note').textContent = '';
    const preview = $('preview').getContext('2d');
    const img = preview.createImageData(28, 28);
    m.input.forEach((v, i) => {
      img.data.set([255 - v, 255 - v, 255 - v, 255], i * 4);
    });
    preview.putImageData(img, 0, 0);
    showGuess('guess-center', m.center);
    showGuess('guess-own', m.own);
  }

  function showGuess(id, probs) {
    const el = $(id);
    const bars = el.querySelector('.bars');
    if (!probs) {
      el.classList.remove('unsure');
      el.querySelector('.digit').textContent = '–';
      el.querySelector('.conf').textContent = '';
      bars.replaceChildren();
      return;
    }
    const top = probs.indexOf(Math.max(...probs));
    const pct = (probs[top] * 100).toFixed(0);
    // Below 50 % the model is more likely wrong than right: it says so.
    const unsure = probs[top] < 0.5;
    el.classList.toggle('unsure', unsure);
    el.querySelector('.digit').textContent = unsure ? 'not sure:' : String(top);
    el.querySelector('.conf').textContent = unsure ? `maybe ${top} (${pct} %)` : `${pct} % sure`;
    bars.replaceChildren(...probs.map((p, d) => {
      const bar = document.createElement('span');
      bar.className = d === top ? 'bar top' : 'bar';
      bar.style.setProperty('--p', String(p));
      bar.dataset.digit = String(d);
      bar.title = `${d}: ${(p * 100).toFixed(1)} %`;
      return bar;
    }));
  }
}

// ---- the lesson's question: predict, vote, then see what was measured ----

/** What each phase of a Question says under the heading. */
const QUESTION_PHASE = {
  open: 'tap your prediction (you can change it until the runs start)',
  closed: 'votes are closed: the class is running the experiment',
  reveal: 'what the class measured',
};

/** The question card: the teacher's question with one button per answer while the vote is
 * open, the student's own vote marked, and at the reveal the answer the measurement
 * supports. Listens to the room worker beside the page's own handler. */
function setUpQuestion(worker) {
  const card = $('question');
  worker.addEventListener('message', (e) => {
    const q = e.data;
    if (q.type !== 'question') return;
    if (q.phase === 'over') {
      card.hidden = true;
      return;
    }
    card.hidden = false;
    card.dataset.phase = q.phase;
    card.dataset.lesson = q.lesson;
    $('question-phase').textContent = QUESTION_PHASE[q.phase] ?? '';
    $('question-text').textContent = q.text;
    $('question-answers').replaceChildren(...q.answers.map((text, i) => {
      const b = document.createElement('button');
      b.type = 'button';
      b.className = 'question-answer';
      b.dataset.answer = i;
      const mine = q.voted === i;
      const right = q.phase === 'reveal' && q.supported === i;
      b.classList.toggle('mine', mine);
      b.classList.toggle('supported', right);
      b.setAttribute('aria-pressed', String(mine));
      const marks = [mine ? 'your vote' : null, right ? 'what the class measured' : null].filter(Boolean);
      b.textContent = marks.length ? `${text} (${marks.join('; ')})` : text;
      b.disabled = q.phase !== 'open';
      b.addEventListener('click', () => worker.postMessage({ type: 'vote', lesson: q.lesson, answer: i }));
      return b;
    }));
    const outcome = $('question-outcome');
    outcome.hidden = q.phase !== 'reveal';
    if (q.phase === 'reveal') {
      const verdict = q.supported === null
        ? 'No answer is supported: one run each showed no measurable difference.'
        : q.voted === null ? '' : q.voted === q.supported ? 'Your prediction was right.' : 'Your prediction was not what the class measured.';
      outcome.textContent = `${q.outcome} ${verdict}`.trim();
    }
  });
}
