// Browser tests of the student page (www/index.html): tabs join the room `easel serve` opens
// and train in it, on WebGPU (SwiftShader) and on the CPU; the relay accepts their pushes; the
// drawing pad asks both models; a dropped connection (and a reload) resumes the same worker;
// a page without a secure context and a lost GPU fall back to the CPU and keep training.
// Helpers and environment: relay.mjs. Every request goes to 127.0.0.1.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import {
  ROOT, checkPrerequisites, cleanup, launch, screenshot, startServer, waitInPage,
} from './relay.mjs';

/** The model's layout hash, from the line PROTOCOL.md keeps equal to the code's. */
const LAYOUT_HASH = readFileSync(join(ROOT, 'PROTOCOL.md'), 'utf8')
  .match(/in hex, byte 0 first:\s*`([0-9a-f]{64})`/)[1];

let relay;
let browser;
let gpuTab;

before(async () => {
  checkPrerequisites();
  relay = await startServer();
  browser = await launch(relay.port);
});

after(cleanup);

const state = (page) => page.evaluate(() => window.easel.state());
const sum = (xs) => xs.reduce((a, b) => a + b, 0);

/** Waits until the tab has had `n` more pushes accepted than `from`. */
function acceptedAtLeast(page, n, what) {
  return waitInPage(browser, (k) => window.easel.state().accepted >= k, n, 120_000, what, page);
}

test('a student tab joins the room, trains on WebGPU and its pushes are accepted', { timeout: 200_000 }, async () => {
  gpuTab = browser.page;
  // SwiftShader is slower than the CPU here, so `auto` would train on the CPU
  // (backend.test.mjs): ask for the GPU.
  await gpuTab.goto(`http://127.0.0.1:${relay.port}/?room=${relay.room}&backend=gpu`);
  await waitInPage(browser, () => window.easel?.state().joined, null, 60_000, 'the Welcome', gpuTab);
  await acceptedAtLeast(gpuTab, 3, '3 accepted pushes');
  const s = await state(gpuTab);
  console.log(`GPU tab: worker ${s.worker_id}, ${s.pushes} pushes, ${s.accepted} accepted, `
    + `tau ${s.last_tau} (mean ${s.mean_tau}), alpha_eff ${s.last_alpha_eff}, `
    + `${s.steps_per_sec.toFixed(1)} steps/s, ${s.bytes_up} B up, ${s.bytes_down} B down`);
  assert.equal(s.backend, 'gpu', `fell back to the CPU: ${s.fallback_reason}`);
  assert.equal(s.fallback_reason, null);
  assert.equal(s.room, relay.room);
  assert.ok(s.pushes >= 3 && s.refused === 0, `pushes ${s.pushes}, refused ${s.refused}`);
  assert.ok(Number.isInteger(s.last_tau) && Number.isFinite(s.mean_tau), 'staleness is known');
  assert.ok(s.last_alpha_eff > 0 && s.last_alpha_eff <= 1, `alpha_eff ${s.last_alpha_eff}`);
  assert.ok(s.bytes_up > 3 * 44_426 && s.bytes_down > 3 * 44_426, 'bytes are counted');
  assert.ok(Number.isFinite(s.last_loss) && s.losses.length >= 3, 'the loss is charted');
  assert.ok(s.steps_per_sec > 0 && s.samples_per_sec > 0, 'the speed is measured');
  // What the student sees, with units.
  await waitInPage(browser, () => document.getElementById('tau').textContent !== '–', null, 5_000,
    'the staleness on the page', gpuTab);
  assert.match(await gpuTab.locator('#state').innerText(), /Training/);
  assert.match(await gpuTab.locator('#backend').innerText(), /GPU \(WebGPU\)/);
  assert.match(await gpuTab.locator('#adapter').innerText(), /swiftshader|webgpu/i);
  assert.match(await gpuTab.locator('#worker').innerText(), new RegExp(`browser-${s.worker_id}`));
  assert.ok(await gpuTab.locator('#loss-chart .uplot').isVisible(), 'the uPlot chart is drawn');
  // The page stays responsive while the worker trains.
  const t0 = Date.now();
  await gpuTab.evaluate(() => new Promise((r) => requestAnimationFrame(r)));
  assert.ok(Date.now() - t0 < 1000, 'the page took over a second to draw a frame');
  assert.deepEqual(browser.outside, [], 'requests left 127.0.0.1');
});

