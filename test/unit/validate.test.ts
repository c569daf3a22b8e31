/**
 * The validate middleware: every check it makes, each provoked by a bad application (or
 * a bad server, modelled as a faulty layer between the real gateway core and the
 * validated app), with the 500/abort outcome and the log entry naming the rule; and good
 * applications of every shape passing through with the very same response.
 */
import { describe, it, expect } from 'vitest';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { runApp, type FakeRequest, type Recorded } from '../helpers/memory-sink';
import { validate, ValidationError, type ValidateOptions } from '../../src/middleware/validate';
import { SpecViolation } from '../../src/gateway/errors';
import { fixedApp, runRequest, type RequestOutcome, type ResponseSink } from '../../src/gateway/run';
import type { Application, Body, Chunk, Environ, Header, StartResponse, Write } from '../../src/tsgi';

type Env = Record<string, unknown>;
type LooseStart = (...args: unknown[]) => Write;
type LooseApp = (...args: unknown[]) => unknown;

const TEXT: Header[] = [['Content-Type', 'text/plain']];
const enc = (s: string) => new TextEncoder().encode(s);
const loose = (sr: StartResponse) => sr as unknown as LooseStart;
const asApp = (f: LooseApp) => f as unknown as Application;
const tick = (ms = 0) => new Promise<void>((r) => setTimeout(r, ms));

const hello: Application = (e, sr) => {
  sr('200 OK', TEXT);
  return ['hello'];
};

function logText(r: Recorded): string {
  return r.logs.map((l) => `${l.level}: ${l.message}`).join('\n');
}

type Checked = Recorded & { warnings: string[] };

/** Runs `app` wrapped in validate(), collecting warnings. */
async function run(app: Application, req: FakeRequest = {}, opts: ValidateOptions = {}): Promise<Checked> {
  const warnings: string[] = [];
  const r = await runApp(validate(app, { warn: (m) => warnings.push(m), ...opts }), req);
  return { ...r, warnings };
}

function expectRule(r: Recorded, rule: string | RegExp): void {
  const text = logText(r);
  expect(text).toMatch(/TsgiSpecViolation: \[(server|application)\] /);
  if (typeof rule === 'string') expect(text).toContain(rule);
  else expect(text).toMatch(rule);
}

/** The violation came before the headers: the gateway answered 500 and logged the rule. */
function expect500(r: Recorded, rule: string | RegExp): void {
  expect(r.outcome.state).toBe('error');
  expect(r.head?.code).toBe(500);
  expect(r.ended).toBe(true);
  expectRule(r, rule);
}

/** The violation came after the headers: the response was aborted and the rule logged. */
function expectAbort(r: Recorded, rule: string | RegExp): void {
  expect(r.outcome.state).toBe('aborted');
  expect(r.head?.code).toBe(200);
  expect(r.aborted).toBeInstanceOf(ValidationError);
  expect(r.ended).toBe(false);
  expectRule(r, rule);
}

/** A faulty server: fiddles with the gateway's environ, then calls the validated app. */
function badServer(mutate: (env: Env) => void, app: Application = hello): Application {
  const v = validate(app, { warn: () => undefined });
  return (env, sr) => {
    mutate(env as Env);
    return v(env, sr);
  };
}

/** Runs `app` bare and validated; the two responses must be identical, with no warnings. */
async function same(app: Application, req: FakeRequest = {}): Promise<Checked> {
  const plain = await runApp(app, req);
  const checked = await run(app, req);
  expect(plain.outcome.state).not.toBe('aborted');
  expect(checked.outcome).toEqual(plain.outcome);
  expect(checked.head).toEqual(plain.head);
  expect(checked.chunks).toEqual(plain.chunks);
  expect(checked.events).toEqual(plain.events);
  expect(checked.logs).toEqual(plain.logs);
  expect(checked.warnings).toEqual([]);
  return checked;
}

// ---------------------------------------------------------------------------------------

