// The student page's room worker, in a module Web Worker so the page never freezes.
// It owns the WebSocket; the session logic (Join, Welcome, rounds of Push, Ack and Center,
// Control, resume) is Rust's WebSession (client/src/web.rs over client/src/worker.rs).
//
// Messages in:  {type: 'start', config: {room, backend, seed, resume: {id, token} | null}}, {type: 'predict',
//               gray, width, height}, {type: 'drop'} (close the socket, for tests),
//               {type: 'lose-gpu'} (destroy the GPU device, for tests).
// Messages out: {type: 'status', text}, {type: 'device', backend, adapter, fallbackReason, report},
//               {type: 'state', state, seconds?, delayMs?}, {type: 'welcome', workerId, token, resumed},
//               {type: 'stats', stats, stepsPerSec, samplesPerSec}, {type: 'loss', seconds, loss},
//               {type: 'prediction', input, own, center} or {type: 'prediction', error},
//               {type: 'round', phase: 'start', steps, stepMs} (a round of `steps` local steps
//               begins; `stepMs` is this device's time per step in its last rounds, null before
//               the first) and {type: 'round', phase: 'done', steps} (trained; the push goes
//               next, after the teacher's delay) or {type: 'round', phase: 'idle'} (no round could
//               run), {type: 'resync', seconds, code, message} (a
//               push refused with RESYNC: the class's model replaced this tab's, after a reset),
//               {type: 'problem', text}, {type: 'fatal', message, retype} (`retype`: the room
//               code is unknown, the page asks for it again), {type: 'question', lesson, phase,
//               text, answers, voted, supported, outcome} (the lesson's question, PROTOCOL.md).
// Also in: {type: 'vote', lesson, answer} (send the student's vote).

import { WebSession, prepare_digit } from './pkg/easel_client.js';
import { loadWasmAndDigits } from './boot.js';

/** Reconnection backoff: 0.5 s doubling to 10 s, with ±20 % jitter. */
const BACKOFF_FIRST_S = 0.5;
const BACKOFF_MAX_S = 10;
/** Seconds of recent rounds the speed is averaged over. */
const SPEED_WINDOW_S = 5;
/** How often the page gets the numbers. */
const STATS_EVERY_MS = 500;
/** Relay error codes that end the session: unknown room, wrong model. */
const FATAL_JOIN_CODES = new Set([3, 4]);
/** The relay's code for an unknown room (PROTOCOL.md, error 3). */
const UNKNOWN_ROOM = 3;
/** A push refused because its model is no longer the class's (PROTOCOL.md, error 10): the
 * teacher reset the model, the strategy changed, or the relay restarted. */
const RESYNC = 10;
/** The relay refused the resume token (PROTOCOL.md, error 14): join as a new worker. */
const BAD_RESUME_TOKEN = 14;
/** Close code: another connection resumed this worker (a duplicated tab): join as a new one. */
const SUPERSEDED = 4002;

let session = null;
let config = null;
let ws = null;
let resumeId = null;
let resumeToken = null;
/** The next Join asks for a new worker instead of resuming. */
let fresh = false;
let attempt = 0;
let stopped = false;
let rounding = false;
let started = 0;
const recent = []; // [steps, samples, seconds] of recent rounds

// Every session call goes through this chain, so calls never overlap (a round holds the
// worker while it waits for the GPU).
let chain = Promise.resolve();
function serial(fn) {
  const p = chain.then(fn);
  chain = p.catch(() => {});
  return p;
}

const post = (msg) => self.postMessage(msg);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const message = (err) => String(err?.message ?? err);

self.onmessage = (e) => {
  const m = e.data;
  if (m.type === 'start') {
    start(m.config).catch((err) => fatal(`could not start: ${message(err)}`));
  } else if (m.type === 'predict') {
    predict(m);
  } else if (m.type === 'drop') {
    ws?.close(4000, 'dropped by the page');
  } else if (m.type === 'lose-gpu') {
    serial(() => session?.lose_gpu());
  } else if (m.type === 'vote') {
    sendVote(m.lesson, m.answer);
  }
};

/** PROTOCOL.md's message type of a Question. */
const QUESTION_TYPE = 10;

/** Sends a Vote (PROTOCOL.md, Vote) at once, even while a round trains: the vote closes
 * when the runs start, and a slow device's round may last longer than the question is open. */