test('the drawing pad gives 10 probabilities from each model', { timeout: 60_000 }, async () => {
  await gpuTab.locator('#draw').scrollIntoViewIfNeeded();
  const box = await gpuTab.locator('#draw').boundingBox();
  const at = (fx, fy) => [box.x + fx * box.width, box.y + fy * box.height];
  // A "7": the bar, then the stroke down.
  await gpuTab.mouse.move(...at(0.3, 0.25));
  await gpuTab.mouse.down();
  for (const [fx, fy] of [[0.5, 0.25], [0.7, 0.25], [0.6, 0.5], [0.5, 0.75]]) {
    await gpuTab.mouse.move(...at(fx, fy), { steps: 8 });
  }
  await gpuTab.mouse.up();
  await waitInPage(browser, () => window.easel.state().prediction, null, 30_000, 'a prediction', gpuTab);
  const { prediction } = await state(gpuTab);
  for (const model of ['own', 'center']) {
    const p = prediction[model];
    assert.equal(p.length, 10, `${model}: ${p}`);
    assert.ok(p.every((x) => x >= 0 && x <= 1), `${model}: ${p}`);
    assert.ok(Math.abs(sum(p) - 1) < 1e-3, `${model} sums to ${sum(p)}`);
  }
  // The top digit, or below 50 % confidence "not sure: maybe D (N %)".
  // (Read together: the guess is asked again every 2 s.)
  const shown = await gpuTab.evaluate(() => ({ center: window.easel.state().prediction.center,
    text: document.querySelector('#guess-center p.top').innerText }));
  const top = Math.max(...shown.center);
  const digit = shown.center.indexOf(top);
  assert.match(shown.text,
    top < 0.5 ? new RegExp(`^not sure:\\s+maybe ${digit} \\(\\d+ %\\)$`) : new RegExp(`^${digit}\\s+\\d+ % sure$`));
  assert.equal(await gpuTab.locator('#guess-own .bar').count(), 10);
  await screenshot(gpuTab, 'student-gpu.png');
});

test('a dropped connection and a reload resume the same worker', { timeout: 200_000 }, async () => {
  const before = await state(gpuTab);
  await gpuTab.evaluate(() => window.easel.dropConnection());
  await waitInPage(browser, () => window.easel.state().reconnects > 0, null, 10_000,
    'the reconnecting state', gpuTab);
  await waitInPage(browser, (n) => window.easel.state().welcomes > n, before.welcomes, 30_000,
    'a second Welcome', gpuTab);
  await acceptedAtLeast(gpuTab, before.accepted + 2, '2 more accepted pushes after the reconnection');
  let s = await state(gpuTab);
  assert.equal(s.reconnects, 1);
  assert.equal(s.worker_id, before.worker_id, 'the same worker id after reconnecting');
  assert.equal(s.resumed, true);
  assert.ok(s.pushes > before.pushes, 'the pushes counter went on');

  // A reload starts a new session from the id kept in sessionStorage.
  await gpuTab.reload();
  await waitInPage(browser, () => window.easel?.state().joined, null, 60_000, 'the Welcome after a reload', gpuTab);
  await acceptedAtLeast(gpuTab, 1, 'an accepted push after the reload');
  s = await state(gpuTab);
  assert.equal(s.worker_id, before.worker_id, 'the same worker id after a reload');
  assert.equal(s.resumed, true);
});

test('a second tab with ?backend=cpu trains on the CPU in the same room', { timeout: 200_000 }, async () => {
  const cpuTab = await browser.context.newPage();
  await cpuTab.goto(`http://127.0.0.1:${relay.port}/?room=${relay.room}&backend=cpu`);
  await waitInPage(browser, () => window.easel?.state().joined, null, 60_000, 'the Welcome', cpuTab);
  await acceptedAtLeast(cpuTab, 3, '3 accepted pushes on the CPU');
  const s = await state(cpuTab);
  const g = await state(gpuTab);
  assert.equal(s.backend, 'cpu');
  assert.notEqual(s.worker_id, g.worker_id, 'a new tab is a new worker');
  assert.match(await cpuTab.locator('#why').innerText(), /backend=cpu/);
  await screenshot(cpuTab, 'student-cpu.png');
  await cpuTab.close();
});

test('a lost GPU falls back to the CPU and training goes on', { timeout: 200_000 }, async () => {
  const before = await state(gpuTab);
  assert.equal(before.backend, 'gpu');
  await gpuTab.evaluate(() => window.easel.loseGpu());
  await waitInPage(browser, () => window.easel.state().backend === 'cpu', null, 60_000,
    'the fall back to the CPU', gpuTab);
  await acceptedAtLeast(gpuTab, before.accepted + 3, '3 more accepted pushes on the CPU');
  const s = await state(gpuTab);
  assert.equal(s.worker_id, before.worker_id, 'the same session goes on');
  assert.match(s.fallback_reason, /GPU was lost.*CPU/);
  assert.match(await gpuTab.locator('#why').innerText(), /GPU was lost/);
  await screenshot(gpuTab, 'student-gpu-lost.png');
});

/**
 * Joins the room as its teacher from a page of the relay's origin (the admin token in the
 * socket's URL) and returns `send(action, worker, ms)` for Control messages, byte by byte as
 * PROTOCOL.md lays them out: 0 pause, 1 resume, 2 delay.
 */
