// The dashboard's projector view (teacher.html?...&view=projector, or the bar's toggle) in
// headless Chromium, with three native bots training: at 1920x1080 and at 1280x720 it fits
// the screen without a scrollbar, shows the accuracy chart, the devices, the activity
// timeline, the join address on one line, the overlay of the previous run (named in the
// legend) and the current run's question, all in text of at
// least 20 px; the loss axis keeps its floor [0, ln 10]; the toggle goes to the full
// dashboard and back. Screenshots: artifacts/projector-1920x1080.png,
// artifacts/projector-1280x720.png, artifacts/dashboard-1280x720.png.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  checkPrerequisites, cleanup, launch, screenshot, startBots, startServer, waitInPage,
} from './relay.mjs';

let serve;

before(async () => {
  checkPrerequisites();
  serve = await startServer();
  await startBots(serve.port, serve.room, 3, ['--every', '60']);
});

after(cleanup);

const SIZES = [{ width: 1920, height: 1080 }, { width: 1280, height: 720 }];

/** What the test checks on the projector, measured in the page. */
function measure() {
  const px = (el) => parseFloat(getComputedStyle(el).fontSize);
  const box = (sel) => {
    const el = document.querySelector(sel);
    if (!el) return null;
    const r = el.getBoundingClientRect();
    const shown = r.width > 0 && r.height > 0 && getComputedStyle(el).visibility !== 'hidden';
    return { top: r.top, bottom: r.bottom, left: r.left, right: r.right, width: r.width, height: r.height, shown };
  };
  const charts = window.easelDashboard.charts;
  const axisPx = (id) => charts[id].axes.filter((a) => a.show !== false)
    .flatMap((a) => [a.font[1], a.labelFont[1]]);
  const main = document.querySelector('#join-urls li.t-url-main');
  const lines = (el) => { const r = document.createRange(); r.selectNodeContents(el); return r.getClientRects().length; };
  return {
    scrollWidth: document.documentElement.scrollWidth,
    scrollHeight: document.documentElement.scrollHeight,
    innerWidth,
    innerHeight,
    projector: document.body.classList.contains('projector'),
    chart: box('#chart-accuracy canvas'),
    activity: box('#chart-activity canvas'),
    devices: box('#devices'),
    deviceRows: [...document.querySelectorAll('#devices tbody tr:not(.t-sub)')]
      .filter((tr) => tr.getBoundingClientRect().height > 0).length,
    question: box('#question-text'),
    questionText: document.getElementById('question-text').textContent,
    qr: box('#qr svg'),
    joinUrl: main && { text: main.textContent, lines: lines(main), fits: main.parentElement.scrollWidth <= main.parentElement.clientWidth + 1 },
    fonts: {
      heading: px(document.getElementById('acc-h')),
      deviceHeader: px(document.querySelector('#devices th')),
      deviceName: px(document.querySelector('#devices td.t-name')),
      deviceState: px(document.querySelector('#devices [data-k=state]')),
      legend: px(document.querySelector('#chart-accuracy .u-legend')),
      headline: px(document.getElementById('head-accuracy')),
      headlineLabel: px(document.getElementById('head-accuracy-label')),
      question: px(document.getElementById('question-text')),
      accuracyAxes: Math.min(...axisPx('chart-accuracy')),
      activityAxes: Math.min(...axisPx('chart-activity')),
    },
    loss: { min: charts['chart-accuracy'].scales.loss.min, max: charts['chart-accuracy'].scales.loss.max },
  };
}

