/**
 * The daemon's wire server (src/transports/wire-server.ts) over a real Unix socket in a
 * temp dir, driven by test/helpers/wire-client.ts playing the Apache child. Real .tsgi
 * fixtures (echo, environ, bad-apps, ticker) through the ScriptLoader, plus a few inline
 * applications for what a fixture cannot observe (tsgi.signal, ordering, queueing).
 */
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { createHash, randomBytes } from 'node:crypto';
import { createWireServer, type WireServer, type WireServerOptions } from '../../src/transports/wire-server';
import { ScriptLoader } from '../../src/loader';
import { fixedApp, type AppProvider } from '../../src/gateway/run';
import type { Application } from '../../src/tsgi';
import type { RequestMonitor } from '../../src/transports/monitor';
import {
  D_GOAWAY,
  ErrorCode,
  encodeAbort,
  encodeBody,
  encodeBodyEnd,
  encodeClientHello,
  encodeFrame,
  encodeRequest,
  encodeStatusRequest,
  BODY,
  REQUEST,
  WireParser,
  D_ERROR,
  decodeError,
} from '../../src/transports/protocols/tsgi-wire';
import { WireClient, cgiVars } from '../helpers/wire-client';
import { memoryLog } from '../helpers/memory-sink';

const FIXTURES = path.resolve(__dirname, '../fixtures');
const ECHO = path.join(FIXTURES, 'echo.tsgi');
const ENVIRON = path.join(FIXTURES, 'environ.tsgi');
const BAD = path.join(FIXTURES, 'bad-apps.tsgi');
const TICKER = path.join(FIXTURES, 'ticker.tsgi');
const THROWS_AT_IMPORT = path.join(FIXTURES, 'throws-at-import.tsgi');

let dir: string;
let cacheDir: string;
const loaders = new Map<string, ScriptLoader>();
/** Inline applications, by the script name a request names. */
const inline = new Map<string, Application>();

beforeAll(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tsgi-wire-'));
  cacheDir = path.join(dir, 'cache');
});
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

const providers: WireServerOptions['providers'] = (script, callable, group, reload): AppProvider => {
  const app = inline.get(script);
  if (app) return fixedApp(app, script);
  const key = `${script}\0${callable}\0${group}`;
  let l = loaders.get(key);
  if (!l) loaders.set(key, (l = new ScriptLoader(script, { callable, reload, cacheDir })));
  return l;
};

interface Running {
  server: WireServer;
  path: string;
  secret: Buffer;
  log: ReturnType<typeof memoryLog>;
  clients: WireClient[];
  connect(): Promise<WireClient>;
}

let current: Running | null = null;
let n = 0;

async function start(over: Partial<WireServerOptions> = {}): Promise<Running> {
  const secret = randomBytes(32);
  const log = memoryLog();
  const server = createWireServer({
    secret,
    providers,
    log,
    context: { multithread: true, multiprocess: false },
    threads: 4,
    queueTimeoutMs: 0,
    ...over,
  });
  const p = path.join(dir, `s${n++}.sock`);
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(p, resolve);
  });
  const r: Running = {
    server,
    path: p,
    secret,
    log,
    clients: [],
    async connect() {
      const c = await WireClient.connect(p, { secret });
      r.clients.push(c);
      return c;
    },
  };
  current = r;
  return r;
}

afterEach(async () => {
  if (!current) return;
  for (const c of current.clients) c.close();
  await new Promise((resolve) => current!.server.close(resolve));
  current = null;
  inline.clear();
});

const sha = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
/** Waits until `cond` holds (polling the event loop), failing after a generous bound. */
async function until(cond: () => boolean, what: string): Promise<void> {
  for (let i = 0; i < 1000; i++) {
    if (cond()) return;
    await sleep(5);
  }
  throw new Error(`timed out waiting for ${what}`);
}
const nowUs = () => BigInt(Date.now()) * 1000n;

