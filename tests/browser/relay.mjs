// Helpers shared by the browser tests: start `easel serve` (and `easel bots`) on free loopback
// ports, launch the
// system Chromium (fresh profile, every request kept on 127.0.0.1), wait for a condition in a
// page with its state and console on failure, and save screenshots.
//
// Environment: EASEL_BIN (the release `easel` binary; default $CARGO_TARGET_DIR/release/easel
// or target/release/easel), CHROMIUM (default /usr/bin/chromium). Screenshots go to artifacts/.

import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createServer } from 'node:net';
import {
  existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

export const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
export const EASEL_BIN = process.env.EASEL_BIN
  || join(process.env.CARGO_TARGET_DIR || join(ROOT, 'target'), 'release', 'easel');
export const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
export const ARTIFACTS = join(ROOT, 'artifacts');
const BUNDLE = join(ROOT, 'www', 'pkg', 'easel_client_bg.wasm');

/** The flags this machine's Chromium needs (see /work/shared/ENVIRONMENT.md); the user data
 * directory is passed separately, fresh for every browser. */
const CHROMIUM_FLAGS = [
  '--headless',
  '--no-sandbox',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--enable-unsafe-webgpu',
];

const cleanups = [];

/** Fails early, with what to run, when Chromium, the binary or the wasm bundle is missing. */
export function checkPrerequisites() {
  assert.ok(existsSync(CHROMIUM), `Chromium is missing at ${CHROMIUM}: install it `
    + '(apt-get install -y chromium) or set CHROMIUM to its path');
  assert.ok(existsSync(EASEL_BIN), `the easel binary is missing at ${EASEL_BIN}: `
    + 'build it with `cargo build --release -p easel` or set EASEL_BIN');
  assert.ok(existsSync(BUNDLE), `the wasm bundle is missing at ${BUNDLE}: run \`cargo xtask wasm\``);
}

/** Starts `easel ARGS` and resolves once its stdout matches every regex of `wait` (at once
 * when `wait` is empty), with the process, its output so far and the matches. It is stopped
 * by `cleanup()`. Options: `env` (added to ours, or the whole environment when `inheritEnv`
 * is false), `cwd` (default: the checkout), `command` (a program and its first arguments
 * to run the binary through, default `[EASEL_BIN]`). */
export function startEasel(args, wait, {
  env = {}, timeout = 20_000, cwd = ROOT, command = [EASEL_BIN], inheritEnv = true,
} = {}) {
  return new Promise((resolveStart, reject) => {
    const child = spawn(command[0], [...command.slice(1), ...args], {
      cwd,
      stdio: ['ignore', 'pipe', 'pipe'],
      env: inheritEnv ? { ...process.env, ...env } : env,
    });
    cleanups.push(async () => {
      if (child.exitCode === null) {
        child.kill('SIGTERM');
        await new Promise((r) => { child.once('exit', r); setTimeout(r, 5000); });
      }
    });
    let out = '';
    let err = '';
    let done = false;
    const finish = (matches) => {
      done = true;
      clearTimeout(timer);
      resolveStart({ child, out: () => out, err: () => err, matches });
    };
    const timer = setTimeout(() => {
      if (!done) reject(new Error(`easel ${args[0]} printed no ${wait} in ${timeout / 1000} s:\n${out}${err}`));
    }, timeout);
    child.stdout.on('data', (d) => {
      out += d;
      const matches = wait.map((re) => out.match(re));
      if (!done && matches.every(Boolean)) finish(matches);
    });
    child.stderr.on('data', (d) => { err += d; });
    child.on('exit', (code) => {
      clearTimeout(timer);
      if (!done) reject(new Error(`easel ${args[0]} exited with status ${code}:\n${out}${err}`));
    });
    child.on('error', (e) => { clearTimeout(timer); reject(e); });
    if (wait.length === 0) finish([]);
  });
}

/** A TCP port that was free a moment ago on 127.0.0.1. */
export function freePort() {
  return new Promise((resolvePort, reject) => {
    const srv = createServer();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolvePort(port));
    });
  });
}

