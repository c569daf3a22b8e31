/**
 * The SCGI and uwsgi codecs: golden encodings, every error with its message, the same
 * result for every split of the input, and a seeded fuzz run (FUZZ_ITERATIONS=N for a
 * longer one; FUZZ_SEED=S to replay).
 */
import { describe, it, expect } from 'vitest';
import { ProtocolError } from '../../src/transports/protocols/protocol-error';
import {
  ScgiParser,
  encodeScgiRequest,
  parseScgi,
  scgiResponseHead,
  type HeadParser,
  type ParsedRequestHead,
} from '../../src/transports/protocols/scgi';
import { UwsgiParser, encodeUwsgiRequest, parseUwsgi, uwsgiResponseHead } from '../../src/transports/protocols/uwsgi';
import { normalizeCgiEnviron, protocolEnviron, urlSchemeOf } from '../../src/transports/protocols/cgi-vars';
import { cgiEnviron } from '../../src/transports/cgi';

const b = (s: string) => Buffer.from(s, 'latin1');
const plain = (vars: Record<string, string>) => ({ ...vars });

/** Little-endian u16. */
const u16 = (n: number) => b(String.fromCharCode(n & 0xff, n >> 8));
const kv = (k: string, v: string) => Buffer.concat([u16(Buffer.byteLength(k)), Buffer.from(k), u16(Buffer.byteLength(v)), Buffer.from(v)]);
const uwsgiPacket = (block: Buffer, modifier1 = 0, modifier2 = 0) => Buffer.concat([Buffer.from([modifier1]), u16(block.length), Buffer.from([modifier2]), block]);

/** Feeds `input` cut at `splits`; the head and the offset of the first body byte in `input`. */
function feedSplits(p: HeadParser, input: Uint8Array, splits: number[]): { head: ParsedRequestHead | null; bodyOffset: number } {
  let pos = 0;
  for (const end of [...splits, input.length]) {
    const head = p.feed(input.subarray(pos, end));
    if (head) return { head, bodyOffset: pos + head.bodyStart };
    pos = end;
  }
  return { head: null, bodyOffset: -1 };
}

function scgiError(bytes: Buffer | string, options = {}): string {
  try {
    const r = parseScgi(typeof bytes === 'string' ? b(bytes) : bytes, options);
    return r === null ? 'incomplete' : 'ok';
  } catch (e) {
    expect(e).toBeInstanceOf(ProtocolError);
    return (e as Error).message;
  }
}

function uwsgiError(bytes: Buffer, options = {}): string {
  try {
    const r = parseUwsgi(bytes, options);
    return r === null ? 'incomplete' : 'ok';
  } catch (e) {
    expect(e).toBeInstanceOf(ProtocolError);
    return (e as Error).message;
  }
}

