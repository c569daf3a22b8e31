/**
 * debugErrors, session and gzip, each run through the real gateway core with an
 * in-memory sink, and the seed 004 chain they make together.
 */
import { describe, it, expect, afterAll, vi } from 'vitest';
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as zlib from 'node:zlib';
import { runApp } from '../helpers/memory-sink';
import { debugErrors } from '../../src/middleware/debug-errors';
import { session, memoryStore, type SessionStore } from '../../src/middleware/session';
import { gzip, acceptsGzip } from '../../src/middleware/gzip';
import { compose } from '../../src/middleware/index';
import type { Application, Chunk, Header } from '../../src/tsgi';
import { fileWrapper } from '../../src/gateway/file-wrapper';

const text = (headers: Header[] = [['Content-Type', 'text/plain; charset=utf-8']]) => headers;
const header = (headers: Header[] | undefined, name: string): string | undefined =>
  headers?.find(([n]) => n.toLowerCase() === name.toLowerCase())?.[1];
const headersNamed = (headers: Header[] | undefined, name: string): string[] =>
  (headers ?? []).filter(([n]) => n.toLowerCase() === name.toLowerCase()).map(([, v]) => v);
const gunzip = (chunks: Uint8Array[]) => zlib.gunzipSync(Buffer.concat(chunks)).toString('utf8');
const tick = () => new Promise((r) => setTimeout(r, 1));
const longText = () => 'The quick brown fox jumps over the lazy dog. '.repeat(40);

const scratch = mkdtempSync(join(tmpdir(), 'tsgi-middleware-test-'));
afterAll(() => rmSync(scratch, { recursive: true, force: true }));
let dirCount = 0;
const freshDir = () => join(scratch, `sessions-${++dirCount}`);

// Seed 004's application, minus its error path.
const counter: Application = (environ, startResponse) => {
  const s = environ['tsgix.session'] as { count?: number };
  const count = s.count ?? 1;
  s.count = count + 1;
  startResponse('200 OK', text());
  return [`You have been here ${count} times!\n`];
};

const cookieOf = (setCookie: string | undefined) => (setCookie ?? '').split(';')[0];

