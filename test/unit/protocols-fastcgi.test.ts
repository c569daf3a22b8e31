/**
 * The FastCGI codec (src/transports/protocols/fastcgi.ts): golden encodings, every
 * error by its message, chunk-boundary independence, the pair-length encodings and a
 * bounded fuzz run (FUZZ_ITERATIONS=N for a longer one). The connection handler
 * (src/transports/fastcgi-server.ts) is tested over a real socket in the last block.
 */
import { describe, it, expect } from 'vitest';
import {
  FCGI_ABORT_REQUEST,
  FCGI_AUTHORIZER,
  FCGI_BEGIN_REQUEST,
  FCGI_CANT_MPX_CONN,
  FCGI_DATA,
  FCGI_END_REQUEST,
  FCGI_GET_VALUES,
  FCGI_KEEP_CONN,
  FCGI_OVERLOADED,
  FCGI_PARAMS,
  FCGI_RESPONDER,
  FCGI_STDIN,
  FCGI_STDOUT,
  FCGI_UNKNOWN_ROLE,
  FastCgiDecoder,
  FastCgiProtocolError,
  ProtocolError,
  RecordReader,
  decodeNameValuePairs,
  encodeBeginRequest,
  encodeEndRequest,
  encodeGetValuesResult,
  encodeNameValuePairs,
  encodeParams,
  encodeRecord,
  encodeStderr,
  encodeStdout,
  encodeStream,
  encodeUnknownType,
  type FcgiEvent,
} from '../../src/transports/protocols/fastcgi';

const hex = (b: Uint8Array) => Buffer.from(b).toString('hex');
const bytes = (h: string) => Buffer.from(h.replace(/\s+/g, ''), 'hex');

/** A request as a web server sends it: BEGIN_REQUEST, PARAMS, STDIN. */
function request(id: number, params: Array<[string, string]>, body: Uint8Array = new Uint8Array(0), flags = 0): Buffer {
  return Buffer.concat([
    encodeBeginRequest(id, FCGI_RESPONDER, flags),
    encodeParams(id, params),
    encodeStream(FCGI_STDIN, id, body),
    encodeRecord(FCGI_STDIN, id),
  ]);
}

function decodeAll(stream: Uint8Array, chunks: number[] = [], opts = {}): FcgiEvent[] {
  const d = new FastCgiDecoder(opts);
  const out: FcgiEvent[] = [];
  let at = 0;
  for (const c of chunks) {
    out.push(...d.feed(stream.subarray(at, at + c)));
    at += c;
  }
  out.push(...d.feed(stream.subarray(at)));
  return out;
}

/** The error f() throws, with `message` = the detail (without the "FastCGI: " prefix). */
const errorOf = (f: () => unknown): { message: string; requestId?: number } => {
  try {
    f();
  } catch (e) {
    expect(e).toBeInstanceOf(FastCgiProtocolError);
    expect(e).toBeInstanceOf(ProtocolError);
    const pe = e as FastCgiProtocolError;
    expect(pe.message).toBe(`FastCGI: ${pe.detail}`);
    return { message: pe.detail, requestId: pe.requestId };
  }
  throw new Error('expected a ProtocolError');
};

