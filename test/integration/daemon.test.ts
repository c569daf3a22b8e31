/**
 * `tsgi daemon`, driven as a user drives it: `node bin/tsgi.js daemon …` in its own process
 * group, readiness read from stderr, requests over real sockets, faults injected with
 * signals. Assertions are on outcomes (statuses, pids, exit codes, /proc), never on timings;
 * waits are "until this state, with a deadline".
 */
import { describe, it, expect, beforeAll, afterAll, afterEach } from 'vitest';
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as net from 'node:net';
import * as path from 'node:path';
import { freePort, request, makeReadableTempDir, isRoot, pidAlive, type HttpResponse } from '../harness';
import { ManagedProcess, delay } from '../harness/proc';
import { encodeScgiRequest } from '../../src/transports/protocols/scgi';
import { encodeUwsgiRequest } from '../../src/transports/protocols/uwsgi';
import { encodeBeginRequest, encodeParams, encodeRecord, FCGI_STDIN, FCGI_STDOUT, FCGI_END_REQUEST, RecordReader } from '../../src/transports/protocols/fastcgi';

const ROOT = path.resolve(__dirname, '../..');
const BIN = path.join(ROOT, 'bin', 'tsgi.js');

const APP = `
export async function application(environ: any, startResponse: any) {
  const m = /sleep=(\\d+)/.exec(String(environ.QUERY_STRING));
  if (m) await new Promise((r) => setTimeout(r, Number(m[1])));
  startResponse('200 OK', [['Content-Type', 'text/plain']]);
  return ['pid=' + process.pid + ' uid=' + process.getuid!() + ' path=' + environ.PATH_INFO + '\\n'];
}
`;

let dir: string;
let app: string;
const running: ManagedProcess[] = [];

beforeAll(() => {
  dir = makeReadableTempDir('tsgi-daemon-');
  app = path.join(dir, 'app.tsgi');
  fs.writeFileSync(app, APP);
  fs.chmodSync(app, 0o644);
});

afterAll(() => {
  fs.rmSync(dir, { recursive: true, force: true });
});

afterEach(async () => {
  for (const p of running.splice(0)) await p.terminate('SIGKILL', 100);
});

interface Daemon {
  proc: ManagedProcess;
  url: string;
}

function startDaemon(args: string[], script = app): ManagedProcess {
  const proc = new ManagedProcess({ command: process.execPath, args: [BIN, 'daemon', script, ...args], cwd: dir, marker: script });
  running.push(proc);
  return proc;
}

async function waitFor<T>(what: string, probe: () => T | undefined | null | false, timeoutMs = 20_000, proc?: ManagedProcess): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = probe();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}${proc ? `; stderr:\n${proc.stderr()}` : ''}`);
    await delay(25);
  }
}

const ready = (proc: ManagedProcess) => waitFor('the ready line', () => /\] pid \d+: ready: /.test(proc.stderr()) || (proc.exitedFlag && 'exited'), 30_000, proc);

async function httpDaemon(extra: string[] = []): Promise<Daemon> {
  const port = await freePort();
  const proc = startDaemon(['--listen', `tcp:127.0.0.1:${port}`, '--protocol', 'http', ...extra]);
  await ready(proc);
  expect(proc.exitedFlag).toBe(false);
  return { proc, url: `http://127.0.0.1:${port}` };
}

const pidOf = (r: HttpResponse) => Number(/pid=(\d+)/.exec(r.text)?.[1] ?? NaN);
/** Pids the master spawned, in order (from its log). */
const spawnedPids = (proc: ManagedProcess) => [...proc.stderr().matchAll(/spawned worker pid (\d+)/g)].map((m) => Number(m[1]));
const liveWorkers = (proc: ManagedProcess) => proc.processes().filter((p) => p !== proc.pid);

