// The whole classroom in headless Chromium: `easel serve`, the teacher's dashboard and three
// student tabs. One tab trains on WebGPU (SwiftShader); one is opened over plain http:// on a
// LAN-like host name, where WebGPU is unavailable, and must say so and train on the CPU; the
// third gets a large artificial delay from the dashboard's slider and must become the stalest
// device. The center must pass 80% test accuracy and the run's CSV export must be valid.
// Screenshots of both pages go to artifacts/. Helpers and environment: relay.mjs.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  checkPrerequisites, cleanup, launch, screenshot, startServer, waitInPage,
} from './relay.mjs';

const LAN_HOST = '--host-resolver-rules=MAP classroom.test 127.0.0.1';
/** The delay the dashboard gives the straggler: the slider's maximum. */
const DELAY_MS = 10000;

let relay;
let browser;

before(async () => {
  checkPrerequisites();
  relay = await startServer();
  browser = await launch(relay.port, [LAN_HOST], { width: 1600, height: 1000 });
});

after(cleanup);

const state = (page) => page.evaluate(() => window.easel.state());
const devices = (page) => page.evaluate(() => window.easelDashboard.devices);

/** RFC 4180 rows of `text` (quoted fields may hold commas, quotes and newlines). */
function parseCsv(text) {
  const rows = [];
  let row = [];
  let field = '';
  let quoted = false;
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (quoted) {
      if (c === '"' && text[i + 1] === '"') { field += '"'; i++; } else if (c === '"') quoted = false;
      else field += c;
    } else if (c === '"') {
      assert.equal(field, '', `a quote inside an unquoted field at byte ${i}`);
      quoted = true;
    } else if (c === ',') { row.push(field); field = ''; } else if (c === '\n') {
      row.push(field.replace(/\r$/, ''));
      rows.push(row);
      row = [];
      field = '';
    } else field += c;
  }
  assert.equal(quoted, false, 'the CSV ends inside a quoted field');
  if (field !== '' || row.length) rows.push([...row, field]);
  return rows;
}