describe('FastCGI record encodings (golden bytes)', () => {
  it('STDOUT with padding to 8', () => {
    expect(hex(encodeRecord(FCGI_STDOUT, 1, Buffer.from('hello')))).toBe('0106000100050300' + hex(Buffer.from('hello')) + '000000');
    expect(hex(encodeStdout(1, Buffer.from('hello')))).toBe('0106000100050300' + hex(Buffer.from('hello')) + '000000');
    expect(hex(encodeRecord(FCGI_STDOUT, 1))).toBe('0106000100000000');
    expect(hex(encodeStdout(7, Buffer.from('12345678')))).toBe('0106000700080000' + hex(Buffer.from('12345678')));
  });

  it('STDOUT over 65535 bytes splits into records of at most 65535', () => {
    const data = Buffer.alloc(65536, 0xab);
    const out = encodeStdout(0x0102, data);
    expect(out.byteLength).toBe(8 + 65535 + 1 + 8 + 1 + 7);
    expect(hex(out.subarray(0, 8))).toBe('01060102ffff0100');
    const second = 8 + 65535 + 1;
    expect(hex(out.subarray(second, second + 8))).toBe('0106010200010700');
    expect(out[second + 8]).toBe(0xab);
    const recs = new RecordReader().feed(out);
    expect(recs.map((r) => r.content.byteLength)).toEqual([65535, 1]);
    expect(encodeStdout(1, new Uint8Array(0)).byteLength).toBe(0);
  });

  it('STDERR', () => {
    expect(hex(encodeStderr(3, Buffer.from('e')))).toBe('0107000300010700' + '65' + '00'.repeat(7));
  });

  it('END_REQUEST', () => {
    expect(hex(encodeEndRequest(1, 0))).toBe('0103000100080000' + '0000000000000000');
    expect(hex(encodeEndRequest(0x1234, 0x01020304, FCGI_UNKNOWN_ROLE))).toBe('0103123400080000' + '0102030403000000');
    expect(hex(encodeEndRequest(1, -1, FCGI_OVERLOADED))).toBe('0103000100080000' + 'ffffffff02000000');
  });

  it('GET_VALUES_RESULT and UNKNOWN_TYPE', () => {
    expect(hex(encodeGetValuesResult([['FCGI_MPXS_CONNS', '1']]))).toBe(
      '010a000000120600' + '0f01' + hex(Buffer.from('FCGI_MPXS_CONNS1')) + '000000000000',
    );
    expect(hex(encodeUnknownType(42))).toBe('010b000000080000' + '2a00000000000000');
  });

  it('BEGIN_REQUEST and PARAMS (the client side)', () => {
    expect(hex(encodeBeginRequest(1, FCGI_RESPONDER, FCGI_KEEP_CONN))).toBe('0101000100080000' + '0001010000000000');
    expect(hex(encodeParams(1, [['A', 'b']]))).toBe('0104000100040400' + '01014162' + '00000000' + '0104000100000000');
  });

  it('rejects what cannot be encoded', () => {
    expect(() => encodeRecord(FCGI_STDOUT, 1, new Uint8Array(65536))).toThrow(/exceeds 65535/);
    expect(() => encodeRecord(FCGI_STDOUT, 65536)).toThrow(/out of range/);
  });
});

