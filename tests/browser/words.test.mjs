// The student page in plain words, in headless Chromium: the room-code page fits a 360 px
// phone and a wrong code can be typed again; a round shows its progress ("step k of K")
// while it runs; every number explains itself on tap; a guess below 50 % confidence says it
// is not sure; the local loss chart marks the teacher's reset. Screenshots:
// artifacts/room-code-360x740.png, artifacts/student-390x844.png, student-explain-390x844.png,
// artifacts/student-1280x720.png. Helpers and environment: relay.mjs.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import {
  ARTIFACTS, checkPrerequisites, cleanup, launch, screenshot, startServer, waitInPage,
} from './relay.mjs';

let relay;
let browser;
let tab;

before(async () => {
  checkPrerequisites();
  relay = await startServer();
  browser = await launch(relay.port, [], { width: 360, height: 740 });
  tab = browser.page;
});

after(cleanup);

/** A teacher's command through the control API (PROTOCOL.md, Teacher API). */
async function control(cmd) {
  const r = await fetch(`http://127.0.0.1:${relay.port}/api/rooms/${relay.room}/control?admin=${relay.adminToken}`, {
    method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(cmd),
  });
  const text = await r.text();
  assert.equal(r.status, 200, `${JSON.stringify(cmd)}: ${text}`);
  return JSON.parse(text);
}

const fits = (page) => page.evaluate(() => document.documentElement.scrollWidth <= window.innerWidth);

test('the room-code page fits 360 px and a wrong code can be typed again', { timeout: 90_000 }, async () => {
  await tab.goto(`http://127.0.0.1:${relay.port}/?backend=cpu`);
  assert.ok(await fits(tab), 'the room-code page is wider than a 360 px phone');
  await tab.locator('#room-input').fill('wrong1');
  await tab.locator('#join button').click();
  await tab.waitForURL(/room=WRONG1/);
  // The relay does not know the room: the field comes back with the code in it and the reason.
  await tab.locator('#join-problem').waitFor({ state: 'visible', timeout: 60_000 });
  assert.match(await tab.locator('#join-problem').innerText(), /no room "WRONG1".*type it again/);
  assert.equal(await tab.locator('#room-input').inputValue(), 'WRONG1');
  assert.ok(await tab.locator('#room-input').isVisible() && await tab.locator('#join button').isVisible());
  assert.equal(await tab.locator('#student').isVisible(), false);
  assert.ok(await fits(tab), 'the retype page is wider than a 360 px phone');
  await screenshot(tab, 'room-code-360x740.png');
  await tab.locator('#room-input').fill(relay.room.toLowerCase());
  await tab.locator('#join button').click();
  await tab.waitForURL(new RegExp(`room=${relay.room}`));
  await waitInPage(browser, () => window.easel?.state().joined, null, 60_000, 'the Welcome after the retyped code', tab);
  assert.match(tab.url(), /backend=cpu/, 'the other parameters of the address are kept');
});