/**
 * Starts `easel serve` on free loopback ports with a throw-away home for its certificate, and
 * resolves to `{port, httpsPort, room, adminToken, teacherUrl}` parsed from what it prints: the
 * HTTP port, the HTTPS port, the code of its first room and the teacher URL with its admin
 * token. It is stopped by `cleanup()`.
 */
export async function startServer() {
  const home = mkdtempSync(join(tmpdir(), 'easel-home-'));
  cleanups.push(() => rmSync(home, { recursive: true, force: true }));
  // The HTTP port is chosen first so that the LAN-like name the tests map to 127.0.0.1
  // (classroom.test) can be allowed: over plain HTTP the relay only accepts pages from its
  // own names (the Origin check).
  const httpPort = await freePort();
  const s = await startEasel(
    // This checkout's www/, read on every request (the binary's default is its built-in copy).
    ['serve', '--http', `127.0.0.1:${httpPort}`, '--https', '127.0.0.1:0', '--www', join(ROOT, 'www'),
      '--allow-origin', `http://classroom.test:${httpPort}`],
    [
      /^listening on http:\/\/127\.0\.0\.1:(\d+)\/$/m,
      /^listening on https:\/\/127\.0\.0\.1:(\d+)\/$/m,
      /^room code: ([A-Z0-9]+)$/m,
      /^teacher .*?(http\S*[?&]admin=([0-9a-f]+))/m,
    ],
    { env: { EASEL_HOME: home } },
  );
  const [http, https, room, teacher] = s.matches;
  return {
    port: Number(http[1]),
    httpsPort: Number(https[1]),
    room: room[1],
    teacherUrl: teacher[1],
    adminToken: teacher[2],
  };
}

/** `count` native bots (`easel bots`) in `room`, training until `cleanup()`. */
export function startBots(port, room, count, extra = []) {
  return startEasel(
    ['bots', '--relay', `ws://127.0.0.1:${port}/ws`, '--room', room, '--count', String(count), ...extra],
    [],
  );
}

/**
 * A fresh headless Chromium with its own user data directory, whose requests may only go to
 * `port` on 127.0.0.1 or classroom.test (mapped there by `--host-resolver-rules`); the rest
 * are aborted and listed in `outside`. Closed by `cleanup()`.
 */
export async function launch(port, extraFlags = [], viewport = { width: 1000, height: 900 }) {
  const userDataDir = mkdtempSync(join(tmpdir(), 'easel-chromium-'));
  const context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: CHROMIUM,
    headless: true,
    args: [...CHROMIUM_FLAGS, ...extraFlags],
    viewport,
  });
  cleanups.push(async () => {
    await context.close().catch(() => {});
    rmSync(userDataDir, { recursive: true, force: true });
  });
  const outside = [];
  await context.route('**/*', (route) => {
    const url = new URL(route.request().url());
    const local = url.port === String(port)
      && (url.hostname === '127.0.0.1' || url.hostname === 'classroom.test');
    if (local) return route.continue();
    outside.push(url.href);
    return route.abort();
  });
  const page = context.pages()[0] ?? await context.newPage();
  const logs = [];
  const listen = (p) => {
    p.on('console', (m) => logs.push(`[${m.type()}] ${m.text()}`));
    p.on('pageerror', (e) => logs.push(`[pageerror] ${e.message}`));
  };
  listen(page);
  context.on('page', listen);
  // Uncaught errors (a wasm panic ends in one) mark the page as failed for waitInPage.
  await context.addInitScript(() => {
    window.addEventListener('error', (e) => { window.easelPageError ??= String(e.message); });
    window.addEventListener('unhandledrejection', (e) => {
      window.easelPageError ??= String(e.reason?.message ?? e.reason);
    });
  });
  return { context, page, logs, outside, userDataDir };
}

/** The process ids of the browser launched with `userDataDir` and of all its descendants
 * (renderers, the GPU process), read from /proc. */