describe('HELLO and authentication', () => {
  it('answers HELLO with version 1 and its pid', async () => {
    const s = await start();
    const c = await s.connect();
    expect(c.daemon).toEqual({ version: 1, pid: process.pid });
  });

  it('a wrong secret gets ERROR AUTH with CLOSE, one warning, and the connection closes', async () => {
    const s = await start();
    const c = await WireClient.connect(s.path);
    s.clients.push(c);
    const r = await c.hello(randomBytes(32));
    expect(r).toMatchObject({ code: ErrorCode.AUTH, name: 'AUTH' });
    await c.waitClosed();
    expect(s.log.entries.filter((e) => e.level === 'warn' && /wrong secret/.test(e.message))).toHaveLength(1);
  });

  it('a REQUEST before HELLO gets ERROR AUTH', async () => {
    const s = await start();
    const c = await WireClient.connect(s.path);
    s.clients.push(c);
    c.sendRaw(encodeRequest({ script: ECHO, vars: cgiVars() }));
    const r = await c.readResponse();
    expect(r.trailer).toMatchObject({ kind: 'error', code: ErrorCode.AUTH, close: true });
    await c.waitClosed();
  });

  it('another version gets ERROR VERSION naming version 1, logged', async () => {
    const s = await start();
    const c = await WireClient.connect(s.path);
    s.clients.push(c);
    const r = await c.hello(s.secret, 2);
    expect(r).toMatchObject({ code: ErrorCode.VERSION });
    expect((r as { message: string }).message).toMatch(/version 1/);
    await c.waitClosed();
    expect(s.log.entries.some((e) => e.level === 'error' && /version 2/.test(e.message))).toBe(true);
  });
});

