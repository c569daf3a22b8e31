/**
 * src/transports/fastcgi-server.ts in process, over a real TCP socket, with a
 * hand-written FastCGI client: multiplexing with interleaved STDIN, ABORT_REQUEST,
 * FCGI_KEEP_CONN on and off, GET_VALUES, refused roles, body backpressure, and the bad
 * inputs that must end in one log line and a closed connection.
 */
import { describe, it, expect, beforeAll, afterAll, afterEach } from 'vitest';
import { createHash } from 'node:crypto';
import * as net from 'node:net';
import type { AddressInfo } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { fixedApp } from '../../src/gateway/run';
import type { ErrorLog, LogLevel } from '../../src/gateway/log';
import type { Application, Environ } from '../../src/tsgi';
import { createFastCgiServer, type FastCgiServerOptions } from '../../src/transports/fastcgi-server';
import {
  FCGI_ABORT_REQUEST,
  FCGI_AUTHORIZER,
  FCGI_END_REQUEST,
  FCGI_GET_VALUES,
  FCGI_GET_VALUES_RESULT,
  FCGI_KEEP_CONN,
  FCGI_PARAMS,
  FCGI_RESPONDER,
  FCGI_STDIN,
  FCGI_STDERR,
  FCGI_STDOUT,
  FCGI_UNKNOWN_ROLE,
  FCGI_UNKNOWN_TYPE,
  RecordReader,
  decodeNameValuePairs,
  encodeBeginRequest,
  encodeNameValuePairs,
  encodeParams,
  encodeRecord,
  encodeStream,
  type FcgiRecord,
} from '../../src/transports/protocols/fastcgi';

// ---------------------------------------------------------------------------
// The application

let gate: Promise<void> = Promise.resolve();
let openGate: () => void = () => undefined;
const resetGate = () => {
  gate = new Promise((r) => (openGate = r));
};

const app = async function* (environ: Environ, startResponse: (s: string, h: [string, string][]) => unknown) {
  const path = environ.PATH_INFO;
  const input = environ['tsgi.input'];
  if (path === '/echo') {
    const hash = createHash('sha256');
    let n = 0;
    for await (const c of input) {
      hash.update(c);
      n += c.byteLength;
    }
    startResponse('200 OK', [['Content-Type', 'text/plain']]);
    yield `${environ.REQUEST_METHOD} ${n} ${hash.digest('hex')} ${environ.CONTENT_LENGTH ?? '-'}`;
    return;
  }
  if (path === '/gated-echo') {
    await gate;
    let n = 0;
    for await (const c of input) n += c.byteLength;
    startResponse('200 OK', [['Content-Type', 'text/plain']]);
    yield String(n);
    return;
  }
  if (path === '/read-error') {
    try {
      await input.read();
      startResponse('200 OK', []);
      yield 'EOF?!';
    } catch (e) {
      seen.push(`read failed: ${(e as Error).name}: ${(e as Error).message}`);
      throw e;
    }
    return;
  }
  if (path === '/environ') {
    startResponse('200 OK', [['Content-Type', 'application/json']]);
    const out: Record<string, string> = {};
    for (const [k, v] of Object.entries(environ)) if (typeof v === 'string') out[k] = v;
    yield JSON.stringify(out);
    return;
  }
  if (path === '/hang') {
    startResponse('200 OK', [['Content-Type', 'text/plain']]);
    yield 'first\n';
    const signal = environ['tsgi.signal'];
    await new Promise<void>((resolve) => signal.addEventListener('abort', () => resolve(), { once: true }));
    seen.push('hang saw abort');
    return;
  }
  if (path === '/throws-mid-stream') {
    startResponse('200 OK', [['Content-Type', 'text/plain']]);
    yield 'partial';
    throw new Error('boom after the head');
  }
  if (path === '/throws') throw new Error('boom before the head');
  if (path === '/download') {
    const total = Number(new URLSearchParams(environ.QUERY_STRING).get('n'));
    startResponse('200 OK', [['Content-Length', String(total)]]);
    const chunk = Buffer.alloc(65536, 0x61);
    for (let sent = 0; sent < total; sent += chunk.length) yield chunk.subarray(0, Math.min(chunk.length, total - sent));
    return;
  }
  startResponse('404 Not Found', [['Content-Type', 'text/plain']]);
  yield 'not found';
} as unknown as Application;