describe('SCGI codec', () => {
  const golden = b('70:CONTENT_LENGTH\x0027\x00SCGI\x001\x00REQUEST_METHOD\x00POST\x00REQUEST_URI\x00/deepthought\x00,What is the answer to life?');

  it('parses the example from the SCGI spec', () => {
    const r = parseScgi(golden) as ParsedRequestHead;
    expect(plain(r.vars)).toEqual({ CONTENT_LENGTH: '27', SCGI: '1', REQUEST_METHOD: 'POST', REQUEST_URI: '/deepthought' });
    expect(r.contentLength).toBe(27);
    expect(r.headerBytes).toBe(74);
    expect(r.bodyStart).toBe(74);
    expect(golden.subarray(r.bodyStart).toString()).toBe('What is the answer to life?');
  });

  it('encodes the same bytes (CONTENT_LENGTH first, SCGI second)', () => {
    const enc = encodeScgiRequest({ REQUEST_METHOD: 'POST', REQUEST_URI: '/deepthought' }, 27);
    expect(enc.equals(golden.subarray(0, 74))).toBe(true);
  });

  it('gives the same result for every split of the input into two and three chunks', () => {
    const whole = parseScgi(golden)!;
    for (let i = 0; i <= golden.length; i++) {
      for (let j = i; j <= golden.length; j++) {
        const r = feedSplits(new ScgiParser(), golden, [i, j]);
        expect(plain(r.head!.vars)).toEqual(plain(whole.vars));
        expect(r.head!.headerBytes).toBe(74);
        expect(r.bodyOffset).toBe(74);
      }
    }
  });

  it('one byte at a time', () => {
    const p = new ScgiParser();
    let r: ParsedRequestHead | null = null;
    let at = -1;
    for (let i = 0; i < golden.length && r === null; i++) {
      r = p.feed(golden.subarray(i, i + 1));
      at = i;
      expect(p.bufferedBytes).toBeLessThanOrEqual(70);
    }
    expect(at).toBe(73);
    expect(r!.bodyStart).toBe(1);
  });

  it('decodes non-UTF-8 bytes as UTF-8 with U+FFFD', () => {
    const block = Buffer.concat([b('CONTENT_LENGTH\x000\x00SCGI\x001\x00PATH_INFO\x00/caf'), Buffer.from([0xe9]), Buffer.from('/é\0', 'utf8')]);
    const r = parseScgi(Buffer.concat([b(`${block.length}:`), block, b(',')]));
    expect(r!.vars.PATH_INFO).toBe('/caf\ufffd/é');
  });

  it('joins repeated HTTP_* variables, keeps the last of others', () => {
    const r = parseScgi(encodeScgiRequest([['HTTP_X_A', '1'], ['HTTP_X_A', '2'], ['HTTP_COOKIE', 'a=1'], ['HTTP_COOKIE', 'b=2'], ['X', '1'], ['X', '2']], 0));
    expect(plain(r!.vars)).toMatchObject({ HTTP_X_A: '1, 2', HTTP_COOKIE: 'a=1; b=2', X: '2' });
  });

  it('keeps __proto__ as a plain variable', () => {
    const r = parseScgi(encodeScgiRequest([['__proto__', 'x']], 0));
    expect(Object.getOwnPropertyDescriptor(r!.vars, '__proto__')?.value).toBe('x');
  });

  const block = (s: string) => `${Buffer.byteLength(s, 'latin1')}:${s},`;
  it.each([
    ['GET / HTTP/1.1\r\n', 'SCGI: a request must start with the netstring length (decimal digits), got byte 0x47 ("G") (an HTTP request? the peer must speak SCGI to this socket)'],
    ['\x00', 'SCGI: a request must start with the netstring length (decimal digits), got byte 0x00'],
    [':x', "SCGI: the request starts with ':': the netstring length is missing"],
    ['012:', 'SCGI: the netstring length has a leading zero'],
    ['12x', 'SCGI: expected a digit or \':\' in the netstring length, got byte 0x78 ("x") after "12"'],
    ['65537:', 'SCGI: the header block is longer than the limit of 65536 bytes (its length starts 65537)'],
    ['99999999999999999999:', 'SCGI: the header block is longer than the limit of 65536 bytes (its length starts 99999)'],
    ['0:,', 'SCGI: the header block is empty; CONTENT_LENGTH is required'],
    ['3:abc,', 'SCGI: the header block does not end with NUL (the last field is unterminated)'],
    [block('CONTENT_LENGTH\x000\x00SCGI\x00'), 'SCGI: the header block has an odd number of NUL-terminated fields (3): "SCGI" has no value'],
    [block('SCGI\x001\x00'), 'SCGI: CONTENT_LENGTH is missing (the first variable is "SCGI")'],
    [block('SCGI\x001\x00CONTENT_LENGTH\x000\x00'), 'SCGI: CONTENT_LENGTH must be the first variable, but it is #2'],
    [block('CONTENT_LENGTH\x00\x00SCGI\x001\x00'), 'SCGI: CONTENT_LENGTH is empty (it must be present even when 0)'],
    [block('CONTENT_LENGTH\x00-1\x00SCGI\x001\x00'), 'SCGI: CONTENT_LENGTH "-1" is not a decimal number of at most 15 digits'],
    [block('CONTENT_LENGTH\x001234567890123456\x00SCGI\x001\x00'), 'SCGI: CONTENT_LENGTH "1234567890123456" is not a decimal number of at most 15 digits'],
    [block('CONTENT_LENGTH\x000\x00SCGI\x001\x00CONTENT_LENGTH\x005\x00'), 'SCGI: CONTENT_LENGTH appears twice (again as variable #3)'],
    [block('CONTENT_LENGTH\x000\x00\x00x\x00SCGI\x001\x00'), 'SCGI: variable #2 has an empty name'],
    [block('CONTENT_LENGTH\x000\x00'), 'SCGI: the SCGI variable is missing (it must be "1"; with nginx, include scgi_params)'],
    [block('CONTENT_LENGTH\x000\x00SCGI\x002\x00'), 'SCGI: SCGI must be "1", got "2"'],
    [block('CONTENT_LENGTH\x000\x00SCGI\x001\x00SCGI\x001\x00'), 'SCGI: SCGI appears twice'],
    ['24:CONTENT_LENGTH\x000\x00SCGI\x001\x00;', 'SCGI: the netstring is not terminated by \',\' (got byte 0x3b (";") after the 24-byte header block)'],
  ])('#%# → %s', (input, message) => {
    expect(scgiError(input)).toBe(message);
  });

  it('a limit of its own', () => {
    expect(scgiError('101:', { maxHeaderBytes: 100 })).toBe('SCGI: the header block is longer than the limit of 100 bytes (its length starts 101)');
    expect(scgiError(block('CONTENT_LENGTH\x000\x00SCGI\x001\x00'), { maxHeaderBytes: 24 })).toBe('ok');
    expect(() => new ScgiParser({ maxHeaderBytes: 0 })).toThrow(RangeError);
  });

  it('a failed parser keeps failing with the same error', () => {
    const p = new ScgiParser();
    expect(() => p.feed(b('x'))).toThrow(ProtocolError);
    expect(() => p.feed(b('1'))).toThrow(/got byte 0x78/);
  });

  it('incomplete input is not an error', () => {
    expect(scgiError('24:CONTENT_LENGTH')).toBe('incomplete');
    expect(scgiError('')).toBe('incomplete');
  });

  it('serializes the CGI-style response head', () => {
    expect(scgiResponseHead('404 Not Found', [['Content-Type', 'text/plain'], ['X-Latin', 'caf\u00e9']])).toEqual(
      Buffer.from('Status: 404 Not Found\r\nContent-Type: text/plain\r\nX-Latin: caf\xe9\r\n\r\n', 'latin1'),
    );
  });
});

