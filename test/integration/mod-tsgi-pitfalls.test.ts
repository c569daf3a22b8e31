/**
 * The pitfalls of embedding libnode in Apache (shared/reference/embedding.md §6, P1–P21),
 * each checked from outside against real, private Apaches (event MPM, one child each).
 * docs/pitfalls.md maps every pitfall to its test (here or in another file) or to the
 * reason it has none. Each test names its pitfall.
 *
 * - `apache`: mod_tsgi (and mod_ssl, P21) serving the apps below, written into its
 *   ServerRoot; NODE_OPTIONS set in its environment (P13).
 * - `reference`: the same MPM settings without mod_tsgi: what Apache's own parent and
 *   children look like (signal dispositions, thread masks, thread count, descriptors).
 * - `piped`: mod_tsgi with a piped ErrorLog, so fd 2 of the children is a pipe (P11).
 *
 * What is read from /proc: thread lists and per-thread signal masks (`SigBlk`), the
 * process-wide handlers and ignored signals (`SigCgt`, `SigIgn`), the sockets a process
 * holds (fd links against /proc/net/tcp{,6} LISTEN entries), anonymous descriptors
 * (eventfd, epoll), zombies, fd flags, VmRSS and private dirty memory.
 *
 * The pitfalls are those of a runtime inside Apache's processes, so most are embedded
 * only (signals, threads, fork and inspector inside an Apache child; libnode's builtins).
 * The last describe runs the ones with a daemon-mode meaning against an Apache whose apps
 * run in a TSGIDaemonProcess group (processes=2): no Node in the Apache parent (P2),
 * errors outside requests logged (P9, P10), the app's own modules (P12), the daemon's
 * environment is exactly the launch contract's (P13), builtins (P19), worker threads and
 * warnings, HTTPS (P21), a piped ErrorLog that stays blocking (P11), fresh state after
 * graceful restarts (P16).
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, readdirSync, readlinkSync, rmSync } from 'node:fs';
import * as https from 'node:https';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startApache, type ApacheInstance } from '../harness/apache';
import { request } from '../harness/http';
import { freePort } from '../harness/ports';
import { daemonTrees, daemonWorkers, ensureMode, ensureModTsgi, MOD_TSGI, modeConfig, pollFor } from '../helpers/mod-tsgi';
import { ROOT } from '../helpers/serve';

const INFO_APP = `
import { getHeapStatistics } from 'node:v8';
// A module-level counter: 1 on the first request an Environment serves (P16).
let count = 0;
export function application(environ: any, startResponse: any) {
  count++;
  startResponse('200 OK', [['Content-Type', 'application/json']]);
  return [JSON.stringify({
    pid: process.pid,
    count,
    argv: process.argv,
    argv0: process.argv0,
    execPath: process.execPath,
    title: process.title,
    execArgv: process.execArgv,
    cwd: process.cwd(),
    dirname: __dirname,
    nodeOptions: process.env.NODE_OPTIONS ?? null,
    marker: process.env.P13_MARKER ?? null,
    perRequestInProcessEnv: process.env.P13_PER_REQUEST ?? null,
    perRequestInEnviron: environ.P13_PER_REQUEST ?? null,
    heapLimit: getHeapStatistics().heap_size_limit,
    versions: process.versions,
  })];
}`;

const APPS: Record<string, string> = {
  'apps/info.tsgi': INFO_APP,
  // P6: child processes from the Node thread, sync and async; their exit is reaped.
  'apps/fork.tsgi': `
import { fork } from 'node:child_process';
import { writeFileSync } from 'node:fs';
export async function application(e: any, sr: any) {
  let refused = '';
  try { fork('/nonexistent.js'); } catch (err) { refused = (err as Error).message; }
  const script = '/tmp/tsgi-p14-child-' + process.pid + '.js';
  writeFileSync(script, "process.send({ pong: process.version }, () => process.exit(0));");
  const child = fork(script, [], { execPath: '/usr/bin/node', stdio: ['ignore', 'ignore', 'ignore', 'ipc'] });
  const reply = await new Promise((resolve) => child.on('message', resolve));
  await new Promise((resolve) => child.on('exit', resolve));
  sr('200 OK', [['Content-Type', 'application/json']]);
  return [JSON.stringify({ refused, reply })];
}
`,
  'apps/spawn.tsgi': `
import { execFileSync, spawn, spawnSync } from 'node:child_process';
export async function application(environ: any, startResponse: any) {
  execFileSync('/bin/true');
  const sync = spawnSync('/bin/echo', ['from spawnSync']);
  const async = await new Promise<any>((resolve, reject) => {
    const c = spawn('/bin/echo', ['from spawn']);
    let out = '';
    c.stdout.on('data', (d: Buffer) => (out += d));
    c.on('error', reject);
    c.on('close', (code: number | null, signal: string | null) => resolve({ code, signal, out }));
  });
  // What a spawned process inherits (P7: libuv resets the dispositions it execs with).
  const status = execFileSync('/bin/cat', ['/proc/self/status'], { encoding: 'utf8' });
  startResponse('200 OK', [['Content-Type', 'application/json']]);
  return [JSON.stringify({
    pid: process.pid,
    sync: { status: sync.status, out: sync.stdout.toString() },
    async,
    childSigIgn: /^SigIgn:\\s*(\\w+)/m.exec(status)?.[1] ?? null,
  })];
}`,
  // P9: an exception thrown outside any request (a timer callback).
  'apps/uncaught.tsgi': `
export function application(environ: any, startResponse: any) {
  setTimeout(() => { throw new Error('P9 thrown from a setTimeout callback'); }, 0);
  startResponse('200 OK', [['Content-Type', 'text/plain']]);
  return ['scheduled\\n'];
}`,
  // P10: a rejected promise nobody handles.
  'apps/rejection.tsgi': `
async function fails(): Promise<void> { throw new Error('P10 nobody handles this rejection'); }
export function application(environ: any, startResponse: any) {
  void fails();
  startResponse('200 OK', [['Content-Type', 'text/plain']]);
  return ['rejected\\n'];
}`,
  // P19: the externalized builtins of Debian's libnode: undici (fetch), cjs-module-lexer
  // (an ES module importing CommonJS names), acorn (assert's message for a falsy value).
  'apps/debian.tsgi': `
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
export async function application(environ: any, startResponse: any) {
  const fetched = await fetch('http://127.0.0.1:' + environ.SERVER_PORT + '/hello');
  const esm = await import(pathToFileURL(join(__dirname, 'esm.mjs')).href);
  const assertion = require('./assert.js').check();
  startResponse('200 OK', [['Content-Type', 'application/json']]);
  return [JSON.stringify({
    fetch: { status: fetched.status, text: await fetched.text() },
    esm: esm.describe(),
    assertion,
  })];
}`,
  'apps/esm.mjs': `import { named } from './dep.cjs';\nexport const describe = () => 'esm got ' + named;\n`,
  'apps/assert.js': `'use strict';
const assert = require('node:assert');
exports.check = () => {
  const x = 2;
  try {
    assert.ok(x === 1);
  } catch (e) {
    return { code: e.code, message: e.message };
  }
  return null;
};
`,
  'apps/dep.cjs': `exports.named = 'a CommonJS export';\n`,
  // P21: worker_threads inside an Apache child; a process warning.
  'apps/worker.tsgi': `
import { Worker } from 'node:worker_threads';
export async function application(environ: any, startResponse: any) {
  const w = new Worker('require("node:worker_threads").parentPort.postMessage(6 * 7)', { eval: true });
  const answer = await new Promise((resolve, reject) => { w.once('message', resolve); w.once('error', reject); });
  await w.terminate();
  process.emitWarning('P21 a warning from an app', 'TsgiPitfallWarning');
  startResponse('200 OK', [['Content-Type', 'text/plain']]);
  return [String(answer)];
}`,
  // P21: Node's OpenSSL next to mod_ssl's, over HTTPS served by mod_ssl.
  'apps/crypto.tsgi': `
import { createHash, generateKeyPairSync, sign, verify } from 'node:crypto';
export function application(environ: any, startResponse: any) {
  const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const data = Buffer.from('P21');
  startResponse('200 OK', [['Content-Type', 'application/json']]);
  return [JSON.stringify({
    scheme: environ['tsgi.url_scheme'],
    sha256: createHash('sha256').update('abc').digest('hex'),
    verified: verify('sha256', data, publicKey, sign('sha256', data, privateKey)),
  })];
}`,
  // P11: console and process.stderr, then what fd 2 of this process looks like.
  'apps/stderr.tsgi': `
import { readFileSync } from 'node:fs';
export function application(environ: any, startResponse: any) {
  console.error('P11 console.error through a piped ErrorLog');
  process.stderr.write('P11 process.stderr through a piped ErrorLog\\n');
  startResponse('200 OK', [['Content-Type', 'application/json']]);
  return [JSON.stringify({ pid: process.pid, fdinfo: readFileSync('/proc/self/fdinfo/2', 'utf8') })];
}`,
  // P12: the app's own node_modules, relative requires, createRequire; the cwd is not the app's.
  'p12/app.tsgi': `
import { createRequire } from 'node:module';
import pkg from 'p12-pkg';
import { helper } from './lib/helper';
const req = createRequire(__filename);
export function application(environ: any, startResponse: any) {
  startResponse('200 OK', [['Content-Type', 'application/json']]);
  return [JSON.stringify({
    imported: pkg.hello(),
    required: req('p12-pkg').hello(),
    resolved: req.resolve('p12-pkg'),
    helper: helper(),
    data: req('./data.json').value,
    cwd: process.cwd(),
    dirname: __dirname,
  })];
}`,
  'p12/lib/helper.ts': `export const helper = (): string => 'helper.ts via a relative import';\n`,
  'p12/data.json': `{ "value": "data.json via createRequire" }\n`,
  'p12/node_modules/p12-pkg/package.json': `{ "name": "p12-pkg", "version": "1.0.0", "main": "lib/main.js" }\n`,
  'p12/node_modules/p12-pkg/lib/main.js': `exports.hello = () => 'p12-pkg from the app node_modules';\nexports.default = exports;\n`,
};

const MPM_LINES = [
  // One child serves everything (ServerLimit 2 leaves room for the next generation's
  // child while an old one finishes a graceful restart).
  'StartServers 1',
  'MinSpareThreads 1',
  'MaxSpareThreads 64',
  'ThreadsPerChild 16',
  'ServerLimit 2',
  'MaxRequestWorkers 16',
];
// The harness's default set without mod_cgid: the parent's only children are MPM children.
const BASE_MODULES = ['authz_core', 'mime', 'dir', 'alias', 'env', 'setenvif', 'log_config', 'unixd', 'headers'];

let apache: ApacheInstance;
/** The same Apache without mod_tsgi: what Apache's own children look like. */
let reference: ApacheInstance;
/** mod_tsgi with `ErrorLog "|…"`: fd 2 of the children is a pipe (P11). */
let piped: ApacheInstance;
/** The HTTPS port of `apache` (mod_ssl, P21). */
let tlsPort: number;
let tlsDir: string;

