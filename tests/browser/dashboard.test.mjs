// The teacher's dashboard in headless Chromium: `easel serve` with two native bots
// (`easel bots`) as the devices. The page must show the devices, obey a delay slider (the
// device turns "delayed" in the relay's table), draw its uPlot charts with accuracy points,
// and refuse to show anything without the admin token. artifacts/dashboard.png is the
// screenshot at projector size.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import {
  CHROMIUM, Cleanups, EASEL_BIN, ROOT, launch, screenshot, startEasel, startServe, waitFor,
} from './harness.mjs';

const cleanups = new Cleanups();
let serve;

/** What the dashboard exposes, for failure messages. */
const dashState = () => {
  const d = window.easelDashboard;
  return d && {
    connected: d.connected, run: d.run, devices: d.devices, accuracy: d.accuracy,
    evals: d.evals.length, histogram: d.histogram, updates: d.updates, lastError: d.lastError,
  };
};

before(async () => {
  assert.ok(existsSync(CHROMIUM), `Chromium is missing at ${CHROMIUM}: apt-get install -y chromium`);
  assert.ok(existsSync(EASEL_BIN), `the easel binary is missing at ${EASEL_BIN}: `
    + 'cargo build --release -p easel-relay --bin easel (or set EASEL_BIN)');
  assert.ok(existsSync(join(ROOT, 'www', 'pkg', 'easel_client_bg.wasm')), 'run `cargo xtask wasm` first');
  serve = await startServe(cleanups);
  // Two native devices; they train until the test stops them.
  await startEasel(
    ['bots', '--relay', `ws://127.0.0.1:${serve.port}/ws`, '--room', serve.room, '--count', '2', '--every', '60'],
    [],
    cleanups,
  );
});

after(async () => {
  await cleanups.run();
});

test('without the admin token the page says so and shows no controls', async () => {
  const browser = await launch(serve.port, cleanups);
  const { page } = browser;
  for (const url of [
    `http://127.0.0.1:${serve.port}/teacher.html?room=${serve.room}`,
    `http://127.0.0.1:${serve.port}/teacher.html?room=${serve.room}&admin=wrong`,
  ]) {
    await page.goto(url);
    await page.locator('#no-token').waitFor({ state: 'visible', timeout: 10_000 });
    assert.equal(await page.locator('#dashboard').isVisible(), false);
    assert.equal(await page.locator('#devices input[type=range]').count(), 0);
  }
  assert.match(await page.locator('#no-token').innerText(), /admin token/);
});

test('the teacher sees both bots, slows one down with its slider, and the charts fill in', { timeout: 180_000 }, async () => {
  const browser = await launch(serve.port, cleanups, { viewport: { width: 1600, height: 1000 } });
  const { page } = browser;
  assert.match(serve.teacherUrl, /\/teacher\.html\?room=\w+&admin=\w+$/);
  await page.goto(serve.teacherUrl);

  await waitFor(browser, () => {
    const d = window.easelDashboard;
    return d?.connected && d.devices.length === 2 && d.devices.every((x) => x.state === 'training' && x.pushes > 0);
  }, null, 60_000, 'two training bots in the table', dashState);
  assert.equal(await page.locator('#devices tbody tr').count(), 2);
  assert.match(await page.locator('#qr svg').getAttribute('viewBox') ?? '', /\d/);
  assert.equal(await page.locator('#room-code').innerText(), serve.room);

  // Click the first device's slider at 30% of its track: about 1,500 ms after each round.
  const row = page.locator('#devices tbody tr').first();
  const id = Number(await row.getAttribute('data-id'));
  const slider = row.locator('input[type=range]');
  const box = await slider.boundingBox();
  await page.mouse.click(box.x + box.width * 0.3, box.y + box.height / 2);
  const ms = Number(await slider.inputValue());
  assert.ok(ms >= 1000 && ms <= 2000, `slider at ${ms} ms`);
  await waitFor(browser, ([dev, want]) => {
    const x = window.easelDashboard.devices.find((d) => d.id === dev);
    return x?.state === 'delayed' && x.delay_ms === want;
  }, [id, ms], 20_000, 'the relay to report the device as delayed', dashState);
  assert.match(await row.locator('[data-k=delay]').innerText(), new RegExp(`^${ms} ms$`));
  await page.locator(`#devices tr[data-id="${id}"] [data-k=state]`).getByText('delayed').waitFor({ timeout: 5000 });
  // Its timeline shows the waiting.
  await waitFor(browser, (dev) => window.easelDashboard.spans.some((s) => s.worker === dev && s.kind === 'waiting'),
    id, 30_000, 'a waiting span of the delayed device', dashState);

  // Charts: uPlot canvases, accuracy points from the relay's evaluations, a histogram.
  await waitFor(browser, () => {
    const d = window.easelDashboard;
    return d.accuracy !== null && d.charts['chart-accuracy'].data[0].length > 0 && d.histogram.length > 0;
  }, null, 60_000, 'an accuracy point and a staleness histogram', dashState);
  assert.ok(await page.locator('.uplot canvas').count() >= 6, 'six uPlot charts');
  const s = await page.evaluate(() => ({
    points: window.easelDashboard.charts['chart-accuracy'].data[0].length,
    alpha: window.easelDashboard.charts['chart-alpha'].data[0].length,
    run: window.easelDashboard.run,
  }));
  assert.ok(s.points > 0 && s.alpha > 0, JSON.stringify(s));
  assert.equal(s.run, 1);
  assert.equal(await page.locator('#runs tbody tr').count(), 1);
  assert.match(await page.locator('#runs tr[data-run="1"] td').nth(3).innerText(), /^\d+\.\d %$/,
    'the current run shows its best accuracy');
  const href = await page.locator('#download-model').getAttribute('href');
  const model = await page.request.get(new URL(href, page.url()).href);
  assert.equal(model.status(), 200);
  assert.match(model.headers()['content-disposition'], /\.safetensors"/);

  // Let a few more points arrive with one straggler, then the screenshot for the projector.
  await page.waitForTimeout(3000);
  await screenshot(page, 'dashboard.png');
  assert.deepEqual(browser.outside, [], 'requests left 127.0.0.1');
});
