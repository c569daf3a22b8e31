/**
 * The daemon protocol codec (src/transports/protocols/tsgi-wire.ts, docs/protocol.md):
 * every encoder round-trips through the parser and its decoder, and every rule of §2, §3
 * and §6 has a rejection with a message naming the frame and the problem.
 */
import { describe, expect, it } from 'vitest';
import {
  ABORT,
  BODY,
  BODY_END,
  D_BODY,
  D_END,
  D_ERROR,
  D_GOAWAY,
  D_HEAD,
  D_HELLO,
  D_STATUS,
  ErrorCode,
  FLAG_CLOSE,
  FLAG_HAS_BODY,
  FLAG_HTTPS,
  FLAG_RELOAD,
  HELLO,
  LIMITS,
  MAX_BODY_FRAME,
  REQUEST,
  STATUS,
  WireParser,
  WireProtocolError,
  decodeAbort,
  decodeClientHello,
  decodeDaemonHello,
  decodeError,
  decodeHead,
  decodeRequest,
  decodeStatus,
  encodeAbort,
  encodeBody,
  encodeBodyEnd,
  encodeClientHello,
  encodeDaemonHello,
  encodeEnd,
  encodeError,
  encodeFrame,
  encodeGoaway,
  encodeHead,
  encodeRequest,
  encodeStatus,
  encodeStatusRequest,
  type RawFrame,
  type WireParserOptions,
} from '../../src/transports/protocols/tsgi-wire';
import { ProtocolError } from '../../src/transports/protocols/protocol-error';

const SECRET = Buffer.alloc(32, 7);
const hello = () => encodeClientHello(SECRET);
const daemonHello = () => encodeDaemonHello(4242);

function parse(bytes: Uint8Array, from: WireParserOptions['from'], options: Partial<WireParserOptions> = {}): RawFrame[] {
  return new WireParser({ from, ...options }).feed(bytes);
}

/** The message of the WireProtocolError `fn` throws (fails the test when it throws anything else). */
function rejection(fn: () => unknown): WireProtocolError {
  try {
    fn();
  } catch (e) {
    expect(e).toBeInstanceOf(WireProtocolError);
    expect(e).toBeInstanceOf(ProtocolError);
    return e as WireProtocolError;
  }
  throw new Error('expected a WireProtocolError, nothing was thrown');
}

function header(type: number, flags: number, reserved: number, length: number): Buffer {
  const h = Buffer.alloc(8);
  h[0] = type;
  h[1] = flags;
  h.writeUInt16BE(reserved, 2);
  h.writeUInt32BE(length, 4);
  return h;
}

