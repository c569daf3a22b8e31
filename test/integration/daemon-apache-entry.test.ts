/**
 * `node dist/daemon-mode.js --apache`, started exactly as the Apache parent starts it
 * (docs/daemon.md, "Apache daemon mode"): its own session; fd 0 /dev/null; fds 1 and 2 an
 * error-log file; fd 3 a Unix socket already bound and listening (mode 0600); fd 4 a pipe
 * carrying one JSON config then EOF; fd 5 the status socket, listening. The test plays the
 * Apache child over the wire protocol (test/helpers/wire-client.ts). Assertions are on
 * outcomes (frames, pids, exit codes, log lines); waits are "until this state, with a
 * deadline", never timing thresholds.
 */
import { describe, it, expect, beforeAll, afterAll, afterEach } from 'vitest';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { pidAlive, makeReadableTempDir } from '../harness';
import { delay } from '../harness/proc';
import { WireClient, cgiVars, type WireResponse } from '../helpers/wire-client';
import type { PoolStatusReport } from '../../src/daemon-mode';

const ROOT = path.resolve(__dirname, '../..');
const DAEMON_JS = path.join(ROOT, 'dist', 'daemon-mode.js');
const BIN = path.join(ROOT, 'bin', 'tsgi.js');

const APP = (version: string) => `
export async function application(environ: any, startResponse: any) {
  const q = String(environ.QUERY_STRING);
  const m = /sleep=(\\d+)/.exec(q);
  if (m) await new Promise((r) => setTimeout(r, Number(m[1])));
  if (q.includes('log')) {
    console.log('hello from console.log');
    console.warn('hello from console.warn');
    console.error('hello from console.error');
    process.stdout.write('hello from process.stdout\\n');
  }
  startResponse('200 OK', [['Content-Type', 'text/plain']]);
  return ['${version} pid=' + process.pid + ' mp=' + environ['tsgi.multiprocess'] + ' group=' + environ['mod_tsgi.process_group'] + '\\n'];
}
`;
const BROKEN = `const x = 1;\nthrow new Error('broken at import ' + x);\nexport function application() {}\n`;

const APACHE_LINE = /^\[(Sun|Mon|Tue|Wed|Thu|Fri|Sat) (Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) \d\d \d\d:\d\d:\d\d\.\d{6} \d{4}\] \[tsgi:(error|warn|info|debug)\] \[pid \d+\] /;

let dir: string;
let app: string;
let broken: string;
let counter = 0;
const launched: Launched[] = [];
const extraPids: number[] = [];

beforeAll(() => {
  if (!fs.existsSync(DAEMON_JS) || !fs.existsSync(path.join(ROOT, 'dist', 'transports', 'wire-server.js'))) {
    throw new Error(`${DAEMON_JS} is missing or stale: run npx tsc -p tsconfig.build.json`);
  }
  dir = makeReadableTempDir('tsgi-apache-entry-');
  app = path.join(dir, 'app.tsgi');
  broken = path.join(dir, 'broken.tsgi');
  fs.writeFileSync(app, APP('v1'));
  fs.writeFileSync(broken, BROKEN);
});

afterAll(() => {
  fs.rmSync(dir, { recursive: true, force: true });
});

afterEach(async () => {
  for (const d of launched.splice(0)) await d.kill();
  for (const p of extraPids.splice(0)) {
    try {
      process.kill(p, 'SIGKILL');
    } catch {
      // gone
    }
  }
});

interface Launched {
  /** The supervisor (or, with viaShell, the shell standing in for the Apache parent). */
  child: ChildProcess;
  socketPath: string;
  statusPath: string;
  logFile: string;
  secret: Buffer;
  exit: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  log(): string;
  kill(): Promise<void>;
}

/**
 * A listening Unix socket at `final` whose fd can be handed to a child, without this
 * process ever accepting on it: it is bound under a temporary name and renamed, so that
 * closing our copy (libuv unlinks the name it bound) leaves the socket in place.
 */
async function listeningSocket(final: string): Promise<{ fd: number; close(): void }> {
  const tmp = `${final}.tmp`;
  const server = net.createServer();
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(tmp, resolve);
  });
  fs.chmodSync(tmp, 0o600);
  fs.renameSync(tmp, final);
  const fd = (server as unknown as { _handle: { fd: number } })._handle.fd;
  return { fd, close: () => server.close() };
}