describe('tsgi daemon over HTTP', () => {
  it('serves from --processes 2 workers, which are the master’s children', async () => {
    const d = await httpDaemon(['--processes', '2']);
    const workers = await waitFor('2 workers', () => liveWorkers(d.proc).length === 2 && liveWorkers(d.proc));
    const pids = new Set<number>();
    const rs = await Promise.all(Array.from({ length: 20 }, () => request(`${d.url}/a/b?sleep=50`)));
    for (const r of rs) {
      expect(r.status).toBe(200);
      expect(r.text).toContain('path=/a/b');
      pids.add(pidOf(r));
    }
    for (const p of pids) expect(workers).toContain(p);
    expect(d.proc.stderr()).toMatch(/\[tsgi-daemon:info\] pid \d+: ready: 2 worker\(s\)/);
  });

  it('kill -9 of a worker under load: only its in-flight requests fail, and a new worker appears', async () => {
    const d = await httpDaemon(['--processes', '2']);
    const [victim] = await waitFor('2 workers', () => liveWorkers(d.proc).length === 2 && liveWorkers(d.proc));
    const load = Array.from({ length: 12 }, () => request(`${d.url}/?sleep=1500`, { timeoutMs: 20_000 }).catch(() => null));
    // Every request has reached a worker (and its stats reached the master) before the kill.
    await delay(500);
    process.kill(victim, 'SIGKILL');
    const rs = await Promise.all(load);
    const crash = await waitFor('the crash report', () => new RegExp(`worker pid ${victim} died \\(killed by signal SIGKILL\\) with (\\d+) request`).exec(d.proc.stderr()), 10_000, d.proc);
    const failed = rs.filter((r) => r === null || r.status !== 200 || !r.complete);
    expect(failed.length).toBe(Number(crash[1]));
    for (const r of rs) if (r?.status === 200) expect(pidOf(r)).not.toBe(victim);
    const fresh = await waitFor('a new worker', () => liveWorkers(d.proc).find((p) => p !== victim && spawnedPids(d.proc).indexOf(p) >= 2), 10_000, d.proc);
    const after = await request(`${d.url}/`);
    expect(after.status).toBe(200);
    expect(pidAlive(fresh)).toBe(true);
  });

  it('--maximum-requests 5: the pid changes after 5 requests and no request fails', async () => {
    const d = await httpDaemon(['--processes', '1', '--maximum-requests', '5']);
    const first: number[] = [];
    for (let i = 0; i < 5; i++) {
      const r = await request(`${d.url}/`);
      expect(r.status).toBe(200);
      first.push(pidOf(r));
    }
    expect(new Set(first).size).toBe(1);
    // The old worker keeps serving until its replacement is ready; then the pid changes.
    let changed = false;
    const deadline = Date.now() + 20_000;
    while (!changed && Date.now() < deadline) {
      const r = await request(`${d.url}/`);
      expect(r.status).toBe(200);
      expect(r.complete).toBe(true);
      changed = pidOf(r) !== first[0];
    }
    expect(changed).toBe(true);
    await waitFor('the old worker to exit after draining', () => new RegExp(`worker pid ${first[0]} exited after draining`).test(d.proc.stderr()), 20_000, d.proc);
  });

  it('SIGHUP with requests in flight: 0 failures, all new pids', async () => {
    const d = await httpDaemon(['--processes', '2']);
    const old = await waitFor('2 workers', () => liveWorkers(d.proc).length === 2 && liveWorkers(d.proc));
    const inflight = Array.from({ length: 8 }, () => request(`${d.url}/?sleep=1000`, { timeoutMs: 20_000 }));
    await delay(200);
    d.proc.signal('SIGHUP');
    // More requests while the pool is being replaced.
    const during: HttpResponse[] = [];
    const until = Date.now() + 1500;
    while (Date.now() < until) during.push(await request(`${d.url}/?sleep=20`));
    const all = [...(await Promise.all(inflight)), ...during];
    for (const r of all) {
      expect(r.status).toBe(200);
      expect(r.complete).toBe(true);
    }
    await waitFor('the old workers to exit', () => old.every((p) => !pidAlive(p)), 20_000, d.proc);
    const now = await waitFor('2 new workers', () => liveWorkers(d.proc).length === 2 && liveWorkers(d.proc));
    for (const p of now) expect(old).not.toContain(p);
    const r = await request(`${d.url}/`);
    expect(old).not.toContain(pidOf(r));
  });

  it('SIGTERM with a request in flight: it completes, exit 0, no worker left', async () => {
    const d = await httpDaemon(['--processes', '2']);
    const pending = request(`${d.url}/?sleep=1000`, { timeoutMs: 20_000 });
    await delay(300);
    d.proc.signal('SIGTERM');
    const r = await pending;
    expect(r.status).toBe(200);
    expect(r.complete).toBe(true);
    await waitFor('the master to exit', () => d.proc.exitedFlag, 20_000, d.proc);
    expect(d.proc.exitCode).toBe(0);
    expect(d.proc.processes()).toEqual([]);
    // The socket is closed: nothing accepts any more.
    await expect(request(`${d.url}/`, { timeoutMs: 2000 })).rejects.toThrow(/ECONNREFUSED/);
  });

  it('request-timeout: the stuck request gets 504, its worker is replaced, others continue', async () => {
    const d = await httpDaemon(['--processes', '1', '--request-timeout', '1']);
    const [stuckWorker] = await waitFor('1 worker', () => liveWorkers(d.proc).length === 1 && liveWorkers(d.proc));
    const stuck = request(`${d.url}/?sleep=600000`, { timeoutMs: 20_000 });
    const fine = await request(`${d.url}/?sleep=10`);
    expect(fine.status).toBe(200);
    const r = await stuck;
    expect(r.status).toBe(504);
    await waitFor('the worker to be replaced', () => !pidAlive(stuckWorker) && liveWorkers(d.proc).length === 1, 20_000, d.proc);
    const next = await request(`${d.url}/`);
    expect(next.status).toBe(200);
    expect(pidOf(next)).not.toBe(stuckWorker);
    expect(d.proc.stderr()).toMatch(/request-timeout: "GET \/\?sleep=600000"/);
  });
});