describe('round trips', () => {
  it('client HELLO and daemon HELLO', () => {
    const [f] = parse(hello(), 'client');
    expect(f.type).toBe(HELLO);
    expect(decodeClientHello(f.payload)).toEqual({ version: 1, secret: SECRET });
    expect(decodeClientHello(parse(encodeClientHello(SECRET, 9), 'client')[0].payload).version).toBe(9);
    const [d] = parse(encodeDaemonHello(0xfffffffe), 'daemon');
    expect(d.type).toBe(D_HELLO);
    expect(decodeDaemonHello(d.payload)).toEqual({ version: 1, pid: 0xfffffffe });
  });

  it('REQUEST: every field, the flags, request_start_us as bigint and number', () => {
    const start = 1_795_000_000_123_456n;
    const bytes = encodeRequest({
      requestStartUs: start,
      script: '/srv/app/app.tsgi',
      callable: 'handler',
      applicationGroup: 'host|/app',
      processGroup: 'app',
      vars: [
        ['REQUEST_METHOD', 'POST'],
        ['PATH_INFO', '/é'],
        ['EMPTY', ''],
      ],
      hasBody: true,
      reload: true,
      https: true,
    });
    const frames = parse(Buffer.concat([hello(), bytes]), 'client');
    expect(frames.map((f) => f.type)).toEqual([HELLO, REQUEST]);
    const f = frames[1];
    expect(f.flags).toBe(FLAG_HAS_BODY | FLAG_RELOAD | FLAG_HTTPS);
    const r = decodeRequest(f.payload, f.flags);
    expect(r).toMatchObject({
      requestStartUs: start,
      requestStartUsNumber: 1_795_000_000_123_456,
      script: '/srv/app/app.tsgi',
      callable: 'handler',
      applicationGroup: 'host|/app',
      processGroup: 'app',
      count: 3,
      hasBody: true,
      reload: true,
      https: true,
    });
    expect({ ...r.vars }).toEqual({ REQUEST_METHOD: 'POST', PATH_INFO: '/é', EMPTY: '' });
    expect(Object.getPrototypeOf(r.vars)).toBeNull();
    const plain = decodeRequest(encodeRequest({ script: '/a', vars: {} }).subarray(8));
    expect(plain).toMatchObject({ hasBody: false, reload: false, https: false, callable: 'application', count: 0 });
    // The default start time is now, in µs.
    expect(Math.abs(plain.requestStartUsNumber / 1000 - Date.now())).toBeLessThan(60_000);
  });

  it('REQUEST vars: invalid UTF-8 becomes U+FFFD; a repeated key keeps its last value; __proto__ is an ordinary key', () => {
    const w: Buffer[] = [];
    const str = (b: Buffer) => {
      const l = Buffer.alloc(4);
      l.writeUInt32BE(b.length);
      w.push(l, b);
    };
    w.push(Buffer.alloc(8));
    for (const s of ['/s', 'application', '', '']) str(Buffer.from(s));
    const count = Buffer.alloc(4);
    count.writeUInt32BE(4);
    w.push(count);
    str(Buffer.from('PATH_INFO'));
    str(Buffer.from([0x2f, 0xff, 0xc3, 0x28]));
    str(Buffer.from('X'));
    str(Buffer.from('1'));
    str(Buffer.from('X'));
    str(Buffer.from('2'));
    str(Buffer.from('__proto__'));
    str(Buffer.from('p'));
    const r = decodeRequest(Buffer.concat(w));
    expect(r.vars.PATH_INFO).toBe('/\ufffd\ufffd(');
    expect(r.vars.X).toBe('2');
    expect(Object.keys(r.vars)).toEqual(['PATH_INFO', 'X', '__proto__']);
    expect(r.vars['__proto__']).toBe('p');
    expect(r.count).toBe(4);
  });

  it('BODY (split at 1 MiB), BODY_END, ABORT, STATUS', () => {
    const data = Buffer.alloc(MAX_BODY_FRAME * 2 + 5, 0x61);
    const bytes = Buffer.concat([hello(), encodeRequest({ script: '/s', vars: {}, hasBody: true }), encodeBody(data), encodeBodyEnd()]);
    const frames = parse(bytes, 'client');
    expect(frames.map((f) => [f.type, f.payload.length])).toEqual([
      [HELLO, 40],
      [REQUEST, frames[1].payload.length],
      [BODY, MAX_BODY_FRAME],
      [BODY, MAX_BODY_FRAME],
      [BODY, 5],
      [BODY_END, 0],
    ]);
    expect(Buffer.concat(frames.slice(2, 5).map((f) => f.payload)).equals(data)).toBe(true);
    expect(encodeBody(Buffer.alloc(0)).length).toBe(0);
    const aborted = parse(Buffer.concat([hello(), encodeRequest({ script: '/s', vars: {}, hasBody: true }), encodeAbort('client gone ✓'), encodeStatusRequest()]), 'client');
    expect(aborted.map((f) => f.type)).toEqual([HELLO, REQUEST, ABORT, STATUS]);
    expect(decodeAbort(aborted[2].payload)).toBe('client gone ✓');
  });

  it('HEAD, BODY, END (with and without CLOSE), ERROR, GOAWAY, STATUS', () => {
    const bytes = Buffer.concat([
      daemonHello(),
      encodeHead(201, 'Créé', [
        ['Content-Type', 'text/plain'],
        ['X-Latin', 'café'],
        ['Set-Cookie', 'a=1'],
        ['Set-Cookie', 'b=2'],
      ]),
      encodeBody(Buffer.from('hi'), D_BODY),
      encodeEnd(),
      encodeGoaway(),
      encodeStatus('{"pid":1}'),
      encodeError(ErrorCode.QUEUE_TIMEOUT, 'waited ✓'),
      encodeHead(200, 'OK', []),
      encodeEnd(true),
    ]);
    const frames = parse(bytes, 'daemon');
    expect(frames.map((f) => f.type)).toEqual([D_HELLO, D_HEAD, D_BODY, D_END, D_GOAWAY, D_STATUS, D_ERROR, D_HEAD, D_END]);
    expect(decodeHead(frames[1].payload)).toEqual({
      status: 201,
      reason: 'Créé',
      headers: [
        ['Content-Type', 'text/plain'],
        ['X-Latin', 'café'],
        ['Set-Cookie', 'a=1'],
        ['Set-Cookie', 'b=2'],
      ],
    });
    expect(frames[2].payload.toString()).toBe('hi');
    expect(frames[3].flags).toBe(0);
    expect(decodeStatus(frames[5].payload)).toEqual({ pid: 1 });
    expect(decodeError(frames[6].payload)).toEqual({ code: 3, name: 'QUEUE_TIMEOUT', message: 'waited ✓' });
    expect(frames[6].flags).toBe(0);
    expect(frames[8].flags).toBe(FLAG_CLOSE);
    expect(encodeError(ErrorCode.PROTOCOL, 'x', true)[1]).toBe(FLAG_CLOSE);
  });

  it('long messages are cut to the limit on a character boundary', () => {
    const e = encodeError(ErrorCode.APP, 'é'.repeat(3000));
    expect(e.length - 8).toBeLessThanOrEqual(LIMITS[D_ERROR]);
    expect(decodeError(parse(Buffer.concat([daemonHello(), e]), 'daemon')[1].payload).message).toBe('é'.repeat(2048));
    const a = encodeAbort('€'.repeat(1000));
    expect(a.length - 8).toBe(1023);
    expect(decodeAbort(a.subarray(8))).toBe('€'.repeat(341));
  });

  it('encoders refuse what the protocol cannot carry', () => {
    expect(() => encodeClientHello(Buffer.alloc(31))).toThrow(RangeError);
    expect(() => encodeHead(99, 'x', [])).toThrow(/100–599/);
    expect(() => encodeHead(600, 'x', [])).toThrow(RangeError);
    expect(() => encodeError(42, 'x')).toThrow(/unknown error code 42/);
    expect(() => encodeFrame(0x42)).toThrow(/unknown frame type/);
    expect(() => encodeRequest({ script: '/s', vars: { BIG: 'x'.repeat(2 * 1024 * 1024) } })).toThrow(/over the limit/);
    expect(() => encodeStatus('x'.repeat(1024 * 1024 + 1))).toThrow(RangeError);
  });
});