function baseConfig(secret: Buffer): Record<string, unknown> {
  return {
    group: 'app',
    secret: secret.toString('base64'),
    processes: 2,
    processesGiven: true,
    threads: 4,
    maximumRequests: 0,
    inactivityTimeoutMs: 0,
    requestTimeoutMs: 60_000,
    gracefulTimeoutMs: 5000,
    startupTimeoutMs: 30_000,
    queueTimeoutMs: 30_000,
    displayName: 'tsgi-daemon (app)',
    preload: [app],
    logLevel: 'info',
    replaces: 0,
    startDelayMs: 0,
    parentPid: process.pid,
  };
}

/**
 * Starts the supervisor as the launch contract says. With viaShell, a shell in its own
 * session plays the Apache parent: it starts the supervisor in the background (which
 * inherits fds 1–5) and waits, so the test can kill -9 "the parent".
 */
async function launch(overrides: Record<string, unknown> = {}, opts: { viaShell?: boolean; config?: string } = {}): Promise<Launched> {
  const n = ++counter;
  const prefix = path.join(dir, `tsgi.${process.pid}.${n}`);
  const socketPath = `${prefix}.sock`;
  const statusPath = `${prefix}.status`;
  const logFile = `${prefix}.log`;
  const secret = randomBytes(32);
  const data = await listeningSocket(socketPath);
  const status = await listeningSocket(statusPath);
  const logFd = fs.openSync(logFile, 'a');
  const args = opts.viaShell ? ['-c', `"$0" "$1" --apache & wait`, process.execPath, DAEMON_JS] : [DAEMON_JS, '--apache'];
  const child = spawn(opts.viaShell ? '/bin/sh' : process.execPath, args, {
    stdio: ['ignore', logFd, logFd, data.fd, 'pipe', status.fd],
    detached: true,
    env: { PATH: process.env.PATH ?? '/usr/bin:/bin', HOME: dir },
    cwd: dir,
  });
  data.close();
  status.close();
  fs.closeSync(logFd);
  const config = { ...baseConfig(secret), ...(opts.viaShell ? { parentPid: child.pid } : {}), ...overrides };
  const pipe = child.stdio[4] as NodeJS.WritableStream;
  pipe.end(opts.config ?? JSON.stringify(config));
  const exit = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
  const d: Launched = {
    child,
    socketPath,
    statusPath,
    logFile,
    secret,
    exit,
    log: () => (fs.existsSync(logFile) ? fs.readFileSync(logFile, 'utf8') : ''),
    kill: async () => {
      // The whole session: the supervisor and its workers.
      try {
        process.kill(-(child.pid as number), 'SIGKILL');
      } catch {
        // gone
      }
      for (const p of sessionPids(child.pid as number)) {
        try {
          process.kill(p, 'SIGKILL');
        } catch {
          // gone
        }
      }
    },
  };
  launched.push(d);
  return d;
}

/** Live processes whose session is `sid` (the supervisor's workers stay in it). */
function sessionPids(sid: number): number[] {
  const out: number[] = [];
  for (const name of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    try {
      const stat = fs.readFileSync(`/proc/${name}/stat`, 'utf8');
      const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      if (Number(f[3]) === sid && f[0] !== 'Z') out.push(Number(name));
    } catch {
      // gone
    }
  }
  return out;
}

