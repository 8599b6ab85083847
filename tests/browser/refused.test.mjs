// Every device counted: a room with τ max 0 and two native bots (`easel bots`), the first of
// them truly slow (`--slow 1 --slowdown 1.5`: each of its rounds takes half as long again,
// so the fast bot has always made a version by the time it pushes, and about 40% of the
// class's pushes are the slow bot's). All of the slow bot's
// pushes are refused as too stale. The dashboard must say so: the device's refused count,
// its red state with the reason in words, its refused pushes in the staleness histogram
// (the relay's refused_histogram, drawn as a second series), and the room's banner with the
// share of the class's work thrown away and buttons that fix the settings; one of them is
// clicked and the relay takes it. Screenshots at 1280x800, 1920x1080 and 390x844 go to
// artifacts/refused-*.png. Helpers and environment: relay.mjs.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  checkPrerequisites, cleanup, launch, screenshot, startBots, startServer, waitInPage,
} from './relay.mjs';

let serve;

before(async () => {
  checkPrerequisites();
  serve = await startServer();
  // τ max 0 before any device joins: a push computed from an older center is refused.
  const r = await fetch(`http://127.0.0.1:${serve.port}/api/rooms/${serve.room}/control?admin=${serve.adminToken}`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ type: 'settings', tau_max: 0, strategy: 'easgd' }),
  });
  assert.equal(r.status, 200, await r.text());
  await startBots(serve.port, serve.room, 2, ['--slow', '1', '--slowdown', '1.5', '--every', '60']);
});

after(cleanup);