describe('exact consumption', () => {
  it('consumes exactly 8 + length per frame, whatever the split; reports what a truncation cuts', () => {
    const two = Buffer.concat([hello(), encodeStatusRequest()]);
    const third = encodeRequest({ script: '/s', vars: { A: 'b' } });
    const p = new WireParser({ from: 'client' });
    expect(p.feed(Buffer.concat([two, third.subarray(0, 5)])).length).toBe(2);
    expect(p.consumed).toBe(two.length + 5);
    expect(p.atBoundary).toBe(false);
    expect(p.describeTruncation()).toMatch(/inside a frame header \(5 of 8 bytes\)/);
    expect(p.feed(third.subarray(5, 12))).toEqual([]);
    expect(p.describeTruncation()).toMatch(/inside a REQUEST \(0x02\) frame \(4 of \d+ payload bytes\)/);
    const [f] = p.feed(third.subarray(12));
    expect(f.type).toBe(REQUEST);
    expect(p.atBoundary).toBe(true);
    expect(p.describeTruncation()).toBe('');
    expect(p.consumed).toBe(two.length + third.length);
  });

  it('byte-at-a-time gives the same frames as all at once', () => {
    const bytes = Buffer.concat([hello(), encodeRequest({ script: '/s', vars: { A: 'b' }, hasBody: true }), encodeBody(Buffer.from('hello')), encodeBodyEnd(), encodeStatusRequest()]);
    const whole = parse(bytes, 'client');
    const p = new WireParser({ from: 'client' });
    const split: RawFrame[] = [];
    for (const b of bytes) split.push(...p.feed(Buffer.from([b])));
    expect(split.map((f) => [f.type, f.flags, f.payload.toString('hex')])).toEqual(whole.map((f) => [f.type, f.flags, f.payload.toString('hex')]));
  });

  it('frames handed over before a bad one in the same chunk are not lost (read())', () => {
    const p = new WireParser({ from: 'client' });
    const got: number[] = [];
    expect(() => p.read(Buffer.concat([hello(), encodeStatusRequest(), Buffer.from([0x42, 0, 0, 0, 0, 0, 0, 0])]), (f) => got.push(f.type))).toThrow(WireProtocolError);
    expect(got).toEqual([HELLO, STATUS]);
  });

  it('a parser that failed keeps failing with the same error', () => {
    const p = new WireParser({ from: 'client' });
    const e = rejection(() => p.feed(Buffer.from([0x42, 0, 0, 0, 0, 0, 0, 0])));
    expect(rejection(() => p.feed(hello()))).toBe(e);
  });
});