describe('uwsgi codec', () => {
  const block = Buffer.concat([kv('REQUEST_METHOD', 'POST'), kv('PATH_INFO', '/x'), kv('CONTENT_LENGTH', '5')]);
  const golden = Buffer.concat([uwsgiPacket(block), b('hello')]);

  it('parses a packet', () => {
    const r = parseUwsgi(golden)!;
    expect(plain(r.vars)).toEqual({ REQUEST_METHOD: 'POST', PATH_INFO: '/x', CONTENT_LENGTH: '5' });
    expect(r.contentLength).toBe(5);
    expect(r.headerBytes).toBe(4 + block.length);
    expect(golden.subarray(r.bodyStart).toString()).toBe('hello');
  });

  it('golden encoding', () => {
    expect(encodeUwsgiRequest({ REQUEST_METHOD: 'GET' }).toString('hex')).toBe('00' + '1500' + '00' + '0e00' + Buffer.from('REQUEST_METHOD').toString('hex') + '0300' + Buffer.from('GET').toString('hex'));
    expect(encodeUwsgiRequest({ REQUEST_METHOD: 'POST', PATH_INFO: '/x', CONTENT_LENGTH: '5' }).equals(golden.subarray(0, 4 + block.length))).toBe(true);
  });

  it('gives the same result for every split', () => {
    for (let i = 0; i <= golden.length; i++) {
      for (let j = i; j <= golden.length; j++) {
        const r = feedSplits(new UwsgiParser(), golden, [i, j]);
        expect(plain(r.head!.vars)).toEqual({ REQUEST_METHOD: 'POST', PATH_INFO: '/x', CONTENT_LENGTH: '5' });
        expect(golden.subarray(r.bodyOffset).toString()).toBe('hello');
      }
    }
  });

  it('an empty CONTENT_LENGTH (nginx, no body) means 0, and no CONTENT_LENGTH too', () => {
    expect(parseUwsgi(encodeUwsgiRequest({ CONTENT_LENGTH: '' }))!.contentLength).toBe(0);
    expect(parseUwsgi(encodeUwsgiRequest({}))!.contentLength).toBe(0);
  });

  it('an empty block is a request with no variables', () => {
    expect(plain(parseUwsgi(b('\x00\x00\x00\x00'))!.vars)).toEqual({});
  });

  it.each([
    [b('GET / HTTP/1.1\r\n'), 'uwsgi: unsupported modifier1 71 0x47 ("G") (this is HTTP: the peer must speak uwsgi to this socket)'],
    [uwsgiPacket(block, 5), 'uwsgi: unsupported modifier1 5 0x05; tsgi serves modifier1 0 (WSGI-style request variables) only: check uwsgi_modifier1 in nginx'],
    [uwsgiPacket(Buffer.concat([block, b('\x01')])), `uwsgi: truncated key length at offset ${block.length} of the ${block.length + 1}-byte variable block`],
    [uwsgiPacket(Buffer.concat([u16(0), u16(0)])), 'uwsgi: empty variable name at offset 0'],
    [uwsgiPacket(Buffer.concat([u16(10), b('abc')])), 'uwsgi: the key length 10 at offset 0 runs past the end of the 5-byte variable block'],
    [uwsgiPacket(Buffer.concat([u16(3), b('abc'), b('\x01')])), 'uwsgi: variable "abc": truncated value length at offset 5 of the 6-byte variable block'],
    [uwsgiPacket(Buffer.concat([u16(3), b('abc'), u16(4), b('xyz')])), 'uwsgi: variable "abc": the value length 4 at offset 5 runs past the end of the 10-byte variable block'],
    [uwsgiPacket(Buffer.concat([kv('CONTENT_LENGTH', '1'), kv('CONTENT_LENGTH', '1')])), 'uwsgi: CONTENT_LENGTH appears twice'],
    [uwsgiPacket(kv('CONTENT_LENGTH', '0x10')), 'uwsgi: CONTENT_LENGTH "0x10" is not a decimal number of at most 15 digits'],
  ])('%# → %s', (input, message) => {
    expect(uwsgiError(input)).toBe(message);
  });

  it('the datasize limit', () => {
    expect(uwsgiError(uwsgiPacket(block), { maxHeaderBytes: 10 })).toBe(`uwsgi: the variable block (datasize ${block.length}) is longer than the limit of 10 bytes`);
    // By construction a u16 never exceeds the 64 KiB default.
    expect(uwsgiError(b('\x00\xff\xff\x00'))).toBe('incomplete');
  });

  it('modifier2 is ignored for modifier1 0', () => {
    const p = new UwsgiParser();
    expect(p.feed(uwsgiPacket(block, 0, 9))).not.toBeNull();
    expect(p.modifier2).toBe(9);
  });

  it('serializes the HTTP-status-line response head', () => {
    expect(uwsgiResponseHead('200 OK', [['Content-Length', '2']]).toString('latin1')).toBe('HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n');
  });
});