async function waitFor<T>(what: string, probe: () => T | undefined | null | false | Promise<T | undefined | null | false>, d?: Launched, timeoutMs = 20_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await probe();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}${d ? `; log:\n${d.log()}` : ''}`);
    await delay(50);
  }
}

const ready = (d: Launched) => waitFor('the ready line', () => /daemon app: ready: \d+ process\(es\)/.test(d.log()) || d.child.exitCode !== null, d, 30_000);

function readStatus(p: string): Promise<PoolStatusReport> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    const s = net.connect(p);
    s.on('data', (c: Buffer) => chunks.push(c));
    s.on('error', reject);
    s.on('end', () => {
      try {
        resolve(JSON.parse(Buffer.concat(chunks).toString('utf8')) as PoolStatusReport);
      } catch (e) {
        reject(e as Error);
      }
    });
  });
}

const readyPids = async (d: Launched) => (await readStatus(d.statusPath)).processes.filter((p) => p.state === 'ready').map((p) => p.pid);

function get(c: WireClient, query = '', script = app, reload = false): Promise<WireResponse> {
  return c.request({ script, applicationGroup: 'localhost|/app', processGroup: 'app', reload, vars: cgiVars({ query }) });
}

const bodyPid = (r: WireResponse) => Number(/pid=(\d+)/.exec(r.body.toString())?.[1] ?? NaN);

/** Connections until both workers have accepted one (the daemon's HELLO says which). */
async function connectionsToEach(d: Launched, workers: number[]): Promise<Map<number, WireClient>> {
  const byPid = new Map<number, WireClient>();
  for (let round = 0; round < 20 && byPid.size < workers.length; round++) {
    const cs = await Promise.all(Array.from({ length: 8 }, () => WireClient.connect(d.socketPath, { secret: d.secret })));
    for (const c of cs) {
      const pid = c.daemon?.pid as number;
      if (!byPid.has(pid)) byPid.set(pid, c);
      else c.close();
    }
  }
  return byPid;
}

describe('daemon-mode.js --apache: a pool of 2 behind the inherited socket', () => {
  it('serves from 2 processes, answers STATUS and the status socket, and `tsgi status` shows the group', async () => {
    const d = await launch({ preload: [app, broken] });
    await ready(d);
    expect(d.child.exitCode).toBe(null);
    const workers = await readyPids(d);
    expect(workers).toHaveLength(2);

    // The secret reaches workers over IPC: not in their argv or environment.
    const b64 = d.secret.toString('base64');
    for (const pid of workers) {
      expect(fs.readFileSync(`/proc/${pid}/cmdline`, 'latin1')).not.toContain(b64);
      expect(fs.readFileSync(`/proc/${pid}/environ`, 'latin1')).not.toContain(b64);
      expect(fs.readFileSync(`/proc/${pid}/cmdline`, 'latin1')).toMatch(/^tsgi-daemon \(app\) worker\0/);
    }
    expect(fs.readFileSync(`/proc/${d.child.pid}/cmdline`, 'latin1')).toMatch(/^tsgi-daemon \(app\)\0/);
    const byPid = await connectionsToEach(d, workers);
    expect([...byPid.keys()].sort()).toEqual([...workers].sort());
    for (const [pid, c] of byPid) {
      const r = await get(c, 'x=1');
      expect(r.status).toBe(200);
      expect(r.trailer).toEqual({ kind: 'end', close: false });
      expect(bodyPid(r)).toBe(pid);
      expect(r.body.toString()).toContain('v1 ');
      expect(r.body.toString()).toContain('mp=true');
      expect(r.body.toString()).toContain('group=app');
    }

    // STATUS over the wire: the whole pool, whichever worker answers.
    const c = byPid.get(workers[0]) as WireClient;
    await waitFor('both workers to report their RSS and the request each served', async () => {
      const s = (await c.status()) as PoolStatusReport;
      return s.processes.length === 2 && s.processes.every((p) => p.rssBytes > 0 && p.requests >= 1) && s;
    }, d);
    const s = (await c.status()) as PoolStatusReport;
    expect(s).toMatchObject({ group: 'app', pid: d.child.pid, threads: 4 });
    expect(Number.isNaN(Date.parse(s.startedAt))).toBe(false);
    expect(s.processes.map((p) => p.pid).sort()).toEqual([...workers].sort());
    for (const p of s.processes) {
      expect(p).toMatchObject({ state: 'ready', inflight: 0, running: [] });
      expect(p.requests).toBeGreaterThanOrEqual(1);
      expect(p.uptimeMs).toBeGreaterThan(0);
    }
    const fromSocket = await readStatus(d.statusPath);
    expect(fromSocket.group).toBe('app');
    expect(fromSocket.processes.map((p) => p.pid).sort()).toEqual([...workers].sort());
    expect(fs.statSync(d.statusPath).mode & 0o777).toBe(0o600);

    // tsgi status, by prefix and by directory; --json gives the same objects.
    const prefix = d.statusPath.replace(/\.\d+\.\d+\.status$/, '');
    const table = spawnSync(process.execPath, [BIN, 'status', '--socket-prefix', prefix], { encoding: 'utf8' });
    expect(table.status).toBe(0);
    expect(table.stdout).toContain(`group app (supervisor pid ${d.child.pid}`);
    expect(table.stdout).toMatch(/PID\s+STATE\s+REQUESTS\s+IN-FLIGHT\s+RSS\s+UPTIME/);
    for (const pid of workers) expect(table.stdout).toMatch(new RegExp(`^  ${pid}\\s+ready\\s+\\d+\\s+0\\s+\\d+(\\.\\d)? MiB\\s+\\d+s`, 'm'));
    const json = spawnSync(process.execPath, [BIN, 'status', '--socket-prefix', dir, '--json'], { encoding: 'utf8' });
    expect(json.status).toBe(0);
    const parsed = JSON.parse(json.stdout) as PoolStatusReport[];
    expect(parsed.find((x) => x.pid === d.child.pid)?.processes).toHaveLength(2);
    if (process.getuid?.() === 0) {
      const nobody = spawnSync(process.execPath, [BIN, 'status', '--socket-prefix', prefix], { encoding: 'utf8', uid: 65534, gid: 65534 });
      expect(nobody.status).toBe(1);
      expect(nobody.stderr).toContain(`${d.statusPath}: permission denied; run as root or as the daemon's user`);
    }
    const none = spawnSync(process.execPath, [BIN, 'status', '--socket-prefix', path.join(dir, 'nothing-here')], { encoding: 'utf8' });
    expect(none.status).toBe(1);
    expect(none.stderr).toContain('no daemon-mode status sockets match');

    // The broken preload: reported at start with its stack, answered 500 (ERROR APP), pool unharmed.
    expect(d.log()).toMatch(new RegExp(`cannot load ${broken.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}.*\\n(.*\\n)*.*broken at import 1`));
    expect(d.log()).toMatch(/broken\.tsgi:2/);
    const bad = await get(c, '', broken);
    expect(bad.status).toBe(0);
    expect(bad.trailer).toMatchObject({ kind: 'error', name: 'APP' });
    const good = await get(c, '');
    expect(good.status).toBe(200);
    expect(await readyPids(d)).toEqual(workers);
    for (const x of byPid.values()) x.close();
  });

  it('logs in Apache format on fd 2, with the app console output as entries with levels (after startDelayMs)', async () => {
    const d = await launch({ startDelayMs: 300 });
    await ready(d);
    const log0 = d.log();
    expect(log0).toMatch(/daemon app: waiting 300 ms before starting/);
    expect(log0.indexOf('waiting 300 ms')).toBeLessThan(log0.indexOf('spawned worker pid'));
    const c = await WireClient.connect(d.socketPath, { secret: d.secret });
    const r = await get(c, 'log=1');
    expect(r.status).toBe(200);
    await waitFor('the console lines', () => /stdout: hello from process\.stdout/.test(d.log()), d);
    const log = d.log();
    expect(log).toMatch(/\[tsgi:info\] \[pid \d+\] daemon app: stdout: hello from console\.log/);
    expect(log).toMatch(/\[tsgi:warn\] \[pid \d+\] daemon app: stderr: hello from console\.warn/);
    expect(log).toMatch(/\[tsgi:error\] \[pid \d+\] daemon app: stderr: hello from console\.error/);
    for (const line of log.split('\n').filter(Boolean)) expect(line).toMatch(APACHE_LINE);
    c.close();
  });

  it('logLevel warn drops info entries', async () => {
    const d = await launch({ logLevel: 'warn', preload: [broken] });
    await waitFor('the load error', () => /cannot load/.test(d.log()), d);
    await waitFor('2 ready workers', async () => (await readyPids(d)).length === 2, d);
    expect(d.log()).not.toMatch(/\[tsgi:info\]/);
    expect(d.log()).toMatch(/\[tsgi:error\].*cannot load/);
  });

  it('kill -9 of a worker: only its in-flight request fails, the crash is logged, a new worker is up', async () => {
    const d = await launch();
    await ready(d);
    const workers = await readyPids(d);
    const byPid = await connectionsToEach(d, workers);
    const [victim, survivor] = workers;
    const slow = get(byPid.get(victim) as WireClient, 'sleep=30000');
    await waitFor('the slow request in flight', async () => (await readStatus(d.statusPath)).processes.find((p) => p.pid === victim)?.inflight === 1, d);
    process.kill(victim, 'SIGKILL');
    const r = await slow;
    expect(r.status).toBe(0);
    expect(r.trailer).toEqual({ kind: 'eof' });
    const ok = await get(byPid.get(survivor) as WireClient, '');
    expect(ok.status).toBe(200);
    expect(bodyPid(ok)).toBe(survivor);
    await waitFor('the crash report', () => new RegExp(`worker pid ${victim} died \\(killed by signal SIGKILL\\) with 1 request\\(s\\) in flight: "GET /app/\\?sleep=30000`).test(d.log()), d);
    const now = await waitFor('a replacement', async () => {
      const p = await readyPids(d);
      return p.length === 2 && !p.includes(victim) && p;
    }, d);
    expect(now).toContain(survivor);
    const fresh = await WireClient.connect(d.socketPath, { secret: d.secret });
    expect((await get(fresh, '')).status).toBe(200);
    fresh.close();
    for (const x of byPid.values()) x.close();
  });

  it('a touched script with RELOAD: that request runs the new code, then the whole pool is recycled', async () => {
    const script = path.join(dir, 'reload.tsgi');
    fs.writeFileSync(script, APP('v1'));
    const d = await launch({ preload: [script] });
    await ready(d);
    const before = await readyPids(d);
    const c = await WireClient.connect(d.socketPath, { secret: d.secret });
    const r1 = await get(c, '', script, true);
    expect(r1.body.toString()).toContain('v1 ');
    fs.writeFileSync(script, APP('v2'));
    const later = new Date(Date.now() + 5000);
    fs.utimesSync(script, later, later);
    const r2 = await get(c, '', script, true);
    expect(r2.status).toBe(200);
    expect(r2.trailer.kind).toBe('end');
    expect(r2.body.toString()).toContain('v2 ');
    const after = await waitFor('all workers replaced', async () => {
      const p = await readyPids(d);
      return p.length === 2 && p.every((x) => !before.includes(x)) && p;
    }, d);
    for (const p of before) await waitFor(`old worker ${p} gone`, () => !pidAlive(p), d);
    // The old worker said GOAWAY on the pooled connection, then closed it.
    expect(c.goaway).toBe(true);
    await c.waitClosed();
    expect(c.closed).toBe(true);
    expect(d.log()).toMatch(/graceful reload \(.*reload\.tsgi changed\)/);
    const c2 = await WireClient.connect(d.socketPath, { secret: d.secret });
    const r3 = await get(c2, '', script, true);
    expect(r3.body.toString()).toContain('v2 ');
    expect(after).toContain(bodyPid(r3));
    c.close();
    c2.close();
  });
});