describe('the server side: the environ', () => {
  it('rejects a non-callable application when wrapping', () => {
    expect(() => validate(42 as unknown as Application)).toThrow(ValidationError);
    expect(() => validate(42 as unknown as Application)).toThrow('[application] the application must be a function or a class, got number 42');
  });

  it("keeps the app's name, which servers use to label log entries", () => {
    expect(validate(hello).name).toBe('hello');
    expect(validate(class Named {} as unknown as Application).name).toBe('Named');
  });

  it('the app must be called with exactly two arguments', async () => {
    const v = validate(hello) as unknown as LooseApp;
    const r = await runApp(asApp((e, sr) => v(e, sr, 'extra')));
    expect500(r, '[server] the application must be called with exactly 2 arguments (environ, startResponse), got 3');
  });

  it('startResponse must be a function', async () => {
    const v = validate(hello) as unknown as LooseApp;
    const r = await runApp(asApp((e) => v(e, 'not a function')));
    expect500(r, '[server] startResponse must be a function, got string "not a function"');
  });

  it('environ must be a plain object', async () => {
    const v = validate(hello);
    const r = await runApp((e, sr) => v(Object.assign(Object.create({ inherited: true }), e) as Environ, sr));
    expect500(r, '[server] environ must be a plain object (prototype Object.prototype)');
    const r2 = await runApp((e, sr) => v([] as unknown as Environ, sr));
    expect500(r2, '[server] environ must be a plain object, got array(0)');
  });

  it('environ must not be frozen', async () => {
    const v = validate(hello);
    const r = await runApp((e, sr) => v(Object.freeze({ ...e }), sr));
    expect500(r, '[server] environ must be extensible');
  });

  it('environ has Object.prototype, not null, as its prototype', async () => {
    const v = validate(hello);
    const r = await runApp((e, sr) => v(Object.assign(Object.create(null), e) as Environ, sr));
    expect500(r, '[server] environ must be a plain object (prototype Object.prototype), got object [object Object]');
  });

  it('ValidationError is a SpecViolation, named as the spec says', () => {
    const err = new ValidationError('server', 'x');
    expect(err).toBeInstanceOf(SpecViolation);
    expect(err).toBeInstanceOf(Error);
    expect(err.name).toBe('TsgiSpecViolation');
    expect(err.side).toBe('server');
    expect(err.message).toBe('[server] x');
  });

  const required = [
    'REQUEST_METHOD',
    'SCRIPT_NAME',
    'PATH_INFO',
    'QUERY_STRING',
    'SERVER_NAME',
    'SERVER_PORT',
    'SERVER_PROTOCOL',
    'REQUEST_URI',
    'tsgi.version',
    'tsgi.url_scheme',
    'tsgi.input',
    'tsgi.errors',
    'tsgi.multithread',
    'tsgi.multiprocess',
    'tsgi.run_once',
    'tsgi.signal',
  ];
  for (const key of required) {
    it(`requires ${key}`, async () => {
      const r = await runApp(badServer((e) => delete e[key]));
      expect500(r, `[server] environ is missing the required key ${key}`);
    });
  }

  const bad: [string, (e: Env) => void, string][] = [
    ['CGI values are strings', (e) => (e.SERVER_PORT = 80), '[server] environ["SERVER_PORT"] must be a string (keys without a \'.\' are CGI variables), got number 80'],
    ['optional CGI values are strings too', (e) => (e.REMOTE_ADDR = undefined), 'environ["REMOTE_ADDR"] must be a string'],
    ['no HTTP_CONTENT_TYPE', (e) => (e.HTTP_CONTENT_TYPE = 'text/plain'), '[server] environ must not contain HTTP_CONTENT_TYPE'],
    ['no HTTP_CONTENT_LENGTH', (e) => (e.HTTP_CONTENT_LENGTH = '0'), '[server] environ must not contain HTTP_CONTENT_LENGTH'],
    ['no HTTP_PROXY (httpoxy)', (e) => (e.HTTP_PROXY = 'http://evil:3128'), '[server] environ must not contain HTTP_PROXY'],
    ['extension namespaces are lower-case', (e) => (e['MyExt.thing'] = 1), `[server] environ key "MyExt.thing": an extension key's namespace (before the first '.') must be lower-case letters, digits and '_'`],
    ['extension keys have a namespace', (e) => (e['.thing'] = 1), `[server] environ key ".thing": an extension key's namespace`],
    ['no tsgi.* keys beyond the spec', (e) => (e['tsgi.streaming'] = true), '[server] environ key "tsgi.streaming" is not defined by TSGI 1.0; tsgi.* is reserved for the specification'],
    ['no CR/LF/NUL in HTTP_ values', (e) => (e.HTTP_X_A = 'a\r\nb'), '[server] environ HTTP_X_A contains CR, LF or NUL'],
    ['REQUEST_METHOD is a token', (e) => (e.REQUEST_METHOD = 'GE T'), '[server] REQUEST_METHOD must be an HTTP token, got "GE T"'],
    ['REQUEST_METHOD is not empty', (e) => (e.REQUEST_METHOD = ''), '[server] REQUEST_METHOD must be an HTTP token, got ""'],
    ['SCRIPT_NAME starts with /', (e) => (e.SCRIPT_NAME = 'app'), `[server] SCRIPT_NAME must be '' or start with '/', got "app"`],
    ['SCRIPT_NAME is never /', (e) => (e.SCRIPT_NAME = '/'), `[server] SCRIPT_NAME must not be '/'`],
    ['SCRIPT_NAME does not end with /', (e) => (e.SCRIPT_NAME = '/app/'), `[server] SCRIPT_NAME must not end with '/', got "/app/"`],
    ['PATH_INFO starts with /', (e) => (e.PATH_INFO = 'x'), `[server] PATH_INFO must be '' or start with '/', got "x"`],
    ['CONTENT_LENGTH is digits', (e) => (e.CONTENT_LENGTH = '-1'), `[server] CONTENT_LENGTH must be absent, '' or 1-15 digits, got "-1"`],
    ['CONTENT_LENGTH is not words', (e) => (e.CONTENT_LENGTH = 'ten'), `[server] CONTENT_LENGTH must be absent, '' or 1-15 digits, got "ten"`],
    ['CONTENT_LENGTH has at most 15 digits', (e) => (e.CONTENT_LENGTH = '1234567890123456'), `CONTENT_LENGTH must be absent, '' or 1-15 digits, got "1234567890123456"`],
    ['SERVER_PORT is digits', (e) => (e.SERVER_PORT = 'http'), '[server] SERVER_PORT must be digits, got "http"'],
    ['SERVER_PORT is not empty', (e) => (e.SERVER_PORT = ''), '[server] SERVER_PORT must be digits, got ""'],
    ['SERVER_PROTOCOL form', (e) => (e.SERVER_PROTOCOL = 'HTTP/1.1.1'), '[server] SERVER_PROTOCOL must match HTTP/<digit>[.<digit>], got "HTTP/1.1.1"'],
    ['SERVER_PROTOCOL is HTTP', (e) => (e.SERVER_PROTOCOL = 'SPDY/3'), 'SERVER_PROTOCOL must match HTTP/<digit>[.<digit>], got "SPDY/3"'],
    ['SERVER_NAME is a host', (e) => (e.SERVER_NAME = 'bad host/'), '[server] SERVER_NAME must be a host name or address, got "bad host/"'],
    ['SERVER_NAME is not empty', (e) => (e.SERVER_NAME = ''), '[server] SERVER_NAME must be a host name or address, got ""'],
    ['HTTP_HOST is host[:port]', (e) => (e.HTTP_HOST = 'example.com:http'), '[server] HTTP_HOST must be host[:port], got "example.com:http"'],
    ['REQUEST_URI is not empty', (e) => (e.REQUEST_URI = ''), '[server] REQUEST_URI must not be empty'],
    ['REQUEST_URI has no spaces', (e) => (e.REQUEST_URI = '/a b'), '[server] REQUEST_URI must not contain spaces or control characters: "/a b"'],
    ['REQUEST_URI has no fragment', (e) => (e.REQUEST_URI = '/a#frag'), `[server] REQUEST_URI must not contain a '#' fragment`],
    ['asterisk-form only for OPTIONS', (e) => (e.REQUEST_URI = '*'), `[server] REQUEST_URI '*' (asterisk-form) is only valid for OPTIONS, not GET`],
    ['authority-form only for CONNECT', (e) => (e.REQUEST_URI = 'example.com:443'), '[server] REQUEST_URI "example.com:443" (authority-form) is only valid for CONNECT, not GET'],
    [
      'no absolute-form for CONNECT',
      (e) => Object.assign(e, { REQUEST_METHOD: 'CONNECT', REQUEST_URI: 'http://example.com/' }),
      `[server] a CONNECT request's REQUEST_URI must be authority-form (host:port), got "http://example.com/"`,
    ],
    ['otherwise origin-form', (e) => (e.REQUEST_URI = 'index.html'), `[server] REQUEST_URI must start with '/' (origin-form), got "index.html"`],
    ['QUERY_STRING has no fragment', (e) => (e.QUERY_STRING = 'a=1#x'), `[server] QUERY_STRING must not contain a '#' fragment`],
    ['tsgi.version is [1, 0]', (e) => (e['tsgi.version'] = [1, 1]), '[server] tsgi.version must be [1, 0], got [1,1]'],
    ['tsgi.version is frozen', (e) => (e['tsgi.version'] = [1, 0]), '[server] tsgi.version must be a frozen array'],
    ['tsgi.version is an array', (e) => (e['tsgi.version'] = '1.0'), '[server] tsgi.version must be [1, 0], got string "1.0"'],
    ['tsgi.url_scheme', (e) => (e['tsgi.url_scheme'] = 'ftp'), `[server] tsgi.url_scheme must be 'http' or 'https', got string "ftp"`],
    ['tsgi.input is an object', (e) => (e['tsgi.input'] = null), '[server] tsgi.input must be an InputStream object, got null'],
    ['tsgi.input has read()', (e) => (e['tsgi.input'] = { [Symbol.asyncIterator]() {} }), '[server] tsgi.input must have a read() method'],
    ['tsgi.input is async iterable', (e) => (e['tsgi.input'] = { read() {} }), '[server] tsgi.input must be async iterable'],
    ['tsgi.errors is an object', (e) => (e['tsgi.errors'] = 'stderr'), '[server] tsgi.errors must be an ErrorStream object, got string "stderr"'],
    ['tsgi.errors has write()', (e) => (e['tsgi.errors'] = { flush() {} }), '[server] tsgi.errors must have a write() method'],
    ['tsgi.errors has flush()', (e) => (e['tsgi.errors'] = { write() {} }), '[server] tsgi.errors must have a flush() method'],
    ['tsgi.multithread is boolean', (e) => (e['tsgi.multithread'] = 0), '[server] tsgi.multithread must be a boolean, got number 0'],
    ['tsgi.multiprocess is boolean', (e) => (e['tsgi.multiprocess'] = 'yes'), '[server] tsgi.multiprocess must be a boolean'],
    ['tsgi.run_once is boolean', (e) => (e['tsgi.run_once'] = null), '[server] tsgi.run_once must be a boolean, got null'],
    ['tsgi.signal is an AbortSignal', (e) => (e['tsgi.signal'] = new AbortController()), '[server] tsgi.signal must be an AbortSignal'],
    ['tsgi.file_wrapper is a function', (e) => (e['tsgi.file_wrapper'] = {}), '[server] tsgi.file_wrapper, when present, must be a function'],
    ['mod_tsgi.process_group is a string', (e) => (e['mod_tsgi.process_group'] = 1), '[server] mod_tsgi.process_group, when present, must be a string, got number 1'],
    ['mod_tsgi.application_group is a string', (e) => (e['mod_tsgi.application_group'] = {}), '[server] mod_tsgi.application_group, when present, must be a string'],
  ];
  for (const [name, mutate, rule] of bad) {
    it(name, async () => {
      let appRan = false;
      const r = await runApp(
        badServer(mutate, (e, sr) => {
          appRan = true;
          return hello(e, sr);
        }),
      );
      expect500(r, rule);
      expect(appRan).toBe(false);
    });
  }

  const good: [string, (e: Env) => void][] = [
    ['a mount point', (e) => Object.assign(e, { SCRIPT_NAME: '/app', PATH_INFO: '' })],
    ['a decoded # in PATH_INFO (from %23)', (e) => Object.assign(e, { PATH_INFO: '/a#b', REQUEST_URI: '/a%23b' })],
    ['OPTIONS *', (e) => Object.assign(e, { REQUEST_METHOD: 'OPTIONS', REQUEST_URI: '*' })],
    ['an absolute-form target', (e) => (e.REQUEST_URI = 'http://example.com/x')],
    ['CONNECT authority-form', (e) => Object.assign(e, { REQUEST_METHOD: 'CONNECT', REQUEST_URI: 'example.com:443' })],
    ['an IPv6 host', (e) => Object.assign(e, { SERVER_NAME: '[::1]', HTTP_HOST: '[::1]:8080' })],
    ['a bare IPv6 SERVER_NAME', (e) => (e.SERVER_NAME = '::1')],
    ['HTTP/2', (e) => (e.SERVER_PROTOCOL = 'HTTP/2')],
    ['an empty CONTENT_LENGTH', (e) => (e.CONTENT_LENGTH = '')],
    ['extension keys of any type', (e) => Object.assign(e, { 'myext.thing': 42, 'my_ext2.x.y': null, 'tsgix.logger': {}, 'mod_tsgi.process_group': '' })],
    ['a frozen tsgi.version of its own', (e) => (e['tsgi.version'] = Object.freeze([1, 0]))],
  ];
  for (const [name, mutate] of good) {
    it(`accepts ${name}`, async () => {
      const r = await runApp(badServer(mutate));
      expect(logText(r)).toBe('');
      expect(r.outcome.state).toBe('complete');
      expect(r.text).toBe('hello');
    });
  }

  it('warns about an unusual REQUEST_METHOD but lets it through', async () => {
    const r = await run(hello, { method: 'PROPFIND' });
    expect(r.outcome.state).toBe('complete');
    expect(r.warnings).toEqual(['tsgi.validate: warning: unusual REQUEST_METHOD "PROPFIND"']);
    const common = await run(hello, { method: 'DELETE' });
    expect(common.warnings).toEqual([]);
  });

  it('warns when SCRIPT_NAME and PATH_INFO are both empty', async () => {
    const r = await run(hello, { environ: { PATH_INFO: '' } });
    expect(r.outcome.state).toBe('complete');
    expect(r.warnings.join('\n')).toContain(`SCRIPT_NAME and PATH_INFO are both empty; PATH_INFO should be '/' at the root`);
  });

  it("warnings go to the server's tsgi.errors when no warn option is given", async () => {
    const r = await runApp(validate(hello), { method: 'PROPFIND' });
    expect(r.outcome.state).toBe('complete');
    expect(r.logs).toContainEqual({ level: 'error', message: 'tsgi.validate: warning: unusual REQUEST_METHOD "PROPFIND"' });
  });
});