test('the projector view fits 1920x1080 and 1280x720 without scrolling, in large type', { timeout: 180_000 }, async () => {
  const browser = await launch(serve.port, [], SIZES[0]);
  const { page } = browser;
  await page.goto(`${serve.teacherUrl}&view=projector`);
  await waitInPage(browser, () => {
    const d = window.easelDashboard;
    return d?.connected && d.devices.length === 3 && d.devices.every((x) => x.state === 'training' && x.pushes > 0)
      && d.charts['chart-accuracy']?.data[0].length > 1 && d.spans.length > 0;
  }, null, 90_000, 'three training bots, accuracy points and activity');

  // A preset's run, started from elsewhere (the teacher's own screen): the projector learns
  // its question from the run's name.
  const runs = await page.request.post(
    `http://127.0.0.1:${serve.port}/api/rooms/${serve.room}/runs?admin=${serve.adminToken}`,
    { data: { name: 'sync FedAvg', reset: true } },
  );
  assert.equal(runs.status(), 201);
  await waitInPage(browser, () => /sync or async/.test(document.getElementById('question-text').textContent)
    && window.easelDashboard.charts['chart-accuracy'].data[0].length > 1, null, 60_000,
  "the preset's question and new accuracy points on the projector");

  // The previous run overlaid, named in the legend.
  await waitInPage(browser, () => document.querySelector('#overlay option[value="1"]'), null, 20_000, 'run #1 in the overlay picker');
  await page.locator('#overlay').selectOption('1');
  await waitInPage(browser, () => /run #1 run 1 accuracy/.test(document.querySelector('#chart-accuracy .u-legend').textContent)
    && window.easelDashboard.charts['chart-accuracy'].series[3].show, null, 20_000, 'the overlay named in the legend');

  for (const size of SIZES) {
    await page.setViewportSize(size);
    // The charts follow the window's size (a resize event), one frame later.
    await page.evaluate(() => new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r))));
    await page.waitForTimeout(1500);
    const m = await page.evaluate(measure);
    const where = `${size.width}x${size.height}: ${JSON.stringify(m)}`;
    assert.ok(m.projector, where);
    assert.ok(m.scrollHeight <= m.innerHeight && m.scrollWidth <= m.innerWidth, `a scrollbar at ${where}`);
    for (const [name, b] of Object.entries({ chart: m.chart, activity: m.activity, devices: m.devices, question: m.question, qr: m.qr })) {
      assert.ok(b?.shown, `${name} not shown at ${where}`);
      assert.ok(b.top >= 0 && b.bottom <= m.innerHeight + 1 && b.right <= m.innerWidth + 1, `${name} off the screen at ${where}`);
    }
    assert.ok(m.chart.height >= size.height * 0.3, `the accuracy chart is too small at ${where}`);
    assert.ok(m.activity.height >= size.height * 0.15, `the timeline is too small at ${where}`);
    assert.equal(m.deviceRows, 3, `device rows at ${where}`);
    assert.match(m.questionText, /Which reaches 90% first: sync or async\?/);
    assert.equal(m.joinUrl.lines, 1, `the join address wraps at ${where}`);
    assert.ok(m.joinUrl.fits, `the join address is cut at ${where}`);
    for (const [name, v] of Object.entries(m.fonts)) assert.ok(v >= 20, `${name} text is ${v} px at ${where}`);
    assert.ok(m.fonts.headline > m.fonts.headlineLabel, 'the numbers are larger than their labels');
    assert.ok(m.loss.min === 0 && m.loss.max >= Math.LN10, `the loss axis zooms in: ${JSON.stringify(m.loss)}`);
    await screenshot(page, `projector-${size.width}x${size.height}.png`);
  }

  // The toggle: the full dashboard for the teacher's own screen, and back.
  await page.locator('#view-toggle').click();
  await page.waitForTimeout(500);
  assert.equal(await page.evaluate(() => document.body.classList.contains('projector')), false);
  assert.equal(new URL(page.url()).searchParams.get('view'), null);
  assert.ok(await page.locator('#presets').isVisible(), 'the presets are on the full dashboard');
  assert.ok(await page.locator('#settings').isVisible(), 'the settings are on the full dashboard');
  const full = await page.evaluate(() => {
    const main = document.querySelector('#join-urls li.t-url-main');
    const u = window.easelDashboard.charts['chart-accuracy'];
    const r = document.createRange();
    r.selectNodeContents(main);
    return {
      lines: r.getClientRects().length,
      fits: main.parentElement.scrollWidth <= main.parentElement.clientWidth + 1,
      loss: [u.scales.loss.min, u.scales.loss.max],
    };
  });
  assert.equal(full.lines, 1, 'the join address wraps on the full dashboard');
  assert.ok(full.fits, 'the join address is cut on the full dashboard');
  assert.ok(full.loss[0] === 0 && full.loss[1] >= Math.LN10, `the loss axis zooms in: ${full.loss}`);
  // Every heading explains itself (a title for the mouse, a tap for a touch screen).
  const untitled = await page.evaluate(() => [...document.querySelectorAll('main h2')]
    .filter((h) => !h.dataset.explain || h.title !== h.dataset.explain).map((h) => h.id));
  assert.deepEqual(untitled, [], 'headings without an explanation');
  await page.locator('#dev-h').click();
  await page.locator('#explain-bubble').waitFor({ state: 'visible', timeout: 5000 });
  assert.match(await page.locator('#explain-bubble').innerText(), /staleness/);
  await page.locator('#dev-h').click();
  await page.locator('#explain-bubble').waitFor({ state: 'hidden', timeout: 5000 });
  await screenshot(page, 'dashboard-1280x720.png');

  await page.locator('#view-toggle').click();
  await page.waitForTimeout(500);
  assert.equal(new URL(page.url()).searchParams.get('view'), 'projector');
  const back = await page.evaluate(measure);
  assert.ok(back.scrollHeight <= back.innerHeight, `a scrollbar after the toggle: ${JSON.stringify(back)}`);
  assert.ok(back.fonts.accuracyAxes >= 20, 'the chart was rebuilt at the projector font');
  assert.deepEqual(browser.outside, [], 'requests left 127.0.0.1');
});