beforeAll(async () => {
  ensureModTsgi();
  // A throwaway certificate for mod_ssl.
  tlsDir = mkdtempSync(join(tmpdir(), 'tsgi-pitfalls-tls-'));
  execFileSync('openssl', [
    'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-days', '2',
    '-subj', '/CN=127.0.0.1', '-keyout', join(tlsDir, 'key.pem'), '-out', join(tlsDir, 'cert.pem'),
  ], { stdio: 'ignore' });
  tlsPort = await freePort();
  [apache, reference, piped] = await Promise.all([
    startPitfallsApache(tlsPort),
    startApache({ baseModules: BASE_MODULES, config: MPM_LINES.join('\n') }),
    startPipedLogApache(),
  ]);
  // Each has a child; mod_tsgi's has its runtime started (the first request waits for it).
  await getJson('/apps/info.tsgi');
  await request(reference.url('/'));
}, 600_000);

afterAll(async () => {
  await Promise.all([apache?.stop(), reference?.stop(), piped?.stop()]);
  if (tlsDir) rmSync(tlsDir, { recursive: true, force: true });
});

// ---- /proc helpers -------------------------------------------------------------------

type Status = Record<string, string>;

function status(pid: number | string, tid?: number | string): Status {
  const file = tid === undefined ? `/proc/${pid}/status` : `/proc/${pid}/task/${tid}/status`;
  const out: Status = {};
  for (const line of readFileSync(file, 'utf8').split('\n')) {
    const i = line.indexOf(':');
    if (i > 0) out[line.slice(0, i)] = line.slice(i + 1).trim();
  }
  return out;
}