const seen: string[] = [];
const logs: Array<[LogLevel, string]> = [];
const log: ErrorLog = { log: (level, message) => logs.push([level, message]) };

async function waitUntil(what: string, cond: () => boolean, ms = 5000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}; log:\n${logs.map((l) => l.join(' ')).join('\n')}`);
    await sleep(5);
  }
}
const logged = (re: RegExp) => waitUntil(`a log line ${re}`, () => logs.some(([, m]) => re.test(m)));

// ---------------------------------------------------------------------------
// The client

class Client {
  readonly records: FcgiRecord[] = [];
  private readonly reader = new RecordReader();
  ended = false;
  closed = false;

  constructor(readonly socket: net.Socket) {
    socket.on('data', (d: Buffer) => this.records.push(...this.reader.feed(d)));
    socket.on('end', () => (this.ended = true));
    socket.on('close', () => (this.closed = true));
    socket.on('error', () => undefined);
  }

  static connect(port: number): Promise<Client> {
    return new Promise((resolve, reject) => {
      const s = net.connect(port, '127.0.0.1', () => resolve(new Client(s)));
      s.once('error', reject);
    });
  }

  send(...bufs: Uint8Array[]): void {
    for (const b of bufs) this.socket.write(b);
  }

  /** Sends a whole request. */
  request(id: number, path: string, opts: { body?: Uint8Array; keepConn?: boolean; params?: Array<[string, string]>; method?: string } = {}): void {
    const body = opts.body ?? new Uint8Array(0);
    const params: Array<[string, string]> = [
      ['REQUEST_METHOD', opts.method ?? (opts.body ? 'POST' : 'GET')],
      ['SCRIPT_NAME', ''],
      ['PATH_INFO', path.split('?')[0]],
      ['QUERY_STRING', path.split('?')[1] ?? ''],
      ['REQUEST_URI', path],
      ['SERVER_NAME', 'test'],
      ['SERVER_PORT', '80'],
      ['SERVER_PROTOCOL', 'HTTP/1.1'],
      ...(opts.body ? ([['CONTENT_LENGTH', String(body.byteLength)]] as Array<[string, string]>) : []),
      ...(opts.params ?? []),
    ];
    this.send(
      encodeBeginRequest(id, FCGI_RESPONDER, opts.keepConn === false ? 0 : FCGI_KEEP_CONN),
      encodeParams(id, params),
      encodeStream(FCGI_STDIN, id, body),
      encodeRecord(FCGI_STDIN, id),
    );
  }

  async endOf(id: number, ms = 5000): Promise<FcgiRecord> {
    await waitUntil(`END_REQUEST for ${id}`, () => this.records.some((r) => r.type === FCGI_END_REQUEST && r.requestId === id), ms);
    return this.records.find((r) => r.type === FCGI_END_REQUEST && r.requestId === id)!;
  }

  /** The STDOUT of a request, parsed: status, headers, body; plus END_REQUEST's fields. */
  async response(id: number, ms = 5000) {
    const end = await this.endOf(id, ms);
    const out = Buffer.concat(this.records.filter((r) => r.type === FCGI_STDOUT && r.requestId === id).map((r) => r.content));
    const sep = out.indexOf('\r\n\r\n');
    const head = out.subarray(0, sep).toString('latin1').split('\r\n');
    const emptyStdout = this.records.some((r) => r.type === FCGI_STDOUT && r.requestId === id && r.content.byteLength === 0);
    return {
      status: head[0],
      headers: head.slice(1),
      body: out.subarray(sep + 4).toString('utf8'),
      appStatus: end.content.readUInt32BE(0),
      protocolStatus: end.content[4],
      emptyStdout,
    };
  }

  waitClosed(ms = 5000): Promise<void> {
    return waitUntil('the server to close the connection', () => this.closed || this.ended, ms);
  }
}

// ---------------------------------------------------------------------------

let server: net.Server;
let port: number;
const clients: Client[] = [];
let options: FastCgiServerOptions;

const serverSockets = new Set<net.Socket>();

async function start(extra: Partial<FastCgiServerOptions> = {}): Promise<void> {
  if (server) {
    for (const c of clients.splice(0)) c.socket.destroy();
    for (const s of serverSockets) s.destroy();
    await new Promise((r) => server.close(r));
  }
  options = { provider: fixedApp(app, 'test-app'), log, ...extra };
  server = createFastCgiServer(options);
  server.on('connection', (s) => {
    serverSockets.add(s);
    s.on('close', () => serverSockets.delete(s));
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  port = (server.address() as AddressInfo).port;
}
const connect = async () => {
  const c = await Client.connect(port);
  clients.push(c);
  return c;
};

beforeAll(() => start());
afterEach(() => {
  for (const c of clients.splice(0)) c.socket.destroy();
});
afterAll(async () => {
  for (const s of serverSockets) s.destroy();
  await new Promise((r) => server.close(r));
});

describe('FastCGI server: requests', () => {
  it('answers a request: CGI head on STDOUT, empty STDOUT, END_REQUEST(0, REQUEST_COMPLETE)', async () => {
    const c = await connect();
    c.request(1, '/echo', { body: Buffer.from('hello') });
    const r = await c.response(1);
    expect(r.status).toBe('Status: 200 OK');
    expect(r.headers).toContain('Content-Type: text/plain');
    expect(r.body).toBe(`POST 5 ${createHash('sha256').update('hello').digest('hex')} 5`);
    expect([r.appStatus, r.protocolStatus, r.emptyStdout]).toEqual([0, 0, true]);
  });

  it('passes the PARAMS through as the environ (repeated HTTP_* joined)', async () => {
    const c = await connect();
    c.request(1, '/environ?a=1', {
      params: [
        ['HTTP_ACCEPT', 'a'],
        ['HTTP_ACCEPT', 'b'],
        ['HTTP_COOKIE', 'x=1'],
        ['HTTP_COOKIE', 'y=2'],
        ['HTTPS', 'on'],
        ['HTTP_PROXY', 'evil'],
      ],
    });
    const env = JSON.parse((await c.response(1)).body) as Record<string, string>;
    expect(env).toMatchObject({ PATH_INFO: '/environ', QUERY_STRING: 'a=1', HTTP_ACCEPT: 'a, b', HTTP_COOKIE: 'x=1; y=2', 'tsgi.url_scheme': 'https' });
    expect(env.HTTP_PROXY).toBeUndefined();
  });

  it('multiplexes two requests on one connection with interleaved STDIN', async () => {
    const c = await connect();
    const a = Buffer.alloc(200_000, 1);
    const b = Buffer.alloc(150_000, 2);
    const params = (id: number, body: Buffer): Array<[string, string]> => [
      ['REQUEST_METHOD', 'POST'],
      ['PATH_INFO', '/echo'],
      ['CONTENT_LENGTH', String(body.length)],
      ['X_ID', String(id)],
    ];
    c.send(encodeBeginRequest(1, FCGI_RESPONDER, FCGI_KEEP_CONN), encodeBeginRequest(2, FCGI_RESPONDER, FCGI_KEEP_CONN));
    c.send(encodeParams(2, params(2, b)), encodeParams(1, params(1, a)));
    for (let off = 0; off < 200_000; off += 50_000) {
      c.send(encodeStream(FCGI_STDIN, 1, a.subarray(off, off + 50_000)));
      if (off < 150_000) c.send(encodeStream(FCGI_STDIN, 2, b.subarray(off, off + 50_000)));
      await sleep(5);
    }
    c.send(encodeRecord(FCGI_STDIN, 2));
    const r2 = await c.response(2);
    expect(r2.body).toBe(`POST 150000 ${createHash('sha256').update(b).digest('hex')} 150000`);
    c.send(encodeRecord(FCGI_STDIN, 1));
    const r1 = await c.response(1);
    expect(r1.body).toBe(`POST 200000 ${createHash('sha256').update(a).digest('hex')} 200000`);
    // Both answered on one open connection; it is reusable.
    c.records.length = 0;
    c.request(1, '/echo', { body: Buffer.from('again') });
    expect((await c.response(1)).body).toMatch(/^POST 5 /);
    expect(c.closed).toBe(false);
  });

  it('KEEP_CONN on: sequential requests on one connection; off: closed after the response', async () => {
    const c = await connect();
    c.request(1, '/echo');
    await c.response(1);
    c.records.length = 0;
    c.request(1, '/echo');
    expect((await c.response(1)).body).toMatch(/^GET 0 /);
    await sleep(50);
    expect(c.ended).toBe(false);

    const d = await connect();
    d.request(7, '/echo', { keepConn: false });
    expect((await d.response(7)).status).toBe('Status: 200 OK');
    await d.waitClosed();
  });

  it('ABORT_REQUEST fires the signal (client-gone) and gets END_REQUEST; the connection stays', async () => {
    const c = await connect();
    c.request(3, '/hang');
    await waitUntil('first chunk', () => c.records.some((r) => r.type === FCGI_STDOUT && r.requestId === 3 && r.content.includes('first')));
    c.send(encodeRecord(FCGI_ABORT_REQUEST, 3));
    const end = await c.endOf(3);
    expect(end.content.readUInt32BE(0)).toBe(1);
    expect(end.content[4]).toBe(0);
    await waitUntil('the app to see the abort', () => seen.includes('hang saw abort'));
    await logged(/request aborted: GET \/hang .*FCGI_ABORT_REQUEST/);
    c.request(4, '/echo');
    expect((await c.response(4)).status).toBe('Status: 200 OK');
  });

  it('ABORT_REQUEST before the PARAMS end: END_REQUEST at once', async () => {
    const c = await connect();
    c.send(encodeBeginRequest(5, FCGI_RESPONDER, FCGI_KEEP_CONN), encodeRecord(FCGI_ABORT_REQUEST, 5));
    expect((await c.endOf(5)).content.readUInt32BE(0)).toBe(1);
    // Late records for the finished id are ignored, the id can be reused.
    c.send(encodeRecord(FCGI_PARAMS, 5));
    c.request(5, '/echo');
    await waitUntil('a second END_REQUEST', () => c.records.filter((r) => r.type === FCGI_END_REQUEST).length === 2);
  });

  it('GET_VALUES is answered; an unknown management type gets UNKNOWN_TYPE', async () => {
    const c = await connect();
    c.send(encodeRecord(FCGI_GET_VALUES, 0, encodeNameValuePairs([['FCGI_MPXS_CONNS', ''], ['FCGI_MAX_REQS', ''], ['FCGI_MAX_CONNS', ''], ['toString', ''], ['NOPE', '']])));
    c.send(encodeRecord(42, 0, Buffer.from('x')));
    await waitUntil('UNKNOWN_TYPE', () => c.records.some((r) => r.type === FCGI_UNKNOWN_TYPE));
    const gv = c.records.find((r) => r.type === FCGI_GET_VALUES_RESULT)!;
    expect(gv.requestId).toBe(0);
    expect(decodeNameValuePairs(gv.content)).toEqual([
      ['FCGI_MPXS_CONNS', '1'],
      ['FCGI_MAX_REQS', '100'],
      ['FCGI_MAX_CONNS', '1000'],
    ]);
    expect(c.records.find((r) => r.type === FCGI_UNKNOWN_TYPE)!.content[0]).toBe(42);
  });

  it('refuses a role other than RESPONDER with END_REQUEST UNKNOWN_ROLE', async () => {
    const c = await connect();
    c.send(encodeBeginRequest(2, FCGI_AUTHORIZER, FCGI_KEEP_CONN), encodeParams(2, []), encodeRecord(FCGI_STDIN, 2));
    const end = await c.endOf(2);
    expect(end.content[4]).toBe(FCGI_UNKNOWN_ROLE);
    await logged(/request 2 .* refused: role AUTHORIZER is not supported/);
  });

  it('an app error before the head: a 500 and a log line; after the head: closed without END_REQUEST', async () => {
    const c = await connect();
    c.request(1, '/throws');
    const r = await c.response(1);
    expect(r.status).toBe('Status: 500 Internal Server Error');
    await logged(/application error before the response started, 500 sent: GET \/throws/);

    const d = await connect();
    d.request(1, '/throws-mid-stream');
    await d.waitClosed();
    expect(d.records.some((x) => x.type === FCGI_END_REQUEST)).toBe(false);
    expect(Buffer.concat(d.records.filter((x) => x.type === FCGI_STDOUT).map((x) => x.content)).toString()).toContain('partial');
    // The abort marker: a STDERR note, then a record of type 0 that web servers reject.
    const tail = d.records.slice(-2);
    expect(tail.map((x) => x.type)).toEqual([FCGI_STDERR, 0]);
    expect(tail[0].content.toString()).toMatch(/the response is incomplete/);
    await logged(/response aborted; closing the connection without END_REQUEST/);
  });

  it('a client that disconnects mid-response: the app sees its signal', async () => {
    seen.length = 0;
    const c = await connect();
    c.request(1, '/hang');
    await waitUntil('first chunk', () => c.records.some((r) => r.type === FCGI_STDOUT && r.content.includes('first')));
    c.socket.destroy();
    await waitUntil('the app to see the abort', () => seen.includes('hang saw abort'));
    await logged(/request aborted: GET \/hang .*closed the FastCGI connection/);
  });

  it('body backpressure: a connection is paused while the app does not read', async () => {
    await start({ bodyHighWaterMark: 64 * 1024 });
    try {
      resetGate();
      let serverSocket: net.Socket | null = null;
      server.once('connection', (s) => (serverSocket = s));
      const c = await connect();
      const body = Buffer.alloc(8 * 1024 * 1024, 7);
      c.request(1, '/gated-echo', { body });
      await sleep(300);
      const read = (serverSocket as net.Socket | null)?.bytesRead ?? 0;
      expect(read).toBeGreaterThan(64 * 1024);
      expect(read).toBeLessThan(1024 * 1024);
      openGate();
      expect((await c.response(1, 10_000)).body).toBe(String(body.length));
    } finally {
      await start();
    }
  });
});

describe('FastCGI server: bad input → one log line, connection closed', () => {
  const badCases: Array<[string, (c: Client) => void, RegExp]> = [
    ['a bad version', (c) => c.send(Buffer.from('GET / HTTP/1.1\r\n\r\n')), /closed: bad FastCGI version 71 in the record header at byte 0/],
    [
      'a request id reused',
      (c) => c.send(encodeBeginRequest(1, FCGI_RESPONDER, FCGI_KEEP_CONN), encodeBeginRequest(1, FCGI_RESPONDER, FCGI_KEEP_CONN)),
      /closed: request id reused: BEGIN_REQUEST for request 1, which is still active/,
    ],
    [
      'PARAMS over the limit',
      (c) => c.send(encodeBeginRequest(1), encodeStream(FCGI_PARAMS, 1, encodeNameValuePairs([['X', 'y'.repeat(70_000)]]))),
      /closed: PARAMS of request 1 exceed the limit of 65536 bytes/,
    ],
    [
      'a body longer than declared',
      (c) => c.request(1, '/gated-echo', { body: Buffer.from('abc'), params: [['CONTENT_LENGTH', '2']] }),
      /closed: request 1: STDIN carries more than CONTENT_LENGTH \(2\) bytes/,
    ],
    [
      'a truncated record, then end of stream',
      (c) => {
        c.send(encodeBeginRequest(1).subarray(0, 12));
        c.socket.end();
      },
      /closed: the stream ended inside a BEGIN_REQUEST record for request 1 \(4 of 8 content bytes\)/,
    ],
    [
      'a STDOUT record sent to the application',
      (c) => c.send(encodeRecord(FCGI_STDOUT, 1, Buffer.from('x'))),
      /closed: STDOUT record for request 1: that record goes from the application/,
    ],
  ];
  for (const [name, act, re] of badCases) {
    it(name, async () => {
      resetGate();
      const c = await connect();
      const before = logs.length;
      act(c);
      await c.waitClosed();
      await logged(re);
      expect(logs.slice(before).filter(([, m]) => re.test(m))).toHaveLength(1);
      openGate();
    });
  }

  it('a body shorter than declared: the app read fails (never EOF), connection closed', async () => {
    seen.length = 0;
    const c = await connect();
    c.send(
      encodeBeginRequest(1, FCGI_RESPONDER, FCGI_KEEP_CONN),
      encodeParams(1, [
        ['REQUEST_METHOD', 'POST'],
        ['PATH_INFO', '/read-error'],
        ['CONTENT_LENGTH', '10'],
      ]),
      encodeStream(FCGI_STDIN, 1, Buffer.from('abc')),
      encodeRecord(FCGI_STDIN, 1),
    );
    await c.waitClosed();
    await logged(/closed: request 1: STDIN ended after 3 bytes, but CONTENT_LENGTH is 10/);
    await waitUntil('the read to fail', () => seen.length > 0);
    expect(seen[0]).toMatch(/^read failed: TsgiBodyReadError/);
  });

  it('a connection closed mid-body: the read fails, never EOF', async () => {
    seen.length = 0;
    const c = await connect();
    c.send(
      encodeBeginRequest(1, FCGI_RESPONDER, FCGI_KEEP_CONN),
      encodeParams(1, [
        ['REQUEST_METHOD', 'POST'],
        ['PATH_INFO', '/read-error'],
      ]),
      encodeStream(FCGI_STDIN, 1, Buffer.from('abc')),
    );
    await sleep(50);
    c.socket.end();
    await logged(/closed: the connection closed before the STDIN of request 1 ended \(3 bytes received\)/);
    await waitUntil('the read to fail', () => seen.length > 0);
    expect(seen[0]).toMatch(/^read failed: TsgiBodyReadError/);
  });

  it('timeouts: an idle connection, an incomplete head, a stalled body, a peer that stops reading', async () => {
    await start({ timeoutMs: 300 });
    try {
      const idle = await connect();
      const head = await connect();
      head.send(encodeBeginRequest(1), encodeRecord(FCGI_PARAMS, 1, encodeNameValuePairs([['A', 'b']])));
      const body = await connect();
      body.send(
        encodeBeginRequest(1),
        encodeParams(1, [
          ['PATH_INFO', '/echo'],
          ['REQUEST_METHOD', 'POST'],
          ['CONTENT_LENGTH', '100'],
        ]),
        encodeStream(FCGI_STDIN, 1, Buffer.from('x')),
      );
      await Promise.all([idle.waitClosed(2000), head.waitClosed(2000), body.waitClosed(2000)]);
      await logged(/closed: no complete request head within 0.3 s \(the connection closed before the PARAMS of request 1 ended\)/);
      await logged(/closed: request 1: no STDIN for 0.3 s while the application waits for its body/);

      const reader = await connect();
      reader.socket.pause();
      reader.request(1, '/download?n=200000000');
      await reader.waitClosed(5000).catch(() => undefined);
      await logged(/closed: the web server stopped reading the response of request 1 \(no progress for 0.3 s\)/);
      await logged(/request aborted: GET \/download/);
    } finally {
      await start();
    }
  });

  it('never crashes on garbage from many connections', async () => {
    const before = logs.length;
    for (let i = 0; i < 20; i++) {
      const c = await connect();
      const junk = Buffer.concat([encodeBeginRequest(1 + i, FCGI_RESPONDER, FCGI_KEEP_CONN), Buffer.from(Array.from({ length: 64 }, (_, k) => (k * 37 + i) & 0xff))]);
      c.send(junk);
      c.socket.end();
    }
    await waitUntil('20 log lines', () => logs.slice(before).filter(([, m]) => /FastCGI connection from .* closed:/.test(m)).length >= 20);
    // The server still works.
    const c = await connect();
    c.request(1, '/echo');
    expect((await c.response(1)).status).toBe('Status: 200 OK');
  });
});
