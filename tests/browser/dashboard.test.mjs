// The teacher's dashboard in headless Chromium: `easel serve` with two native bots
// (`easel bots`) as the devices. The page must show the devices, obey a delay slider (the
// device turns "delayed" in the relay's table), draw its uPlot charts with accuracy points,
// and refuse to show anything without the admin token. artifacts/dashboard.png is the
// screenshot at projector size.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  checkPrerequisites, cleanup, launch, screenshot, startBots, startServer, waitInPage,
} from './relay.mjs';

let serve;

before(async () => {
  checkPrerequisites();
  serve = await startServer();
  // Two native devices; they train until the test stops them.
  await startBots(serve.port, serve.room, 2, ['--every', '60']);
});

after(cleanup);

test('without the admin token the page says so and shows no controls', async () => {
  const browser = await launch(serve.port);
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
  const browser = await launch(serve.port, [], { width: 1600, height: 1000 });
  const { page } = browser;
  assert.match(serve.teacherUrl, /\/teacher\.html\?room=\w+&admin=\w+$/);
  await page.goto(serve.teacherUrl);

  await waitInPage(browser, () => {
    const d = window.easelDashboard;
    return d?.connected && d.devices.length === 2 && d.devices.every((x) => x.state === 'training' && x.pushes > 0);
  }, null, 60_000, 'two training bots in the table');
  assert.equal(await page.locator('#devices tbody tr').count(), 2);
  assert.match(await page.locator('#qr svg').getAttribute('viewBox') ?? '', /\d/);
  assert.equal(await page.locator('#room-code').innerText(), serve.room);

  // Click the first device's slider at 15% of its track (0 to 10,000 ms): about 1,500 ms after each round.
  const row = page.locator('#devices tbody tr').first();
  const id = Number(await row.getAttribute('data-id'));
  const slider = row.locator('input[type=range]');
  const box = await slider.boundingBox();
  await page.mouse.click(box.x + box.width * 0.15, box.y + box.height / 2);
  const ms = Number(await slider.inputValue());
  assert.ok(ms >= 1000 && ms <= 2000, `slider at ${ms} ms`);
  await waitInPage(browser, ([dev, want]) => {
    const x = window.easelDashboard.devices.find((d) => d.id === dev);
    return x?.state === 'delayed' && x.delay_ms === want;
  }, [id, ms], 20_000, 'the relay to report the device as delayed');
  assert.match(await row.locator('[data-k=delay]').innerText(), new RegExp(`^${ms} ms$`));
  await page.locator(`#devices tr[data-id="${id}"] [data-k=state]`).getByText('delayed').waitFor({ timeout: 5000 });
  // Its timeline shows the waiting.
  await waitInPage(browser, (dev) => window.easelDashboard.spans.some((s) => s.worker === dev && s.kind === 'waiting'),
    id, 30_000, 'a waiting span of the delayed device');

  // Charts: uPlot canvases, accuracy points from the relay's evaluations, a histogram.
  await waitInPage(browser, () => {
    const d = window.easelDashboard;
    return d.accuracy !== null && d.charts['chart-accuracy'].data[0].length > 0 && d.histogram.length > 0;
  }, null, 60_000, 'an accuracy point and a staleness histogram');
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

  // The settings form is the relay's schema: one field per setting of GET /api/settings, in
  // its order, with its help; a change typed in the form reaches the room.
  const vocab = await (await page.request.get(new URL('/api/settings', page.url()).href)).json();
  const names = await page.locator('#settings [name]').evaluateAll((els) => els.map((e) => e.name));
  assert.deepEqual(names, vocab.settings.map((f) => f.key));
  assert.equal(await page.locator('#settings label').first().getAttribute('title'), vocab.settings[0].help);
  await page.locator('#settings [name=tau_max]').fill('12');
  await page.locator('#settings button[type=submit]').click();
  await waitInPage(browser, () => window.easelDashboard.settings?.tau_max === 12, null, 10_000,
    'the form to set tau_max');
  // A value out of range is refused by the relay with the setting named, and nothing changes.
  await page.locator('#settings [name=alpha]').fill('1.5');
  await page.locator('#settings button[type=submit]').click();
  await page.locator('#toast', { hasText: 'alpha' }).waitFor({ timeout: 10_000 });
  assert.equal(await page.evaluate(() => window.easelDashboard.settings.alpha), 0.5);
  await page.locator('#settings [name=alpha]').fill('0.5');

  // Let a few more points arrive with one straggler, then the screenshot for the projector.
  await page.waitForTimeout(3000);
  await screenshot(page, 'dashboard.png');

  // A preset: "sync FedAvg" sets the room's strategy and starts a new named run that
  // trains under the barrier.
  await page.locator('#presets button', { hasText: 'sync FedAvg' }).click();
  await waitInPage(browser, () => {
    const d = window.easelDashboard;
    return d.preset?.strategy === 'fedavg' && d.run === d.preset.run && d.run > 1;
  }, null, 20_000, 'the preset to set fedavg and start a run');
  assert.equal(await page.locator('#settings [name=strategy]').inputValue(), 'fedavg');
  assert.match(await page.locator(`#runs tr[data-run="${await page.evaluate(() => window.easelDashboard.run)}"]`).innerText(), /sync FedAvg/);
  await waitInPage(browser, () => window.easelDashboard.pushes > 0, null, 60_000, 'pushes under FedAvg');

  // The partition picker: three digits per device. The relay closes the devices with 4001;
  // the bots join again as themselves, on their new shards, and train on.
  await page.locator('#partition-kind').selectOption('classes');
  assert.equal(await page.locator('#partition-param-name').innerText(), 'K');
  await page.locator('#partition-param').fill('3');
  await page.locator('#apply-partition').click();
  await waitInPage(browser, () => window.easelDashboard.settings?.partition === 'classes:3', null, 10_000,
    'the relay to take the partition classes:3');
  const before = await page.evaluate(() => Object.fromEntries(window.easelDashboard.devices.map((d) => [d.id, d.pushes])));
  await waitInPage(browser, (b) => {
    const ds = window.easelDashboard.devices;
    return ds.length === 2 && ds.every((d) => d.state === 'training' && d.pushes > b[d.id]);
  }, before, 60_000, 'both bots back, as themselves, pushing again');
  assert.equal(await page.locator('#partition-kind').inputValue(), 'classes');
  assert.equal(await page.locator('#partition-param').inputValue(), '3');
  assert.deepEqual(browser.outside, [], 'requests left 127.0.0.1');
});