describe('name-value pairs', () => {
  it('1-byte lengths up to 127, 4-byte from 128', () => {
    for (const n of [0, 1, 127, 128, 129, 255, 256, 65535, 65536, 70000]) {
      const name = 'N';
      const value = 'v'.repeat(n);
      const enc = encodeNameValuePairs([[name, value]]);
      if (n <= 127) {
        expect(hex(enc.subarray(0, 2))).toBe('01' + n.toString(16).padStart(2, '0'));
      } else {
        expect(hex(enc.subarray(0, 5))).toBe('01' + (0x80000000 + n).toString(16).padStart(8, '0'));
      }
      expect(decodeNameValuePairs(enc)).toEqual([[name, value]]);
    }
    const longName = 'K'.repeat(128);
    const enc = encodeNameValuePairs([[longName, 'x']]);
    expect(hex(enc.subarray(0, 5))).toBe('8000008001');
    expect(decodeNameValuePairs(enc)).toEqual([[longName, 'x']]);
  });

  it('accepts a non-minimal 4-byte length and masks the high bit', () => {
    expect(decodeNameValuePairs(bytes('80000001 80000002 41 6263'))).toEqual([['A', 'bc']]);
  });

  it('decodes UTF-8, invalid sequences as U+FFFD, keeps order and duplicates', () => {
    const enc = Buffer.concat([encodeNameValuePairs([['PATH_INFO', '/café']]), bytes('0101 58 ff'), encodeNameValuePairs([['PATH_INFO', '/2']])]);
    expect(decodeNameValuePairs(enc)).toEqual([
      ['PATH_INFO', '/café'],
      ['X', '\ufffd'],
      ['PATH_INFO', '/2'],
    ]);
  });

  it('names each truncation precisely', () => {
    expect(errorOf(() => decodeNameValuePairs(bytes('05'))).message).toBe('truncated name-value pair: no value length at byte 1 of 1');
    expect(errorOf(() => decodeNameValuePairs(bytes('80 00'))).message).toBe(
      'truncated name-value pair: the 4-byte name length at byte 0 has only 2 of 4 bytes',
    );
    expect(errorOf(() => decodeNameValuePairs(bytes('01 80 00 00'))).message).toBe(
      'truncated name-value pair: the 4-byte value length at byte 1 has only 3 of 4 bytes',
    );
    expect(errorOf(() => decodeNameValuePairs(bytes('05 00 4142'))).message).toBe(
      'truncated name-value pair at byte 0: a 5-byte name, but only 2 bytes are left',
    );
    expect(errorOf(() => decodeNameValuePairs(bytes('0101 41 42  01 09 43 44'))).message).toBe(
      'truncated name-value pair at byte 4: "C" has a 9-byte value, but only 1 bytes are left',
    );
    expect(errorOf(() => decodeNameValuePairs(bytes('00 01 41'))).message).toBe('name-value pair at byte 0 has an empty name');
    expect(errorOf(() => decodeNameValuePairs(bytes('ffffffff 00'))).message).toMatch(/a 2147483647-byte name/);
  });
});