describe('tsgi daemon start-up failures', () => {
  it('a script that fails to load: a clear error, non-zero exit, no respawn storm', async () => {
    const bad = path.join(dir, 'broken.tsgi');
    fs.writeFileSync(bad, 'throw new Error("boom at load");\nexport const application = 1;\n');
    const port = await freePort();
    const proc = startDaemon(['--listen', `tcp:127.0.0.1:${port}`, '--protocol', 'http', '--processes', '2'], bad);
    await waitFor('exit', () => proc.exitedFlag, 30_000, proc);
    expect(proc.exitCode).not.toBe(0);
    expect(proc.stderr()).toMatch(/cannot start: the application failed to load: [\s\S]*boom at load/);
    expect(spawnedPids(proc).length).toBeLessThanOrEqual(2);
    expect(proc.processes()).toEqual([]);
  });

  it('options are parsed strictly and errors name the option', async () => {
    for (const [args, re] of [
      [['--listen', 'tcp:127.0.0.1:1', '--protocol', 'gopher'], /--protocol must be one of/],
      [['--listen', 'nowhere', '--protocol', 'http'], /--listen must be unix:PATH or tcp:HOST:PORT/],
      [['--listen', 'tcp:127.0.0.1:1', '--protocol', 'http', '--processes', 'two'], /--processes must be an integer/],
      [['--listen', 'tcp:127.0.0.1:1', '--protocol', 'http', '--bogus'], /Unknown option '--bogus'/],
      [['--protocol', 'http'], /--listen .* is required/],
      [['--listen', 'unix:/tmp/x.sock', '--protocol', 'http', '--socket-mode', 'rw'], /--socket-mode must be an octal mode/],
    ] as const) {
      const proc = startDaemon([...args]);
      await waitFor('exit', () => proc.exitedFlag, 10_000, proc);
      expect(proc.exitCode).toBe(2);
      expect(proc.stderr()).toMatch(re);
    }
  });
});

function unixGet(socketPath: string, urlPath = '/'): Promise<{ status: number; text: string }> {
  return new Promise((resolve, reject) => {
    const req = http.get({ socketPath, path: urlPath, agent: false }, (res) => {
      const parts: Buffer[] = [];
      res.on('data', (b: Buffer) => parts.push(b));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, text: Buffer.concat(parts).toString() }));
    });
    req.on('error', reject);
  });
}

describe('tsgi daemon on a Unix socket', () => {
  it('creates the socket with mode 0600 by default', async () => {
    const sock = path.join(dir, 'default.sock');
    const proc = startDaemon(['--listen', `unix:${sock}`, '--protocol', 'http']);
    await ready(proc);
    expect(fs.statSync(sock).mode & 0o777).toBe(0o600);
    const r = await unixGet(sock, '/x');
    expect(r.status).toBe(200);
    expect(r.text).toContain('path=/x');
    proc.signal('SIGTERM');
    await waitFor('exit', () => proc.exitedFlag, 20_000, proc);
    expect(proc.exitCode).toBe(0);
    expect(fs.existsSync(sock)).toBe(false);
  });

  it('--socket-mode 0660 is applied, and a stale socket left by a dead daemon is replaced', async () => {
    const sock = path.join(dir, 'mode.sock');
    // A stale socket: its owner killed with SIGKILL, which leaves the file behind.
    const owner = new ManagedProcess({ command: process.execPath, args: ['-e', `require('net').createServer().listen(${JSON.stringify(sock)})`], cwd: dir, marker: sock });
    await waitFor('the stale socket', () => fs.existsSync(sock));
    await owner.terminate('SIGKILL', 100);
    expect(fs.existsSync(sock)).toBe(true);
    const proc = startDaemon(['--listen', `unix:${sock}`, '--protocol', 'http', '--socket-mode', '0660']);
    await ready(proc);
    expect(fs.statSync(sock).mode & 0o777).toBe(0o660);
    expect((await unixGet(sock)).status).toBe(200);
    // A second daemon on a live socket refuses to start instead of stealing it.
    const second = startDaemon(['--listen', `unix:${sock}`, '--protocol', 'http']);
    await waitFor('exit', () => second.exitedFlag, 20_000, second);
    expect(second.exitCode).toBe(1);
    expect(second.stderr()).toMatch(/another process is listening on it/);
    expect((await unixGet(sock)).status).toBe(200);
  });

  it.runIf(isRoot())('--user nobody: workers run as nobody, the socket belongs to nobody', async () => {
    const nobody = Number(/^nobody:[^:]*:(\d+):/m.exec(fs.readFileSync('/etc/passwd', 'utf8'))?.[1]);
    const sock = path.join(dir, 'user.sock');
    const proc = startDaemon(['--listen', `unix:${sock}`, '--protocol', 'http', '--user', 'nobody', '--processes', '2']);
    await ready(proc);
    expect(fs.statSync(sock).uid).toBe(nobody);
    const workers = await waitFor('2 workers', () => liveWorkers(proc).length === 2 && liveWorkers(proc));
    for (const pid of workers) {
      const status = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
      const uids = /^Uid:\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)/m.exec(status)!.slice(1).map(Number);
      expect(uids).toEqual([nobody, nobody, nobody, nobody]);
    }
    const r = await unixGet(sock);
    expect(r.text).toContain(`uid=${nobody}`);
  });
});