describe('requests', () => {
  it('GET: the environ is Apache\'s, as sent, plus the mod_tsgi keys and tsgi.url_scheme from HTTPS', async () => {
    const s = await start();
    const c = await s.connect();
    // SCRIPT_NAME /app and PATH_INFO /app/x: a request for /app/app/x; must not be "re-mapped".
    const vars = cgiVars({ scriptName: '/app', pathInfo: '/app/x', query: 'a=1', headers: { 'X-Thing': 'y' }, extra: { CONTENT_LENGTH: '' } });
    const r = await c.request({ script: ENVIRON, vars, applicationGroup: 'grp', processGroup: 'pg', callable: 'application', https: true });
    expect(r.status).toBe(200);
    expect(r.trailer).toEqual({ kind: 'end', close: false });
    const env = JSON.parse(r.body.toString()) as Record<string, unknown>;
    expect(env).toMatchObject({
      SCRIPT_NAME: '/app',
      PATH_INFO: '/app/x',
      QUERY_STRING: 'a=1',
      HTTP_X_THING: 'y',
      'mod_tsgi.process_group': 'pg',
      'mod_tsgi.application_group': 'grp',
      'mod_tsgi.callable_object': 'application',
      'tsgi.url_scheme': 'https',
      'tsgi.multithread': true,
      'tsgi.multiprocess': false,
    });
    expect(env.CONTENT_LENGTH).toBeUndefined();
    const plain = await c.request({ script: ENVIRON, vars: cgiVars() });
    expect(JSON.parse(plain.body.toString())['tsgi.url_scheme']).toBe('http');
  });

  it('POST of 64 MiB is echoed with the same SHA-256, and a 64 MiB download arrives intact', async () => {
    const s = await start();
    const c = await s.connect();
    const body = randomBytes(64 * 1024 * 1024);
    const r = await c.request({ script: ECHO, vars: cgiVars({ method: 'POST', extra: { CONTENT_LENGTH: String(body.length) } }), body });
    expect(r.trailer.kind).toBe('end');
    expect(r.body.toString()).toBe(`${body.length} ${sha(body)} ${body.length}\n`);
    const total = 64 * 1024 * 1024;
    const d = await c.request({ script: ECHO, vars: cgiVars({ query: `download=${total}` }) });
    expect(d.trailer.kind).toBe('end');
    expect(d.body.length).toBe(total);
    // The fixture's generator, reproduced.
    const expected = Buffer.alloc(total);
    let seed = 1;
    for (let i = 0; i < total; i++) expected[i] = (seed = (seed * 1103515245 + 12345) >>> 0) >>> 24;
    expect(sha(d.body)).toBe(sha(expected));
  }, 30_000);

  it('a body without CONTENT_LENGTH (chunked) is read to BODY_END', async () => {
    const s = await start();
    const c = await s.connect();
    async function* parts() {
      yield Buffer.from('abc');
      await sleep(5);
      yield Buffer.from('defg');
    }
    const r = await c.request({ script: ECHO, vars: cgiVars({ method: 'POST' }), body: parts() });
    expect(r.body.toString()).toBe(`7 ${sha(Buffer.from('abcdefg'))} -\n`);
  });

  it('streams: the first chunk arrives while the application is still running', async () => {
    const s = await start();
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    inline.set('/inline/stream', async function* (_e: unknown, sr: (s: string, h: [string, string][]) => void) {
      sr('200 OK', [['Content-Type', 'text/plain']]);
      yield 'first\n';
      await gate;
      yield 'second\n';
    } as unknown as Application);
    const c = await s.connect();
    c.sendRaw(encodeRequest({ script: '/inline/stream', vars: cgiVars() }));
    const head = await c.nextFrame();
    expect(head?.type).toBe(0x82);
    const first = await c.nextFrame();
    expect(first?.payload.toString()).toBe('first\n');
    release();
    const rest = await c.readResponse();
    expect(rest.body.toString()).toBe('second\n');
    expect(rest.trailer.kind).toBe('end');
  });

  it('reuses one connection for 100 requests', async () => {
    const s = await start();
    const c = await s.connect();
    for (let i = 0; i < 100; i++) {
      const body = Buffer.from(`request ${i}`);
      const r = await c.request({
        script: ECHO,
        vars: cgiVars({ method: i % 2 ? 'POST' : 'GET', extra: i % 2 ? { CONTENT_LENGTH: String(body.length) } : {} }),
        body: i % 2 ? body : null,
      });
      expect(r.trailer).toEqual({ kind: 'end', close: false });
      expect(r.body.toString()).toBe(i % 2 ? `${body.length} ${sha(body)} ${body.length}\n` : `0 ${sha(Buffer.alloc(0))} -\n`);
    }
  });

  it('an app that answers before reading its body: the rest of the body is read and dropped, the connection stays usable', async () => {
    const s = await start();
    inline.set('/inline/early', (_e, sr) => (sr('200 OK', []), ['early']));
    const c = await s.connect();
    const r = await c.request({ script: '/inline/early', vars: cgiVars({ method: 'POST', extra: { CONTENT_LENGTH: String(4 << 20) } }), body: randomBytes(4 << 20) });
    expect(r.body.toString()).toBe('early');
    const again = await c.request({ script: ENVIRON, vars: cgiVars() });
    expect(again.status).toBe(200);
  });
});