describe('FastCgiDecoder', () => {
  const params: Array<[string, string]> = [
    ['REQUEST_METHOD', 'POST'],
    ['CONTENT_LENGTH', '5'],
    ['SCRIPT_NAME', '/app'],
  ];

  it('decodes a request into events', () => {
    const ev = decodeAll(request(1, params, Buffer.from('hello'), FCGI_KEEP_CONN));
    expect(ev).toEqual([
      { kind: 'begin', requestId: 1, keepConn: true },
      { kind: 'params', requestId: 1, params, contentLength: 5 },
      { kind: 'stdin', requestId: 1, data: Buffer.from('hello') },
      { kind: 'stdin-end', requestId: 1 },
    ]);
  });

  it('PARAMS spanning records, pairs cut across record boundaries', () => {
    const block = encodeNameValuePairs([['A', 'x'.repeat(300)], ['B', 'y']]);
    const stream = Buffer.concat([
      encodeBeginRequest(2),
      encodeRecord(FCGI_PARAMS, 2, block.subarray(0, 1)),
      encodeRecord(FCGI_PARAMS, 2, block.subarray(1, 100)),
      encodeRecord(FCGI_PARAMS, 2, block.subarray(100)),
      encodeRecord(FCGI_PARAMS, 2),
    ]);
    const ev = decodeAll(stream);
    expect(ev[1]).toEqual({ kind: 'params', requestId: 2, params: [['A', 'x'.repeat(300)], ['B', 'y']], contentLength: null });
  });

  it('management records: GET_VALUES and unknown types', () => {
    const gv = encodeRecord(FCGI_GET_VALUES, 0, encodeNameValuePairs([['FCGI_MAX_CONNS', ''], ['FCGI_MPXS_CONNS', '']]));
    expect(decodeAll(Buffer.concat([gv, encodeRecord(99, 0, Buffer.from('zz'))]))).toEqual([
      { kind: 'get-values', names: ['FCGI_MAX_CONNS', 'FCGI_MPXS_CONNS'] },
      { kind: 'unknown-type', type: 99 },
    ]);
  });

  it('refuses roles other than RESPONDER with UNKNOWN_ROLE and drops the rest of that request', () => {
    const stream = Buffer.concat([
      encodeBeginRequest(1, FCGI_AUTHORIZER, FCGI_KEEP_CONN),
      encodeParams(1, params),
      encodeRecord(FCGI_STDIN, 1),
      request(2, []),
    ]);
    const ev = decodeAll(stream);
    expect(ev[0]).toEqual({
      kind: 'reject',
      requestId: 1,
      protocolStatus: FCGI_UNKNOWN_ROLE,
      keepConn: true,
      reason: 'role AUTHORIZER is not supported (only RESPONDER)',
    });
    expect(ev.slice(1).map((e) => e.kind)).toEqual(['begin', 'params', 'stdin-end']);
  });

  it('refuses a second request with CANT_MPX_CONN when not multiplexing, OVERLOADED over maxRequests', () => {
    const two = Buffer.concat([encodeBeginRequest(1), encodeBeginRequest(2)]);
    expect(decodeAll(two, [], { multiplex: false })[1]).toMatchObject({ kind: 'reject', requestId: 2, protocolStatus: FCGI_CANT_MPX_CONN });
    expect(decodeAll(two, [], { maxRequests: 1 })[1]).toMatchObject({ kind: 'reject', requestId: 2, protocolStatus: FCGI_OVERLOADED });
    expect(decodeAll(two, [], { maxRequests: 2 })[1]).toEqual({ kind: 'begin', requestId: 2, keepConn: false });
  });

  it('finish(): later records for the id are dropped, and the id may begin again', () => {
    const d = new FastCgiDecoder();
    d.feed(Buffer.concat([encodeBeginRequest(1), encodeParams(1, params)]));
    expect(d.activeCount).toBe(1);
    d.finish(1);
    expect(d.activeCount).toBe(0);
    const late = Buffer.concat([encodeStream(FCGI_STDIN, 1, Buffer.from('hello')), encodeRecord(FCGI_STDIN, 1), encodeRecord(FCGI_ABORT_REQUEST, 1)]);
    expect(d.feed(late)).toEqual([]);
    expect(d.feed(request(1, [])).map((e) => e.kind)).toEqual(['begin', 'params', 'stdin-end']);
  });

  it('ABORT_REQUEST', () => {
    expect(decodeAll(Buffer.concat([encodeBeginRequest(3), encodeRecord(FCGI_ABORT_REQUEST, 3)]))[1]).toEqual({ kind: 'abort', requestId: 3 });
  });

  it('describes where a stream was cut short', () => {
    const full = request(1, params, Buffer.from('hello'));
    const at = (n: number) => {
      const d = new FastCgiDecoder();
      d.feed(full.subarray(0, n));
      return d.describeEnd();
    };
    expect(at(0)).toBe('');
    expect(at(3)).toBe('the stream ended inside a record header (3 of 8 bytes)');
    expect(at(12)).toBe('the stream ended inside a BEGIN_REQUEST record for request 1 (4 of 8 content bytes)');
    expect(at(16)).toBe('the connection closed before the PARAMS of request 1 ended');
    const d = new FastCgiDecoder();
    d.feed(full.subarray(0, full.byteLength - 8));
    expect(d.describeEnd()).toBe('the connection closed before the STDIN of request 1 ended (5 bytes received)');
    expect(d.awaitingHead).toBe(false);
    expect(at(full.byteLength)).toBe('');
  });

  describe('errors, by message', () => {
    const cases: Array<[string, () => Uint8Array, string | RegExp, object?]> = [
      ['bad version', () => bytes('0201000100080000 0001000000000000'), 'bad FastCGI version 2 in the record header at byte 0 (expected 1)'],
      [
        'bad version in a later record',
        () => Buffer.concat([encodeBeginRequest(1), bytes('0004000100000000')]),
        'bad FastCGI version 0 in the record header at byte 16 (expected 1)',
      ],
      ['unknown type on a request', () => encodeRecord(12, 1, Buffer.from('x')), 'unknown record type 12 for request 1'],
      [
        'request id reused',
        () => Buffer.concat([encodeBeginRequest(1), encodeParams(1, params), encodeBeginRequest(1)]),
        'request id reused: BEGIN_REQUEST for request 1, which is still active',
      ],
      [
        'PARAMS after the params ended',
        () => Buffer.concat([encodeBeginRequest(1), encodeParams(1, []), encodeRecord(FCGI_PARAMS, 1, encodeNameValuePairs([['A', 'b']]))]),
        'PARAMS record for request 1 after its PARAMS had ended',
      ],
      [
        'STDIN before the params ended',
        () => Buffer.concat([encodeBeginRequest(1), encodeRecord(FCGI_STDIN, 1, Buffer.from('x'))]),
        'STDIN record for request 1 before its PARAMS ended',
      ],
      [
        'STDIN after the STDIN ended',
        () => Buffer.concat([request(1, []), encodeRecord(FCGI_STDIN, 1, Buffer.from('x'))]),
        'STDIN record for request 1 after its STDIN had ended',
      ],
      [
        'STDIN shorter than CONTENT_LENGTH',
        () => request(1, [['CONTENT_LENGTH', '10']], Buffer.from('abc')),
        'request 1: STDIN ended after 3 bytes, but CONTENT_LENGTH is 10',
      ],
      [
        'STDIN longer than CONTENT_LENGTH',
        () => request(1, [['CONTENT_LENGTH', '2']], Buffer.from('abc')),
        'request 1: STDIN carries more than CONTENT_LENGTH (2) bytes (3 so far)',
      ],
      ['a record for an id never begun', () => encodeRecord(FCGI_STDIN, 5, Buffer.from('x')), 'STDIN record for request 5, which has no BEGIN_REQUEST'],
      ['ABORT for an id never begun', () => encodeRecord(FCGI_ABORT_REQUEST, 5), 'ABORT_REQUEST record for request 5, which has no BEGIN_REQUEST'],
      ['BEGIN_REQUEST of the wrong size', () => encodeRecord(FCGI_BEGIN_REQUEST, 1, new Uint8Array(5)), 'BEGIN_REQUEST for request 1 has 5 content bytes (expected 8)'],
      ['BEGIN_REQUEST on id 0', () => encodeBeginRequest(0), 'BEGIN_REQUEST record with request id 0 (reserved for management records)'],
      [
        'STDOUT sent to the application',
        () => encodeRecord(FCGI_STDOUT, 1, Buffer.from('x')),
        'STDOUT record for request 1: that record goes from the application to the web server, not back',
      ],
      [
        'END_REQUEST on id 0',
        () => encodeRecord(FCGI_END_REQUEST, 0, new Uint8Array(8)),
        'END_REQUEST record with request id 0: that record goes from the application to the web server, not back',
      ],
      ['GET_VALUES on a request id', () => encodeRecord(FCGI_GET_VALUES, 4), 'GET_VALUES record with request id 4: management records use request id 0'],
      [
        'DATA for a responder',
        () => Buffer.concat([request(1, []), encodeRecord(FCGI_DATA, 1, Buffer.from('x'))]),
        'DATA record for request 1, a RESPONDER (DATA is for the FILTER role)',
      ],
      [
        'truncated pair length in PARAMS',
        () => Buffer.concat([encodeBeginRequest(1), encodeRecord(FCGI_PARAMS, 1, bytes('0180')), encodeRecord(FCGI_PARAMS, 1)]),
        'PARAMS of request 1: truncated name-value pair: the 4-byte value length at byte 1 has only 1 of 4 bytes',
      ],
      [
        'a truncated pair in GET_VALUES',
        () => encodeRecord(FCGI_GET_VALUES, 0, bytes('0f00414243')),
        'GET_VALUES: truncated name-value pair at byte 0: a 15-byte name, but only 3 bytes are left',
      ],
      [
        'PARAMS over the limit, before they end',
        () => Buffer.concat([encodeBeginRequest(1), encodeStream(FCGI_PARAMS, 1, encodeNameValuePairs([['A', 'x'.repeat(2000)]]))]),
        'PARAMS of request 1 exceed the limit of 1024 bytes (2006 so far)',
        { maxParamsBytes: 1024 },
      ],
    ];
    for (const [name, make, message, opts] of cases) {
      it(name, () => {
        const stream = make();
        const d = new FastCgiDecoder(opts);
        const e = errorOf(() => d.feed(stream));
        if (typeof message === 'string') expect(e.message).toBe(message);
        else expect(e.message).toMatch(message);
        // Split byte by byte, the same error.
        const d2 = new FastCgiDecoder(opts);
        const e2 = errorOf(() => {
          for (let i = 0; i < stream.byteLength; i++) d2.feed(stream.subarray(i, i + 1));
        });
        expect(e2.message).toBe(e.message);
        // A failed decoder stays failed.
        expect(errorOf(() => d.feed(encodeBeginRequest(9))).message).toBe(e.message);
      });
    }

    it('decode() keeps the events before the violation', () => {
      const d = new FastCgiDecoder();
      const { events, error } = d.decode(request(1, [['CONTENT_LENGTH', '10']], Buffer.from('abc')));
      expect(events.map((e) => e.kind)).toEqual(['begin', 'params', 'stdin']);
      expect(error?.detail).toBe('request 1: STDIN ended after 3 bytes, but CONTENT_LENGTH is 10');
      expect(d.decode(encodeBeginRequest(2))).toEqual({ events: [], error });
    });

    it('the PARAMS limit is checked as they accumulate: at the record that crosses it', () => {
      const d = new FastCgiDecoder({ maxParamsBytes: 100 });
      d.feed(encodeBeginRequest(1));
      d.feed(encodeRecord(FCGI_PARAMS, 1, new Uint8Array(60)));
      d.feed(encodeRecord(FCGI_PARAMS, 1, new Uint8Array(40)));
      expect(errorOf(() => d.feed(encodeRecord(FCGI_PARAMS, 1, new Uint8Array(1)))).message).toBe(
        'PARAMS of request 1 exceed the limit of 100 bytes (101 so far)',
      );
    });
  });
});