test('a round shows its progress, every number explains itself, an unsure guess says so', { timeout: 180_000 }, async () => {
  await tab.setViewportSize({ width: 390, height: 844 });
  // A model that cannot learn (lr 0) stays unsure; long rounds show their steps.
  await control({ type: 'settings', lr: 0, local_steps: 400 });
  await waitInPage(browser, () => window.easel.state().local_steps === 400 && window.easel.state().pushes > 0,
    null, 60_000, 'rounds of 400 steps', tab);
  // Mid-round: "step k of 400", with 1 < k < 400, and the bar part way.
  await waitInPage(browser, () => {
    const m = document.getElementById('round-step').textContent.match(/^step (\d+) of 400$/);
    return m && Number(m[1]) > 1 && Number(m[1]) < 400 && document.getElementById('round-progress').value > 0;
  }, null, 60_000, '"step k of 400" mid-round', tab);
  const round = (await tab.evaluate(() => window.easel.state())).round;
  assert.equal(round.phase, 'training');
  assert.equal(round.steps, 400);

  // Every number of the page explains itself on tap.
  const unexplained = await tab.evaluate(() => [...document.querySelectorAll('#student dt, #student h2, #student h3')]
    .filter((el) => !el.dataset.explain).map((el) => el.id || el.textContent.trim()));
  assert.deepEqual(unexplained, [], 'labels without an explanation');
  for (const [id, want] of [
    ['tau-label', /how many merges happened while I was computing/],
    ['alpha-label', /how much of my push the class's model took in/],
    ['distance-label', /how far my model is from the class's/],
    ['loss-label', /nats.*2\.30 is guessing among 10 digits/],
    ['round-label', /steps/],
  ]) {
    await tab.locator(`#${id}`).click();
    await tab.locator('#explain-bubble').waitFor({ state: 'visible', timeout: 5000 });
    assert.match(await tab.locator('#explain-bubble').innerText(), want, id);
    const box = await tab.locator('#explain-bubble').boundingBox();
    assert.ok(box.x >= 0 && box.x + box.width <= 390, `the bubble of ${id} leaves the screen: ${JSON.stringify(box)}`);
  }
  await tab.locator('#tau-label').click();
  await tab.locator('#explain-bubble').waitFor({ state: 'visible', timeout: 5000 });
  // The screen as the student sees it (a full-page shot resizes the window, which hides the bubble).
  await tab.screenshot({ path: join(ARTIFACTS, 'student-explain-390x844.png') });
  await tab.mouse.click(5, 5); // a tap outside every label
  await tab.locator('#explain-bubble').waitFor({ state: 'hidden', timeout: 5000 });

  // A guess from a model that learned nothing: below 50 %, shown as unsure.
  await tab.locator('#draw').scrollIntoViewIfNeeded();
  const pad = await tab.locator('#draw').boundingBox();
  const at = (fx, fy) => [pad.x + fx * pad.width, pad.y + fy * pad.height];
  await tab.mouse.move(...at(0.3, 0.25));
  await tab.mouse.down();
  for (const [fx, fy] of [[0.5, 0.25], [0.7, 0.25], [0.6, 0.5], [0.5, 0.75]]) await tab.mouse.move(...at(fx, fy), { steps: 8 });
  await tab.mouse.up();
  await waitInPage(browser, () => window.easel.state().prediction, null, 30_000, 'a prediction', tab);
  const { prediction } = await tab.evaluate(() => window.easel.state());
  const top = Math.max(...prediction.center);
  assert.ok(top < 0.5, `the untrained center is ${top} sure`);
  const guess = await tab.locator('#guess-center p.top').innerText();
  assert.match(guess, /^not sure:\s+maybe \d \(\d+ %\)$/, guess);
  assert.ok(await tab.locator('#guess-center.unsure').count() === 1);

  // The teacher's reset: the push in flight is refused with RESYNC, and the chart marks it.
  await control({ type: 'settings', lr: 0.05, local_steps: 16 });
  await waitInPage(browser, () => (window.easel.state().losses.length >= 3), null, 60_000, 'a few losses', tab);
  await control({ type: 'reset', name: 'fresh start' });
  await waitInPage(browser, () => window.easel.state().resets.length >= 1, null, 60_000, 'the reset marked', tab);
  await waitInPage(browser, () => {
    const s = window.easel.state();
    return s.losses.filter(([t]) => t > s.resets[0]).length >= 10;
  }, null, 60_000, 'losses after the reset', tab);
  assert.ok(await tab.locator('#reset-note').isVisible(), 'the chart says what its dashed line is');
  assert.ok(await fits(tab), 'the page is wider than a 390 px phone');
  await screenshot(tab, 'student-390x844.png');
  await tab.setViewportSize({ width: 1280, height: 720 });
  await waitInPage(browser, () => document.documentElement.scrollWidth <= window.innerWidth, null, 5_000,
    'the page to fit 1280 px', tab);
  await tab.waitForTimeout(500);
  await screenshot(tab, 'student-1280x720.png');
  assert.deepEqual(browser.outside, [], 'requests left 127.0.0.1');
});