describe('failures', () => {
  it('an application error before the head is ERROR APP (Apache makes the 500), logged once; the connection stays usable', async () => {
    const s = await start();
    const c = await s.connect();
    const r = await c.request({ script: BAD, vars: cgiVars({ pathInfo: '/throws' }) });
    expect(r.frames).toEqual(['ERROR']);
    expect(r.trailer).toMatchObject({ kind: 'error', code: ErrorCode.APP, close: false });
    expect(s.log.entries.filter((e) => /the app threw before starting/.test(e.message))).toHaveLength(1);
    const ok = await c.request({ script: BAD, vars: cgiVars({ pathInfo: '/ok' }) });
    expect(ok.body.toString()).toBe('ok\n');
  });

  it('a script that fails to load is ERROR APP', async () => {
    const s = await start();
    const c = await s.connect();
    const r = await c.request({ script: THROWS_AT_IMPORT, vars: cgiVars() });
    expect(r.trailer).toMatchObject({ kind: 'error', code: ErrorCode.APP });
  });

  it('a malformed CONTENT_LENGTH is ERROR BAD_REQUEST', async () => {
    const s = await start();
    const c = await s.connect();
    const r = await c.request({ script: ECHO, vars: cgiVars({ method: 'POST', extra: { CONTENT_LENGTH: 'x1' } }), body: Buffer.from('x') });
    expect(r.trailer).toMatchObject({ kind: 'error', code: ErrorCode.BAD_REQUEST });
  });

  it('an application error after the head went out is HEAD, BODY, then ERROR APP (a truncation)', async () => {
    const s = await start();
    const c = await s.connect();
    const r = await c.request({ script: BAD, vars: cgiVars({ pathInfo: '/throws-mid-stream' }) });
    expect(r.status).toBe(200);
    expect(r.body.toString()).toBe('partial');
    expect(r.trailer).toMatchObject({ kind: 'error', code: ErrorCode.APP });
    const ok = await c.request({ script: BAD, vars: cgiVars({ pathInfo: '/ok' }) });
    expect(ok.trailer.kind).toBe('end');
  });

  it('ABORT mid-body fails tsgi.input, fires tsgi.signal, and the trailer is ERROR BODY', async () => {
    const s = await start();
    const seen: string[] = [];
    inline.set('/inline/reader', (async (environ: Record<string, any>, sr: (s: string, h: [string, string][]) => void) => {
      environ['tsgi.signal'].addEventListener('abort', () => seen.push(`signal: ${environ['tsgi.signal'].reason?.name}`));
      try {
        for await (const _ of environ['tsgi.input']) seen.push('chunk');
      } catch (e) {
        seen.push(`read failed: ${(e as Error).name}`);
      }
      sr('200 OK', []);
      return ['never complete'];
    }) as unknown as Application);
    const c = await s.connect();
    let sent!: () => void;
    const firstSent = new Promise<void>((r) => (sent = r));
    async function* body() {
      yield Buffer.from('some');
      sent();
      await until(() => seen.includes('chunk'), 'the first chunk to be read');
    }
    const pending = c.request({ script: '/inline/reader', vars: cgiVars({ method: 'POST', extra: { CONTENT_LENGTH: '100' } }), body: body(), bodyEnd: 'abort' });
    await firstSent;
    const r = await pending;
    expect(r.trailer).toMatchObject({ kind: 'error', code: ErrorCode.BODY });
    expect(seen).toContain('signal: TsgiRequestAborted');
    expect(seen.some((x) => x.startsWith('read failed: '))).toBe(true);
    const ok = await c.request({ script: ENVIRON, vars: cgiVars() });
    expect(ok.trailer.kind).toBe('end');
  });

  it('the Apache child closing the connection mid-request fires tsgi.signal', async () => {
    const s = await start();
    let fired = false;
    inline.set('/inline/hang', ((environ: Record<string, any>, sr: (s: string, h: [string, string][]) => void) => {
      sr('200 OK', []);
      return (async function* () {
        yield 'x';
        await new Promise<void>((r) => environ['tsgi.signal'].addEventListener('abort', () => ((fired = true), r())));
      })();
    }) as unknown as Application);
    const c = await s.connect();
    c.sendRaw(encodeRequest({ script: '/inline/hang', vars: cgiVars() }));
    expect((await c.nextFrame())?.type).toBe(0x82);
    c.close();
    await until(() => fired && s.server.running === 0, 'tsgi.signal and the request to end');
  });
});