/** Two requests interleaved, a GET_VALUES, an unknown management type, a refused role. */
function mixedStream(): Buffer {
  const big = Buffer.alloc(3_000);
  for (let i = 0; i < big.length; i++) big[i] = (i * 7) & 0xff;
  const p1: Array<[string, string]> = [
    ['REQUEST_METHOD', 'POST'],
    ['CONTENT_LENGTH', String(big.length)],
    ['X', 'y'.repeat(200)],
  ];
  const p2: Array<[string, string]> = [['REQUEST_METHOD', 'GET']];
  const params1 = encodeStream(FCGI_PARAMS, 1, encodeNameValuePairs(p1));
  return Buffer.concat([
    encodeRecord(FCGI_GET_VALUES, 0, encodeNameValuePairs([['FCGI_MAX_REQS', '']])),
    encodeBeginRequest(1, FCGI_RESPONDER, FCGI_KEEP_CONN),
    encodeBeginRequest(2, FCGI_RESPONDER, FCGI_KEEP_CONN),
    params1,
    encodeParams(2, p2),
    encodeRecord(FCGI_PARAMS, 1),
    encodeRecord(FCGI_STDIN, 1, big.subarray(0, 1_000)),
    encodeRecord(FCGI_STDIN, 2, Buffer.from('abc')),
    encodeRecord(77, 0, Buffer.from('?')),
    encodeRecord(FCGI_STDIN, 1, big.subarray(1_000, 2_001)),
    encodeRecord(FCGI_STDIN, 1, big.subarray(2_001)),
    encodeRecord(FCGI_STDIN, 2),
    encodeRecord(FCGI_STDIN, 1),
    encodeBeginRequest(3, FCGI_AUTHORIZER),
    encodeRecord(FCGI_ABORT_REQUEST, 1),
  ]);
}