export function browserPids(userDataDir) {
  const procs = readdirSync('/proc').filter((d) => /^\d+$/.test(d)).map((pid) => {
    try {
      const cmd = readFileSync(`/proc/${pid}/cmdline`, 'utf8');
      const ppid = Number(readFileSync(`/proc/${pid}/stat`, 'utf8').replace(/^.*\) /s, '').split(' ')[1]);
      return { pid: Number(pid), ppid, cmd };
    } catch {
      return null;
    }
  }).filter(Boolean);
  const ids = new Set(procs.filter((p) => p.cmd.includes(`--user-data-dir=${userDataDir}`)
    && !procs.some((q) => q.pid === p.ppid && q.cmd.includes(`--user-data-dir=${userDataDir}`)))
    .map((p) => p.pid));
  for (let grew = true; grew;) {
    grew = false;
    for (const p of procs) {
      if (!ids.has(p.pid) && ids.has(p.ppid)) {
        ids.add(p.pid);
        grew = true;
      }
    }
  }
  return [...ids];
}

/** Makes a device slow at everything: stops the processes `pids` for `stopMs`, lets them run
 * for `runMs`, and again, until `stop()` (which lets them run for good). */
export function throttle(pids, stopMs, runMs) {
  const signal = (sig) => pids.forEach((pid) => { try { process.kill(pid, sig); } catch { /* gone */ } });
  let on = true;
  const loop = (async () => {
    while (on) {
      signal('SIGSTOP');
      await new Promise((r) => setTimeout(r, stopMs));
      signal('SIGCONT');
      await new Promise((r) => setTimeout(r, runMs));
    }
  })();
  const stop = async () => {
    on = false;
    await loop;
    signal('SIGCONT');
  };
  cleanups.push(stop);
  return { stop };
}

/** The page's state for failure messages: `window.easel.state()` when the page has it. */
function pageState(page) {
  return page.evaluate(() => {
    const e = window.easel;
    const easel = typeof e?.state === 'function' ? e.state() : e && { ...e };
    if (easel?.losses) easel.losses = easel.losses.slice(-20);
    const d = window.easelDashboard;
    const dashboard = d && {
      connected: d.connected, run: d.run, devices: d.devices, accuracy: d.accuracy,
      evals: d.evals?.length, histogram: d.histogram, updates: d.updates, lastError: d.lastError,
    };
    return JSON.stringify({
      easel, dashboard, easelTest: window.easelTest, pageError: window.easelPageError,
    });
  }).catch(() => '(page unreachable)');
}

/** Waits for `fn(arg)` to hold in `page` (default: the browser's first page); fails at once
 * when the page reports an error (a wasm panic, an uncaught exception), and on time-out, with
 * the page's state and console output. */
export async function waitInPage(browser, fn, arg, timeout, what, page = browser.page) {
  const failed = () => window.easel?.error || window.easelTest?.error || window.easelPageError;
  try {
    await page.waitForFunction(
      ([src, a, failedSrc]) => (0, eval)(failedSrc)() || (0, eval)(src)(a),
      [fn.toString(), arg, failed.toString()],
      { timeout, polling: 250 },
    );
  } catch {
    throw new Error(`timed out after ${timeout / 1000} s waiting for ${what}\n`
      + `page state: ${await pageState(page)}\nconsole:\n${browser.logs.join('\n')}`);
  }
  const error = await page.evaluate(failed);
  if (error) {
    throw new Error(`the page failed while waiting for ${what}: ${error}\n`
      + `page state: ${await pageState(page)}\nconsole:\n${browser.logs.join('\n')}`);
  }
}

export async function screenshot(page, name) {
  mkdirSync(ARTIFACTS, { recursive: true });
  await page.screenshot({ path: join(ARTIFACTS, name), fullPage: true });
}

/** Closes every browser, stops every server and removes their temporary directories. */
export async function cleanup() {
  while (cleanups.length) await cleanups.pop()();
}

export const mean = (xs) => xs.reduce((a, b) => a + b, 0) / xs.length;