// ---------------------------------------------------------------------------------------

describe('tsgi.input and tsgi.errors', () => {
  /** An app that does something with the input before answering. */
  const reader = (use: (input: Record<string, (...a: unknown[]) => unknown>, e: Environ) => Promise<unknown>): Application =>
    async (e, sr) => {
      const got = await use(e['tsgi.input'] as unknown as Record<string, (...a: unknown[]) => unknown>, e);
      sr('200 OK', TEXT);
      return [got instanceof Uint8Array ? got : String(got)];
    };
  const post = (body: string): FakeRequest => ({ method: 'POST', body: [enc(body)], headers: { 'Content-Length': String(enc(body).byteLength) } });

  const badReads: [string, (i: Record<string, (...a: unknown[]) => unknown>) => Promise<unknown>, string][] = [
    ['read(size) with a string size', (i) => i.read('10') as Promise<unknown>, '[application] tsgi.input.read(size): size must be an integer or left out, got string "10"'],
    ['read(size) with a fraction', (i) => i.read(1.5) as Promise<unknown>, 'size must be an integer or left out, got number 1.5'],
    ['read(size) with NaN', (i) => i.read(NaN) as Promise<unknown>, 'size must be an integer or left out, got number NaN'],
    ['read(size) with null', (i) => i.read(null) as Promise<unknown>, 'size must be an integer or left out, got null'],
    ['read() with two arguments', (i) => i.read(1, 2) as Promise<unknown>, '[application] tsgi.input.read() takes at most 1 argument (size), got 2'],
    ['concurrent reads', (i) => Promise.all([i.read(1), i.read(1)]), '[application] tsgi.input: concurrent reads; await each read() or next()'],
    [
      'a read while iterating',
      async (i) => {
        const it = (i[Symbol.asyncIterator as unknown as string] as () => AsyncIterator<Uint8Array>).call(i);
        return Promise.all([it.next(), i.read()]);
      },
      'tsgi.input: concurrent reads',
    ],
    ['close()', async (i) => i.close(), '[application] tsgi.input.close() must not be called'],
  ];
  for (const [name, use, rule] of badReads) {
    it(`input: ${name}`, async () => {
      expect500(await run(reader(use), post('hello world')), rule);
    });
  }

  it('input: read(0) is legal but warned about', async () => {
    const r = await run(reader(async (i) => (await (i.read(0) as Promise<Uint8Array>)).byteLength), post('hello'));
    expect(r.outcome.state).toBe('complete');
    expect(r.text).toBe('0');
    expect(r.warnings).toEqual(['tsgi.validate: warning: tsgi.input.read(0) always resolves to an empty array, which elsewhere means end-of-body']);
  });

  it('input: not used after the response completed', async () => {
    let input: { read(): Promise<Uint8Array>; [Symbol.asyncIterator](): AsyncIterator<Uint8Array> } | null = null;
    const r = await run((e, sr) => {
      input = e['tsgi.input'];
      sr('200 OK', TEXT);
      return ['ok'];
    }, post('hello'));
    expect(r.outcome.state).toBe('complete');
    await expect(input!.read()).rejects.toThrow('[application] tsgi.input used after the response completed');
    await expect(input![Symbol.asyncIterator]().next()).rejects.toThrow('[application] tsgi.input used after the response completed');
  });

  it('input: read(-1) is allowed by the spec, so it only warns', async () => {
    const r = await run(reader((i) => i.read(-1) as Promise<unknown>), post('hello world'));
    expect(r.outcome.state).toBe('complete');
    expect(r.text).toBe('hello world');
    expect(r.warnings).toEqual(['tsgi.validate: warning: tsgi.input.read(-1): a negative size reads the whole body; say read() instead']);
  });

  /** A server whose tsgi.input misbehaves. */
  const fakeInput = (read: (size?: number) => Promise<unknown>, chunks: unknown[] = []) => ({
    read,
    async *[Symbol.asyncIterator]() {
      yield* chunks;
    },
  });
  const serverInput: [string, Env, (i: Record<string, (...a: unknown[]) => unknown>) => Promise<unknown>, string][] = [
    ['read() resolves to a Uint8Array', { 'tsgi.input': fakeInput(async () => 'text') }, (i) => i.read() as Promise<unknown>, '[server] tsgi.input.read() must resolve to a Uint8Array, got string "text"'],
    ['read(n) returns at most n bytes', { 'tsgi.input': fakeInput(async () => enc('hello')) }, (i) => i.read(2) as Promise<unknown>, '[server] tsgi.input.read(2) returned 5 bytes, more than asked for'],
    [
      'no more than CONTENT_LENGTH bytes',
      { CONTENT_LENGTH: '2', 'tsgi.input': fakeInput(async () => enc('hello')) },
      (i) => i.read(10) as Promise<unknown>,
      '[server] tsgi.input delivered 5 bytes, more than CONTENT_LENGTH (2)',
    ],
    [
      'a short body is not end-of-body (read())',
      { CONTENT_LENGTH: '10', 'tsgi.input': fakeInput(async () => enc('abc')) },
      (i) => i.read() as Promise<unknown>,
      '[server] tsgi.input reported end-of-body after 3 bytes, but CONTENT_LENGTH is 10; a short body must make reads reject',
    ],
    [
      'a short body is not end-of-body (read(n))',
      { CONTENT_LENGTH: '10', 'tsgi.input': fakeInput(async () => new Uint8Array(0)) },
      (i) => i.read(4) as Promise<unknown>,
      '[server] tsgi.input reported end-of-body after 0 bytes, but CONTENT_LENGTH is 10',
    ],
    [
      'a short body is not end-of-body (iteration)',
      { CONTENT_LENGTH: '10', 'tsgi.input': fakeInput(async () => enc(''), [enc('ab')]) },
      async (i) => {
        for await (const c of i as unknown as AsyncIterable<Uint8Array>) void c;
      },
      '[server] tsgi.input reported end-of-body after 2 bytes, but CONTENT_LENGTH is 10',
    ],
    [
      "the input iterator's next() resolves to {done, value}",
      { 'tsgi.input': { read: async () => enc(''), [Symbol.asyncIterator]: () => ({ next: async () => 42 }) } },
      async (i) => {
        for await (const c of i as unknown as AsyncIterable<Uint8Array>) void c;
      },
      "[server] tsgi.input's iterator must resolve to {done, value}, got number 42",
    ],
    [
      'no bytes after end-of-body',
      { 'tsgi.input': fakeInput(async () => enc('abc')) },
      async (i) => {
        await i.read();
        return i.read(10);
      },
      '[server] tsgi.input delivered 3 bytes after reporting end-of-body',
    ],
    [
      'iteration yields no empty chunks',
      { 'tsgi.input': fakeInput(async () => enc(''), [enc('a'), new Uint8Array(0)]) },
      async (i) => {
        for await (const c of i as unknown as AsyncIterable<Uint8Array>) void c;
      },
      '[server] iterating tsgi.input yielded an empty chunk',
    ],
    [
      'iteration yields Uint8Array',
      { 'tsgi.input': fakeInput(async () => enc(''), ['text']) },
      async (i) => {
        for await (const c of i as unknown as AsyncIterable<Uint8Array>) void c;
      },
      '[server] iterating tsgi.input must yield Uint8Array chunks, got string "text"',
    ],
  ];
  for (const [name, env, use, rule] of serverInput) {
    it(`input (server): ${name}`, async () => {
      expect500(await runApp(badServer((e) => Object.assign(e, env), reader(use))), rule);
    });
  }

  it('input: every good way of reading gets the same bytes as without validate', async () => {
    const body = 'a'.repeat(5000) + 'b'.repeat(5000);
    const req = (): FakeRequest => ({ method: 'POST', body: [enc(body.slice(0, 3000)), enc(body.slice(3000))], headers: { 'Content-Length': '10000' } });
    const readAll = reader(async (i) => i.read());
    const readSized = reader(async (i) => {
      const parts: Uint8Array[] = [];
      for (;;) {
        const b = (await i.read(777)) as Uint8Array;
        if (b.byteLength === 0) break;
        parts.push(b);
      }
      return Buffer.concat(parts);
    });
    const iterate = reader(async (i) => {
      const parts: Uint8Array[] = [];
      for await (const c of i as unknown as AsyncIterable<Uint8Array>) parts.push(c);
      return Buffer.concat(parts);
    });
    const mixed = reader(async (i) => {
      const first = (await i.read(10)) as Uint8Array;
      const rest = (await i.read()) as Uint8Array;
      return Buffer.concat([first, rest]);
    });
    for (const app of [readAll, readSized, iterate, mixed]) {
      const r = await same(app, req());
      expect(r.text).toBe(body);
    }
  });

  it('input: a body shorter than CONTENT_LENGTH still rejects as the gateway says', async () => {
    const r = await run(reader(async (i) => i.read()), { method: 'POST', body: [enc('abc')], headers: { 'Content-Length': '10' } });
    expect(r.outcome.state).toBe('error');
    expect(logText(r)).toContain('request body ended after fewer bytes than CONTENT_LENGTH');
    expect(logText(r)).not.toMatch(/TsgiSpecViolation: \[/);
  });

  const errorsApp = (use: (errors: Record<string, (...a: unknown[]) => unknown>) => void): Application => (e, sr) => {
    use(e['tsgi.errors'] as unknown as Record<string, (...a: unknown[]) => unknown>);
    sr('200 OK', TEXT);
    return ['ok'];
  };
  const badErrors: [string, (x: Record<string, (...a: unknown[]) => unknown>) => void, string][] = [
    ['write() with a number', (x) => x.write(42), '[application] tsgi.errors.write() takes exactly one string, got (number 42)'],
    ['write() with bytes', (x) => x.write(enc('x')), 'tsgi.errors.write() takes exactly one string, got (Uint8Array(1))'],
    ['write() with two strings', (x) => x.write('a', 'b'), 'tsgi.errors.write() takes exactly one string, got (string "a", string "b")'],
    ['flush() with an argument', (x) => x.flush(true), '[application] tsgi.errors.flush() takes no arguments, got 1'],
    ['close()', (x) => x.close(), '[application] tsgi.errors.close() must not be called'],
  ];
  for (const [name, use, rule] of badErrors) {
    it(`errors: ${name}`, async () => {
      expect500(await run(errorsApp(use)), rule);
    });
  }

  it('errors: good use reaches the log exactly as without validate', async () => {
    const r = await same(
      errorsApp((x) => {
        x.write('one\ntw');
        x.write('o\n');
        x.write('three');
        x.flush();
      }),
    );
    expect(r.logs.map((l) => l.message)).toEqual(['one', 'two', 'three']);
  });
});

// ---------------------------------------------------------------------------------------

describe('what the application returns', () => {
  const returns: [string, unknown, string][] = [
    ['null', null, '[application] the application returned null; it must be an iterable body'],
    ['undefined', undefined, '[application] the application returned undefined'],
    ['a string', 'hello', '[application] the application returned a string "hello" itself; return it inside an array: [body]'],
    ['a Uint8Array', enc('hi'), '[application] the application returned a Uint8Array(2) itself'],
    ['a number', 42, '[application] the application returned a non-iterable number 42'],
    ['false', false, '[application] the application returned a non-iterable boolean false'],
    ['a plain object', { body: 'x' }, '[application] the application returned a non-iterable object [object Object]; it must be an Iterable or AsyncIterable of chunks'],
  ];
  for (const [name, value, rule] of returns) {
    it(`not ${name}`, async () => {
      expect500(await run(asApp((e, sr) => (loose(sr as StartResponse)('200 OK', TEXT), value))), rule);
    });
    it(`not a Promise of ${name}`, async () => {
      const rule2 = rule.replace('the application returned', "the application's Promise resolved to");
      expect500(await run(asApp(async (e, sr) => (loose(sr as StartResponse)('200 OK', TEXT), value))), rule2);
    });
  }

  it('closes a rejected return value that has close(), since the server never sees it', async () => {
    let closed = 0;
    const r = await run(asApp(() => ({ close: () => closed++ })));
    expect500(r, 'the application returned a non-iterable object');
    expect(closed).toBe(1);
  });

  it("a file body's filePath must name an existing file", async () => {
    let closed = 0;
    const body = { filePath: '/nonexistent/file.txt', async *[Symbol.asyncIterator]() {}, close: () => closed++ };
    const r = await run(asApp((e, sr) => (loose(sr as StartResponse)('200 OK', TEXT), body)));
    expect500(r, `[application] the body's filePath must name an existing regular file, got string "/nonexistent/file.txt"`);
    expect(closed).toBe(1);
  });

  it("a file body's fd must be a descriptor", async () => {
    const body = { fd: -1, *[Symbol.iterator]() {} };
    const r = await run(asApp((e, sr) => (loose(sr as StartResponse)('200 OK', TEXT), body)));
    expect500(r, `[application] the body's fd must be a non-negative integer file descriptor, got number -1`);
  });
});

// ---------------------------------------------------------------------------------------

describe('startResponse()', () => {
  const calls: [string, (sr: LooseStart) => void, string][] = [
    ['takes at least 2 arguments', (sr) => sr('200 OK'), '[application] startResponse() takes 2 or 3 arguments (status, headers, excInfo?), got 1'],
    ['takes at most 3 arguments', (sr) => sr('200 OK', TEXT, undefined, 'x'), 'startResponse() takes 2 or 3 arguments (status, headers, excInfo?), got 4'],
    ['status is a string', (sr) => sr(200, TEXT), '[application] startResponse() status: status must be a string like "200 OK", got number 200'],
    ['status has a reason separator', (sr) => sr('200', TEXT), '[application] startResponse() status: status must be "NNN Reason" (three digits, a space, a reason phrase), got "200"'],
    ['status has three digits', (sr) => sr('2000 OK', TEXT), 'status must be "NNN Reason" (three digits, a space, a reason phrase), got "2000 OK"'],
    ['status has no fewer digits', (sr) => sr('20 OK', TEXT), 'got "20 OK"'],
    ['status starts with the code', (sr) => sr('OK 200', TEXT), 'got "OK 200"'],
    ['status has no CR/LF', (sr) => sr('200 OK\r\nX-Injected: 1', TEXT), '[application] startResponse() status: status contains CR or LF'],
    ['status is not 1xx', (sr) => sr('101 Switching Protocols', TEXT), '[application] startResponse() status: status 101: informational (1xx) responses are sent by the server'],
    ['headers is an array', (sr) => sr('200 OK', { 'Content-Type': 'text/plain' }), '[application] startResponse() headers: headers must be an array of [name, value] pairs'],
    ['each header is a pair', (sr) => sr('200 OK', [['Content-Type']]), '[application] startResponse() headers: header #0 must be a [name, value] pair, got array(1)'],
    ['each header is exactly a pair', (sr) => sr('200 OK', [['Content-Type', 'text/plain', 'x']]), 'header #0 must be a [name, value] pair, got array(3)'],
    ['each header is an array', (sr) => sr('200 OK', ['Content-Type: text/plain']), 'header #0 must be a [name, value] pair'],
    ['header values are strings', (sr) => sr('200 OK', [...TEXT, ['X-N', 1]]), '[application] startResponse() headers: header #1: name and value must be strings'],
    ['header names are tokens', (sr) => sr('200 OK', [...TEXT, ['Bad Name', 'x']]), '[application] startResponse() headers: header name "Bad Name" is not a valid token'],
    ['header names have no colon', (sr) => sr('200 OK', [...TEXT, ['X-A:', 'x']]), 'header name "X-A:" is not a valid token'],
    ['header names have no CR/LF', (sr) => sr('200 OK', [...TEXT, ['X-A\r\nX-B', 'x']]), 'header name contains CR or LF'],
    ['no Status header', (sr) => sr('200 OK', [...TEXT, ['Status', '200']]), '[application] startResponse() headers: a header named "Status" is not allowed'],
    ['no CR/LF in values', (sr) => sr('200 OK', [...TEXT, ['X-A', 'a\r\nSet-Cookie: x']]), '[application] startResponse() headers: header X-A contains CR or LF in its value'],
    ['no control characters in values', (sr) => sr('200 OK', [...TEXT, ['X-A', 'a\x01b']]), 'header X-A has a control or non-Latin-1 character in its value'],
    ['no NUL in values', (sr) => sr('200 OK', [...TEXT, ['X-A', 'a\0b']]), 'header X-A has a control or non-Latin-1 character in its value'],
    ['values are Latin-1', (sr) => sr('200 OK', [...TEXT, ['X-A', '€']]), 'header X-A has a control or non-Latin-1 character in its value'],
    ['no Connection', (sr) => sr('200 OK', [...TEXT, ['Connection', 'close']]), '[application] startResponse() headers: hop-by-hop header Connection is not allowed'],
    ['no Transfer-Encoding', (sr) => sr('200 OK', [...TEXT, ['transfer-encoding', 'chunked']]), 'hop-by-hop header transfer-encoding is not allowed'],
    ['no Keep-Alive', (sr) => sr('200 OK', [...TEXT, ['Keep-Alive', 'timeout=5']]), 'hop-by-hop header Keep-Alive is not allowed'],
    ['no Upgrade', (sr) => sr('200 OK', [...TEXT, ['Upgrade', 'websocket']]), 'hop-by-hop header Upgrade is not allowed'],
    ['no TE', (sr) => sr('200 OK', [...TEXT, ['TE', 'trailers']]), 'hop-by-hop header TE is not allowed'],
    ['names do not end in -', (sr) => sr('200 OK', [...TEXT, ['X-Foo-', 'x']]), `[application] header name "X-Foo-" must not end in '-' or '_'`],
    ['names do not end in _', (sr) => sr('200 OK', [...TEXT, ['X_Foo_', 'x']]), `header name "X_Foo_" must not end in '-' or '_'`],
    ['Content-Length is an integer', (sr) => sr('200 OK', [...TEXT, ['Content-Length', '1.5']]), '[application] startResponse() headers: Content-Length must be a non-negative integer, got "1.5"'],
    ['Content-Length is not negative', (sr) => sr('200 OK', [...TEXT, ['Content-Length', '-1']]), 'Content-Length must be a non-negative integer, got "-1"'],
    [
      'Content-Length headers agree',
      (sr) => sr('200 OK', [...TEXT, ['Content-Length', '1'], ['content-length', '2']]),
      '[application] startResponse() headers: conflicting Content-Length headers: 1 and 2',
    ],
    ['no Content-Type on 204', (sr) => sr('204 No Content', TEXT), '[application] a 204 response must not have a Content-Type header'],
    ['no Content-Type on 304', (sr) => sr('304 Not Modified', [['content-type', 'text/html']]), 'a 304 response must not have a Content-Type header'],
    ['no Content-Length on 204', (sr) => sr('204 No Content', [['Content-Length', '0']]), '[application] a 204 response must not have a Content-Length header'],
    [
      'not twice without excInfo',
      (sr) => {
        sr('200 OK', TEXT);
        sr('404 Not Found', TEXT);
      },
      '[application] startResponse() called a second time without excInfo',
    ],
  ];
  for (const [name, call, rule] of calls) {
    it(name, async () => {
      const r = await run((e, sr) => {
        call(loose(sr));
        return ['x'];
      });
      expect500(r, rule);
    });
  }

  it('warns about a missing Content-Type (a SHOULD), and lets the response through', async () => {
    const r = await run((e, sr) => (sr('200 OK', []), ['x']));
    expect(r.outcome.state).toBe('complete');
    expect(r.warnings).toEqual(['tsgi.validate: warning: no Content-Type header (status 200); every response except 204 and 304 should have one']);
    const redirect = await run((e, sr) => (sr('302 Found', [['Location', '/x']]), []));
    expect(redirect.head?.code).toBe(302);
    expect(redirect.warnings).toEqual(['tsgi.validate: warning: no Content-Type header (status 302); every response except 204 and 304 should have one']);
  });

  it('warns about Content-Length on a 304 (RFC 9110 allows only the 200 length)', async () => {
    const r = await run((e, sr) => (sr('304 Not Modified', [['Content-Length', '10']]), []));
    expect(r.outcome.state).toBe('complete');
    expect(r.head?.code).toBe(304);
    expect(r.warnings).toEqual(['tsgi.validate: warning: a 304 response with Content-Length: it must equal the length of the 200 response, and is usually left out']);
  });

  it('warns about an excInfo that is not an Error, and still replaces the response', async () => {
    const app: Application = (e, sr) => {
      sr('200 OK', TEXT);
      sr('500 Internal Server Error', TEXT, 'it broke');
      return ['sorry'];
    };
    const plain = await runApp(app);
    const r = await run(app);
    expect(r.head).toEqual(plain.head);
    expect(r.head?.code).toBe(500);
    expect(r.text).toBe('sorry');
    expect(r.warnings).toEqual(['tsgi.validate: warning: startResponse() excInfo should be the error being handled, got string "it broke"']);
  });

  it('warns about a status without a reason phrase, and lets it through', async () => {
    const r = await run((e, sr) => (sr('200 ', TEXT), ['x']));
    expect(r.outcome.state).toBe('complete');
    expect(r.head?.status).toBe('200 ');
    expect(r.warnings).toEqual(['tsgi.validate: warning: status "200 " has no reason phrase; use e.g. "200 OK"']);
  });

  it('a violation the app catches is still reported (at its next step)', async () => {
    const r = await run((e, sr) => {
      try {
        sr('200 OK', [['Bad Name', 'x']]);
      } catch {
        // swallowed
      }
      sr('200 OK', TEXT);
      return ['x'];
    });
    expect500(r, 'header name "Bad Name" is not a valid token');
  });

  it('a violation the app catches is still reported (when it returns)', async () => {
    const r = await run((e, sr) => {
      try {
        sr('200 OK', [['Content-Type', 'text/plain'], ['Connection', 'close']]);
      } catch {
        // swallowed
      }
      return [];
    });
    expect500(r, '[application] startResponse() headers: hop-by-hop header Connection is not allowed');
  });

  it('a violation an async body catches is still reported at its next chunk', async () => {
    const r = await run(async function* (e, sr) {
      sr('200 OK', TEXT);
      yield 'a';
      try {
        (e['tsgi.errors'] as unknown as { close(): void }).close();
      } catch {
        // swallowed
      }
      yield 'b';
    });
    expectAbort(r, 'tsgi.errors.close() must not be called');
    expect(r.text).toBe('a');
  });

  it('excInfo before the headers went out replaces the response, as without validate', async () => {
    const app: Application = (e, sr) => {
      sr('200 OK', TEXT);
      try {
        throw new Error('db down');
      } catch (err) {
        sr('503 Service Unavailable', [['Content-Type', 'text/plain'], ['Retry-After', '5']], err);
      }
      return ['sorry'];
    };
    const r = await same(app);
    expect(r.head?.code).toBe(503);
    expect(r.text).toBe('sorry');
  });

  it('excInfo after the headers went out is re-thrown, and the response aborted, as without validate', async () => {
    const app: Application = function* (e, sr) {
      sr('200 OK', TEXT);
      yield 'partial';
      sr('500 Internal Server Error', TEXT, new Error('late failure'));
      yield 'never';
    };
    const plain = await runApp(app);
    const r = await run(app);
    expect(r.outcome).toEqual(plain.outcome);
    expect(r.outcome.state).toBe('aborted');
    expect(r.text).toBe('partial');
    expect(logText(r)).toContain('Error: late failure');
    expect(logText(r)).not.toMatch(/TsgiSpecViolation: \[/);
  });

  it('the app must let the re-thrown excInfo propagate', async () => {
    const r = await run(function* (e, sr) {
      sr('200 OK', TEXT);
      yield 'partial';
      try {
        sr('500 Internal Server Error', TEXT, new Error('late failure'));
      } catch {
        // swallowed: forbidden by PEP 3333
      }
      yield 'more';
    });
    expectAbort(r, '[application] the application caught the error startResponse(…, excInfo) re-threw and carried on; it must let it propagate (late failure)');
    expect(r.text).toBe('partial');
  });

  it('the app must let the re-thrown excInfo propagate, even when it then ends quietly', async () => {
    const r = await run((e, sr) => {
      const w = sr('200 OK', TEXT);
      w('partial');
      try {
        sr('500 Internal Server Error', TEXT, new Error('late failure'));
      } catch {
        // swallowed
      }
      return [];
    });
    expectAbort(r, 're-threw and carried on; it must let it propagate');
  });

  it('(server) startResponse must return write()', async () => {
    const v = validate((e, sr) => {
      const w = sr('200 OK', TEXT);
      w('x');
      return [];
    });
    const r = await runApp((e, sr) => v(e, ((s: string, h: Header[]) => void sr(s, h)) as unknown as StartResponse));
    expect500(r, '[server] startResponse() must return a write function, got undefined');
  });

  it('(server) startResponse must re-throw excInfo once the headers are out', async () => {
    const v = validate(function* (e, sr) {
      sr('200 OK', TEXT);
      yield 'partial';
      sr('500 Internal Server Error', TEXT, new Error('late'));
    });
    const swallowing: (sr: StartResponse) => StartResponse = (sr) => (s, h, x) => {
      try {
        return sr(s, h, x);
      } catch {
        return () => undefined;
      }
    };
    const r = await runApp((e, sr) => v(e, swallowing(sr)));
    expectAbort(r, '[server] startResponse(status, headers, excInfo) after the headers were sent must re-throw excInfo, but it returned');
  });

  it('may not be called after the body was closed', async () => {
    let start: StartResponse | null = null;
    const r = await run((e, sr) => {
      start = sr;
      sr('200 OK', TEXT);
      return Object.assign(['x'], { close: () => start?.('200 OK', TEXT) });
    });
    expect(r.outcome.state).toBe('complete'); // too late to fail the response: the gateway logs it
    expectRule(r, '[application] startResponse() called after the response body ended or was closed');
  });
});

// ---------------------------------------------------------------------------------------

describe('write()', () => {
  const writes: [string, (w: LooseStart) => void, string][] = [
    ['takes a chunk', (w) => w(42), '[application] write() argument must be a Uint8Array or a string, got number 42'],
    ['not an array of chunks', (w) => w(['a']), 'write() argument must be a Uint8Array or a string, got array(1)'],
    ['takes one argument', (w) => w(), '[application] write() takes exactly 1 argument, got 0'],
    ['takes only one argument', (w) => w('a', 'b'), 'write() takes exactly 1 argument, got 2'],
  ];
  for (const [name, call, rule] of writes) {
    it(name, async () => {
      expect500(await run((e, sr) => (call(sr('200 OK', TEXT) as unknown as LooseStart), [])), rule);
    });
  }

  it('a bad write() after good ones aborts the response', async () => {
    const r = await run((e, sr) => {
      const w = loose(sr)('200 OK', TEXT) as unknown as LooseStart;
      w('ok');
      w({});
      return [];
    });
    expectAbort(r, 'write() argument must be a Uint8Array or a string, got object [object Object]');
  });

  it('may not be called after the body was closed', async () => {
    let w: Write | null = null;
    const r = await run((e, sr) => {
      w = sr('200 OK', TEXT);
      return Object.assign(['x'], { close: () => w?.('late') });
    });
    expect(r.outcome.state).toBe('complete');
    expect(r.text).toBe('x');
    expectRule(r, '[application] write() called after the response body ended or was closed');
  });

  it('counts toward Content-Length', async () => {
    const r = await run((e, sr) => {
      const w = sr('200 OK', [...TEXT, ['Content-Length', '5']]);
      w('abc');
      return ['def'];
    });
    expectAbort(r, '[application] declared Content-Length: 5 but the application produced more (6 bytes so far)');
  });
});

// ---------------------------------------------------------------------------------------

describe('the body', () => {
  it('chunks are Uint8Array or string (Array body: before anything is sent)', async () => {
    const r = await run((e, sr) => (sr('200 OK', TEXT), ['a', 42 as unknown as string]));
    expect500(r, '[application] a body chunk must be a Uint8Array or a string, got number 42');
    expect(r.text).toMatch(/^<!DOCTYPE html>/); // the 500 page, and no byte of the app's body before it
  });

  it('chunks are Uint8Array or string (sync generator, first chunk)', async () => {
    expect500(
      await run(function* (e, sr) {
        sr('200 OK', TEXT);
        yield null as unknown as string;
      }),
      'a body chunk must be a Uint8Array or a string, got null',
    );
  });

  it('chunks are Uint8Array or string (async generator, later chunk)', async () => {
    const r = await run(async function* (e, sr) {
      sr('200 OK', TEXT);
      yield 'a';
      yield [1, 2] as unknown as string;
    });
    expectAbort(r, 'a body chunk must be a Uint8Array or a string, got array(2)');
    expect(r.text).toBe('a');
  });

  it('a sync body cannot yield Promises', async () => {
    expect500(
      await run(function* (e, sr) {
        sr('200 OK', TEXT);
        yield Promise.resolve('later') as unknown as string;
      }),
      'a body chunk must be a Uint8Array or a string, got object [object Promise] (a Promise: a synchronous body cannot wait; make the body async',
    );
  });

  it('chunks are not ArrayBuffers or Buffers-in-disguise', async () => {
    expect500(await run((e, sr) => (sr('200 OK', TEXT), [new ArrayBuffer(2) as unknown as string])), 'got object [object ArrayBuffer]');
  });

  it('no chunk before startResponse (class-style app)', async () => {
    class App {
      constructor(
        private readonly e: Environ,
        private readonly sr: StartResponse,
      ) {}
      *[Symbol.iterator]() {
        yield 'too early';
        this.sr('200 OK', TEXT);
      }
    }
    expect500(await run(App as unknown as Application), '[application] the application produced a body chunk (string "too early") before calling startResponse()');
  });

  it('no chunk before startResponse (Array body)', async () => {
    expect500(await run(() => ['x']), 'the application produced a body chunk (string "x") before calling startResponse()');
  });

  it('empty chunks before startResponse are harmless', async () => {
    const r = await run(function* (e, sr) {
      yield '';
      sr('200 OK', TEXT);
      yield 'x';
    });
    expect(r.outcome.state).toBe('complete');
    expect(r.text).toBe('x');
  });

  it('startResponse must have been called by the end of the body', async () => {
    expect500(await run(() => []), '[application] the response body ended but the application never called startResponse()');
    expect500(
      await run(async function* () {
        yield '';
      }),
      'the response body ended but the application never called startResponse()',
    );
  });

  it('[Symbol.iterator]() must return an iterator', async () => {
    const body = { [Symbol.iterator]: () => 42 };
    expect500(await run(asApp((e, sr) => (loose(sr as StartResponse)('200 OK', TEXT), body))), "[application] the body's [Symbol(Symbol.iterator)]() must return an iterator (an object with next()), got number 42");
  });

  it('[Symbol.asyncIterator]() must return an iterator', async () => {
    const body = { [Symbol.asyncIterator]: () => ({}) };
    expect500(await run(asApp((e, sr) => (loose(sr as StartResponse)('200 OK', TEXT), body))), "the body's [Symbol(Symbol.asyncIterator)]() must return an iterator");
  });

  it("the iterator's next() must return {done, value}", async () => {
    const body = { [Symbol.iterator]: () => ({ next: () => 'x' }) };
    expect500(await run(asApp((e, sr) => (loose(sr as StartResponse)('200 OK', TEXT), body))), "[application] the body iterator's next() must return {done, value}, got string \"x\"");
  });

  it("the async iterator's next() must resolve to {done, value}", async () => {
    const body = { [Symbol.asyncIterator]: () => ({ next: async () => null }) };
    expect500(await run(asApp((e, sr) => (loose(sr as StartResponse)('200 OK', TEXT), body))), "[application] the body iterator's next() must resolve to {done, value}, got null");
  });

  it('no body for 204', async () => {
    expect500(await run((e, sr) => (sr('204 No Content', []), ['x'])), '[application] status 204 must not have a body, but the application produced 1 bytes');
  });

  it('no body for 304, via write() either', async () => {
    expect500(
      await run((e, sr) => {
        sr('304 Not Modified', [])('abc');
        return [];
      }),
      'status 304 must not have a body, but the application produced 3 bytes',
    );
  });

  it('no more bytes than Content-Length (Array: before anything is sent)', async () => {
    expect500(await run((e, sr) => (sr('200 OK', [...TEXT, ['Content-Length', '2']]), ['ab', 'c'])), '[application] declared Content-Length: 2 but the application produced more (3 bytes so far)');
  });

  it('no more bytes than Content-Length (generator)', async () => {
    const r = await run(function* (e, sr) {
      sr('200 OK', [...TEXT, ['Content-Length', '2']]);
      yield 'ab';
      yield 'c';
    });
    expectAbort(r, 'declared Content-Length: 2 but the application produced more (3 bytes so far)');
    expect(r.text).toBe('ab');
  });

  it('no fewer bytes than Content-Length (Array: before anything is sent)', async () => {
    expect500(await run((e, sr) => (sr('200 OK', [...TEXT, ['Content-Length', '3']]), ['a'])), '[application] declared Content-Length: 3 but the application produced 1 bytes');
  });

  it('no fewer bytes than Content-Length (async generator)', async () => {
    const r = await run(async function* (e, sr) {
      sr('200 OK', [...TEXT, ['Content-Length', '3']]);
      yield 'a';
    });
    expectAbort(r, 'declared Content-Length: 3 but the application produced 1 bytes');
  });

  it('Content-Length counts UTF-8 bytes, not characters', async () => {
    const r = await run((e, sr) => (sr('200 OK', [...TEXT, ['Content-Length', '2']]), ['é']));
    expect(r.outcome.state).toBe('complete');
    const bad = await run((e, sr) => (sr('200 OK', [...TEXT, ['Content-Length', '1']]), ['é']));
    expect500(bad, 'declared Content-Length: 1 but the application produced more (2 bytes so far)');
  });

  it('HEAD: body bytes are only a warning (the server drops them)', async () => {
    const r = await run((e, sr) => (sr('200 OK', TEXT), ['abc', 'def']), { method: 'HEAD' });
    expect(r.outcome.state).toBe('complete');
    expect(r.chunks).toEqual([]);
    expect(r.warnings).toEqual([
      'tsgi.validate: warning: the application produced body bytes for a HEAD request (string "abc"); the server discards them, so it should not make them',
    ]);
  });

  it('HEAD: a Content-Length with no body is right', async () => {
    const r = await same((e, sr) => (sr('200 OK', [...TEXT, ['Content-Length', '1234']]), []), { method: 'HEAD' });
    expect(r.head?.contentLength).toBe(1234);
  });
});

// ---------------------------------------------------------------------------------------

describe('the server must close the body, once, and not iterate it after', () => {
  it('iterated twice', async () => {
    const v = validate(function* (e, sr) {
      sr('200 OK', TEXT);
      yield 'x';
    });
    const twice = asApp((e, sr) => {
      const b = v(e as Environ, sr as StartResponse) as Iterable<Chunk>;
      return (function* () {
        yield* b;
        yield* b;
      })();
    });
    expectAbort(await runApp(twice), '[server] the response body was iterated a second time');
  });

  it('iterated after close()', async () => {
    const v = validate(hello);
    const afterClose = asApp((e, sr) => {
      const b = v(e as Environ, sr as StartResponse) as unknown as Iterable<Chunk> & { close(): void };
      b.close();
      return b;
    });
    expect500(await runApp(afterClose), '[server] the response body was iterated after close()');
  });

  it('next() after close()', async () => {
    const v = validate(async function* (e, sr) {
      sr('200 OK', TEXT);
      yield 'a';
      yield 'b';
    });
    const closesEarly = asApp((e, sr) => {
      const b = v(e as Environ, sr as StartResponse) as unknown as AsyncIterable<Chunk> & { close(): void };
      return (async function* () {
        const it = b[Symbol.asyncIterator]();
        yield (await it.next()).value as Chunk;
        b.close();
        yield (await it.next()).value as Chunk;
      })();
    });
    expectAbort(await runApp(closesEarly), '[server] the response body was iterated after close()');
  });

  const gen: Application = function* (e, sr) {
    sr('200 OK', TEXT);
    yield 'a';
    yield 'b';
  };
  /** A server layer that drives the validated body itself, badly. */
  const driving = (drive: (b: Iterable<Chunk> & { close(): unknown }) => Generator<Chunk>, app: Application = gen): Application => {
    const v = validate(app);
    return (e, sr) => drive(v(e, sr) as Iterable<Chunk> & { close(): unknown });
  };

  it('close() called twice', async () => {
    const r = await runApp(
      driving(function* (b) {
        yield* b;
        b.close();
        b.close();
      }),
    );
    expectAbort(r, '[server] close() called a second time on the response body; the server must call it exactly once');
  });

  it('close() called twice on an Array body', async () => {
    const r = await runApp(
      driving(function* (b) {
        yield* b;
        b.close();
        b.close();
      }, hello),
    );
    expectAbort(r, '[server] close() called a second time on the response body');
  });

  it('return() called twice', async () => {
    const r = await runApp(
      driving(function* (b) {
        const it = b[Symbol.iterator]();
        yield it.next().value as Chunk;
        it.return!();
        it.return!();
      }),
    );
    expectAbort(r, '[server] return() called a second time on the body iterator; the server calls it at most once');
  });

  it('return() called twice (async body)', async () => {
    const v = validate(async function* (e, sr) {
      sr('200 OK', TEXT);
      yield 'a';
      yield 'b';
    });
    const r = await runApp((e, sr) => {
      const b = v(e, sr) as AsyncIterable<Chunk>;
      return (async function* () {
        const it = b[Symbol.asyncIterator]();
        yield (await it.next()).value as Chunk;
        await it.return!();
        await it.return!();
      })();
    });
    expectAbort(r, '[server] return() called a second time on the body iterator');
  });

  it('return() called after done', async () => {
    const r = await runApp(
      driving(function* (b) {
        const it = b[Symbol.iterator]();
        for (let x = it.next(); !x.done; x = it.next()) yield x.value;
        it.return!();
      }),
    );
    expectAbort(r, '[server] return() called on the body iterator after it reported done');
  });

  it('return() called before any next()', async () => {
    let started = false;
    const r = await runApp(
      driving(
        function* (b) {
          b[Symbol.iterator]().return!();
          yield* [];
        },
        function* (e, sr) {
          started = true;
          sr('200 OK', TEXT);
          yield 'a';
        },
      ),
    );
    expect500(r, "[server] return() called on the body iterator before any next(): a generator body's finally blocks never run");
    expect(started).toBe(false);
  });

  it("return() after the app's next() threw is forwarded, as without validate", async () => {
    const counts: number[] = [];
    const app = (): Application => {
      let returned = 0;
      counts.push(0);
      const i = counts.length - 1;
      return (e, sr) => {
        sr('200 OK', TEXT);
        let n = 0;
        return {
          [Symbol.iterator]: () => ({
            next: () => {
              if (n++ === 0) return { done: false, value: 'a' };
              throw new Error('boom');
            },
            return: () => {
              counts[i] = ++returned;
              return { done: true, value: undefined };
            },
          }),
        } as Iterable<Chunk>;
      };
    };
    const plain = await runApp(app());
    const r = await run(app());
    expect(r.outcome).toEqual(plain.outcome);
    expect(counts).toEqual([1, 1]);
  });

  /** A server layer that iterates the body but forgets close(). */
  const forgetful =
    (v: Application, forward = false): Application =>
    (e, sr) => {
      const b = v(e, sr) as Iterable<Chunk> & { close(): void };
      return Object.assign(
        (function* () {
          yield* b;
        })(),
        forward ? { close: () => b.close() } : {},
      );
    };

  it('close() not called soon after the body ended: a warning', async () => {
    const warnings: string[] = [];
    const v = validate(hello, { warn: (m) => warnings.push(m), closeTimeoutMs: 20 });
    const r = await runApp(forgetful(v));
    expect(r.outcome.state).toBe('complete');
    await tick(80);
    expect(warnings).toEqual([
      'tsgi.validate: warning: the server had not called close() on the response body 20 ms after iteration ended (GET /); it must, on every path',
    ]);

    const control: string[] = [];
    await runApp(forgetful(validate(hello, { warn: (m) => control.push(m), closeTimeoutMs: 20 }), true));
    await tick(80);
    expect(control).toEqual([]);
  });

  it('a body garbage-collected without close(): a warning', async () => {
    setFlagsFromString('--expose_gc');
    const gc = runInNewContext('gc') as () => void;
    const collect = async (forward: boolean): Promise<string[]> => {
      const warnings: string[] = [];
      await runApp(forgetful(validate(hello, { warn: (m) => warnings.push(m), closeTimeoutMs: 0 }), forward));
      for (let i = 0; i < 30 && warnings.length === 0; i++) {
        gc();
        await tick(5);
      }
      return warnings;
    };
    expect(await collect(true)).toEqual([]);
    expect(await collect(false)).toEqual([
      'tsgi.validate: warning: the response body was garbage-collected without close() being called (GET /); the server must close every body',
    ]);
  });
});

// ---------------------------------------------------------------------------------------

describe('close() and return() are forwarded', () => {
  it('close() once, after the body, on success; a Promise from it is awaited', async () => {
    const events: string[] = [];
    const r = await run((e, sr) => {
      sr('200 OK', TEXT);
      return Object.assign(['x'], {
        close: async () => {
          events.push('close');
          await tick(20);
          events.push('closed');
        },
      });
    });
    expect(r.outcome.state).toBe('complete');
    expect(events).toEqual(['close', 'closed']);
  });

  it('close() on a generator-backed body when the app fails', async () => {
    let closed = 0;
    const body = Object.assign(
      (function* () {
        yield 'a';
        throw new Error('app failed');
      })(),
      { close: () => closed++ },
    );
    const r = await run((e, sr) => (sr('200 OK', TEXT), body));
    expect(r.outcome.state).toBe('aborted');
    expect(logText(r)).toContain('app failed');
    expect(closed).toBe(1);
  });

  it('close() when the validator rejects a chunk', async () => {
    let closed = 0;
    const body = Object.assign(
      (async function* () {
        yield 'a';
        yield 7;
      })(),
      { close: () => closed++ },
    );
    expectAbort(await run(asApp((e, sr) => (loose(sr as StartResponse)('200 OK', TEXT), body))), 'got number 7');
    expect(closed).toBe(1);
  });

  for (const kind of ['sync', 'async'] as const) {
    it(`the ${kind} inner iterator's return() when iteration is cut short`, async () => {
      let cleanedUp = false;
      function* sync(sr: StartResponse) {
        try {
          sr('200 OK', TEXT);
          yield 'a';
          yield 7 as unknown as string;
          yield 'never';
        } finally {
          cleanedUp = true;
        }
      }
      async function* asyncGen(sr: StartResponse) {
        yield* sync(sr);
      }
      const r = await run((e, sr) => (kind === 'sync' ? sync(sr) : asyncGen(sr)));
      expectAbort(r, 'got number 7');
      await tick();
      expect(cleanedUp).toBe(true);
    });
  }

  it("return() reaches the app's iterator even while its next() is pending (client gone)", async () => {
    const ac = new AbortController();
    let returned = false;
    const body: AsyncIterable<Chunk> = {
      [Symbol.asyncIterator]: () => {
        let n = 0;
        return {
          next: () => (n++ === 0 ? Promise.resolve({ done: false, value: 'a' }) : new Promise<IteratorResult<Chunk>>(() => undefined)),
          return: async () => {
            returned = true;
            return { done: true, value: undefined };
          },
        };
      },
    };
    setTimeout(() => ac.abort(), 30);
    const r = await run((e, sr) => (sr('200 OK', TEXT), body), { signal: ac.signal });
    expect(r.outcome.state).toBe('client-gone');
    expect(returned).toBe(true);
  });
});

// ---------------------------------------------------------------------------------------

describe('good applications pass through unchanged', () => {
  it('an Array body (the server still computes Content-Length)', async () => {
    const r = await same((e, sr) => (sr('200 OK', TEXT), ['Hello ', 'World']));
    expect(r.head?.headers).toContainEqual(['Content-Length', '11']);
  });

  it('an Array body with its own Content-Length', async () => {
    await same((e, sr) => (sr('200 OK', [...TEXT, ['Content-Length', '6']]), ['abc', enc('def')]));
  });

  it('an Array body of Uint8Arrays and strings, with empty ones', async () => {
    await same((e, sr) => (sr('200 OK', TEXT), [enc('a'), '', new Uint8Array(0), 'ü']));
  });

  it('an empty body with Content-Length: 0', async () => {
    await same((e, sr) => (sr('200 OK', [...TEXT, ['Content-Length', '0']]), []));
  });

  it('a sync generator', async () => {
    const r = await same(function* (e, sr) {
      sr('200 OK', TEXT);
      yield 'a';
      yield enc('b');
      yield 'c';
    });
    expect(r.chunks.length).toBe(3);
  });

  it('an async generator', async () => {
    await same(async function* (e, sr) {
      sr('201 Created', [...TEXT, ['Location', '/x']]);
      for (let i = 0; i < 5; i++) {
        await tick(1);
        yield `chunk ${i}\n`;
      }
    });
  });

  it('a Promise of an Array', async () => {
    await same(async (e, sr) => {
      await tick(1);
      sr('200 OK', TEXT);
      return ['promised'];
    });
  });

  it('a Promise of an async iterable', async () => {
    await same(async (e, sr) => {
      await tick(1);
      sr('200 OK', TEXT);
      return (async function* () {
        yield 'a';
        yield 'b';
      })();
    });
  });

  it('write() usage, with and without a body after it', async () => {
    await same((e, sr) => {
      const w = sr('200 OK', TEXT);
      w('one ');
      w(enc('two '));
      w('');
      return ['three'];
    });
    await same(async (e, sr) => {
      const w = sr('200 OK', [...TEXT, ['Content-Length', '6']]);
      w('abc');
      await tick(1);
      w('def');
      return [];
    });
  });

  it('a class whose instances are iterable (constructed with new)', async () => {
    class App {
      constructor(
        private readonly e: Environ,
        private readonly start: StartResponse,
      ) {}
      *[Symbol.iterator](): Iterator<string> {
        this.start('200 OK', [['Content-Type', 'text/plain; charset=utf-8']]);
        yield `Hello ${this.e.REQUEST_METHOD}!\n`;
      }
    }
    const r = await same(App as unknown as Application);
    expect(r.text).toBe('Hello GET!\n');
  });

  it('a class whose instances are async iterable', async () => {
    class App {
      constructor(
        private readonly e: Environ,
        private readonly start: StartResponse,
      ) {}
      async *[Symbol.asyncIterator](): AsyncIterator<string> {
        await tick(1);
        this.start('200 OK', TEXT);
        yield 'async class';
      }
    }
    const r = await same(App as unknown as Application);
    expect(r.text).toBe('async class');
  });

  it('204 and 304 without Content-Type', async () => {
    await same((e, sr) => (sr('204 No Content', [['X-A', '1']]), []));
    await same((e, sr) => (sr('304 Not Modified', [['ETag', '"x"']]), []));
  });

  it('a redirect', async () => {
    await same((e, sr) => (sr('302 Found', [['Location', '/elsewhere'], ['Content-Type', 'text/html']]), ['<a href="/elsewhere">moved</a>']));
  });

  it('a file_wrapper body, whose filePath stays visible to the server', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'tsgi-validate-'));
    const file = join(dir, 'f.txt');
    writeFileSync(file, 'x'.repeat(100_000));
    let seenPath: unknown = null;
    const app: Application = (e, sr) => {
      sr('200 OK', TEXT);
      return e['tsgi.file_wrapper']!(file, 8192);
    };
    const r = await same(app);
    expect(r.text.length).toBe(100_000);
    const v = validate(app);
    await runApp((e, sr) => {
      const b = v(e, sr) as Body & { filePath?: string };
      seenPath = b.filePath;
      return b;
    });
    expect(seenPath).toBe(file);
  });

  it('validate(validate(app)) changes nothing either', async () => {
    const app: Application = (e, sr) => (sr('200 OK', TEXT), ['a', 'b']);
    const plain = await runApp(app);
    const twice = await runApp(validate(validate(app)));
    expect(twice.head).toEqual(plain.head);
    expect(twice.chunks).toEqual(plain.chunks);
    expect(twice.logs).toEqual([]);
    // and the inner validator still checks
    const bad = await runApp(validate(validate((e, sr) => (sr('200 OK', TEXT), ['a', 1 as unknown as string]))));
    expect500(bad, 'a body chunk must be a Uint8Array or a string, got number 1');
  });

  it('a mounted app sees the same environ values', async () => {
    let seen: Record<string, unknown> = {};
    const app: Application = (e, sr) => {
      seen = { ...e };
      sr('200 OK', TEXT);
      return [`${e.SCRIPT_NAME}|${e.PATH_INFO}|${e.QUERY_STRING}`];
    };
    const r = await same(app, { path: '/a/b', query: 'x=1', environ: { SCRIPT_NAME: '/mnt' }, headers: { 'X-Thing': 'v' } });
    expect(r.text).toBe('/mnt|/a/b|x=1');
    expect(seen.HTTP_X_THING).toBe('v');
  });
});