/** A compact signature of an event list (toEqual on thousands of lists is slow). */
const sig = (ev: FcgiEvent[]) => JSON.stringify(ev, (_k, v: unknown) => (v instanceof Uint8Array ? hex(v) : v));

describe('chunk boundaries do not matter', () => {
  const stream = mixedStream();
  const expected = decodeAll(stream);
  const expectedSig = sig(expected);

  it('the reference decoding', () => {
    expect(expected.map((e) => `${e.kind}${'requestId' in e ? e.requestId : ''}`)).toEqual([
      'get-values',
      'begin1',
      'begin2',
      'params2',
      'params1',
      'stdin1',
      'stdin2',
      'unknown-type',
      'stdin1',
      'stdin1',
      'stdin-end2',
      'stdin-end1',
      'reject3',
      'abort1',
    ]);
  });

  it('split once at every boundary', () => {
    for (let k = 0; k <= stream.byteLength; k++) {
      const got = sig(decodeAll(stream, [k]));
      if (got !== expectedSig) expect(decodeAll(stream, [k])).toEqual(expected);
    }
  });

  it('split twice around every header position, and byte by byte', () => {
    for (let k = 0; k < 600; k++) {
      for (let j = 1; j < 10; j++) {
        if (sig(decodeAll(stream, [k, j])) !== expectedSig) expect(decodeAll(stream, [k, j])).toEqual(expected);
      }
    }
    const d = new FastCgiDecoder();
    const ev: FcgiEvent[] = [];
    for (let i = 0; i < stream.byteLength; i++) ev.push(...d.feed(stream.subarray(i, i + 1)));
    expect(ev).toEqual(expected);
  });

  it('record-level: the same records whatever the chunking', () => {
    const recs = new RecordReader().feed(stream);
    const rnd = mulberry32(7);
    for (let n = 0; n < 200; n++) {
      const r = new RecordReader();
      const got = [];
      for (let at = 0; at < stream.byteLength; ) {
        const c = 1 + Math.floor(rnd() * 900);
        got.push(...r.feed(stream.subarray(at, at + c)));
        at += c;
      }
      expect(JSON.stringify(got)).toBe(JSON.stringify(recs));
      expect(r.atBoundary).toBe(true);
    }
  });
});