describe('daemon-mode.js --apache: lifecycle', () => {
  it('SIGTERMs `replaces` once ready; SIGTERM lets the request in flight finish and exits 0 with no process left', async () => {
    const old = spawn('sleep', ['300'], { stdio: 'ignore' });
    extraPids.push(old.pid as number);
    const oldExit = new Promise<NodeJS.Signals | null>((resolve) => old.once('exit', (_c, s) => resolve(s)));
    const d = await launch({ replaces: old.pid });
    await ready(d);
    expect(await oldExit).toBe('SIGTERM');
    const workers = await readyPids(d);
    const c = await WireClient.connect(d.socketPath, { secret: d.secret });
    const inflight = get(c, 'sleep=1000');
    await waitFor('the request in flight', async () => (await readStatus(d.statusPath)).processes.some((p) => p.inflight === 1), d);
    process.kill(d.child.pid as number, 'SIGTERM');
    const r = await inflight;
    expect(r.status).toBe(200);
    expect(r.trailer.kind).toBe('end');
    expect(await d.exit).toEqual({ code: 0, signal: null });
    for (const p of workers) expect(pidAlive(p)).toBe(false);
    expect(d.log()).toMatch(/daemon app: stopped/);
  });

  it('SIGHUP replaces every worker; a request in flight completes', async () => {
    const d = await launch();
    await ready(d);
    const before = await readyPids(d);
    const c = await WireClient.connect(d.socketPath, { secret: d.secret });
    const inflight = get(c, 'sleep=1000');
    await waitFor('the request in flight', async () => (await readStatus(d.statusPath)).processes.some((p) => p.inflight === 1), d);
    process.kill(d.child.pid as number, 'SIGHUP');
    const r = await inflight;
    expect(r.status).toBe(200);
    expect(r.trailer.kind).toBe('end');
    await waitFor('all workers replaced', async () => {
      const p = await readyPids(d);
      return p.length === 2 && p.every((x) => !before.includes(x));
    }, d);
    const c2 = await WireClient.connect(d.socketPath, { secret: d.secret });
    expect(before).not.toContain(c2.daemon?.pid);
    expect((await get(c2, '')).status).toBe(200);
    c.close();
    c2.close();
  });

  it('stop is bounded by graceful-timeout: a stuck request is cut off, exit 0', async () => {
    const d = await launch({ gracefulTimeoutMs: 1000, processes: 1 });
    await ready(d);
    const [worker] = await readyPids(d);
    const c = await WireClient.connect(d.socketPath, { secret: d.secret });
    const stuck = get(c, 'sleep=600000');
    await waitFor('the request in flight', async () => (await readStatus(d.statusPath)).processes.some((p) => p.inflight === 1), d);
    process.kill(d.child.pid as number, 'SIGTERM');
    const r = await stuck;
    expect(r.trailer.kind).not.toBe('end');
    expect(await d.exit).toEqual({ code: 0, signal: null });
    expect(pidAlive(worker)).toBe(false);
    expect(d.log()).toMatch(/still busy after graceful-timeout/);
  });

  it('SIGTERM while the workers are still loading ends the start and exits 0, leaving no worker', async () => {
    // A script that takes a while to load keeps the workers "starting" (Apache stopped
    // right after it started: the start must not wait for them, nor hang).
    const slow = path.join(dir, 'slow-load.tsgi');
    fs.writeFileSync(slow, `const until = Date.now() + 3000;\nwhile (Date.now() < until);\n${APP('slow')}`);
    const d = await launch({ preload: [slow], processes: 2 });
    await waitFor('a worker to be spawned', () => /spawned worker pid \d+/.test(d.log()), d);
    const workers = [...d.log().matchAll(/spawned worker pid (\d+)/g)].map((m) => Number(m[1]));
    process.kill(d.child.pid as number, 'SIGTERM');
    expect(await d.exit).toEqual({ code: 0, signal: null });
    for (const p of workers) expect(pidAlive(p), `worker ${p}`).toBe(false);
    expect(d.log()).not.toMatch(/cannot start/);
  });

  it('stops when the Apache parent is gone (kill -9)', async () => {
    const d = await launch({}, { viaShell: true });
    await waitFor('the ready line', () => /daemon app: ready: \d+ process\(es\)/.test(d.log()), d, 30_000);
    const s = await readStatus(d.statusPath);
    const supervisor = s.pid;
    expect(supervisor).not.toBe(d.child.pid);
    const workers = s.processes.map((p) => p.pid);
    process.kill(d.child.pid as number, 'SIGKILL');
    await waitFor('the supervisor to stop', () => !pidAlive(supervisor), d);
    for (const p of workers) await waitFor(`worker ${p} to stop`, () => !pidAlive(p), d);
    expect(d.log()).toMatch(new RegExp(`the Apache parent \\(pid ${d.child.pid}\\) is gone; stopping`));
  });

  it('a bad config is refused with exit 2 and a log line naming the field', async () => {
    const d = await launch({ threads: 'many' });
    expect(await d.exit).toEqual({ code: 2, signal: null });
    expect(d.log()).toMatch(APACHE_LINE);
    expect(d.log()).toContain('the launch config (fd 4): "threads" must be an integer >= 1, got "many"');
    const e = await launch({}, { config: '{"group": "app"' });
    expect(await e.exit).toEqual({ code: 2, signal: null });
    expect(e.log()).toContain('the launch config (fd 4): not JSON');
  });

  it('a wrong secret gets ERROR AUTH', async () => {
    const d = await launch({ processes: 1 });
    await ready(d);
    const c = await WireClient.connect(d.socketPath);
    const r = await c.hello(randomBytes(32));
    expect(r).toMatchObject({ name: 'AUTH' });
    c.close();
  });
});