describe('CGI variables → environ', () => {
  it('CGI keeps its behaviour (no path derivation)', () => {
    const env = cgiEnviron({ REQUEST_URI: '/x/y', SCRIPT_NAME: '/x', HTTP_PROXY: 'evil', HTTP_CONTENT_LENGTH: '1' }, { scriptPath: '/s' });
    expect(env).toMatchObject({ SCRIPT_NAME: '/x', PATH_INFO: '', REQUEST_METHOD: 'GET', SERVER_PORT: '80' });
    expect(env.HTTP_PROXY).toBeUndefined();
    expect(env.HTTP_CONTENT_LENGTH).toBeUndefined();
  });

  it('lighttpd style: SCRIPT_NAME and PATH_INFO given are kept', () => {
    expect(protocolEnviron({ SCRIPT_NAME: '/app', PATH_INFO: '/a/b', REQUEST_URI: '/app/a/b' })).toMatchObject({ SCRIPT_NAME: '/app', PATH_INFO: '/a/b' });
  });

  it('nginx scgi_params: neither given → PATH_INFO is the decoded path', () => {
    expect(protocolEnviron({ REQUEST_URI: '/a%20b/c?q=1', QUERY_STRING: 'q=1' })).toMatchObject({ SCRIPT_NAME: '', PATH_INFO: '/a b/c' });
    expect(protocolEnviron({ REQUEST_URI: '/raw', DOCUMENT_URI: '/doc' })).toMatchObject({ SCRIPT_NAME: '', PATH_INFO: '/doc' });
  });

  it('nginx with only scgi_param SCRIPT_NAME: PATH_INFO is the rest of the path', () => {
    expect(protocolEnviron({ SCRIPT_NAME: '/app', REQUEST_URI: '/app/x/y' })).toMatchObject({ SCRIPT_NAME: '/app', PATH_INFO: '/x/y' });
    expect(protocolEnviron({ SCRIPT_NAME: '/app', REQUEST_URI: '/app' })).toMatchObject({ SCRIPT_NAME: '/app', PATH_INFO: '' });
    expect(protocolEnviron({ SCRIPT_NAME: '/app', REQUEST_URI: '/other' })).toMatchObject({ SCRIPT_NAME: '/app', PATH_INFO: '' });
  });

  it('nginx uwsgi_params (PATH_INFO = the whole path) plus uwsgi_param SCRIPT_NAME: the script part is taken off', () => {
    expect(protocolEnviron({ SCRIPT_NAME: '/app', PATH_INFO: '/app/x', DOCUMENT_URI: '/app/x', REQUEST_URI: '/app/x' })).toMatchObject({ PATH_INFO: '/x' });
    expect(protocolEnviron({ SCRIPT_NAME: '/app', PATH_INFO: '/app/app', REQUEST_URI: '/app/app' })).toMatchObject({ PATH_INFO: '/app' });
    // A consistent pair is never touched, even when PATH_INFO repeats the script name.
    expect(protocolEnviron({ SCRIPT_NAME: '/app', PATH_INFO: '/app', REQUEST_URI: '/app/app' })).toMatchObject({ PATH_INFO: '/app' });
    expect(protocolEnviron({ SCRIPT_NAME: '/app', PATH_INFO: '/appx', REQUEST_URI: '/appx' })).toMatchObject({ PATH_INFO: '/appx' });
  });

  it('a mount point recomputes both (nginx uwsgi_params sends PATH_INFO = the whole path)', () => {
    expect(protocolEnviron({ PATH_INFO: '/app/x', REQUEST_URI: '/app/x' }, { mountPoint: '/app' })).toMatchObject({ SCRIPT_NAME: '/app', PATH_INFO: '/x' });
    expect(protocolEnviron({ PATH_INFO: '/else', REQUEST_URI: '/else' }, { mountPoint: '/app' })).toMatchObject({ SCRIPT_NAME: '', PATH_INFO: '/else' });
  });

  it('empty CONTENT_LENGTH / CONTENT_TYPE are dropped, setEnv fills in, HTTPS → https', () => {
    const env = protocolEnviron({ CONTENT_LENGTH: '', CONTENT_TYPE: '', HTTPS: 'on', X: 'web' }, { setEnv: { X: 'mine', Y: 'mine' } });
    expect(env.CONTENT_LENGTH).toBeUndefined();
    expect(env.CONTENT_TYPE).toBeUndefined();
    expect(env).toMatchObject({ X: 'web', Y: 'mine' });
    expect(urlSchemeOf(env)).toBe('https');
    expect(urlSchemeOf({ REQUEST_SCHEME: 'https' })).toBe('https');
    expect(urlSchemeOf({ HTTPS: 'off' })).toBe('http');
  });

  it('SCRIPT_NAME "/" folds into PATH_INFO', () => {
    expect(normalizeCgiEnviron({ SCRIPT_NAME: '/', PATH_INFO: 'x' })).toMatchObject({ SCRIPT_NAME: '', PATH_INFO: '/x' });
  });
});