describe('rejections: header', () => {
  const afterHello = (b: Buffer) => Buffer.concat([hello(), b]);

  it('an unknown type, naming it and its offset; HTTP gets a hint', () => {
    expect(rejection(() => parse(afterHello(header(0x09, 0, 0, 0)), 'client')).message).toBe('tsgi-wire: unknown frame type 0x09 at byte 48');
    expect(rejection(() => parse(Buffer.from('GET / HTTP/1.1\r\n'), 'client')).message).toMatch(/unknown frame type 0x47 \("G"\) at byte 0 \(this is HTTP/);
  });

  it('a frame of the other direction', () => {
    expect(rejection(() => parse(afterHello(encodeEnd()), 'client')).message).toMatch(/END \(0x84\) frame at byte 48 goes from the daemon to the client/);
    expect(rejection(() => parse(Buffer.concat([daemonHello(), encodeBodyEnd()]), 'daemon')).message).toMatch(/BODY_END \(0x04\) frame at byte 20 goes from the client to the daemon/);
  });

  it('flags not defined for the type', () => {
    expect(rejection(() => parse(afterHello(header(STATUS, 1, 0, 0)), 'client')).message).toMatch(/STATUS \(0x06\) frame at byte 48 has undefined flag bits set \(flags 0x01, allowed 0x00\)/);
    expect(rejection(() => parse(afterHello(header(REQUEST, 0x08, 0, 30)), 'client')).message).toMatch(/REQUEST .* undefined flag bits .*flags 0x08, allowed 0x07/);
    expect(rejection(() => parse(Buffer.concat([daemonHello(), header(D_END, 2, 0, 0)]), 'daemon')).message).toMatch(/END .* undefined flag bits/);
    expect(rejection(() => parse(header(HELLO, 1, 0, 40), 'client')).message).toMatch(/HELLO .* undefined flag bits/);
  });

  it('a non-zero reserved field', () => {
    expect(rejection(() => parse(afterHello(header(BODY_END, 0, 1, 0)), 'client')).message).toMatch(/BODY_END .* non-zero reserved field \(1\)/);
  });

  it('over the limit, checked from the header before the payload is buffered', () => {
    for (const [type, limit] of [
      [REQUEST, 2 * 1024 * 1024],
      [BODY, 1024 * 1024],
      [ABORT, 1024],
    ] as const) {
      const p = new WireParser({ from: 'client', checkOrder: false });
      const e = rejection(() => p.feed(header(type, 0, 0, limit + 1)));
      expect(e.message).toMatch(new RegExp(`${limit + 1}-byte payload, over the limit of ${limit}`));
      expect(p.bufferedBytes).toBe(0);
    }
    for (const type of [D_HEAD, D_BODY, D_STATUS]) {
      expect(rejection(() => parse(header(type, 0, 0, 0x80000000), 'daemon', { checkOrder: false })).message).toMatch(/over the limit of 1048576/);
    }
    expect(rejection(() => parse(header(D_ERROR, 0, 0, 4101), 'daemon')).message).toMatch(/over the limit of 4100/);
  });

  it('lowered limits', () => {
    const p = new WireParser({ from: 'client', checkOrder: false, limits: { [REQUEST]: 100, [BODY]: 1e12 } });
    expect(rejection(() => p.feed(header(REQUEST, 0, 0, 101))).message).toMatch(/over the limit of 100/);
    const q = new WireParser({ from: 'client', checkOrder: false, limits: { [BODY]: 1e12 } });
    expect(rejection(() => q.feed(header(BODY, 0, 0, 1024 * 1024 + 1))).message).toMatch(/over the limit of 1048576/);
    expect(() => new WireParser({ from: 'client', limits: { 0x42: 1 } })).toThrow(RangeError);
    expect(() => new WireParser({ from: 'client', limits: { [BODY]: -1 } })).toThrow(RangeError);
  });

  it('exact and empty lengths', () => {
    expect(rejection(() => parse(header(HELLO, 0, 0, 39), 'client')).message).toMatch(/HELLO \(0x01\) frame at byte 0 has a 39-byte payload \(it must be exactly 40\)/);
    expect(rejection(() => parse(header(D_HELLO, 0, 0, 13), 'daemon')).message).toMatch(/exactly 12/);
    expect(rejection(() => parse(afterHello(header(STATUS, 0, 0, 1)), 'client')).message).toMatch(/STATUS .* 1-byte payload \(it must be empty\)/);
    expect(rejection(() => parse(Buffer.concat([daemonHello(), header(D_GOAWAY, 0, 0, 2)]), 'daemon')).message).toMatch(/GOAWAY .*must be empty/);
    const body = Buffer.concat([hello(), encodeRequest({ script: '/s', vars: {}, hasBody: true }), header(BODY, 0, 0, 0)]);
    expect(rejection(() => parse(body, 'client')).message).toMatch(/BODY \(0x03\) frame at byte \d+ is empty/);
  });
});

describe('rejections: payload fields', () => {
  const request = (vars: Record<string, string> = { ALPHA: 'beta' }) => encodeRequest({ requestStartUs: 1n, script: '/s', vars }).subarray(8);

  it('REQUEST cut short anywhere is refused, naming the field', () => {
    const full = request();
    const seen = new Set<string>();
    for (let len = 0; len < full.length; len++) {
      const e = rejection(() => decodeRequest(full.subarray(0, len)));
      expect(e.message).toMatch(/^tsgi-wire: REQUEST: /);
      seen.add(e.message.replace(/\d+/g, 'N'));
    }
    const all = [...seen].join('\n');
    for (const field of ['request_start_us', 'the length of script', 'the length of callable', 'the length of application_group', 'the length of process_group', 'the variable count', 'the name of variable #N', 'the value of variable "ALPHA"', 'cannot fit']) {
      expect(all).toContain(field);
    }
  });

  it('REQUEST with bytes left over, an impossible count, an empty name, an empty script', () => {
    expect(rejection(() => decodeRequest(Buffer.concat([request(), Buffer.from('xy')]))).message).toMatch(/REQUEST: 2 bytes left over after the last field/);
    const huge = Buffer.from(request());
    huge.writeUInt32BE(0xffffffff, 8 + 4 + 2 + 4 + 11 + 4 + 4); // the count field, after start, '/s', 'application', '', ''
    expect(rejection(() => decodeRequest(huge)).message).toMatch(/variable count 4294967295 cannot fit/);
    expect(rejection(() => decodeRequest(request({ '': 'x' }))).message).toMatch(/variable #1 has an empty name/);
    expect(rejection(() => decodeRequest(encodeRequest({ script: '', vars: {} }).subarray(8))).message).toMatch(/the script is empty/);
    const long = Buffer.from(request());
    long.writeUInt32BE(1000, 8); // the script's length
    expect(rejection(() => decodeRequest(long)).message).toMatch(/script \(length 1000 at offset 8\) runs past the end/);
  });

  it('HEAD: status range, truncation, leftovers, empty header name', () => {
    const head = encodeHead(200, 'OK', [['A', 'b']]).subarray(8);
    const bad = Buffer.from(head);
    bad.writeUInt16BE(700, 0);
    expect(rejection(() => decodeHead(bad)).message).toMatch(/HEAD: status 700 is not in 100–599/);
    bad.writeUInt16BE(99, 0);
    expect(rejection(() => decodeHead(bad)).message).toMatch(/status 99/);
    for (let len = 0; len < head.length; len++) expect(rejection(() => decodeHead(head.subarray(0, len))).message).toMatch(/^tsgi-wire: HEAD: /);
    expect(rejection(() => decodeHead(Buffer.concat([head, Buffer.from([0])]))).message).toMatch(/1 bytes left over/);
    expect(rejection(() => decodeHead(encodeHead(200, 'OK', [['', 'x']]).subarray(8))).message).toMatch(/header #1 has an empty name/);
  });

  it('ERROR: unknown code, reserved field, too short', () => {
    expect(rejection(() => decodeError(Buffer.from([0, 10, 0, 0]))).message).toMatch(/ERROR: unknown error code 10/);
    expect(rejection(() => decodeError(Buffer.from([0, 0, 0, 0]))).message).toMatch(/unknown error code 0/);
    expect(rejection(() => decodeError(Buffer.from([0, 1, 0, 1]))).message).toMatch(/reserved field after the code is 1/);
    expect(rejection(() => decodeError(Buffer.from([0, 1, 0]))).message).toMatch(/ERROR: the payload ends inside the reserved field/);
    for (const [name, code] of Object.entries(ErrorCode)) expect(decodeError(encodeError(code, name).subarray(8))).toEqual({ code, name, message: name });
  });

  it('HELLO: magic, reserved field, size', () => {
    const h = Buffer.from(hello().subarray(8));
    h.write('HTTP', 0, 'latin1');
    expect(rejection(() => decodeClientHello(h)).message).toMatch(/HELLO: the payload starts with "HTTP", not "TSGI"/);
    const r = Buffer.from(hello().subarray(8));
    r.writeUInt16BE(5, 6);
    expect(rejection(() => decodeClientHello(r)).message).toMatch(/reserved field after the version/);
    expect(rejection(() => decodeClientHello(Buffer.alloc(39))).message).toMatch(/exactly 40/);
    const d = Buffer.from(daemonHello().subarray(8));
    d[0] = 0;
    expect(rejection(() => decodeDaemonHello(d)).message).toMatch(/daemon HELLO: the payload starts with/);
    expect(rejection(() => decodeDaemonHello(Buffer.alloc(11))).message).toMatch(/exactly 12/);
  });

  it('STATUS: not JSON', () => {
    expect(rejection(() => decodeStatus(Buffer.from('{nope'))).message).toMatch(/STATUS: the payload is not JSON/);
  });
});

describe('rejections: order (§3)', () => {
  const client = (...frames: Buffer[]) => rejection(() => parse(Buffer.concat(frames), 'client'));
  const daemon = (...frames: Buffer[]) => rejection(() => parse(Buffer.concat(frames), 'daemon'));
  const req = (hasBody: boolean) => encodeRequest({ script: '/s', vars: {}, hasBody });

  it('client: HELLO first (an AUTH error) and once', () => {
    const first = client(req(false));
    expect(first.message).toMatch(/REQUEST \(0x02\) frame at byte 0: the connection must start with HELLO/);
    expect(first.code).toBe(ErrorCode.AUTH);
    const second = client(hello(), hello());
    expect(second.message).toMatch(/a second HELLO at byte 48/);
    expect(second.code).toBe(ErrorCode.PROTOCOL);
  });

  it('client: body frames only inside a body; no request or STATUS while one is open', () => {
    expect(client(hello(), encodeBody(Buffer.from('x'))).message).toMatch(/BODY \(0x03\) frame at byte 48 without a request body open/);
    expect(client(hello(), encodeBodyEnd()).message).toMatch(/BODY_END .* without a request body open/);
    expect(client(hello(), req(false), encodeAbort()).message).toMatch(/ABORT .* without a request body open/);
    expect(client(hello(), req(true), encodeBodyEnd(), encodeBodyEnd()).message).toMatch(/BODY_END .* without a request body open/);
    expect(client(hello(), req(true), req(false)).message).toMatch(/REQUEST .* while the previous request's body is still open/);
    expect(client(hello(), req(true), encodeStatusRequest()).message).toMatch(/STATUS .* while the previous request's body is still open/);
    // And the good orders pass.
    expect(parse(Buffer.concat([hello(), req(true), encodeBody(Buffer.from('x')), encodeAbort(), req(false), encodeStatusRequest(), req(true), encodeBodyEnd()]), 'client')).toHaveLength(8);
  });

  it('daemon: one response at a time, nothing after CLOSE', () => {
    const head = encodeHead(200, 'OK', []);
    expect(daemon(encodeGoaway()).message).toMatch(/GOAWAY .* must start with HELLO/);
    expect(daemon(daemonHello(), daemonHello()).message).toMatch(/second HELLO/);
    expect(daemon(daemonHello(), encodeBody(Buffer.from('x'), D_BODY)).message).toMatch(/BODY frame at byte 20 without a HEAD/);
    expect(daemon(daemonHello(), encodeEnd()).message).toMatch(/END frame at byte 20 without a HEAD/);
    expect(daemon(daemonHello(), head, head).message).toMatch(/a second HEAD/);
    expect(daemon(daemonHello(), head, encodeStatus('{}')).message).toMatch(/STATUS frame .* inside a response/);
    expect(daemon(daemonHello(), head, encodeEnd(true), encodeGoaway()).message).toMatch(/GOAWAY .* after a trailer with CLOSE/);
    expect(daemon(daemonHello(), encodeError(ErrorCode.PROTOCOL, 'x', true), head).message).toMatch(/after a trailer with CLOSE/);
    // An ERROR instead of HELLO (AUTH, VERSION) ends the stream too.
    expect(daemon(encodeError(ErrorCode.AUTH, 'no', true), daemonHello()).message).toMatch(/after a trailer with CLOSE/);
    // The good orders.
    const ok = [daemonHello(), encodeGoaway(), head, encodeBody(Buffer.from('x'), D_BODY), encodeGoaway(), encodeError(ErrorCode.APP, 'x'), encodeError(ErrorCode.APP, 'x'), head, encodeEnd(), encodeStatus('{}'), head, encodeEnd(true)];
    expect(parse(Buffer.concat(ok), 'daemon')).toHaveLength(ok.length);
  });

  it('checkOrder: false reads any order', () => {
    expect(parse(Buffer.concat([encodeBodyEnd(), hello(), hello()]), 'client', { checkOrder: false }).map((f) => f.type)).toEqual([BODY_END, HELLO, HELLO]);
  });
});