test('a slow device whose pushes are all refused is red, counted, in the histogram and bannered', { timeout: 240_000 }, async () => {
  const browser = await launch(serve.port, [], { width: 1280, height: 800 });
  const { page } = browser;
  await page.goto(serve.teacherUrl);

  // The relay's view: one device with refused pushes and a red alert, the banner.
  await waitInPage(browser, () => {
    const d = window.easelDashboard;
    return d?.connected && d.devices.length === 2
      && d.devices.some((x) => x.refused >= 2 && x.alert?.level === 'red')
      && d.refusedHistogram.length > 0 && d.workRefused;
  }, null, 150_000, 'a red device with refused pushes, a refused histogram and the banner');
  const s = await page.evaluate(() => {
    const d = window.easelDashboard;
    return {
      devices: d.devices, refusedHistogram: d.refusedHistogram, banner: d.workRefused,
      chart: d.charts['chart-histogram'].data,
    };
  });
  const slow = s.devices.find((x) => x.alert?.level === 'red');
  const fast = s.devices.find((x) => x.id !== slow.id);
  assert.ok(slow.refused > 0 && slow.recent.some((m) => !m.accepted && m.tau >= 1), JSON.stringify(slow));
  assert.match(slow.alert.reason, /^\d+ versions? late, limit 0: its work is thrown away \(\d+ of its last \d+ push(es)? refused\)$/);
  assert.ok(fast.accepted > 0, JSON.stringify(fast));

  // The table: the refused count, the red state cell and the reason under the row, read in
  // one go (the next update may turn it amber, should one push of it get through).
  const table = await page.evaluate((id) => {
    const row = document.querySelector(`#devices tr[data-id="${id}"]`);
    const why = document.querySelector(`#devices tr.t-alert-row[data-for="${id}"]`);
    return {
      level: row.dataset.level,
      refused: row.querySelector('[data-k=refused]').textContent,
      state: row.querySelector('[data-k=state]').textContent,
      struck: row.querySelectorAll('[data-k=recent] s.t-tau-refused').length,
      why: why?.textContent ?? '',
      alert: window.easelDashboard.devices.find((d) => d.id === id)?.alert,
    };
  }, slow.id);
  assert.equal(table.level, table.alert?.level ?? 'ok', JSON.stringify(table));
  assert.ok(['red', 'amber'].includes(table.level), JSON.stringify(table));
  assert.match(table.refused, /^[1-9]\d* refused$/);
  assert.equal(table.state, table.level === 'red' ? 'work refused' : 'some refused');
  assert.ok(table.struck > 0, 'refused pushes struck in the recent cell');
  assert.match(table.why, /versions? late, limit 0: its work is thrown away/);

  // The histogram draws the refused pushes as its second series, at their τ.
  const [taus, , refused] = s.chart;
  for (const [tau, n] of s.refusedHistogram) {
    const i = taus.indexOf(tau);
    assert.ok(i >= 0 && refused[i] === n, `τ ${tau}: ${n} refused, drawn ${refused[i]}`);
  }
  assert.equal(await page.locator('#chart-histogram .u-legend').getByText('refused', { exact: true }).count(), 1);

  // The banner says how much work was thrown away, in numbers, and offers the fixes.
  const banner = page.locator('#refused-banner');
  await banner.waitFor({ state: 'visible', timeout: 5000 });
  assert.match(await banner.innerText(), /\d+% of the class's work in the last minute was thrown away: \d+ of \d+ pushes refused, up to \d+ versions late against τ max 0/);
  const labels = await banner.locator('#refused-fixes button').allInnerTexts();
  assert.ok(labels.some((l) => /^Raise τ max to \d+$/.test(l)), labels.join(' | '));
  assert.ok(labels.includes('Bounded staleness'), labels.join(' | '));

  // The activity timeline has the slow device's rounds up to now.
  const drawn = await page.evaluate((id) => {
    const d = window.easelDashboard;
    const ends = d.spans.concat(d.openSpans).filter((x) => x.worker === id).map((x) => x.end_ms);
    return d.serverMs - Math.max(...ends);
  }, slow.id);
  assert.ok(drawn <= 1000, `the slow device's timeline ends ${drawn} ms before now`);

  await page.waitForTimeout(1000);
  await screenshot(page, 'refused-1280x800.png');
  await page.setViewportSize({ width: 1920, height: 1080 });
  await page.waitForTimeout(1200);
  await screenshot(page, 'refused-1920x1080.png');
  await page.setViewportSize({ width: 390, height: 844 });
  await page.waitForTimeout(1200);
  await screenshot(page, 'refused-390x844.png');
  // On the projector the class sees it too: the banner, in the question's place, with
  // nothing to scroll.
  await page.setViewportSize({ width: 1920, height: 1080 });
  await page.locator('#view-toggle').click();
  await page.waitForTimeout(1200);
  const onProjector = await page.evaluate(() => {
    const b = document.getElementById('refused-banner').getBoundingClientRect();
    return {
      projector: document.body.classList.contains('projector'),
      banner: b.height > 0 && b.bottom <= innerHeight && b.right <= innerWidth,
      text: document.getElementById('refused-text').textContent,
      scrolls: document.documentElement.scrollHeight > innerHeight
        || document.documentElement.scrollWidth > innerWidth,
    };
  });
  assert.ok(onProjector.projector && onProjector.banner && !onProjector.scrolls, JSON.stringify(onProjector));
  assert.match(onProjector.text, /thrown away/);
  await screenshot(page, 'refused-projector-1920x1080.png');
  await page.locator('#view-toggle').click();
  await page.setViewportSize({ width: 1280, height: 800 });

  // The teacher takes the first fix: the relay raises τ max.
  // Read and click in one go: the banner's numbers (and its fixes) move on every update.
  const want = await page.evaluate(() => {
    const b = [...document.querySelectorAll('#refused-fixes button')].find((x) => /^Raise τ max/.test(x.textContent));
    b.click();
    return Number(b.textContent.match(/\d+$/)[0]);
  });
  await waitInPage(browser, (t) => window.easelDashboard.settings?.tau_max === t, want, 10_000,
    `the relay to take τ max ${want}`);
  // The refusals it answers are no longer counted: the banner goes at once.
  await waitInPage(browser, () => window.easelDashboard.workRefused === null, null, 10_000,
    'the banner to go once τ max covers the refusals');
  assert.equal(await banner.isVisible(), false);
  assert.deepEqual(browser.outside, [], 'requests left 127.0.0.1');
});

test('under FedAvg the fast device waits at the barrier: amber with the count, and drawn as such', { timeout: 180_000 }, async () => {
  const base = `http://127.0.0.1:${serve.port}/api/rooms/${serve.room}/control?admin=${serve.adminToken}`;
  const post = (body) => fetch(base, {
    method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body),
  }).then(async (r) => {
    const text = await r.text();
    assert.equal(r.status, 200, text);
    return JSON.parse(text);
  });
  const state = await post({ type: 'settings', strategy: 'fedavg' });
  // The slow bot (the one refused above) also waits 2 s after each round: the other one
  // waits for it at the barrier for seconds every round.
  const slow = state.devices.reduce((a, b) => (b.refused > a.refused ? b : a)).id;
  assert.equal(state.devices.find((d) => d.id === slow).alert, null,
    'a barrier over every device refuses no push for lateness: the old refusals no longer count');
  await post({ type: 'delay', device: slow, ms: 2000 });
  const browser = await launch(serve.port, [], { width: 1280, height: 800 });
  const { page } = browser;
  await page.goto(serve.teacherUrl);
  await waitInPage(browser, (id) => {
    const d = window.easelDashboard;
    const fast = d?.devices.find((x) => x.id !== id);
    return fast?.alert?.label === 'at the barrier'
      && d.spans.some((s) => s.worker === fast.id && s.kind === 'barrier' && s.end_ms - s.start_ms >= 1000)
      && d.spans.some((s) => s.worker === id && s.kind === 'waiting');
  }, slow, 90_000, 'the fast device amber at the barrier, its barrier spans and the slow one\'s delay');
  const fast = await page.evaluate((id) => window.easelDashboard.devices.find((x) => x.id !== id), slow);
  assert.equal(fast.alert.level, 'amber');
  assert.match(fast.alert.reason, /^waiting for 1 slower device at the FedAvg barrier \(\d+ s so far\)$/);
  const why = page.locator(`#devices tr.t-alert-row[data-for="${fast.id}"]`);
  assert.match(await why.innerText(), /waiting for 1 slower device at the FedAvg barrier/);
  // A barrier wait is not drawn as communicating: the fast device's communicating spans are
  // short (the answer's write), its barrier spans long.
  const spans = await page.evaluate((id) => window.easelDashboard.spans.filter((s) => s.worker === id), fast.id);
  const longest = (kind) => Math.max(0, ...spans.filter((s) => s.kind === kind).map((s) => s.end_ms - s.start_ms));
  assert.ok(longest('barrier') >= 1000, `longest barrier span ${longest('barrier')} ms`);
  assert.ok(longest('communicating') < 500, `longest communicating span ${longest('communicating')} ms`);
  await page.waitForTimeout(4000);
  await screenshot(page, 'refused-barrier-1280x800.png');
  assert.deepEqual(browser.outside, [], 'requests left 127.0.0.1');
});
