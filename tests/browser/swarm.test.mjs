// SwarmSGD on the teacher's dashboard: `easel serve` with four native bots (`easel bots`) in a
// room whose strategy is `swarm:ring`, set through the teacher API before they join. The
// Topology panel must draw the ring (4 devices, 4 edges) and light up the pairwise averages
// the relay makes, every one along a ring edge; the mean model must learn (an evaluation
// above 50%). artifacts/swarm-topology.png is the screenshot at projector size.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  checkPrerequisites, cleanup, launch, screenshot, startBots, startServer, waitInPage,
} from './relay.mjs';

let serve;

before(async () => {
  checkPrerequisites();
  serve = await startServer();
  const r = await fetch(`http://127.0.0.1:${serve.port}/api/rooms/${serve.room}/control`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: `Bearer ${serve.adminToken}` },
    body: JSON.stringify({ type: 'settings', strategy: 'swarm:ring' }),
  });
  const body = await r.json();
  assert.equal(r.status, 200, JSON.stringify(body));
  assert.equal(body.settings.strategy, 'swarm:ring');
  // Four native devices; they follow the room's strategy and train until the test stops them.
  await startBots(serve.port, serve.room, 4, ['--every', '60']);
});

after(cleanup);

const key = (a, b) => `${Math.min(a, b)}-${Math.max(a, b)}`;

test('the teacher sees the ring, its pairwise averages, and the mean model learning', { timeout: 300_000 }, async () => {
  const browser = await launch(serve.port, [], { width: 1600, height: 1000 });
  const { page } = browser;
  await page.goto(serve.teacherUrl);

  await waitInPage(browser, () => {
    const d = window.easelDashboard;
    return d?.swarm?.exchanges > 0 && d.swarm.nodes.length === 4
      && document.querySelectorAll('#topology g.node').length === 4
      && document.querySelectorAll('#topology line.pair').length > 0;
  }, null, 90_000, 'a ring of 4 devices with a recent pairwise average in #topology');
  assert.ok(await page.locator('#topo-card').isVisible(), 'the Topology panel shows');

  // Pairs made while fewer bots had joined may lie on another graph: judge those made after
  // the dashboard first saw all four.
  const since = await page.evaluate(() => window.easelDashboard.serverMs);
  await waitInPage(browser, (t) => window.easelDashboard.swarm.pairs.filter((p) => p.wall_ms > t).length >= 8,
    since, 60_000, 'eight pairwise averages on the ring of 4');

  const { swarm, devices } = await page.evaluate(() => ({
    swarm: window.easelDashboard.swarm, devices: window.easelDashboard.devices,
  }));
  const dump = JSON.stringify(swarm);
  assert.equal(swarm.topology, 'ring', dump);
  assert.equal(swarm.graph, 'ring', dump);
  const training = devices.filter((d) => d.state === 'training').map((d) => d.id).sort((a, b) => a - b);
  assert.deepEqual(swarm.nodes, training, 'the graph holds the training devices, by increasing id');
  assert.equal(swarm.edges.length, 4, dump);
  const edges = new Set(swarm.edges.map(([a, b]) => key(a, b)));
  assert.equal(edges.size, 4, dump);
  for (const id of swarm.nodes) {
    assert.equal(swarm.edges.filter((e) => e.includes(id)).length, 2, `device ${id} has 2 neighbours: ${dump}`);
  }
  assert.ok(swarm.pairs.length <= 32, dump);
  const fresh = swarm.pairs.filter((p) => p.wall_ms > since);
  for (const p of fresh) assert.ok(edges.has(key(p.a, p.b)), `pair ${p.a}-${p.b} is a ring edge: ${dump}`);
  assert.ok(swarm.exchanges >= fresh.length, dump);

  // What the panel draws: one node per device, labelled with its name, and the ring's edges.
  const ids = await page.locator('#topology g.node').evaluateAll((gs) => gs.map((g) => Number(g.dataset.id)));
  assert.deepEqual(ids.slice().sort((a, b) => a - b), swarm.nodes);
  assert.equal(await page.locator('#topology line.edge').count(), 4);
  for (const d of devices.filter((x) => swarm.nodes.includes(x.id))) {
    assert.equal(await page.locator(`#topology g.node[data-id="${d.id}"] text`).textContent(), d.name);
  }
  assert.match(await page.locator('#topology-text').innerText(),
    /^ring on 4 devices · [\d,]+ pairwise averages · last: \S+ ↔ \S+, \d+\.\d\ss ago$/);
  assert.equal(await page.locator('#topology-note').isVisible(), false, 'the graph asked for is the one in use');
  // No center under SwarmSGD: the dashboard says what it evaluates.
  assert.match(await page.locator('#acc-h').innerText(), /^Mean model test accuracy/);
  assert.match(await page.locator('#head-version-label').innerText(), /swarm version/);

  // The mean model learns without any center.
  await waitInPage(browser, () => window.easelDashboard.evals.some((e) => e.accuracy > 0.5),
    null, 180_000, 'an evaluation of the mean model above 50%');

  // The screenshot for the projector, with a pair lit up.
  await waitInPage(browser, () => document.querySelectorAll('#topology line.pair').length > 0,
    null, 30_000, 'a recent pairwise average to draw');
  await screenshot(page, 'swarm-topology.png');
  assert.deepEqual(browser.outside, [], 'requests left 127.0.0.1');
});

test('a student tab joins the swarm: the relay averages its pushes with neighbours and the page says so', { timeout: 200_000 }, async () => {
  const browser = await launch(serve.port);
  const { page } = browser;
  await page.goto(`http://127.0.0.1:${serve.port}/?room=${serve.room}&backend=cpu`);
  await waitInPage(browser, () => window.easel?.state().accepted >= 5, null, 120_000,
    'five accepted pushes from the tab');
  const s = await page.evaluate(() => window.easel.state());
  assert.equal(s.strategy, 'swarm');
  assert.equal(s.refused, 0, 'every push names the version it got back');
  // Averaged with one neighbour, and the averages it missed are counted.
  assert.equal(s.last_alpha_eff, 0.5);
  assert.ok(Number.isInteger(s.last_tau), `tau ${s.last_tau}`);
  assert.match(await page.locator('#tau-label').innerText(), /Averages I missed/);
  assert.match(await page.locator('#guess-center-title').innerText(), /SwarmSGD has no center/);
  // The relay's ledger names each of its pushes' neighbours: the ring's, now over 5 devices.
  const r = await fetch(`http://127.0.0.1:${serve.port}/api/rooms/${serve.room}/ledger.json`, {
    headers: { authorization: `Bearer ${serve.adminToken}` },
  });
  const ledger = await r.json();
  const mine = ledger.records.filter((x) => x.worker === s.worker_id);
  assert.ok(mine.length >= 5 && mine.every((x) => x.code === 0 && x.peer !== null && x.peer !== s.worker_id),
    JSON.stringify(mine.slice(0, 3)));
  await screenshot(page, 'swarm-student.png');
  assert.deepEqual(browser.outside, [], 'requests left 127.0.0.1');
});