describe('threads, queue-timeout, request-timeout', () => {
  it('threads=1: a second request waits for the first', async () => {
    const s = await start({ threads: 1 });
    const order: string[] = [];
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    inline.set('/inline/slow', (async (_e: unknown, sr: (s: string, h: [string, string][]) => void) => {
      order.push('slow start');
      await gate;
      order.push('slow end');
      sr('200 OK', []);
      return ['slow'];
    }) as unknown as Application);
    inline.set('/inline/fast', ((_e: unknown, sr: (s: string, h: [string, string][]) => void) => {
      order.push('fast');
      sr('200 OK', []);
      return ['fast'];
    }) as unknown as Application);
    const a = await s.connect();
    const b = await s.connect();
    const ra = a.request({ script: '/inline/slow', vars: cgiVars() });
    await until(() => s.server.running === 1, 'the slow request to run');
    const rb = b.request({ script: '/inline/fast', vars: cgiVars() });
    await until(() => s.server.queued === 1, 'the fast request to queue');
    expect(order).toEqual(['slow start']);
    release();
    expect((await ra).body.toString()).toBe('slow');
    expect((await rb).body.toString()).toBe('fast');
    expect(order).toEqual(['slow start', 'slow end', 'fast']);
  });

  it('queue-timeout: a queued request older than the timeout gets QUEUE_TIMEOUT and its app is not run', async () => {
    const s = await start({ threads: 1, queueTimeoutMs: 1000 });
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    let fastRuns = 0;
    inline.set('/inline/slow', (async (_e: unknown, sr: (s: string, h: [string, string][]) => void) => {
      await gate;
      sr('200 OK', []);
      return ['slow'];
    }) as unknown as Application);
    inline.set('/inline/fast', ((_e: unknown, sr: (s: string, h: [string, string][]) => void) => {
      fastRuns++;
      sr('200 OK', []);
      return ['fast'];
    }) as unknown as Application);
    const a = await s.connect();
    const b = await s.connect();
    const ra = a.request({ script: '/inline/slow', vars: cgiVars() });
    await until(() => s.server.running === 1, 'the slow request to run');
    // Apache read this request line 5 s ago.
    const rb = b.request({ script: '/inline/fast', vars: cgiVars(), requestStartUs: nowUs() - 5_000_000n });
    await until(() => s.server.queued === 1, 'the old request to queue');
    release();
    await ra;
    const r = await rb;
    expect(r.trailer).toMatchObject({ kind: 'error', code: ErrorCode.QUEUE_TIMEOUT });
    expect(fastRuns).toBe(0);
    // A fresh one on the same connection runs.
    const again = await b.request({ script: '/inline/fast', vars: cgiVars() });
    expect(again.body.toString()).toBe('fast');
    expect(fastRuns).toBe(1);
  });

  it('a queued request whose body is aborted, or whose connection closes, never runs', async () => {
    const s = await start({ threads: 1 });
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    let fastRuns = 0;
    inline.set('/inline/slow', (async (_e: unknown, sr: (s: string, h: [string, string][]) => void) => {
      await gate;
      sr('200 OK', []);
      return ['slow'];
    }) as unknown as Application);
    inline.set('/inline/fast', ((_e: unknown, sr: (s: string, h: [string, string][]) => void) => {
      fastRuns++;
      sr('200 OK', []);
      return ['fast'];
    }) as unknown as Application);
    const a = await s.connect();
    const ra = a.request({ script: '/inline/slow', vars: cgiVars() });
    await until(() => s.server.running === 1, 'the slow request to run');
    const b = await s.connect();
    b.sendRaw(encodeRequest({ script: '/inline/fast', vars: cgiVars({ method: 'POST' }), hasBody: true }));
    await until(() => s.server.queued === 1, 'the request to queue');
    b.sendRaw(Buffer.concat([encodeBody(Buffer.from('part')), encodeAbort('client went away')]));
    const rb = await b.readResponse();
    expect(rb.trailer).toMatchObject({ kind: 'error', code: ErrorCode.BODY });
    expect(s.server.queued).toBe(0);
    const c = await s.connect();
    c.sendRaw(encodeRequest({ script: '/inline/fast', vars: cgiVars() }));
    await until(() => s.server.queued === 1, 'the third request to queue');
    c.close();
    await until(() => s.server.queued === 0, 'the closed connection to leave the queue');
    release();
    expect((await ra).body.toString()).toBe('slow');
    // Both connections' requests were dropped before they ran; b is still usable.
    expect((await b.request({ script: '/inline/fast', vars: cgiVars() })).body.toString()).toBe('fast');
    expect(fastRuns).toBe(1);
  });

  it('backpressure: an application that is not reading stops the body from being read off the socket', async () => {
    const s = await start();
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    let firstRead = false;
    inline.set('/inline/lazy', (async (environ: Record<string, any>, sr: (s: string, h: [string, string][]) => void) => {
      const input = environ['tsgi.input'];
      const hash = createHash('sha256');
      let n = 0;
      const first = await input.read(1);
      hash.update(first);
      n += first.length;
      firstRead = true;
      await gate;
      for await (const chunk of input) {
        hash.update(chunk);
        n += chunk.length;
      }
      sr('200 OK', []);
      return [`${n} ${hash.digest('hex')}`];
    }) as unknown as Application);
    const c = await s.connect();
    const body = randomBytes(32 * 1024 * 1024);
    const pending = c.request({ script: '/inline/lazy', vars: cgiVars({ method: 'POST', extra: { CONTENT_LENGTH: String(body.length) } }), body });
    await until(() => firstRead, 'the first read');
    // Whatever the kernel's buffers hold, far less than the body gets off the client while the app waits.
    let accepted = 0;
    for (let i = 0; i < 40; i++) {
      await sleep(10);
      accepted = Math.max(accepted, c.socket.bytesWritten - c.socket.writableLength);
    }
    expect(accepted).toBeLessThan(8 * 1024 * 1024);
    release();
    const r = await pending;
    expect(r.body.toString()).toBe(`${body.length} ${sha(body)}`);
  });

  it('monitor expire before the head: ERROR TIMEOUT, tsgi.signal carries RequestExpired', async () => {
    let expire!: () => void;
    let ended = 0;
    const monitor: RequestMonitor = {
      begin(_what, e) {
        expire = e;
        return () => ended++;
      },
    };
    const s = await start({ monitor });
    let reason = '';
    inline.set('/inline/stuck', ((environ: Record<string, any>) =>
      new Promise((resolve) => {
        environ['tsgi.signal'].addEventListener('abort', () => {
          reason = environ['tsgi.signal'].reason?.name;
          resolve([]);
        });
      })) as unknown as Application);
    const c = await s.connect();
    const pending = c.request({ script: '/inline/stuck', vars: cgiVars() });
    await until(() => s.server.running === 1, 'the request to run');
    expire();
    const r = await pending;
    expect(r.frames).toEqual(['ERROR']);
    expect(r.trailer).toMatchObject({ kind: 'error', code: ErrorCode.TIMEOUT });
    // The next request on the same connection waits, if need be, until the gateway is done with this one.
    const next = await c.request({ script: ENVIRON, vars: cgiVars() });
    expect(next.trailer).toEqual({ kind: 'end', close: false });
    await until(() => ended === 2, 'the monitor to be told both requests ended');
    expect(reason).toBe('RequestExpired');
  });

  it('monitor expire after the head: HEAD, BODY, ERROR TIMEOUT (truncation)', async () => {
    let expire!: () => void;
    const s = await start({ monitor: { begin: (_w, e) => ((expire = e), () => undefined) } });
    const c = await s.connect();
    c.sendRaw(encodeRequest({ script: TICKER, vars: cgiVars() }));
    expect((await c.nextFrame())?.type).toBe(0x82);
    expect((await c.nextFrame())?.payload.toString()).toMatch(/^tick 0/);
    expire();
    const r = await c.readResponse();
    expect(r.trailer).toMatchObject({ kind: 'error', code: ErrorCode.TIMEOUT });
  });
});