/** Whether signal number `sig` is in a /proc signal-set mask (hex, bit sig-1). */
const has = (mask: string, sig: number) => ((BigInt(`0x${mask}`) >> BigInt(sig - 1)) & 1n) === 1n;
const without = (mask: string, ...sigs: number[]) =>
  sigs.reduce((m, s) => m & ~(1n << BigInt(s - 1)), BigInt(`0x${mask}`)).toString(16);

const SIG = { HUP: 1, INT: 2, ILL: 4, BUS: 7, FPE: 8, USR1: 10, SEGV: 11, PIPE: 13, TERM: 15, CHLD: 17, WINCH: 28, XFSZ: 25 };

const pids = () => readdirSync('/proc').filter((d) => /^\d+$/.test(d)).map(Number);

function childrenOf(ppid: number): number[] {
  return pids().filter((p) => {
    try {
      return Number(status(p)['PPid']) === ppid;
    } catch {
      return false; // gone meanwhile
    }
  });
}

/** The kinds of anonymous descriptors (eventfd, eventpoll, …) `pid` holds, sorted. */
function fdKinds(pid: number): string[] {
  const out: string[] = [];
  for (const fd of readdirSync(`/proc/${pid}/fd`)) {
    try {
      const link = readlinkSync(`/proc/${pid}/fd/${fd}`);
      if (link.startsWith('anon_inode:')) out.push(link.slice('anon_inode:'.length));
    } catch {
      // closed meanwhile
    }
  }
  return out.sort();
}

const tids = (pid: number) => readdirSync(`/proc/${pid}/task`);

/** Inodes of the TCP sockets in LISTEN state (all of this network namespace), with their port. */
function listeningSockets(): Map<string, number> {
  const out = new Map<string, number>();
  for (const f of ['/proc/net/tcp', '/proc/net/tcp6']) {
    let text = '';
    try {
      text = readFileSync(f, 'utf8');
    } catch {
      continue;
    }
    for (const line of text.split('\n').slice(1)) {
      const cols = line.trim().split(/\s+/);
      if (cols.length < 10 || cols[3] !== '0A') continue;
      out.set(cols[9]!, parseInt(cols[1]!.split(':')[1]!, 16));
    }
  }
  return out;
}