function sendVote(lesson, answer) {
  if (!session || !ws || ws.readyState !== WebSocket.OPEN) {
    post({ type: 'problem', text: 'Not connected to the room: the vote was not sent; tap again when connected.' });
    return;
  }
  ws.send(session.vote_message(lesson, answer));
}

function fatal(text, retype = false) {
  stopped = true;
  post({ type: 'fatal', message: text, retype });
  ws?.close();
}

async function start(cfg) {
  config = cfg;
  resumeId = cfg.resume?.id ?? null;
  resumeToken = cfg.resume?.token ?? null;
  const bytes = await loadWasmAndDigits((text) => post({ type: 'status', text }));
  session = await WebSession.create(bytes, cfg.backend, cfg.seed);
  postDevice();
  started = performance.now();
  connect();
  setInterval(postStats, STATS_EVERY_MS);
}

/** Tells the page where training runs (never called while a round holds the session). */
function postDevice() {
  const s = session.stats();
  post({ type: 'device', backend: s.backend, adapter: s.adapter, fallbackReason: s.fallback_reason,
    report: s.device });
}

/** Tells the relay the backend's last decision (a Device message), when it has not heard it. */
function sendDevice(sock) {
  const bytes = session.device_message();
  if (bytes && sock.readyState === WebSocket.OPEN) sock.send(bytes);
}

function wsUrl() {
  const u = new URL('/ws', self.location.href);
  u.protocol = u.protocol === 'https:' ? 'wss:' : 'ws:';
  return u.href;
}

function connect() {
  if (stopped) return;
  post({ type: 'state', state: 'connecting' });
  const sock = new WebSocket(wsUrl());
  sock.binaryType = 'arraybuffer';
  ws = sock;
  sock.onopen = () => {
    // A socket that closed meanwhile cannot send; its close event reconnects.
    serial(() => sock.send(joinMessage())).catch(() => {});
  };
  sock.onmessage = (e) => {
    if (!(e.data instanceof ArrayBuffer)) return;
    const bytes = new Uint8Array(e.data);
    // A Question (type byte 10, after the magic and the version) touches no training state:
    // it is shown at once, not after a round that may last a minute on a slow device.
    if (bytes.length > 5 && bytes[5] === QUESTION_TYPE) handle(sock, bytes);
    else serial(() => handle(sock, bytes));
  };
  sock.onclose = (e) => {
    if (ws !== sock) return;
    ws = null;
    if (e.code === SUPERSEDED) forgetWorker();
    if (!stopped) reconnectLater();
  };
}

/** The Join for a new connection: resuming the last worker unless `fresh`. */
function joinMessage() {
  return session.join_message(config.room, resumeId ?? undefined, resumeToken ?? undefined, fresh);
}

/** The next Join makes a new worker (this tab's id and token are no longer its own). */
function forgetWorker() {
  resumeId = null;
  resumeToken = null;
  fresh = true;
}

/** Waits 0.5 s, 1 s, 2 s, … up to 10 s (with jitter), counting down, then connects. */
async function reconnectLater() {
  const base = Math.min(BACKOFF_MAX_S, BACKOFF_FIRST_S * 2 ** attempt);
  attempt += 1;
  const until = performance.now() + base * (0.8 + 0.4 * Math.random()) * 1000;
  for (;;) {
    const left = (until - performance.now()) / 1000;
    if (left <= 0) break;
    post({ type: 'state', state: 'reconnecting', seconds: Math.ceil(left * 10) / 10 });
    await sleep(Math.min(250, left * 1000));
  }
  connect();
}