describe('drain, STATUS', () => {
  it('drain: an idle connection gets GOAWAY and is closed; a busy one gets END with CLOSE', async () => {
    const s = await start();
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    inline.set('/inline/slow', (async (_e: unknown, sr: (s: string, h: [string, string][]) => void) => {
      await gate;
      sr('200 OK', []);
      return ['slow'];
    }) as unknown as Application);
    const idle = await s.connect();
    const busy = await s.connect();
    const pending = busy.request({ script: '/inline/slow', vars: cgiVars() });
    await until(() => s.server.running === 1, 'the request to run');
    s.server.drain();
    const f = await idle.nextFrame();
    expect(f?.type).toBe(D_GOAWAY);
    await idle.waitClosed();
    release();
    const r = await pending;
    expect(r.body.toString()).toBe('slow');
    expect(r.trailer).toEqual({ kind: 'end', close: true });
    await busy.waitClosed();
    // A connection made after drain(): HELLO, then GOAWAY.
    const late = await s.connect();
    expect((await late.nextFrame())?.type).toBe(D_GOAWAY);
  });

  it('STATUS answers with the status callback\'s JSON; the connection stays idle', async () => {
    const s = await start({ status: async () => ({ group: 'g', processes: [] }) });
    const c = await s.connect();
    expect(await c.status()).toEqual({ group: 'g', processes: [] });
    const r = await c.request({ script: ENVIRON, vars: cgiVars() });
    expect(r.trailer.kind).toBe('end');
    expect(await c.status()).toEqual({ group: 'g', processes: [] });
  });

  it('STATUS without a callback answers pid, threads, running, queued', async () => {
    const s = await start({ threads: 3 });
    const c = await s.connect();
    expect(await c.status()).toEqual({ pid: process.pid, threads: 3, running: 0, queued: 0 });
  });
});