// ---------------------------------------------------------------------------------------
// Fuzzing

/** mulberry32: small, fast, seedable. */
function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

interface FuzzStats {
  ok: number;
  errors: number;
  incomplete: number;
  messages: Set<string>;
}

function fuzz(kind: 'scgi' | 'uwsgi', iterations: number, seed: number): FuzzStats {
  const rnd = prng(seed);
  const int = (n: number) => Math.floor(rnd() * n);
  const pick = <T>(xs: readonly T[]): T => xs[int(xs.length)];
  const limit = pick([64, 300, 4096, 65536]);
  const names = ['CONTENT_LENGTH', 'SCGI', 'REQUEST_METHOD', 'PATH_INFO', 'HTTP_HOST', 'HTTP_COOKIE', 'QUERY_STRING', '__proto__', 'é'];
  const randString = () => {
    const len = pick([0, 1, 3, 10, 40]);
    let s = '';
    for (let i = 0; i < len; i++) s += String.fromCharCode(pick([0x41 + int(26), 0x30 + int(10), 0x2f, 0xe9, 0x20ac, 0xd800]));
    return s;
  };
  const validFrame = (): Buffer => {
    const vars: [string, string][] = [];
    const n = int(8);
    for (let i = 0; i < n; i++) vars.push([rnd() < 0.6 ? pick(names.slice(2)) : randString() || 'X', randString()]);
    const cl = pick([0, 1, 5, 1000, 123456789]);
    const body = Buffer.from('BODY');
    if (kind === 'scgi') return Buffer.concat([encodeScgiRequest(vars, cl), body]);
    return Buffer.concat([encodeUwsgiRequest(rnd() < 0.8 ? [['CONTENT_LENGTH', String(cl)], ...vars] : vars), body]);
  };
  const mutate = (buf: Buffer): Buffer => {
    const out = Buffer.from(buf);
    const op = int(6);
    if (op === 0 && out.length) out[int(out.length)] = int(256);
    else if (op === 1) return out.subarray(0, int(out.length + 1));
    else if (op === 2) {
      const at = int(out.length + 1);
      return Buffer.concat([out.subarray(0, at), Buffer.from([pick([0, 0x2c, 0x3a, 0x30, 0xff, int(256)])]), out.subarray(at)]);
    } else if (op === 3 && out.length) {
      const at = int(out.length);
      return Buffer.concat([out.subarray(0, at), out.subarray(at + 1 + int(4))]);
    } else if (op === 4 && out.length > 4) {
      // Lengths are where parsers go wrong: rewrite a length field.
      if (kind === 'uwsgi') out.writeUInt16LE(int(0x10000), pick([1, 4 + int(out.length - 5)]) % (out.length - 1));
      else return Buffer.concat([Buffer.from(String(int(limit * 2))), out.subarray(out.indexOf(0x3a))]);
    } else if (op === 5) {
      const a = int(out.length + 1);
      return Buffer.concat([out.subarray(0, a), out.subarray(int(out.length + 1))]);
    }
    return out;
  };
  const stats: FuzzStats = { ok: 0, errors: 0, incomplete: 0, messages: new Set() };
  const make = (): HeadParser => (kind === 'scgi' ? new ScgiParser({ maxHeaderBytes: limit }) : new UwsgiParser({ maxHeaderBytes: limit }));
  const run = (input: Buffer, splits: number[]): { r: 'ok' | 'incomplete' | string; head?: ParsedRequestHead; bodyOffset?: number } => {
    const p = make();
    let pos = 0;
    try {
      for (const end of [...splits, input.length]) {
        const chunk = input.subarray(pos, end);
        const head = p.feed(chunk);
        expect(p.bufferedBytes).toBeLessThanOrEqual(limit + 4);
        if (head) {
          expect(head.bodyStart).toBeGreaterThanOrEqual(0);
          expect(head.bodyStart).toBeLessThanOrEqual(chunk.length);
          return { r: 'ok', head, bodyOffset: pos + head.bodyStart };
        }
        pos = end;
      }
      return { r: 'incomplete' };
    } catch (e) {
      if (!(e instanceof ProtocolError)) throw e;
      return { r: e.message };
    }
  };
  for (let it = 0; it < iterations; it++) {
    const r = rnd();
    let input: Buffer;
    if (r < 0.15) input = validFrame();
    else if (r < 0.9) {
      input = validFrame();
      for (let m = 1 + int(3); m > 0; m--) input = mutate(input);
    } else {
      input = Buffer.alloc(int(64));
      for (let i = 0; i < input.length; i++) input[i] = pick([int(256), 0x30 + int(10), 0x3a, 0x00, 0x2c]);
    }
    const whole = run(input, []);
    const splits: number[] = [];
    for (let k = int(4), at = 0; k > 0; k--) splits.push((at = Math.min(input.length, at + int(input.length + 1))));
    const split = run(input, splits);
    expect(split.r).toBe(whole.r);
    if (whole.head) {
      expect(plain(split.head!.vars)).toEqual(plain(whole.head.vars));
      expect(split.head!.contentLength).toBe(whole.head.contentLength);
      expect(split.head!.headerBytes).toBe(whole.head.headerBytes);
      expect(split.bodyOffset).toBe(whole.bodyOffset);
      expect(whole.head.headerBytes).toBe(whole.bodyOffset);
      expect(Number.isSafeInteger(whole.head.contentLength)).toBe(true);
      // A head that parsed re-encodes to a head that parses to the same variables.
      const vars = plain(whole.head.vars);
      const again = kind === 'scgi' ? parseScgi(encodeScgiRequest(vars, vars.CONTENT_LENGTH), { maxHeaderBytes: 1 << 20 }) : safeUwsgi(vars);
      if (again) expect(plain(again.vars)).toEqual(vars);
      stats.ok++;
    } else if (whole.r === 'incomplete') stats.incomplete++;
    else {
      stats.errors++;
      stats.messages.add(whole.r.replace(/\d+/g, 'N').replace(/"[^"]*"/g, 'S').replace(/0x[0-9a-f]{2}( \(S\))?/g, 'B'));
    }
  }
  return stats;
}

function safeUwsgi(vars: Record<string, string>): ParsedRequestHead | null {
  try {
    return parseUwsgi(encodeUwsgiRequest(vars));
  } catch (e) {
    if (e instanceof RangeError) return null;
    throw e;
  }
}

describe('fuzzing (bounded; FUZZ_ITERATIONS=N for more)', () => {
  const iterations = Number(process.env.FUZZ_ITERATIONS ?? 10_000);
  const seed = Number(process.env.FUZZ_SEED ?? 20240605);
  for (const kind of ['scgi', 'uwsgi'] as const) {
    it(`${kind}: ${iterations} random and mutated frames: only ProtocolErrors, split-independent, bounded`, () => {
      const started = Date.now();
      const stats = fuzz(kind, iterations, seed + (kind === 'scgi' ? 0 : 1));
      const seconds = (Date.now() - started) / 1000;
      if (process.env.FUZZ_ITERATIONS) {
        process.stdout.write(`fuzz ${kind}: ${iterations} inputs in ${seconds.toFixed(1)} s (seed ${seed}): ${stats.ok} parsed, ${stats.errors} rejected, ${stats.incomplete} incomplete; ${stats.messages.size} distinct errors\n`);
      }
      expect(stats.ok).toBeGreaterThan(iterations / 20);
      expect(stats.errors).toBeGreaterThan(iterations / 5);
      expect(stats.messages.size).toBeGreaterThan(kind === 'scgi' ? 12 : 6);
    }, 600_000);
  }
});
