// Shared pieces of the browser tests: `easel serve` on free loopback ports, a headless
// Chromium that may only talk to that server, and waiting on page state.
//
// Environment: EASEL_BIN (the release `easel` binary; default $CARGO_TARGET_DIR/release/easel
// or target/release/easel), CHROMIUM (default /usr/bin/chromium). Screenshots go to artifacts/.

import { spawn } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

export const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
export const EASEL_BIN = process.env.EASEL_BIN
  || join(process.env.CARGO_TARGET_DIR || join(ROOT, 'target'), 'release', 'easel');
export const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
export const ARTIFACTS = join(ROOT, 'artifacts');

/** The flags this machine's Chromium needs (see ENVIRONMENT.md); the user data directory is
 * passed separately, fresh for every browser. */
export const CHROMIUM_FLAGS = [
  '--headless',
  '--no-sandbox',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--enable-unsafe-webgpu',
];

/** Cleanup functions, run newest first. */
export class Cleanups {
  constructor() { this.list = []; }
  add(fn) { this.list.push(fn); }
  async run() {
    while (this.list.length) await this.list.pop()();
  }
}

/** Starts `easel ARGS` and resolves once its stdout matches every regex of `wait` (at once
 * when `wait` is empty), with the process, its output so far and the matches. Registers
 * stopping it with `cleanups`. */
export function startEasel(args, wait, cleanups, { env = {}, timeout = 20_000 } = {}) {
  return new Promise((resolveStart, reject) => {
    const child = spawn(EASEL_BIN, args, {
      cwd: ROOT,
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, ...env },
    });
    cleanups.add(async () => {
      if (child.exitCode === null) {
        child.kill('SIGTERM');
        await new Promise((r) => { child.once('exit', r); setTimeout(r, 5000); });
      }
    });
    let out = '';
    let err = '';
    let done = false;
    const timer = setTimeout(() => {
      if (!done) reject(new Error(`easel ${args[0]} printed no ${wait} in ${timeout / 1000} s:\n${out}${err}`));
    }, timeout);
    child.stdout.on('data', (d) => {
      out += d;
      const matches = wait.map((re) => out.match(re));
      if (!done && matches.every(Boolean)) {
        done = true;
        clearTimeout(timer);
        resolveStart({ child, out: () => out, err: () => err, matches });
      }
    });
    child.stderr.on('data', (d) => { err += d; });
    child.on('exit', (code) => {
      clearTimeout(timer);
      if (!done) reject(new Error(`easel ${args[0]} exited with status ${code}:\n${out}${err}`));
    });
    child.on('error', (e) => { clearTimeout(timer); reject(e); });
    if (wait.length === 0) {
      done = true;
      clearTimeout(timer);
      resolveStart({ child, out: () => out, err: () => err, matches: [] });
    }
  });
}

/** `easel serve` on free loopback ports with a throw-away EASEL_HOME: its HTTP port, room code
 * and teacher URL. */
export async function startServe(cleanups) {
  const home = mkdtempSync(join(tmpdir(), 'easel-home-'));
  cleanups.add(() => rmSync(home, { recursive: true, force: true }));
  const s = await startEasel(
    ['serve', '--http', '127.0.0.1:0', '--https', '127.0.0.1:0'],
    [/^listening on http:\/\/127\.0\.0\.1:(\d+)\/$/m, /^room code: (\w+)$/m, /^teacher \(this computer only\): (\S+)$/m],
    cleanups,
    { env: { EASEL_HOME: home } },
  );
  return { ...s, port: Number(s.matches[0][1]), room: s.matches[1][1], teacherUrl: s.matches[2][1] };
}

/** A fresh headless Chromium with its own user data directory that may only reach
 * 127.0.0.1:`port` (and classroom.test, mapped there). */
export async function launch(port, cleanups, { extraFlags = [], viewport = { width: 1000, height: 900 } } = {}) {
  const userDataDir = mkdtempSync(join(tmpdir(), 'easel-chromium-'));
  const context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: CHROMIUM,
    headless: true,
    args: [...CHROMIUM_FLAGS, ...extraFlags],
    viewport,
  });
  cleanups.add(async () => {
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
  page.on('console', (m) => logs.push(`[${m.type()}] ${m.text()}`));
  page.on('pageerror', (e) => logs.push(`[pageerror] ${e.message}`));
  await context.addInitScript(() => {
    window.addEventListener('error', (e) => { window.easelPageError ??= String(e.message); });
    window.addEventListener('unhandledrejection', (e) => {
      window.easelPageError ??= String(e.reason?.message ?? e.reason);
    });
  });
  return { context, page, logs, outside };
}

/** Waits for `fn(arg)` to hold in the page; fails at once on an uncaught page error, and on
 * time-out, with `state()` of the page and its console. */
export async function waitFor(browser, fn, arg, timeout, what, state = () => null) {
  const failed = () => window.easelPageError;
  try {
    await browser.page.waitForFunction(
      ([src, a, failedSrc]) => (0, eval)(failedSrc)() || (0, eval)(src)(a),
      [fn.toString(), arg, failed.toString()],
      { timeout, polling: 250 },
    );
  } catch {
    const s = await browser.page.evaluate(state).catch(() => '(page unreachable)');
    throw new Error(`timed out after ${timeout / 1000} s waiting for ${what}\n`
      + `page state: ${JSON.stringify(s)}\nconsole:\n${browser.logs.join('\n')}`);
  }
  const error = await browser.page.evaluate(failed);
  if (error) {
    throw new Error(`the page failed while waiting for ${what}: ${error}\nconsole:\n${browser.logs.join('\n')}`);
  }
}

export async function screenshot(page, name) {
  mkdirSync(ARTIFACTS, { recursive: true });
  await page.screenshot({ path: join(ARTIFACTS, name), fullPage: true });
}