async function teacher(page) {
  await page.goto(`http://127.0.0.1:${relay.port}/style.css`);
  await page.evaluate(async ({ room, token, hash }) => {
    const header = (type) => [...new TextEncoder().encode('EASL'), 2, type];
    const u32 = (v) => { const b = new Uint8Array(4); new DataView(b.buffer).setUint32(0, v, true); return [...b]; };
    const u64 = (v) => { const b = new Uint8Array(8); new DataView(b.buffer).setBigUint64(0, BigInt(v), true); return [...b]; };
    const code = new TextEncoder().encode(room);
    const join = [...header(1), ...u32(code.length), ...code, 3, 0, ...u32(0),
      ...hash.match(/../g).map((h) => parseInt(h, 16)), 0];
    const ws = new WebSocket(`ws://${location.host}/ws?admin=${token}`);
    ws.binaryType = 'arraybuffer';
    await new Promise((ok, fail) => { ws.onopen = ok; ws.onerror = fail; });
    const welcome = new Promise((ok, fail) => {
      ws.onmessage = (e) => (new Uint8Array(e.data)[5] === 2 ? ok() : fail(new Error('not welcomed')));
    });
    ws.send(new Uint8Array(join));
    await welcome;
    window.control = (action, worker, ms) => ws.send(new Uint8Array([...header(6), action, 1,
      ...u64(worker), ...(action === 2 ? u32(ms) : [])]));
  }, { room: relay.room, token: relay.adminToken, hash: LAYOUT_HASH });
  return (action, worker, ms = 0) => page.evaluate(([a, w, m]) => window.control(a, w, m), [action, worker, ms]);
}

test("the teacher's pause, resume and delay reach the tab", { timeout: 200_000 }, async () => {
  const teacherPage = await browser.context.newPage();
  const control = await teacher(teacherPage);
  const id = (await state(gpuTab)).worker_id;
  await control(0, id);
  await waitInPage(browser, () => window.easel.state().paused, null, 30_000, 'the pause', gpuTab);
  await waitInPage(browser, () => window.easel.state().status === 'paused', null, 30_000,
    'the paused state', gpuTab);
  assert.match(await gpuTab.locator('#state').innerText(), /Paused by the teacher/);
  // The round under way when the pause came still pushes; then nothing.
  await new Promise((r) => setTimeout(r, 1000));
  const paused = (await state(gpuTab)).pushes;
  await new Promise((r) => setTimeout(r, 3000));
  assert.equal((await state(gpuTab)).pushes, paused, 'a paused tab pushed');
  await control(1, id);
  await waitInPage(browser, (n) => window.easel.state().pushes > n + 1, paused, 60_000,
    'pushes after the resume', gpuTab);
  await control(2, id, 1500);
  await waitInPage(browser, () => window.easel.state().status === 'delayed', null, 30_000,
    'the delayed state', gpuTab);
  assert.match(await gpuTab.locator('#state').innerText(), /Delayed 1500 ms by the teacher/);
  await waitInPage(browser, () => window.easel.state().delay_ms === 1500, null, 5_000,
    'the delay in the numbers', gpuTab);
  await control(2, id, 0);
  await waitInPage(browser, () => window.easel.state().delay_ms === 0, null, 30_000,
    'the delay removed', gpuTab);
  await teacherPage.close();
});

test('a LAN address without a secure context says so, falls back to the CPU and trains', { timeout: 200_000 }, async () => {
  const lan = await launch(relay.port, ['--host-resolver-rules=MAP classroom.test 127.0.0.1']);
  const { page } = lan;
  await page.goto(`http://classroom.test:${relay.port}/?room=${relay.room}`);
  await waitInPage(lan, () => window.easel?.state().joined, null, 60_000, 'the Welcome', page);
  await waitInPage(lan, () => window.easel.state().accepted >= 2, null, 120_000, '2 accepted pushes', page);
  const s = await state(page);
  assert.equal(s.backend, 'cpu');
  assert.match(s.fallback_reason, /not a secure context/);
  const why = await page.locator('#why').innerText();
  assert.ok(await page.locator('#why').isVisible(), 'the reason is shown');
  assert.match(why, /https:\/\//, `the notice does not tell the student what to open: ${why}`);
  await screenshot(page, 'student-lan-cpu.png');
  // On a phone's screen: one column, nothing wider than the screen.
  await page.setViewportSize({ width: 390, height: 844 });
  // The chart follows its box's width one frame later.
  await waitInPage(lan, () => document.documentElement.scrollWidth <= window.innerWidth, null,
    5_000, 'the page to fit a phone screen', page);
  const [a, b] = await page.locator('main > section:not([hidden])').evaluateAll(
    (els) => els.slice(0, 2).map((e) => e.getBoundingClientRect().left));
  assert.equal(a, b, 'the cards are not in one column on a phone');
  await screenshot(page, 'student-phone.png');
  assert.deepEqual(lan.outside, [], 'requests left 127.0.0.1');
});

test('without a room code the page asks for one', { timeout: 30_000 }, async () => {
  const page = await browser.context.newPage();
  await page.goto(`http://127.0.0.1:${relay.port}/`);
  await page.locator('#room-input').fill(relay.room.toLowerCase());
  await page.locator('#join button').click();
  await page.waitForURL(new RegExp(`room=${relay.room}`));
  await page.close();
});