// ---------------------------------------------------------------------------
// Fuzz

function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function validStream(rnd: () => number): Buffer {
  const parts: Buffer[] = [];
  const n = 1 + Math.floor(rnd() * 3);
  for (let r = 0; r < n; r++) {
    const id = 1 + Math.floor(rnd() * 4);
    const body = Buffer.alloc(Math.floor(rnd() * 300), r + 1);
    const pairs: Array<[string, string]> = [['REQUEST_METHOD', 'POST']];
    if (rnd() < 0.7) pairs.push(['CONTENT_LENGTH', String(body.length)]);
    if (rnd() < 0.3) pairs.push(['LONG', 'v'.repeat(Math.floor(rnd() * 300))]);
    const flags = rnd() < 0.5 ? FCGI_KEEP_CONN : 0;
    const role = rnd() < 0.9 ? FCGI_RESPONDER : 1 + Math.floor(rnd() * 5);
    parts.push(encodeBeginRequest(id, role, flags), encodeParams(id, pairs), encodeStream(FCGI_STDIN, id, body), encodeRecord(FCGI_STDIN, id));
    if (rnd() < 0.1) parts.push(encodeRecord(FCGI_ABORT_REQUEST, id));
    if (rnd() < 0.1) parts.push(encodeRecord(FCGI_GET_VALUES, 0, encodeNameValuePairs([['FCGI_MAX_CONNS', '']])));
  }
  return Buffer.concat(parts);
}