/** The ports of the listening sockets `pid` holds a descriptor for. */
function listeningPorts(pid: number): number[] {
  const listening = listeningSockets();
  const ports = new Set<number>();
  let fds: string[] = [];
  try {
    fds = readdirSync(`/proc/${pid}/fd`);
  } catch {
    return [];
  }
  for (const fd of fds) {
    let link = '';
    try {
      link = readlinkSync(`/proc/${pid}/fd/${fd}`);
    } catch {
      continue;
    }
    const m = /^socket:\[(\d+)\]$/.exec(link);
    const port = m ? listening.get(m[1]!) : undefined;
    if (port !== undefined) ports.add(port);
  }
  return [...ports].sort((a, b) => a - b);
}

/**
 * The Apache most pitfalls run against (its apps, a TLS virtual host, SetEnv, NODE_OPTIONS
 * and a marker in Apache's environment, P13); `extra` is what daemon mode adds.
 */
function startPitfallsApache(port: number, extra: string[] = []): Promise<ApacheInstance> {
  return startApache({
    baseModules: [...BASE_MODULES, 'ssl'],
    modules: [MOD_TSGI],
    files: {
      ...APPS,
      'tls/cert.pem': readFileSync(join(tlsDir, 'cert.pem')),
      'tls/key.pem': readFileSync(join(tlsDir, 'key.pem')),
    },
    // P13: NODE_OPTIONS in Apache's environment must not reach Node. Embedded, the rest of
    // the environment does (process.env is the parent's); the daemons get PATH, HOME and
    // their group's env= entries only.
    env: { ...process.env, NODE_OPTIONS: '--max-old-space-size=20', P13_MARKER: 'from the Apache environment' },
    config: ({ root }) =>
      [
        `TSGIScriptAlias /apps/ ${root}/apps/`,
        `TSGIScriptAlias /p12 ${root}/p12/app.tsgi`,
        `TSGIScriptAlias /hello ${join(ROOT, 'examples', 'hello.tsgi')}`,
        'SetEnv P13_PER_REQUEST "from SetEnv"',
        // One Node environment for all of these apps (what embedding.md measured).
        'TSGIApplicationGroup %{GLOBAL}',
        `Listen 127.0.0.1:${port}`,
        `<VirtualHost 127.0.0.1:${port}>`,
        '  SSLEngine on',
        `  SSLCertificateFile ${root}/tls/cert.pem`,
        `  SSLCertificateKeyFile ${root}/tls/key.pem`,
        `  TSGIScriptAlias /crypto ${root}/apps/crypto.tsgi`,
        '</VirtualHost>',
        ...MPM_LINES,
        ...extra,
      ].join('\n'),
  });
}

/** An Apache whose ErrorLog is a pipe, with the app that writes to stderr (P11). */
function startPipedLogApache(extra: string[] = []): Promise<ApacheInstance> {
  return startApache({
    baseModules: BASE_MODULES,
    modules: [MOD_TSGI],
    files: { 'apps/stderr.tsgi': APPS['apps/stderr.tsgi']! },
    config: ({ root }) =>
      [
        // Replaces the harness's file ErrorLog: the same file, through a pipe.
        `ErrorLog "|$exec /bin/cat >> ${root}/error.log"`,
        `TSGIScriptAlias /stderr ${root}/apps/stderr.tsgi`,
        ...MPM_LINES,
        ...extra,
      ].join('\n'),
  });
}

async function getJson<T = Record<string, any>>(p: string): Promise<T> {
  const r = await request(apache.url(p), { timeoutMs: 30_000 });
  expect(r.status, r.text).toBe(200);
  return JSON.parse(r.text) as T;
}

/** GET over HTTPS (the throwaway certificate is not checked). */
function httpsGet(url: string): Promise<{ status: number; text: string }> {
  return new Promise((resolve, reject) => {
    const req = https.get(url, { rejectUnauthorized: false, agent: false, timeout: 30_000 }, (res) => {
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (d: string) => (text += d));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, text }));
      res.on('error', reject);
    });
    req.on('timeout', () => req.destroy(new Error(`${url}: timed out`)));
    req.on('error', reject);
  });
}

/** The pid of the child that serves the next request, and its module counter. */
const info = () => getJson<{ pid: number; count: number } & Record<string, any>>('/apps/info.tsgi');

const referenceChild = () => {
  const c = childrenOf(reference.pid);
  expect(c).toHaveLength(1);
  return c[0]!;
};

