// A lesson's predict-vote-reveal on real student tabs (issue 12, item 4): `easel serve`, two
// native bots and three student tabs training on the CPU in headless Chromium. The teacher asks
// the sync-or-async lesson over the API; every tab shows the question; each tab taps an answer
// (one changes its mind); the tally the relay counts is the tabs' votes; the runs start and the
// buttons close; at the end every tab shows the measured sentence and its own vote. Screenshot:
// artifacts/lesson-student.png. Helpers and environment: relay.mjs.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  checkPrerequisites, cleanup, launch, screenshot, startBots, startServer, waitInPage,
} from './relay.mjs';

let relay;
let browser;

before(async () => {
  checkPrerequisites();
  relay = await startServer();
  await startBots(relay.port, relay.room, 2);
  browser = await launch(relay.port, [], { width: 390, height: 844 });
});

after(cleanup);

async function lesson(body) {
  const r = await fetch(`http://127.0.0.1:${relay.port}/api/rooms/${relay.room}/lesson?admin=${relay.adminToken}`, {
    method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body),
  });
  const json = await r.json();
  assert.equal(r.status, 200, JSON.stringify(json));
  return json;
}

const phase = (page) => page.evaluate(() => document.getElementById('question').dataset.phase ?? null);

test('three tabs vote on the lesson, the relay counts them, and every tab sees the reveal', { timeout: 300_000 }, async () => {
  const tabs = [browser.page, await browser.context.newPage(), await browser.context.newPage()];
  for (const tab of tabs) {
    await tab.goto(`http://127.0.0.1:${relay.port}/?room=${relay.room}&backend=cpu`);
  }
  for (const tab of tabs) {
    await waitInPage(browser, () => window.easel?.state().joined, null, 60_000, 'the Welcome', tab);
  }
  assert.equal(await tabs[0].locator('#question').isHidden(), true, 'no question before the teacher asks');

  const asked = await lesson({ action: 'ask', preset: 'sync-async', seconds: 12, target: 0.5 });
  assert.equal(asked.phase.phase, 'vote');
  for (const tab of tabs) {
    await waitInPage(browser, () => document.getElementById('question').dataset.phase === 'open', null, 20_000,
      'the question on the tab', tab);
    assert.match(await tab.locator('#question-text').innerText(), /Which reaches the target first/);
    assert.equal(await tab.locator('#question-answers button').count(), asked.preset.answers.length);
  }
  // Tab 0 votes async, tab 1 first sync and then async, tab 2 sync.
  const vote = async (tab, i) => {
    await tab.locator(`#question-answers button[data-answer="${i}"]`).click();
    await waitInPage(browser, (k) => document.querySelector(`#question-answers button[data-answer="${k}"]`)
      ?.classList.contains('mine'), i, 20_000, `vote ${i} acknowledged`, tab);
  };
  await vote(tabs[0], 1);
  await vote(tabs[1], 0);
  await vote(tabs[1], 1);
  await vote(tabs[2], 0);
  await screenshot(tabs[1], 'lesson-student.png');

  const run = await lesson({ action: 'run' });
  assert.deepEqual(run.tally, [1, 2, 0], `the tally: ${JSON.stringify(run)}`);
  assert.equal(run.votes, 3);
  assert.equal(run.voters, 3);
  for (const tab of tabs) {
    await waitInPage(browser, () => document.getElementById('question').dataset.phase === 'closed', null, 20_000,
      'the vote closed on the tab', tab);
    assert.equal(await tab.locator('#question-answers button:enabled').count(), 0, 'no answer can be tapped');
  }
  for (const tab of tabs) {
    await waitInPage(browser, () => document.getElementById('question').dataset.phase === 'reveal', null, 120_000,
      'the reveal on the tab', tab);
    const outcome = await tab.locator('#question-outcome').innerText();
    assert.match(outcome, /sync FedAvg|async EASGD/, outcome);
  }
  assert.match(await tabs[0].locator('#question-answers button.mine').innerText(), /your vote/);
  assert.equal(await phase(tabs[2]), 'reveal');
  await screenshot(tabs[0], 'lesson-student-reveal.png');

  await lesson({ action: 'end' });
  for (const tab of tabs) {
    await waitInPage(browser, () => document.getElementById('question').hidden, null, 20_000, 'the question put away', tab);
  }
});