describe('debugErrors', () => {
  const thrower = (message: string): Application => () => {
    throw new Error(message);
  };

  it('replaces a response whose app throws before the headers with a 500 page, HTML-escaped', async () => {
    const r = await runApp(debugErrors(thrower('bad <script>alert(1)</script> & "quotes"')), { method: 'POST', path: '/some/where', query: 'a=1' });
    expect(r.outcome.state).toBe('complete');
    expect(r.head?.code).toBe(500);
    expect(header(r.head?.headers, 'Content-Type')).toBe('text/html; charset=utf-8');
    expect(r.text).toContain('<h1>Error</h1>');
    expect(r.text).toContain('bad &#60;script&#62;alert(1)&#60;/script&#62; &#38; &#34;quotes&#34;');
    expect(r.text).not.toContain('<script>');
    expect(r.text).toMatch(/<pre class="stack">Error: bad &#60;script&#62;[^]*middleware\.test\.ts/);
    expect(r.text).toContain('POST /some/where?a=1');
    // The stack went to tsgi.errors too.
    const logged = r.logs.map((l) => l.message).join('\n');
    expect(logged).toContain('debugErrors: POST /some/where?a=1');
    expect(logged).toMatch(/Error: bad <script>[^]*middleware\.test\.ts/);
  });

  it('shows the cause chain', async () => {
    const app: Application = () => {
      throw new Error('outer', { cause: new TypeError('the real reason') });
    };
    const r = await runApp(debugErrors(app));
    expect(r.text).toMatch(/Caused by: TypeError: the real reason/);
  });

  it('catches a rejected Promise', async () => {
    const app: Application = async () => {
      await tick();
      throw new RangeError('async failure');
    };
    const r = await runApp(debugErrors(app));
    expect(r.head?.code).toBe(500);
    expect(r.text).toContain('<h1>RangeError</h1>');
    expect(r.text).toContain('async failure');
  });

  it('replaces a started response when the body throws before its first byte (sync and async)', async () => {
    const sync: Application = function* (environ, sr) {
      sr('200 OK', text());
      yield '';
      throw new Error('sync body failure');
    };
    const asyncApp: Application = async function* (environ, sr) {
      sr('200 OK', text());
      await tick();
      throw new Error('async body failure');
    };
    const a = await runApp(debugErrors(sync));
    expect(a.head?.code).toBe(500);
    expect(a.text).toContain('sync body failure');
    const b = await runApp(debugErrors(asyncApp));
    expect(b.head?.code).toBe(500);
    expect(b.text).toContain('async body failure');
  });

  it('lets a response whose headers were sent abort instead of appending a page', async () => {
    const app: Application = async function* (environ, sr) {
      sr('200 OK', text());
      yield 'partial ';
      await tick();
      throw new Error('too late');
    };
    const r = await runApp(debugErrors(app));
    expect(r.outcome.state).toBe('aborted');
    expect(r.aborted?.message).toBe('too late');
    expect(r.head?.code).toBe(200);
    expect(r.text).toBe('partial ');
    expect(r.events).not.toContain('end');
    // Logged once, by the gateway, not by the middleware as a page it never sent.
    const logged = r.logs.map((l) => l.message).join('\n');
    expect(logged).toContain('after the response started');
    expect(logged).not.toContain('debugErrors:');
  });

  it('aborts too when write() already sent the headers', async () => {
    const app: Application = (environ, sr) => {
      sr('200 OK', text())('sent by write');
      throw new Error('after write');
    };
    const r = await runApp(debugErrors(app));
    expect(r.outcome.state).toBe('aborted');
    expect(r.text).toBe('sent by write');
  });

  it('passes a working response through byte for byte, headers included', async () => {
    const arrayApp: Application = (environ, sr) => {
      sr('201 Created', [['Content-Type', 'application/json'], ['X-Thing', 'yes']]);
      return ['{"a":', new Uint8Array([49]), '}'];
    };
    const genApp: Application = async function* (environ, sr) {
      sr('200 OK', text());
      yield 'one ';
      yield 'two';
    };
    for (const app of [arrayApp, genApp]) {
      const plain = await runApp(app);
      const wrapped = await runApp(debugErrors(app));
      expect(wrapped.head).toEqual(plain.head);
      expect(wrapped.chunks).toEqual(plain.chunks);
      expect(wrapped.outcome).toEqual(plain.outcome);
    }
  });

  it('forwards close() to the body and constructs class-style apps', async () => {
    let closed = 0;
    class App {
      constructor(
        private readonly environ: unknown,
        private readonly start: Parameters<Application>[1],
      ) {}
      *[Symbol.iterator]() {
        this.start('200 OK', text());
        yield 'class body';
      }
      close() {
        closed++;
      }
    }
    const r = await runApp(debugErrors(App as unknown as Application));
    expect(r.text).toBe('class body');
    expect(closed).toBe(1);
  });
});

describe('session', () => {
  it('persists across two middleware instances (two processes) sharing a directory', async () => {
    const directory = freshDir();
    const first = await runApp(session(counter, { directory }));
    expect(first.text).toBe('You have been here 1 times!\n');
    const setCookie = headersNamed(first.head?.headers, 'Set-Cookie');
    expect(setCookie).toHaveLength(1);
    expect(setCookie[0]).toMatch(/^tsgi_sid=[0-9a-f]{64}; Path=\/; HttpOnly; SameSite=Lax$/);
    const id = setCookie[0].slice('tsgi_sid='.length, 'tsgi_sid='.length + 64);

    // Saved before the response completed, privately, with no temp file left behind.
    expect(readdirSync(directory)).toEqual([`${id}.json`]);
    expect(statSync(directory).mode & 0o777).toBe(0o700);
    expect(statSync(join(directory, `${id}.json`)).mode & 0o777).toBe(0o600);
    expect(JSON.parse(readFileSync(join(directory, `${id}.json`), 'utf8'))).toEqual({ count: 2 });

    const second = await runApp(session(counter, { directory }), { headers: { Cookie: `other=1; tsgi_sid=${id}` } });
    expect(second.text).toBe('You have been here 2 times!\n');
    expect(headersNamed(second.head?.headers, 'Set-Cookie')).toEqual([]);
  });

  it('rejects a traversal cookie and never reads outside its directory', async () => {
    const base = join(scratch, 'traversal');
    const directory = join(base, 'sessions');
    mkdirSync(base, { recursive: true });
    const victim = join(base, 'victim.json');
    writeFileSync(victim, '{"count":41}');
    for (const value of ['../victim', '../../etc/passwd', '..%2Fvictim', `${'A'.repeat(64)}`, `${'a'.repeat(63)}/`]) {
      const r = await runApp(session(counter, { directory }), { headers: { Cookie: `tsgi_sid=${value}` } });
      expect(r.text).toBe('You have been here 1 times!\n');
      const cookie = cookieOf(header(r.head?.headers, 'Set-Cookie'));
      expect(cookie).toMatch(/^tsgi_sid=[0-9a-f]{64}$/);
    }
    expect(readFileSync(victim, 'utf8')).toBe('{"count":41}');
    expect(readdirSync(base).sort()).toEqual(['sessions', 'victim.json']);
    expect(readdirSync(directory).every((f) => /^[0-9a-f]{64}\.json$/.test(f))).toBe(true);
  });

  it('gives a well-formed but unknown id a new id, not the offered one', async () => {
    const offered = 'b'.repeat(64);
    const r = await runApp(session(counter, { directory: freshDir() }), { headers: { Cookie: `tsgi_sid=${offered}` } });
    const cookie = cookieOf(header(r.head?.headers, 'Set-Cookie'));
    expect(cookie).toMatch(/^tsgi_sid=[0-9a-f]{64}$/);
    expect(cookie).not.toBe(`tsgi_sid=${offered}`);
  });

  it('starts a new session, with a warning, when the stored one is corrupt', async () => {
    const directory = freshDir();
    const first = await runApp(session(counter, { directory }));
    const cookie = cookieOf(header(first.head?.headers, 'Set-Cookie'));
    const id = cookie.slice('tsgi_sid='.length);
    writeFileSync(join(directory, `${id}.json`), '{"count": 5');
    const r = await runApp(session(counter, { directory }), { headers: { Cookie: cookie } });
    expect(r.text).toBe('You have been here 1 times!\n');
    expect(cookieOf(header(r.head?.headers, 'Set-Cookie'))).not.toBe(cookie);
    expect(r.logs.some((l) => /session .* is corrupt; starting a new session/.test(l.message))).toBe(true);
    expect(r.logs.some((l) => l.message.includes(id))).toBe(false);
  });

  it('keeps sessions in memory with the memory store, per middleware instance', async () => {
    const app = session(counter, { store: 'memory' });
    const first = await runApp(app);
    const cookie = cookieOf(header(first.head?.headers, 'Set-Cookie'));
    const second = await runApp(app, { headers: { Cookie: cookie } });
    expect(second.text).toBe('You have been here 2 times!\n');
    const elsewhere = await runApp(session(counter, { store: 'memory' }), { headers: { Cookie: cookie } });
    expect(elsewhere.text).toBe('You have been here 1 times!\n');
  });

  it('saves changes made while a streamed body runs, before the response completes', async () => {
    const store = memoryStore();
    const streaming: Application = async function* (environ, sr) {
      sr('200 OK', text());
      yield 'a';
      await tick();
      (environ['tsgix.session'] as Record<string, unknown>).late = 'set during the body';
    };
    const r = await runApp(session(streaming, { store }));
    const id = cookieOf(header(r.head?.headers, 'Set-Cookie')).slice('tsgi_sid='.length);
    expect(r.ended).toBe(true);
    expect(await store.read(id)).toBe('{"late":"set during the body"}');
  });

  it('writes only when the session changed, and forwards close()', async () => {
    const writes: string[] = [];
    const data = new Map<string, string>();
    const store: SessionStore = {
      read: (id) => data.get(id) ?? null,
      write: async (id, json) => {
        await tick();
        writes.push(json);
        data.set(id, json);
      },
    };
    let closed = 0;
    const reader: Application = (environ, sr) => {
      sr('200 OK', text());
      const body = {
        *[Symbol.iterator]() {
          yield String((environ['tsgix.session'] as { n?: number }).n);
        },
        close() {
          closed++;
        },
      };
      return body;
    };
    const writer: Application = (environ, sr) => {
      (environ['tsgix.session'] as { n?: number }).n = 7;
      return reader(environ, sr);
    };
    const empty = await runApp(session(reader, { store }));
    expect(writes).toEqual([]); // an empty new session is not stored
    const first = await runApp(session(writer, { store }));
    expect(writes).toEqual(['{"n":7}']);
    const cookie = cookieOf(header(first.head?.headers, 'Set-Cookie'));
    const again = await runApp(session(reader, { store }), { headers: { Cookie: cookie } });
    expect(again.text).toBe('7');
    expect(writes).toEqual(['{"n":7}']);
    expect(closed).toBe(3);
    expect(empty.text).toBe('undefined');
  });

  it('scopes the cookie to SCRIPT_NAME, and marks it Secure over https', async () => {
    const r = await runApp(session(counter, { store: 'memory' }), { environ: { SCRIPT_NAME: '/my app' } });
    expect(header(r.head?.headers, 'Set-Cookie')).toMatch(/; Path=\/my%20app; HttpOnly; SameSite=Lax$/);
    const s = await runApp(session(counter, { store: 'memory', secure: true }));
    expect(header(s.head?.headers, 'Set-Cookie')).toMatch(/; Path=\/; HttpOnly; SameSite=Lax; Secure$/);
  });

  it('uses a private directory under the temp dir by default, and tightens a loose one', async () => {
    const saved = process.env.TMPDIR;
    const temp = join(scratch, 'tmpdir');
    const dir = join(temp, `tsgi-sessions-${process.getuid?.() ?? 'user'}`);
    mkdirSync(dir, { recursive: true, mode: 0o755 });
    chmodSync(dir, 0o755);
    process.env.TMPDIR = temp;
    try {
      const r = await runApp(session(counter));
      const id = cookieOf(header(r.head?.headers, 'Set-Cookie')).slice('tsgi_sid='.length);
      expect(existsSync(join(dir, `${id}.json`))).toBe(true);
      expect(statSync(dir).mode & 0o777).toBe(0o700);
    } finally {
      if (saved === undefined) delete process.env.TMPDIR;
      else process.env.TMPDIR = saved;
    }
  });

  it('refuses a session directory that is a symlink', async () => {
    const real = freshDir();
    mkdirSync(real, { mode: 0o700 });
    const link = `${real}-link`;
    symlinkSync(real, link);
    const r = await runApp(session(counter, { directory: link }));
    // The save runs before the body goes out, so its failure is a clean 500, logged.
    expect(r.head?.code).toBe(500);
    expect(r.logs.map((l) => l.message).join('\n')).toMatch(/is not a directory \(a symlink\?\); refusing to store sessions there/);
    expect(readdirSync(real)).toEqual([]);
  });
});

describe('gzip', () => {
  const long = longText();
  const accept = { 'Accept-Encoding': 'gzip, deflate' };
  const page = (headers: Header[] = text()): Application => (environ, sr) => {
    sr('200 OK', headers);
    return [long];
  };

  it('compresses an accepted response; the server computes the new length', async () => {
    const r = await runApp(gzip(page([['Content-Type', 'text/html'], ['Content-Length', String(long.length)], ['ETag', '"v1"']])), { headers: accept });
    expect(gunzip(r.chunks)).toBe(long);
    const h = r.head?.headers;
    expect(header(h, 'Content-Encoding')).toBe('gzip');
    expect(header(h, 'Vary')).toBe('Accept-Encoding');
    expect(header(h, 'ETag')).toBe('W/"v1"');
    expect(headersNamed(h, 'Content-Length')).toEqual([String(r.outcome.bytes)]);
    expect(r.outcome.bytes).toBeLessThan(long.length / 4);
  });

  it('reads q-values', () => {
    expect(acceptsGzip('gzip')).toBe(true);
    expect(acceptsGzip('deflate, GZIP;q=0.5')).toBe(true);
    expect(acceptsGzip('gzip;q=0')).toBe(false);
    expect(acceptsGzip('gzip; q=0.000, br')).toBe(false);
    expect(acceptsGzip('gzip;q=0, *')).toBe(false);
    expect(acceptsGzip('*;q=0.1')).toBe(true);
    expect(acceptsGzip('br, deflate')).toBe(false);
    expect(acceptsGzip('x-gzip')).toBe(true);
    expect(acceptsGzip('gzip;q=2')).toBe(false);
    expect(acceptsGzip(undefined)).toBe(false);
  });

  it('leaves the body alone when gzip is not accepted, but still says it varies', async () => {
    for (const headers of [{}, { 'Accept-Encoding': 'gzip;q=0' }, { 'Accept-Encoding': 'br' }] as Record<string, string>[]) {
      const r = await runApp(gzip(page()), { headers });
      expect(r.text).toBe(long);
      expect(header(r.head?.headers, 'Content-Encoding')).toBeUndefined();
      expect(header(r.head?.headers, 'Vary')).toBe('Accept-Encoding');
    }
  });

  it('leaves alone what must not or need not be compressed', async () => {
    const cases: [string, Application][] = [
      ['image', page([['Content-Type', 'image/png']])],
      ['encoded', page([['Content-Type', 'text/plain'], ['Content-Encoding', 'br']])],
      ['no-transform', page([['Content-Type', 'text/plain'], ['Cache-Control', 'public, no-transform']])],
      ['no type', page([])],
      ['small', (e, sr) => (sr('200 OK', [['Content-Type', 'text/plain'], ['Content-Length', '5']]), ['small'])],
      ['small array', (e, sr) => (sr('200 OK', text()), ['small'])],
      ['304', (e, sr) => (sr('304 Not Modified', text()), [])],
    ];
    for (const [name, app] of cases) {
      const plain = await runApp(app, { headers: accept });
      const r = await runApp(gzip(app), { headers: accept });
      expect(r.head, name).toEqual(plain.head);
      expect(r.chunks, name).toEqual(plain.chunks);
    }
  });

  it('honours minSize and compressible options', async () => {
    const small = (e: unknown, sr: Parameters<Application>[1]) => (sr('200 OK', [['Content-Type', 'application/octet-stream']]), ['tiny']);
    const r = await runApp(gzip(small, { minSize: 0, compressible: (t) => t === 'application/octet-stream' }), { headers: accept });
    expect(header(r.head?.headers, 'Content-Encoding')).toBe('gzip');
    expect(gunzip(r.chunks)).toBe('tiny');
  });

  it('removes a declared Content-Length from a streamed response', async () => {
    const app: Application = async function* (environ, sr) {
      sr('200 OK', [['Content-Type', 'application/json'], ['Content-Length', String(long.length)]]);
      yield long;
    };
    const r = await runApp(gzip(app), { headers: accept });
    expect(headersNamed(r.head?.headers, 'Content-Length')).toEqual([]);
    expect(r.head?.contentLength).toBeNull();
    expect(gunzip(r.chunks)).toBe(long);
    expect(r.outcome.state).toBe('complete');
  });

  it('streams: every chunk is compressed, flushed and decodable as it arrives', async () => {
    const parts = ['first part of the stream\n', 'second part, '.repeat(30) + '\n', 'third and last\n'];
    const app: Application = async function* (environ, sr) {
      sr('200 OK', text());
      for (const p of parts) {
        await tick();
        yield p;
      }
    };
    const r = await runApp(gzip(app), { headers: accept });
    expect(r.chunks.length).toBeGreaterThanOrEqual(3);
    const syncFlush = { finishFlush: zlib.constants.Z_SYNC_FLUSH };
    for (let k = 1; k <= parts.length; k++) {
      const decoded = zlib.gunzipSync(Buffer.concat(r.chunks.slice(0, k)), syncFlush).toString();
      expect(decoded).toBe(parts.slice(0, k).join(''));
    }
    expect(gunzip(r.chunks)).toBe(parts.join(''));
  });

  it('streams a sync iterable, and compresses across chunks using earlier ones', async () => {
    const app: Application = function* (environ, sr) {
      sr('200 OK', text());
      for (let i = 0; i < 50; i++) yield long.slice(0, 300);
    };
    const r = await runApp(gzip(app), { headers: accept });
    expect(gunzip(r.chunks)).toBe(long.slice(0, 300).repeat(50));
    // Chunks after the first are back-references to it, so each costs a few bytes only.
    expect(r.outcome.bytes).toBeLessThan(300 + 50 * 20);
  });

  it('compresses write() chunks first, in order, then the body', async () => {
    const app: Application = (environ, sr) => {
      const write = sr('200 OK', text());
      write('written one, ');
      write(new TextEncoder().encode('written two, '));
      return (async function* () {
        yield 'from the body, ';
        yield long;
      })();
    };
    const r = await runApp(gzip(app), { headers: accept });
    expect(gunzip(r.chunks)).toBe('written one, written two, from the body, ' + long);
    const first = zlib.gunzipSync(Buffer.from(r.chunks[0]), { finishFlush: zlib.constants.Z_SYNC_FLUSH }).toString();
    expect(first).toBe('written one, ');
  });

  it('forwards close() and ends the inner iteration when cut short', async () => {
    let closed = 0;
    let finallyRan = false;
    const controller = new AbortController();
    const app: Application = (environ, sr) => {
      sr('200 OK', text());
      const source = (async function* () {
        try {
          yield long;
          controller.abort();
          await tick();
          yield 'never sent';
        } finally {
          finallyRan = true;
        }
      })();
      return Object.assign(source, { close: () => void closed++ });
    };
    const done = await runApp(gzip(app), { headers: accept, signal: controller.signal });
    expect(closed).toBe(1);
    expect(done.outcome.state).toBe('client-gone');
    // The gateway does not wait for return(): the inner next() still pending must settle first.
    await vi.waitFor(() => expect(finallyRan).toBe(true), { timeout: 1000 });
  });

  it('compresses the replacement when an inner middleware restarts the response with excInfo', async () => {
    const failing: Application = function* (environ, sr) {
      sr('200 OK', text());
      yield '';
      throw new Error('failed <b>here</b>');
    };
    const r = await runApp(gzip(debugErrors(failing)), { headers: accept });
    expect(r.head?.code).toBe(500);
    expect(header(r.head?.headers, 'Content-Encoding')).toBe('gzip');
    expect(gunzip(r.chunks)).toContain('failed &#60;b&#62;here&#60;/b&#62;');
  });

  it('still enforces a declared Content-Length it removed', async () => {
    const short: Application = async function* (environ, sr) {
      sr('200 OK', [['Content-Type', 'text/plain'], ['Content-Length', String(long.length + 10)]]);
      yield long;
    };
    const r = await runApp(gzip(short), { headers: accept });
    expect(r.outcome.state).toBe('aborted');
    expect(r.logs.map((l) => l.message).join('\n')).toContain(`declared Content-Length: ${long.length + 10} but sent only ${long.length} bytes`);
    const excess: Application = (environ, sr) => {
      sr('200 OK', [['Content-Type', 'text/plain'], ['Content-Length', '300']]);
      return [long];
    };
    const x = await runApp(gzip(excess), { headers: accept });
    expect(x.outcome.state).toBe('error');
    expect(x.logs.map((l) => l.message).join('\n')).toContain('declared Content-Length: 300 but sent more');
  });

  it('refuses write() after the body ended', async () => {
    let late: unknown = null;
    const app: Application = (environ, sr) => {
      const write = sr('200 OK', text());
      return {
        *[Symbol.iterator]() {
          yield long;
        },
        close() {
          try {
            write('too late');
          } catch (e) {
            late = e;
          }
        },
      };
    };
    const r = await runApp(gzip(app), { headers: accept });
    expect(gunzip(r.chunks)).toBe(long);
    expect(String(late)).toMatch(/write\(\) called after the body ended/);
  });

  it('sends gzip headers and no length for HEAD', async () => {
    const r = await runApp(gzip(page()), { method: 'HEAD', headers: accept });
    expect(header(r.head?.headers, 'Content-Encoding')).toBe('gzip');
    expect(headersNamed(r.head?.headers, 'Content-Length')).toEqual([]);
    expect(r.chunks).toEqual([]);
  });

  it('reports a second startResponse without excInfo in the application', async () => {
    const app: Application = (environ, sr) => {
      sr('200 OK', text());
      sr('200 OK', text());
      return [];
    };
    const r = await runApp(gzip(app), { headers: accept });
    expect(r.outcome.state).toBe('error');
    expect(r.logs.map((l) => l.message).join('\n')).toContain('startResponse() called a second time');
  });
});

describe('middleware rules of spec §11.1, seen from the server side', () => {
  // Called directly, without the gateway, to see the body object a server gets.
  const direct = async (app: Application, extra: Record<string, unknown> = {}) => {
    const started: { status: string; headers: Header[] }[] = [];
    const environ = {
      REQUEST_METHOD: 'GET',
      SCRIPT_NAME: '',
      PATH_INFO: '/',
      QUERY_STRING: '',
      'tsgi.errors': { write() {}, flush() {} },
      ...extra,
    } as unknown as Parameters<Application>[0];
    const body = await app(environ, (status, headers) => {
      started.push({ status, headers });
      return () => undefined;
    });
    return { body: body as unknown as Record<string, unknown>, started };
  };

  it('gzip yields once for every inner chunk, empty ones included', async () => {
    const log: string[] = [];
    const inner: Application = async function* (environ, sr) {
      sr('200 OK', text());
      for (const c of ['', longText(), '', longText()]) {
        log.push('inner');
        yield c;
      }
    };
    const { body } = await direct(gzip(inner), { HTTP_ACCEPT_ENCODING: 'gzip' });
    for await (const _ of body as unknown as AsyncIterable<Chunk>) log.push('outer');
    // The trailer is the one extra yield, after the inner body ended.
    expect(log).toEqual(['inner', 'outer', 'inner', 'outer', 'inner', 'outer', 'inner', 'outer', 'outer']);
  });

  it('file bodies stay recognisable as files unless gzip has to compress them', async () => {
    const file = join(scratch, 'picture.png');
    writeFileSync(file, Buffer.alloc(4096, 7));
    const serveFile =
      (type: string): Application =>
      (environ, sr) => {
        sr('200 OK', [['Content-Type', type], ['Content-Length', '4096']]);
        return environ['tsgi.file_wrapper']!(file);
      };
    const extra = { HTTP_ACCEPT_ENCODING: 'gzip', 'tsgi.file_wrapper': fileWrapper };
    const image = await direct(gzip(session(debugErrors(serveFile('image/png')), { store: 'memory' })), extra);
    expect(image.body.filePath).toBe(file);
    expect(image.started[0].headers).toContainEqual(['Content-Length', '4096']);
    expect(typeof image.body.close).toBe('function');
    await (image.body.close as () => Promise<void>)();
    const textFile = await direct(gzip(serveFile('text/plain')), extra);
    expect(textFile.body.filePath).toBeUndefined();
    expect(header(textFile.started[0].headers, 'Content-Encoding')).toBe('gzip');
    await (textFile.body.close as () => void)();
  });
});

describe('the seed 004 chain: gzip(session(debugErrors(app)))', () => {
  const app: Application = (environ, startResponse) => {
    if (environ.PATH_INFO.toLowerCase().includes('error')) throw new Error('Detect "error" in URL path');
    return counter(environ, startResponse);
  };

  it('compose() nests middleware with the first outermost', async () => {
    const order: string[] = [];
    const mark =
      (name: string) =>
      (inner: Application): Application =>
      (environ, sr) => {
        order.push(name);
        return inner(environ, sr);
      };
    const r = await runApp(compose(mark('outer'), mark('middle'), mark('inner'))(counter), { environ: { 'tsgix.session': {} } });
    expect(order).toEqual(['outer', 'middle', 'inner']);
    expect(r.text).toBe('You have been here 1 times!\n');
  });

  it('counts visits through compression, and shows errors on a compressed page', async () => {
    const directory = freshDir();
    const chain = gzip(session(debugErrors(app), { directory }), { minSize: 0 });
    const headers = { 'Accept-Encoding': 'gzip' };
    const first = await runApp(chain, { headers });
    expect(header(first.head?.headers, 'Content-Encoding')).toBe('gzip');
    expect(gunzip(first.chunks)).toBe('You have been here 1 times!\n');
    const cookie = cookieOf(header(first.head?.headers, 'Set-Cookie'));
    // A fresh chain stands for the next CGI process.
    const again = gzip(session(debugErrors(app), { directory }), { minSize: 0 });
    const second = await runApp(again, { headers: { ...headers, Cookie: cookie } });
    expect(gunzip(second.chunks)).toBe('You have been here 2 times!\n');
    const error = await runApp(again, { path: '/Errors_500', headers: { ...headers, Cookie: cookie } });
    expect(error.head?.code).toBe(500);
    expect(gunzip(error.chunks)).toContain('Detect &#34;error&#34; in URL path');
  });
});