function handle(sock, bytes) {
  if (ws !== sock) return; // a late message of a closed connection
  let ev;
  try {
    ev = session.on_message(bytes);
  } catch (err) {
    post({ type: 'problem', text: `The relay sent something this page cannot use (${message(err)}); reconnecting.` });
    sock.close();
    return;
  }
  switch (ev.kind) {
    case 'welcome':
      resumeId = ev.worker_id;
      resumeToken = ev.resume_token;
      fresh = false;
      attempt = 0;
      post({ type: 'welcome', workerId: ev.worker_id, token: ev.resume_token, resumed: ev.resumed });
      postDevice();
      sendDevice(sock);
      break;
    case 'error':
      if (ev.code === BAD_RESUME_TOKEN) {
        // The socket stays open: join again on it, as a new worker.
        forgetWorker();
        sock.send(joinMessage());
        return;
      }
      if (!ev.joined && FATAL_JOIN_CODES.has(ev.code)) {
        fatal(ev.code === UNKNOWN_ROOM
          ? `There is no room "${config.room}": check the code on the teacher's screen and type it again.`
          : `The room cannot be joined: ${ev.message}`, ev.code === UNKNOWN_ROOM);
        return;
      }
      post({ type: 'problem', text: `The relay says: ${ev.message} (code ${ev.code})` });
      break;
    case 'question':
      post({ type: 'question', lesson: ev.lesson, phase: ev.phase, text: ev.text, answers: ev.answers,
        voted: ev.voted ?? null, supported: ev.supported ?? null, outcome: ev.outcome });
      return;
    case 'ack':
      post({ type: 'problem',
        text: ev.accepted ? null : `Push refused: ${ev.message} (code ${ev.code}); taking the class's model.` });
      if (!ev.accepted && ev.code === RESYNC) {
        post({ type: 'resync', seconds: (performance.now() - started) / 1000, code: ev.code, message: ev.message });
      }
      break;
    default:
      break;
  }
  pump();
}

/** Starts the next round when the session may push and nothing else is running. */
function pump() {
  if (rounding || stopped || !ws || ws.readyState !== WebSocket.OPEN || !session.ready()) {
    postState();
    return;
  }
  rounding = true;
  const sock = ws;
  runRound(sock)
    .catch((err) => {
      post({ type: 'problem', text: `A round failed: ${message(err)}` });
      sock.close();
    })
    .finally(() => {
      rounding = false;
      postState();
    });
}

async function runRound(sock) {
  post({ type: 'state', state: 'training' });
  const before = session.stats();
  const [stepsPerSec] = speed();
  post({ type: 'round', phase: 'start', steps: before.local_steps,
    stepMs: stepsPerSec > 0 ? 1000 / stepsPerSec : null });
  const t0 = performance.now();
  const push = await serial(() => session.round());
  const after = session.stats();
  post(push ? { type: 'round', phase: 'done', steps: after.steps - before.steps } : { type: 'round', phase: 'idle' });
  // A round that began by timing both backends trained only its own steps: the timing's
  // time is left out of the speed (its steps were not the round's).
  const timed = (after.device?.timings ?? 0) !== (before.device?.timings ?? 0);
  const seconds = (performance.now() - t0 - (timed ? after.device.timing_ms : 0)) / 1000;
  if (after.backend !== before.backend || after.device?.why !== before.device?.why) postDevice();
  if (ws === sock) sendDevice(sock);
  recent.push([after.steps - before.steps, after.samples - before.samples, seconds]);
  if (after.last_loss !== null) {
    post({ type: 'loss', seconds: (performance.now() - started) / 1000, loss: after.last_loss });
  }
  const delay = session.delay_ms();
  if (delay > 0) {
    post({ type: 'state', state: 'delayed', delayMs: delay });
    await sleep(delay);
  }
  if (push && ws === sock && sock.readyState === WebSocket.OPEN) sock.send(push);
}

function postState() {
  if (stopped || !session) return;
  if (!ws || ws.readyState !== WebSocket.OPEN) return; // 'connecting' or 'reconnecting' stands
  const s = session.stats();
  if (!s.joined) return;
  post({ type: 'state', state: s.paused ? 'paused' : 'training', delayMs: s.delay_ms });
  postStats(); // the numbers change with the state: send them now, not up to 0.5 s later
}

function speed() {
  let steps = 0;
  let samples = 0;
  let seconds = 0;
  for (let i = recent.length - 1; i >= 0; i--) {
    steps += recent[i][0];
    samples += recent[i][1];
    seconds += recent[i][2];
    if (seconds > SPEED_WINDOW_S) {
      recent.splice(0, i);
      break;
    }
  }
  return seconds > 0 ? [steps / seconds, samples / seconds] : [0, 0];
}

/** Sends the numbers, read between session calls (a round holds the worker meanwhile). */
function postStats() {
  if (!session) return;
  serial(() => {
    const [stepsPerSec, samplesPerSec] = speed();
    post({ type: 'stats', stats: session.stats(), stepsPerSec, samplesPerSec });
  });
}

function predict({ gray, width, height }) {
  serial(() => {
    const input = prepare_digit(gray, width, height);
    const own = Array.from(session.predict_own(input));
    const center = Array.from(session.predict_center(input));
    post({ type: 'prediction', input, own, center });
  }).catch((err) => post({ type: 'prediction', error: message(err) }));
}