describe('embedding pitfalls (embedding.md §6)', () => {
  it('P2: the Apache parent never starts Node; the child has the Node thread', async () => {
    const { pid: child } = await info();
    expect(Number(status(child)['PPid'])).toBe(apache.pid);
    // The parent is one thread, like Apache's own parent.
    expect(tids(apache.pid)).toHaveLength(1);
    expect(tids(reference.pid)).toHaveLength(1);
    // No event loop in the parent: libuv's eventfd (what uv_async_send writes to) and
    // epoll instance exist in the child only. A parent with them would share them with
    // every child it forks.
    expect(fdKinds(apache.pid)).toEqual(fdKinds(reference.pid));
    expect(fdKinds(apache.pid)).not.toContain('[eventfd]');
    expect(fdKinds(child)).toContain('[eventfd]');
    // The parent's RSS counts libnode's file pages (mapped with the DSO); its private
    // dirty memory stays that of a plain Apache parent (an idle Environment is ~13 MB).
    const privateDirtyKiB = (pid: number) =>
      Number(/^Private_Dirty:\s*(\d+)/m.exec(readFileSync(`/proc/${pid}/smaps_rollup`, 'utf8'))![1]);
    expect(privateDirtyKiB(apache.pid)).toBeLessThan(4 * 1024);
    // The child has Apache's threads plus Node's: the Node thread, the platform's threads.
    const extra = tids(child).length - tids(referenceChild()).length;
    console.log(
      `P2: parent RSS ${status(apache.pid)['VmRSS']}, private dirty ${privateDirtyKiB(apache.pid)} kB ` +
        `(Apache alone: ${status(reference.pid)['VmRSS']}, ${privateDirtyKiB(reference.pid)} kB), 1 thread; ` +
        `child ${tids(child).length} threads, Node adds ${extra}`,
    );
    expect(extra).toBeGreaterThanOrEqual(2);
  });

  it('P3: the child keeps Apache’s signal handlers; Node’s threads block every asynchronous signal', async () => {
    const { pid: child } = await info();
    const mine = status(child);
    const refStatus = status(referenceChild());
    // Process-wide dispositions are exactly Apache's own (SIGCHLD aside: libuv installs
    // its handler once an app spawns a process, P6).
    expect(without(mine['SigCgt']!, SIG.CHLD)).toBe(without(refStatus['SigCgt']!, SIG.CHLD));
    expect(mine['SigIgn']).toBe(refStatus['SigIgn']);
    for (const s of [SIG.HUP, SIG.TERM, SIG.USR1, SIG.WINCH]) expect(has(mine['SigCgt']!, s), `signal ${s}`).toBe(true);
    // The threads mod_tsgi adds (the Node thread, the V8 platform's workers, the
    // watchdog) are those whose mask no thread of Apache's own child has. Each blocks
    // Apache's signals and leaves the synchronous crash signals deliverable; the Node
    // thread lets SIGCHLD in (P6; the platform threads it creates inherit that).
    const ref = referenceChild();
    const refMasks = new Set(tids(ref).map((t) => status(ref, t)['SigBlk']));
    const added = tids(child)
      .map((t) => status(child, t)['SigBlk']!)
      .filter((m) => !refMasks.has(m));
    console.log(`P3: Apache's thread masks ${[...refMasks].join(' ')}; the ${added.length} added threads' ${[...new Set(added)].join(' ')}`);
    expect(added.length).toBe(tids(child).length - tids(ref).length);
    for (const m of added) {
      for (const s of [SIG.HUP, SIG.INT, SIG.USR1, SIG.TERM, SIG.WINCH, SIG.PIPE]) expect(has(m, s), `mask ${m} signal ${s}`).toBe(true);
      for (const s of [SIG.SEGV, SIG.BUS, SIG.FPE, SIG.ILL]) expect(has(m, s), `mask ${m} signal ${s}`).toBe(false);
    }
    expect(added.some((m) => !has(m, SIG.CHLD))).toBe(true);
  });

  it('P7: SIGPIPE and SIGXFSZ stay ignored in the child, as Apache set them', async () => {
    const { pid: child } = await info();
    const ign = status(child)['SigIgn']!;
    expect(has(ign, SIG.PIPE)).toBe(true);
    expect(has(ign, SIG.XFSZ)).toBe(true);
  });

  it('P6: execFileSync, spawnSync and spawn from an app return; no zombie is left; the spawned process does not inherit the ignored SIGPIPE', async () => {
    const r = await getJson('/apps/spawn.tsgi');
    expect(r['sync']).toEqual({ status: 0, out: 'from spawnSync\n' });
    expect(r['async']).toEqual({ code: 0, signal: null, out: 'from spawn\n' });
    expect(has(r['childSigIgn'], SIG.PIPE)).toBe(false);
    // Twice more, then no child of the Apache child is a zombie.
    await getJson('/apps/spawn.tsgi');
    await getJson('/apps/spawn.tsgi');
    const zombies = childrenOf(r['pid']).filter((p) => status(p)['State']?.startsWith('Z'));
    expect(zombies).toEqual([]);
    expect(childrenOf(r['pid'])).toEqual([]);
    // The child still serves JS: the Node thread is not stuck.
    expect((await info()).pid).toBe(r['pid']);
  });

  it('P9: an uncaught exception from a timer is logged with its stack; the same child and Environment keep serving', async () => {
    const before = await info();
    const mark = apache.logMark();
    expect((await request(apache.url('/apps/uncaught.tsgi'))).status).toBe(200);
    await apache.waitForLog(/uncaught exception \(uncaughtException\): Error: P9 thrown from a setTimeout callback\s*\n?.*uncaught\.tsgi:\d+/, 5000, mark);
    const after = await info();
    expect(after.pid).toBe(before.pid);
    // Policy: log and continue. The Environment was not re-created (its module state goes on).
    expect(after.count).toBe(before.count + 1);
    expect(apache.errorLog().slice(mark)).not.toMatch(/TSGI0124/);
  });

  it('P10: an unhandled rejection is logged with its stack; the child keeps serving', async () => {
    const before = await info();
    const mark = apache.logMark();
    expect((await request(apache.url('/apps/rejection.tsgi'))).status).toBe(200);
    await apache.waitForLog(/unhandled promise rejection: Error: P10 nobody handles this rejection\s*\n?.*rejection\.tsgi:\d+/, 5000, mark);
    const after = await info();
    expect(after.pid).toBe(before.pid);
    expect(after.count).toBe(before.count + 1);
    expect(apache.errorLog().slice(mark)).not.toMatch(/TSGI0124/);
  });

  it('P12: the app’s own node_modules, relative imports and createRequire work; the cwd is not the app’s', async () => {
    const r = await getJson('/p12');
    expect(r).toEqual({
      imported: 'p12-pkg from the app node_modules',
      required: 'p12-pkg from the app node_modules',
      resolved: join(apache.root, 'p12', 'node_modules', 'p12-pkg', 'lib', 'main.js'),
      helper: 'helper.ts via a relative import',
      data: 'data.json via createRequire',
      cwd: r['cwd'],
      dirname: join(apache.root, 'p12'),
    });
    expect(r['cwd']).not.toBe(join(apache.root, 'p12'));
  });

  it('P13: process.env is the Apache environment; NODE_OPTIONS there is ignored; SetEnv stays per request', async () => {
    const r = await info();
    expect(r['marker']).toBe('from the Apache environment');
    expect(r['nodeOptions']).toBe('--max-old-space-size=20'); // visible, but not applied:
    expect(r['execArgv']).toEqual([]);
    expect(r['heapLimit']).toBeGreaterThan(100 * 1024 * 1024);
    expect(r['perRequestInEnviron']).toBe('from SetEnv');
    expect(r['perRequestInProcessEnv']).toBe(null);
  });

  it('P14: fork() without an execPath is refused (it would run apache2); with a node execPath it works', async () => {
    const r = await getJson('/apps/fork.tsgi');
    expect(r['refused']).toMatch(/child_process\.fork\("\/nonexistent\.js"\) is refused: in an Apache child process\.execPath is \/usr\/sbin\/apache2/);
    expect((r['reply'] as { pong: string }).pong).toMatch(/^v\d+\./);
  });

  it('P19: Debian libnode’s externalized builtins load: undici (fetch), cjs-module-lexer, acorn', async () => {
    const r = await getJson('/apps/debian.tsgi');
    console.log(`P19: ${JSON.stringify(r)}`);
    expect(r['fetch']).toEqual({ status: 200, text: 'Hello World!\n' });
    expect(r['esm']).toBe('esm got a CommonJS export');
    // assert's generated message parses the failing call's source with acorn.
    expect(r['assertion']).toEqual({ code: 'ERR_ASSERTION', message: expect.stringContaining('assert.ok(x === 1)') });
  });

  it('P20: an idle child with Node started stays under 120 MiB RSS', async () => {
    const { pid: child } = await info();
    const kib = Number(status(child)['VmRSS']!.split(/\s+/)[0]);
    const refKib = Number(status(referenceChild())['VmRSS']!.split(/\s+/)[0]);
    console.log(`P20: child VmRSS ${(kib / 1024).toFixed(1)} MiB (Apache without mod_tsgi: ${(refKib / 1024).toFixed(1)} MiB)`);
    expect(kib).toBeLessThan(120 * 1024);
  });

  it('P21: worker_threads work inside the child; process warnings reach the error log', async () => {
    const mark = apache.logMark();
    const r = await request(apache.url('/apps/worker.tsgi'), { timeoutMs: 30_000 });
    expect(r.status, r.text).toBe(200);
    expect(r.text).toBe('42');
    await apache.waitForLog(/\[tsgi:error\].*stderr: \(node:\d+\) TsgiPitfallWarning: P21 a warning from an app/, 5000, mark);
  });

  it('P21: with mod_ssl loaded, HTTPS requests reach JS and Node’s crypto works', async () => {
    const r = await httpsGet(`https://127.0.0.1:${tlsPort}/crypto`);
    expect(r.status, r.text).toBe(200);
    expect(JSON.parse(r.text)).toEqual({
      scheme: 'https',
      sha256: 'ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad',
      verified: true,
    });
  });

  it('P11: with a piped ErrorLog, console and process.stderr reach the log and fd 2 never turns non-blocking', async () => {
    const mark = piped.logMark();
    const r = await request(piped.url('/stderr'), { timeoutMs: 30_000 });
    expect(r.status, r.text).toBe(200);
    const { pid, fdinfo } = JSON.parse(r.text) as { pid: number; fdinfo: string };
    await piped.waitForLog(/\[tsgi:error\].*stderr: P11 console\.error through a piped ErrorLog/, 5000, mark);
    await piped.waitForLog(/\[tsgi:error\].*stderr: P11 process\.stderr through a piped ErrorLog/, 5000, mark);
    expect(readlinkSync(`/proc/${pid}/fd/2`)).toMatch(/^pipe:/);
    const flags = parseInt(/^flags:\s*(\d+)/m.exec(fdinfo)![1]!, 8);
    expect(flags & 0o4000).toBe(0); // O_NONBLOCK
    // Still blocking after the writes, seen from outside.
    const now = parseInt(/^flags:\s*(\d+)/m.exec(readFileSync(`/proc/${pid}/fdinfo/2`, 'utf8'))![1]!, 8);
    expect(now & 0o4000).toBe(0);
  });

  it('P4: no inspector: SIGUSR1 to the child and a graceful restart open no listening socket; 9229 never listens', async () => {
    const { pid: child } = await info();
    const apachePorts = () => [apache.pid, ...childrenOf(apache.pid)].map((p) => listeningPorts(p));
    const has9229 = () => [...listeningSockets().values()].includes(9229);
    const ours = [apache.port, tlsPort].sort((a, b) => a - b);
    expect(apachePorts().flat().every((p) => ours.includes(p))).toBe(true);
    expect(listeningPorts(child)).toEqual(ours);
    // What kOwnsInspector would turn into "Debugger listening on …:9229".
    process.kill(child, 'SIGUSR1');
    expect((await info()).pid).toBe(child);
    expect(listeningPorts(child)).toEqual(ours);
    expect(has9229()).toBe(false);
    await apache.graceful();
    const next = await info();
    expect(next.pid).not.toBe(child);
    expect(apachePorts().flat().every((p) => ours.includes(p))).toBe(true);
    expect(listeningPorts(next.pid)).toEqual(ours);
    expect(has9229()).toBe(false);
    expect(apache.errorLog()).not.toMatch(/Debugger listening|inspector/i);
  });

  it('P16: after graceful restarts the new generation serves with fresh runtime state', async () => {
    for (let i = 0; i < 2; i++) {
      const before = await info();
      await info();
      await apache.graceful();
      const after = await info();
      expect(after.pid).not.toBe(before.pid);
      expect(after.count).toBe(1);
      expect((await info()).count).toBe(2);
      expect((await request(apache.url('/hello'))).text).toBe('Hello World!\n');
    }
  });
});