describe('protocol errors', () => {
  const cases: Array<[string, (secret: Buffer) => Buffer, RegExp]> = [
    ['a second HELLO', (secret) => encodeClientHello(secret), /second HELLO/],
    ['BODY without a request', () => encodeBody(Buffer.from('x')), /BODY .*without a request body open/],
    ['an unknown type', () => Buffer.from([0x42, 0, 0, 0, 0, 0, 0, 0]), /unknown frame type 0x42/],
    ['undefined flags', () => Buffer.from([BODY, 0x80, 0, 0, 0, 0, 0, 1, 0x61]), /undefined flag bits/],
    ['a REQUEST over 2 MiB', () => Buffer.from([REQUEST, 0, 0, 0, 0, 0x20, 0, 1]), /over the limit of 2097152/],
    ['a REQUEST whose fields do not add up', () => encodeFrame(REQUEST, 0, Buffer.alloc(30)), /REQUEST: /],
    ['a daemon frame', () => encodeFrame(0x84), /goes from the daemon/],
  ];
  for (const [name, bytes, message] of cases) {
    it(`${name}: ERROR PROTOCOL with CLOSE, one log line, closed`, async () => {
      const s = await start();
      const c = await s.connect();
      c.sendRaw(bytes(s.secret));
      const r = await c.readResponse();
      expect(r.trailer).toMatchObject({ kind: 'error', code: ErrorCode.PROTOCOL, close: true });
      expect((r.trailer as { message: string }).message).toMatch(message);
      await c.waitClosed();
      const lines = s.log.entries.filter((e) => /protocol error/.test(e.message));
      expect(lines).toHaveLength(1);
      expect(lines[0].message).toMatch(message);
    });
  }

  it('a REQUEST before the previous trailer is a protocol error, and the running request is aborted', async () => {
    const s = await start();
    let aborted = false;
    inline.set('/inline/wait', ((environ: Record<string, any>) =>
      new Promise((resolve) => environ['tsgi.signal'].addEventListener('abort', () => ((aborted = true), resolve([]))))) as unknown as Application);
    const c = await s.connect();
    c.sendRaw(encodeRequest({ script: '/inline/wait', vars: cgiVars() }));
    await until(() => s.server.running === 1, 'the request to run');
    c.sendRaw(encodeRequest({ script: ENVIRON, vars: cgiVars() }));
    const r = await c.readResponse();
    expect(r.trailer).toMatchObject({ kind: 'error', code: ErrorCode.PROTOCOL, close: true });
    await until(() => aborted, 'the running request to be aborted');
  });

  it('body frames after the trailer are dropped up to BODY_END; then the next request is served', async () => {
    const s = await start();
    inline.set('/inline/early', (_e, sr) => (sr('200 OK', []), ['early']));
    const c = await s.connect();
    c.sendRaw(encodeRequest({ script: '/inline/early', vars: cgiVars({ method: 'POST' }), hasBody: true }));
    const r = await c.readResponse();
    expect(r.body.toString()).toBe('early');
    c.sendRaw(Buffer.concat([encodeBody(Buffer.from('late body')), encodeBodyEnd()]));
    const next = await c.request({ script: ENVIRON, vars: cgiVars() });
    expect(next.trailer.kind).toBe('end');
    // ABORT ends a dropped body just as well.
    c.sendRaw(encodeRequest({ script: '/inline/early', vars: cgiVars({ method: 'POST' }), hasBody: true }));
    await c.readResponse();
    c.sendRaw(encodeAbort('response complete'));
    expect((await c.request({ script: ENVIRON, vars: cgiVars() })).trailer.kind).toBe('end');
  });

  it('HTTP spoken to the socket is refused as AUTH (no HELLO) or PROTOCOL, never served', async () => {
    const s = await start();
    const sock = net.connect(s.path);
    const got: Buffer[] = [];
    sock.on('data', (d) => got.push(d));
    await new Promise((r) => sock.once('connect', r));
    sock.write('GET / HTTP/1.1\r\nHost: x\r\n\r\n');
    await new Promise((r) => sock.once('close', r));
    const all = Buffer.concat(got);
    expect(all[0]).toBe(0x85);
    expect(all.toString('latin1')).toMatch(/HTTP/);
  });
});