function mutate(rnd: () => number, s: Buffer): Buffer {
  const b = Buffer.from(s);
  const kind = Math.floor(rnd() * 6);
  const pos = () => Math.floor(rnd() * Math.max(1, b.length));
  switch (kind) {
    case 0: // flip a few bytes
      for (let i = 0, k = 1 + Math.floor(rnd() * 4); i < k; i++) b[pos()] = Math.floor(rnd() * 256);
      return b;
    case 1: // truncate
      return b.subarray(0, pos());
    case 2: {
      // insert random bytes
      const at = pos();
      const ins = Buffer.from(Array.from({ length: 1 + Math.floor(rnd() * 16) }, () => Math.floor(rnd() * 256)));
      return Buffer.concat([b.subarray(0, at), ins, b.subarray(at)]);
    }
    case 3: {
      // delete a span
      const at = pos();
      return Buffer.concat([b.subarray(0, at), b.subarray(at + 1 + Math.floor(rnd() * 16))]);
    }
    case 4: // a header field set to an interesting value
      {
        const at = Math.floor(rnd() * Math.max(1, b.length - 8));
        const v = [0, 1, 0x7f, 0x80, 0xff][Math.floor(rnd() * 5)];
        b[at + Math.floor(rnd() * 8)] = v;
      }
      return b;
    default: // random bytes with a plausible first header
      return Buffer.concat([bytes('01'), Buffer.from(Array.from({ length: Math.floor(rnd() * 200) }, () => Math.floor(rnd() * 256)))]);
  }
}

/** A cheap assertion for the fuzz loop (expect() per event costs more than the decoder). */
function check(cond: boolean, what: string): void {
  if (!cond) throw new Error(`fuzz invariant broken: ${what}`);
}

describe('fuzz', () => {
  it('mutated and random streams: only ProtocolError, limits hold', () => {
    const iterations = Number(process.env.FUZZ_ITERATIONS ?? 20_000);
    const seed = Number(process.env.FUZZ_SEED ?? 0x5eed);
    const rnd = mulberry32(seed);
    const started = Date.now();
    const limit = 256;
    let errors = 0;
    let events = 0;
    for (let it = 0; it < iterations; it++) {
      const input = mutate(rnd, validStream(rnd));
      const d = new FastCgiDecoder({ maxParamsBytes: limit, maxRequests: 3 });
      const stdin = new Map<number, number>();
      const declared = new Map<number, number | null>();
      try {
        for (let at = 0; at < input.length; ) {
          const c = 1 + Math.floor(rnd() * 64);
          for (const e of d.feed(input.subarray(at, at + c))) {
            events++;
            check(d.activeCount <= 3, 'active requests over maxRequests');
            if (e.kind === 'params') {
              // Each wire byte gives at most one UTF-16 unit (an invalid one gives U+FFFD).
              check(e.params.reduce((n, [k, v]) => n + k.length + v.length, 0) <= limit, 'PARAMS over the limit');
              declared.set(e.requestId, e.contentLength);
              stdin.set(e.requestId, 0);
            } else if (e.kind === 'stdin') {
              check(e.data.byteLength > 0, 'an empty stdin event');
              const total = (stdin.get(e.requestId) ?? 0) + e.data.byteLength;
              stdin.set(e.requestId, total);
              const cl = declared.get(e.requestId);
              if (cl !== null && cl !== undefined) check(total <= cl, 'STDIN past CONTENT_LENGTH');
            } else if (e.kind === 'stdin-end') {
              const cl = declared.get(e.requestId);
              if (cl !== null && cl !== undefined) check(stdin.get(e.requestId) === cl, 'STDIN ended short of CONTENT_LENGTH');
              // The server answers some requests at once; later records for them are dropped.
              if (rnd() < 0.5) d.finish(e.requestId);
            }
          }
          at += c;
        }
        d.describeEnd();
      } catch (e) {
        if (!(e instanceof ProtocolError)) throw e;
        check(e.message.length > 10, 'an empty error message');
        errors++;
      }
    }
    const ms = Date.now() - started;
    // The figure for the notes: FUZZ_ITERATIONS=1000000 npx vitest run test/unit/protocols-fastcgi.test.ts -t fuzz
    console.log(`fastcgi fuzz: ${iterations} inputs (seed ${seed}) in ${ms} ms, ${errors} ProtocolErrors, ${events} events`);
    expect(errors).toBeGreaterThan(iterations / 20);
  }, 600_000);
});