// ---------------------------------------------------------------------------------------

describe('streaming', () => {
  /** Runs an app through the real gateway with a sink the test can watch mid-response. */
  async function watch(app: Application, onBody: (chunk: Uint8Array, n: number) => void | Promise<void>): Promise<{ outcome: RequestOutcome; received: Uint8Array[] }> {
    const received: Uint8Array[] = [];
    const sink: ResponseSink = {
      head: () => undefined,
      body: (c) => {
        received.push(c);
        return onBody(c, received.length);
      },
      end: () => undefined,
      abort: () => undefined,
    };
    const outcome = await runRequest(
      fixedApp(app),
      {
        environ: { REQUEST_METHOD: 'GET', SCRIPT_NAME: '', PATH_INFO: '/', QUERY_STRING: '', SERVER_NAME: 'localhost', SERVER_PORT: '80', SERVER_PROTOCOL: 'HTTP/1.1', REQUEST_URI: '/' },
        body: null,
        urlScheme: 'http',
        signal: new AbortController().signal,
      },
      sink,
      { log: { log: () => undefined }, multithread: false, multiprocess: false, runOnce: false },
    );
    return { outcome, received };
  }

  it('an async body: each chunk reaches the server before the app makes the next', async () => {
    let release!: () => void;
    const firstSent = new Promise<void>((r) => (release = r));
    const a = enc('a');
    const app = validate(async function* (e, sr) {
      sr('200 OK', TEXT);
      yield a;
      await firstSent; // would deadlock if validate held chunks back
      yield 'b';
    });
    const result = await Promise.race([watch(app, (c, n) => void (n === 1 && release())), tick(2000).then(() => 'stalled' as const)]);
    expect(result).not.toBe('stalled');
    const { outcome, received } = result as Exclude<typeof result, 'stalled'>;
    expect(outcome.state).toBe('complete');
    expect(received[0]).toBe(a); // the very same object, not a copy
  });

  it('a sync body: the server has each chunk before the next is pulled', async () => {
    const seenWhenPulled: number[] = [];
    let received = 0;
    const app = validate(function* (e, sr) {
      sr('200 OK', TEXT);
      for (let i = 0; i < 3; i++) {
        seenWhenPulled.push(received);
        yield `${i}`;
      }
    });
    const { outcome } = await watch(app, () => void received++);
    expect(outcome.state).toBe('complete');
    expect(seenWhenPulled).toEqual([0, 1, 2]);
  });
});