/** One exchange over a raw connection: send `bytes`, read until the daemon closes (or `done` says so). */
function exchange(port: number, bytes: Buffer, done: (got: Buffer) => boolean = () => false): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const parts: Buffer[] = [];
    const s = net.connect(port, '127.0.0.1', () => s.write(bytes));
    const finish = () => {
      s.destroy();
      resolve(Buffer.concat(parts));
    };
    s.on('data', (b: Buffer) => {
      parts.push(b);
      if (done(Buffer.concat(parts))) finish();
    });
    s.on('end', finish);
    s.on('error', reject);
    s.setTimeout(10_000, () => reject(new Error('no answer')));
  });
}

const cgiVars = (port: number): Record<string, string> => ({
  REQUEST_METHOD: 'GET',
  SCRIPT_NAME: '',
  PATH_INFO: '/proto',
  QUERY_STRING: '',
  REQUEST_URI: '/proto',
  SERVER_NAME: '127.0.0.1',
  SERVER_PORT: String(port),
  SERVER_PROTOCOL: 'HTTP/1.1',
  REMOTE_ADDR: '127.0.0.1',
  CONTENT_LENGTH: '0',
});

describe('tsgi daemon over the gateway protocols', () => {
  async function daemonFor(protocol: string): Promise<{ port: number; proc: ManagedProcess }> {
    const port = await freePort();
    const proc = startDaemon(['--listen', `tcp:127.0.0.1:${port}`, '--protocol', protocol, '--processes', '2']);
    await ready(proc);
    return { port, proc };
  }

  it('scgi', async () => {
    const { port } = await daemonFor('scgi');
    const out = (await exchange(port, encodeScgiRequest(cgiVars(port), 0))).toString();
    expect(out).toMatch(/^Status: 200 OK\r\n/);
    expect(out).toContain('path=/proto');
  });

  it('scgi without --mount-point keeps the web server\'s SCRIPT_NAME', async () => {
    const { port } = await daemonFor('scgi');
    const vars = { ...cgiVars(port), SCRIPT_NAME: '/mnt', PATH_INFO: '/proto', REQUEST_URI: '/mnt/proto' };
    const out = (await exchange(port, encodeScgiRequest(vars, 0))).toString();
    expect(out).toMatch(/^Status: 200 OK\r\n/);
    expect(out).toContain('path=/proto');
    expect(out).not.toContain('path=/mnt/proto');
  });

  it('uwsgi', async () => {
    const { port } = await daemonFor('uwsgi');
    const out = (await exchange(port, encodeUwsgiRequest(cgiVars(port)))).toString();
    expect(out).toMatch(/^HTTP\/1\.[01] 200 OK\r\n/);
    expect(out).toContain('path=/proto');
  });

  it('fastcgi', async () => {
    const { port } = await daemonFor('fastcgi');
    const req = Buffer.concat([encodeBeginRequest(1), encodeParams(1, Object.entries(cgiVars(port))), encodeRecord(FCGI_STDIN, 1)]);
    const hasEnd = (b: Buffer) => {
      const reader = new RecordReader();
      return reader.feed(b).some((r) => r.type === FCGI_END_REQUEST);
    };
    const raw = await exchange(port, req, hasEnd);
    const records = new RecordReader().feed(raw);
    const stdout = Buffer.concat(records.filter((r) => r.type === FCGI_STDOUT).map((r) => Buffer.from(r.content))).toString();
    expect(stdout).toMatch(/^Status: 200 OK\r\n/);
    expect(stdout).toContain('path=/proto');
    expect(records.some((r) => r.type === FCGI_END_REQUEST)).toBe(true);
  });
});