describe('random streams against the live server (bounded, seeded; FUZZ_SEED to replay)', () => {
  it('whatever a peer sends, the daemon answers with well-formed, well-ordered frames, never fails internally, and keeps serving', async () => {
    let seed = Number(process.env.FUZZ_SEED ?? 4242) >>> 0;
    const rand = (n: number) => {
      seed = (seed * 1103515245 + 12345) >>> 0;
      return (seed >>> 8) % n;
    };
    const echo: Application = (async (environ: Record<string, any>, sr: (s: string, h: [string, string][]) => void) => {
      const body = await environ['tsgi.input'].read();
      sr('200 OK', [['Content-Type', 'application/octet-stream']]);
      return environ.PATH_INFO === '/stream' ? (async function* () { yield body; yield 'more'; })() : [body];
    }) as unknown as Application;
    const s = await start({ threads: 2, providers: () => fixedApp(echo) });
    const iterations = 150;
    let refused = 0;
    for (let i = 0; i < iterations; i++) {
      const parts: Buffer[] = [encodeClientHello(rand(8) === 0 ? randomBytes(32) : s.secret)];
      for (let k = rand(4); k > 0; k--) {
        if (rand(6) === 0) {
          parts.push(encodeStatusRequest());
          continue;
        }
        const hasBody = rand(2) === 0;
        parts.push(encodeRequest({ script: '/echo', vars: cgiVars({ method: hasBody ? 'POST' : 'GET', pathInfo: rand(2) ? '/stream' : '/' }), hasBody }));
        if (!hasBody) continue;
        for (let b = rand(3); b > 0; b--) parts.push(encodeBody(randomBytes(1 + rand(3000))));
        parts.push(rand(3) === 0 ? encodeAbort('gone') : encodeBodyEnd());
      }
      let input = Buffer.concat(parts);
      const m = rand(4);
      if (m === 1) input[rand(input.length)] ^= 1 << rand(8);
      else if (m === 2) input = input.subarray(0, rand(input.length + 1));
      else if (m === 3) {
        const at = rand(input.length + 1);
        input = Buffer.concat([input.subarray(0, at), randomBytes(1 + rand(12)), input.subarray(at)]);
      }
      const sock = net.connect(s.path);
      const got: Buffer[] = [];
      sock.on('data', (d) => got.push(d));
      sock.on('error', () => undefined);
      await new Promise((r) => sock.once('connect', r));
      sock.end(input);
      await new Promise((r) => sock.once('close', r));
      const parser = new WireParser({ from: 'daemon' });
      const frames = parser.feed(Buffer.concat(got));
      expect(parser.atBoundary, `input #${i}: ${parser.describeTruncation()}`).toBe(true);
      for (const f of frames) if (f.type === D_ERROR && [ErrorCode.PROTOCOL, ErrorCode.AUTH].includes(decodeError(f.payload).code as 6 | 7)) refused++;
    }
    expect(refused).toBeGreaterThan(iterations / 10);
    expect(s.log.entries.filter((e) => /internal error/.test(e.message))).toEqual([]);
    await until(() => s.server.running === 0 && s.server.queued === 0, 'every request to end');
    const c = await s.connect();
    const r = await c.request({ script: '/echo', vars: cgiVars({ method: 'POST' }), body: Buffer.from('still serving') });
    expect(r.body.toString()).toBe('still serving');
    expect(r.trailer.kind).toBe('end');
  });
});