test('a teacher, three students, a straggler made from the dashboard', { timeout: 420_000 }, async () => {
  const origin = `http://127.0.0.1:${relay.port}`;
  const dash = browser.page;
  await dash.goto(relay.teacherUrl);
  await waitInPage(browser, () => window.easelDashboard?.connected && window.easelDashboard.settings,
    null, 30_000, 'the dashboard socket', dash);

  // Let stale pushes in: the straggler will be tens of versions behind.
  const tauMax = dash.locator('#settings input[name=tau_max]');
  await tauMax.fill('1000');
  await dash.locator('#settings button[type=submit]').click();
  await waitInPage(browser, () => window.easelDashboard.settings.tau_max === 1000, null, 10_000,
    'tau_max 1000 in the room', dash);

  // The student the teacher will slow down joins first, on the CPU, and the teacher drags its
  // delay slider to the maximum as soon as it shows up (its mean staleness counts every push,
  // so the pushes it made before the delay should be few).
  const slow = await browser.context.newPage();
  await slow.setViewportSize({ width: 1000, height: 900 });
  await slow.goto(`${origin}/?room=${relay.room}&backend=cpu`);
  await waitInPage(browser, () => window.easel?.state().worker_id != null, null, 60_000,
    'the slow tab to join', slow);
  const slowId = (await state(slow)).worker_id;
  const row = dash.locator(`#devices tbody tr[data-id="${slowId}"]`);
  const slider = row.locator('input[type=range]');
  await slider.waitFor({ timeout: 20_000 });
  await slider.focus();
  await slider.press('End');
  assert.equal(Number(await slider.inputValue()), DELAY_MS);
  await waitInPage(browser, (ms) => window.easel.state().delay_ms === ms, DELAY_MS, 20_000,
    'the delay to reach the slow tab', slow);
  await waitInPage(browser, ([id, ms]) => window.easelDashboard.devices
    .some((d) => d.id === id && d.state === 'delayed' && d.delay_ms === ms), [slowId, DELAY_MS],
  20_000, 'the slow tab shown as delayed', dash);

  // Two more students: WebGPU on this computer, and a phone-like tab over plain http:// on a
  // LAN name (no secure context, so no WebGPU).
  const gpu = await browser.context.newPage();
  await gpu.setViewportSize({ width: 1000, height: 900 });
  // SwiftShader is slower than the CPU here, so `auto` would train on the CPU
  // (backend.test.mjs): ask for the GPU.
  await gpu.goto(`${origin}/?room=${relay.room}&backend=gpu`);
  const lan = await browser.context.newPage();
  await lan.setViewportSize({ width: 390, height: 844 });
  await lan.goto(`http://classroom.test:${relay.port}/?room=${relay.room}`);
  for (const [page, what] of [[gpu, 'WebGPU tab'], [lan, 'LAN tab'], [slow, 'slow tab']]) {
    await waitInPage(browser, () => window.easel?.state().accepted >= 1, null, 120_000,
      `a first accepted push from the ${what}`, page);
  }

  // All three on the dashboard, with their backends.
  await waitInPage(browser, () => window.easelDashboard.devices.filter((d) => d.kind === 'browser'
    && ['training', 'delayed'].includes(d.state)).length === 3, null, 30_000,
  'three browsers on the dashboard', dash);
  const [g, l, s] = [await state(gpu), await state(lan), await state(slow)];
  assert.equal(g.backend, 'gpu', `the WebGPU tab fell back: ${g.fallback_reason}`);
  assert.equal(l.backend, 'cpu');
  assert.match(l.fallback_reason, /not a secure context/);
  assert.match(l.fallback_reason, /https:\/\//);
  assert.match(await lan.locator('body').innerText(), /No WebGPU: this page is not a secure context/);
  const byId = new Map((await devices(dash)).map((d) => [d.id, d]));
  assert.equal(byId.get(g.worker_id)?.backend, 'gpu');
  assert.equal(byId.get(l.worker_id)?.backend, 'cpu');
  assert.equal(byId.get(s.worker_id)?.backend, 'cpu');

  // The delayed device becomes the stalest, and the center learns.
  await waitInPage(browser, (id) => {
    const ds = window.easelDashboard.devices.filter((d) => d.kind === 'browser');
    const me = ds.find((d) => d.id === id);
    return me && ds.every((d) => d.id === id || (me.mean_tau ?? 0) > (d.mean_tau ?? 0));
  }, s.worker_id, 180_000, 'the delayed device to have the highest mean staleness', dash);
  await waitInPage(browser, () => window.easelDashboard.accuracy > 0.8, null, 180_000,
    'the center above 80% test accuracy', dash);
  const final = await devices(dash);
  console.log(final.filter((d) => d.kind === 'browser').map((d) => `${d.name} ${d.backend}: `
    + `${d.accepted}/${d.pushes} accepted, mean tau ${d.mean_tau?.toFixed(2)}, ${d.state}`).join('\n'));
  assert.match(await slow.locator('#state').innerText(), /[Dd]elay/);

  // The run's CSV export: a header, then rows of the header's width, pushes from all three.
  const csv = await dash.request.get(
    `${origin}/api/rooms/${relay.room}/runs/1.csv?admin=${relay.adminToken}`);
  assert.equal(csv.status(), 200);
  assert.match(csv.headers()['content-type'], /text\/csv/);
  const rows = parseCsv(await csv.text());
  const [header, ...body] = rows;
  assert.ok(header.includes('kind') && header.includes('worker') && header.includes('tau'), header.join(','));
  assert.ok(body.length > 10, `${body.length} rows`);
  for (const r of body) assert.equal(r.length, header.length, `row ${r.join(',')}`);
  const col = (name) => header.indexOf(name);
  const pushers = new Set(body.filter((r) => r[col('kind')] === 'push').map((r) => Number(r[col('worker')])));
  for (const id of [g.worker_id, l.worker_id, s.worker_id]) assert.ok(pushers.has(id), `pushes of worker ${id} in the CSV`);
  assert.ok(body.some((r) => r[col('kind')] === 'eval'), 'evaluations in the CSV');

  await dash.waitForTimeout(2000);
  await screenshot(dash, 'classroom-dashboard.png');
  await screenshot(gpu, 'classroom-student-gpu.png');
  await screenshot(lan, 'classroom-student-lan.png');
  await screenshot(slow, 'classroom-student-delayed.png');
  assert.deepEqual(browser.outside, [], 'requests left 127.0.0.1');
});