describe('daemon mode: the pitfalls that have a daemon-mode meaning', () => {
  let daemon: ApacheInstance;
  let pipedDaemon: ApacheInstance;
  let daemonTlsPort: number;

  beforeAll(async () => {
    ensureMode('daemon');
    daemonTlsPort = await freePort();
    [daemon, pipedDaemon] = await Promise.all([
      startPitfallsApache(daemonTlsPort, [modeConfig('daemon', { options: 'env=P13_MARKER=from-the-env-option' })]),
      startPipedLogApache([modeConfig('daemon')]),
    ]);
  }, 600_000);

  afterAll(async () => {
    await Promise.all([daemon?.stop(), pipedDaemon?.stop()]);
  });

  const dget = async <T = Record<string, any>>(p: string): Promise<T> => {
    const r = await request(daemon.url(p), { timeoutMs: 30_000 });
    expect(r.status, r.text).toBe(200);
    return JSON.parse(r.text) as T;
  };
  const dinfo = () => dget<{ pid: number; count: number } & Record<string, any>>('/apps/info.tsgi');

  it('P2: the Apache parent never starts Node: one thread, no event loop descriptors; the apps run in the daemons', async () => {
    const { pid } = await dinfo();
    expect(daemonWorkers(daemon.pid)).toContain(pid);
    expect(tids(daemon.pid)).toHaveLength(1);
    expect(fdKinds(daemon.pid)).not.toContain('[eventfd]');
    expect(fdKinds(daemon.pid)).not.toContain('[eventpoll]');
  });

  it('P9/P10: an uncaught exception and an unhandled rejection are logged with their stacks; the group keeps serving', async () => {
    const mark = daemon.logMark();
    expect((await request(daemon.url('/apps/uncaught.tsgi'))).status).toBe(200);
    await daemon.waitForLog(/P9 thrown from a setTimeout callback[\s\S]*uncaught\.tsgi:\d+/, 5000, mark);
    expect((await request(daemon.url('/apps/rejection.tsgi'))).status).toBe(200);
    await daemon.waitForLog(/P10 nobody handles this rejection[\s\S]*rejection\.tsgi:\d+/, 5000, mark);
    const after = await dinfo();
    expect(daemonWorkers(daemon.pid)).toContain(after.pid);
  });

  it('P12: the app’s own node_modules, relative imports and createRequire work; the cwd is the daemon’s home, not the app’s', async () => {
    const r = await dget('/p12');
    expect(r).toEqual({
      imported: 'p12-pkg from the app node_modules',
      required: 'p12-pkg from the app node_modules',
      resolved: join(daemon.root, 'p12', 'node_modules', 'p12-pkg', 'lib', 'main.js'),
      helper: 'helper.ts via a relative import',
      data: 'data.json via createRequire',
      cwd: r['cwd'],
      dirname: join(daemon.root, 'p12'),
    });
    expect(r['cwd']).not.toBe(join(daemon.root, 'p12'));
  });

  it('P13: the daemon environment is the launch contract’s (no NODE_OPTIONS, no Apache environment, env= entries); SetEnv stays per request', async () => {
    const r = await dinfo();
    expect(r['nodeOptions']).toBe(null);
    expect(r['execArgv']).toEqual([]);
    expect(r['heapLimit']).toBeGreaterThan(100 * 1024 * 1024);
    expect(r['marker']).toBe('from-the-env-option');
    expect(r['perRequestInEnviron']).toBe('from SetEnv');
    expect(r['perRequestInProcessEnv']).toBe(null);
    // Exactly PATH, HOME, (LANG/LC_ALL with lang=) and env= entries.
    const env = readFileSync(`/proc/${r.pid}/environ`, 'utf8')
      .split('\0')
      .filter(Boolean)
      .map((kv) => kv.slice(0, kv.indexOf('=')))
      // what child_process.fork() adds for its IPC channel
      .filter((k) => !k.startsWith('NODE_CHANNEL_'));
    expect(env.sort()).toEqual(['HOME', 'P13_MARKER', 'PATH']);
  });

  it('P19: fetch, an ES module importing CommonJS names, assert’s generated message', async () => {
    const r = await dget('/apps/debian.tsgi');
    expect(r['fetch']).toEqual({ status: 200, text: 'Hello World!\n' });
    expect(r['esm']).toBe('esm got a CommonJS export');
    expect(r['assertion']).toEqual({ code: 'ERR_ASSERTION', message: expect.stringContaining('assert.ok(x === 1)') });
  });

  it('P21: worker_threads work in a daemon; process warnings reach the error log; HTTPS reaches the app as https', async () => {
    const mark = daemon.logMark();
    const r = await request(daemon.url('/apps/worker.tsgi'), { timeoutMs: 30_000 });
    expect(r.status, r.text).toBe(200);
    expect(r.text).toBe('42');
    await daemon.waitForLog(/TsgiPitfallWarning: P21 a warning from an app/, 5000, mark);
    const c = await httpsGet(`https://127.0.0.1:${daemonTlsPort}/crypto`);
    expect(c.status, c.text).toBe(200);
    expect(JSON.parse(c.text)).toEqual({ scheme: 'https', sha256: 'ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad', verified: true });
  });

  it('P11: with a piped ErrorLog, the daemon’s console reaches the log and the pipe Apache shares never turns non-blocking', async () => {
    const mark = pipedDaemon.logMark();
    const r = await request(pipedDaemon.url('/stderr'), { timeoutMs: 30_000 });
    expect(r.status, r.text).toBe(200);
    const { pid } = JSON.parse(r.text) as { pid: number };
    await pipedDaemon.waitForLog(/P11 console\.error through a piped ErrorLog/, 5000, mark);
    await pipedDaemon.waitForLog(/P11 process\.stderr through a piped ErrorLog/, 5000, mark);
    const nonblocking = (p: number) => (parseInt(/^flags:\s*(\d+)/m.exec(readFileSync(`/proc/${p}/fdinfo/2`, 'utf8'))![1]!, 8) & 0o4000) !== 0;
    // Apache's children write their log lines to fd 2, the same pipe the supervisor got.
    const apacheChildren = childrenOf(pipedDaemon.pid).filter((p) => readlinkSync(`/proc/${p}/exe`).endsWith('/apache2'));
    expect(apacheChildren.length).toBeGreaterThan(0);
    for (const p of [pipedDaemon.pid, ...apacheChildren]) expect(nonblocking(p), `fd 2 of apache2 ${p}`).toBe(false);
    const supervisors = daemonTrees(pipedDaemon.pid).map((t) => t.supervisor);
    expect(supervisors).toHaveLength(1);
    for (const p of supervisors) expect(readlinkSync(`/proc/${p}/fd/2`)).toBe(readlinkSync(`/proc/${pipedDaemon.pid}/fd/2`));
    expect(daemonWorkers(pipedDaemon.pid)).toContain(pid);
  });

  it('P16: after graceful restarts the daemons are new and start with fresh state', async () => {
    for (let i = 0; i < 2; i++) {
      await dinfo();
      const before = daemonWorkers(daemon.pid);
      await daemon.graceful();
      const { value: fresh } = await pollFor('new daemons only', () => {
        const w = daemonWorkers(daemon.pid);
        return w.length === 2 && w.every((p) => !before.includes(p)) ? w : undefined;
      }, 30_000);
      const after = await dinfo();
      expect(fresh).toContain(after.pid);
      expect(after.count).toBe(1);
      expect((await request(daemon.url('/hello'))).text).toBe('Hello World!\n');
    }
  }, 90_000);
});
