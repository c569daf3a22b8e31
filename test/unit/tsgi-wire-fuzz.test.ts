/**
 * A bounded, seeded fuzz of the daemon protocol parser and decoders
 * (src/transports/protocols/tsgi-wire.ts), both directions. Each input is a valid frame
 * stream (random frames in a legal order), left intact or mutated (bytes flipped, header
 * fields overwritten, truncated, garbage inserted or spliced). For every input:
 *   - only WireProtocolError is ever thrown (by the parser or by a payload decoder);
 *   - limits hold: no frame longer than its type's limit comes out, and the parser never
 *     holds more than 8 + the largest limit;
 *   - feeding it byte by byte, and in random splits, gives exactly what one feed gives
 *     (the same frames, decoded the same way, and the same error);
 *   - an intact stream parses completely (consumed = its length) and decodes to what was
 *     encoded.
 * FUZZ_ITERATIONS=N for a longer run (it then prints its figures); FUZZ_SEED=S to replay.
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
  HELLO,
  LIMITS,
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
  encodeGoaway,
  encodeHead,
  encodeRequest,
  encodeStatus,
  encodeStatusRequest,
  type RawFrame,
  type WireSide,
} from '../../src/transports/protocols/tsgi-wire';

/** Lowered limits, so random lengths cross them often and "limits hold" is checked tightly. */
const FUZZ_LIMITS: Partial<Record<number, number>> = { [REQUEST]: 4096, [BODY]: 1024, [ABORT]: 256, [D_HEAD]: 4096, [D_BODY]: 1024, [D_STATUS]: 1024 };
const MAX_HELD = 8 + 4096;
const limitOf = (type: number) => Math.min(LIMITS[type], FUZZ_LIMITS[type] ?? Infinity);

function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

class Gen {
  constructor(readonly r: () => number) {}
  int(n: number): number {
    return Math.floor(this.r() * n);
  }
  pick<T>(xs: readonly T[]): T {
    return xs[this.int(xs.length)];
  }
  bytes(n: number): Buffer {
    const b = Buffer.alloc(n);
    for (let i = 0; i < n; i++) b[i] = this.int(256);
    return b;
  }
  str(max: number): string {
    const alphabet = ['a', 'Z', '_', '/', '=', ' ', 'é', '€', '\u{1f600}', '\0', '\n'];
    let s = '';
    for (let i = this.int(max + 1); i > 0; i--) s += this.pick(alphabet);
    return s;
  }
  latin1(max: number): string {
    let s = '';
    for (let i = this.int(max + 1); i > 0; i--) s += String.fromCharCode(32 + this.int(224));
    return s;
  }
}

/** A valid stream from `side`, as bytes. */
function validStream(g: Gen, side: WireSide): Buffer {
  const parts: Buffer[] = [];
  if (side === 'client') {
    parts.push(encodeClientHello(g.bytes(32), g.int(10) === 0 ? g.int(4) : 1));
    for (let k = g.int(4); k > 0; k--) {
      if (g.int(5) === 0) {
        parts.push(encodeStatusRequest());
        continue;
      }
      const vars: [string, string][] = [];
      for (let v = g.int(6); v > 0; v--) vars.push([g.pick(['REQUEST_METHOD', 'PATH_INFO', 'HTTP_X', g.str(6) || 'K']), g.str(12)]);
      const hasBody = g.int(2) === 0;
      parts.push(encodeRequest({ requestStartUs: BigInt(g.int(2 ** 31)) * 1000n, script: `/${g.str(8)}`, callable: g.str(5), applicationGroup: g.str(5), processGroup: g.str(5), vars, hasBody, reload: g.int(2) === 0, https: g.int(2) === 0 }));
      if (!hasBody) continue;
      for (let b = g.int(3); b > 0; b--) parts.push(encodeBody(g.bytes(1 + g.int(40))));
      parts.push(g.int(3) === 0 ? encodeAbort(g.str(10)) : encodeBodyEnd());
    }
  } else {
    parts.push(encodeDaemonHello(g.int(2 ** 32)));
    for (let k = g.int(4); k > 0; k--) {
      const what = g.int(6);
      if (what === 0) parts.push(encodeGoaway());
      else if (what === 1) parts.push(encodeStatus(JSON.stringify({ pid: g.int(1000), s: g.str(8) })));
      else if (what === 2) parts.push(encodeError(g.pick(Object.values(ErrorCode)), g.str(20)));
      else {
        const headers: [string, string][] = [];
        for (let h = g.int(5); h > 0; h--) headers.push([g.latin1(6) || 'X', g.latin1(10)]);
        parts.push(encodeHead(100 + g.int(500), g.latin1(10), headers));
        for (let b = g.int(3); b > 0; b--) parts.push(encodeBody(g.bytes(1 + g.int(40)), D_BODY));
        parts.push(g.int(4) === 0 ? encodeError(ErrorCode.APP, g.str(10)) : encodeEnd());
      }
    }
    // Sometimes the stream ends the connection.
    if (g.int(4) === 0) parts.push(encodeError(ErrorCode.PROTOCOL, 'bye', true));
  }
  return Buffer.concat(parts);
}

function mutate(g: Gen, input: Buffer): Buffer {
  const b = Buffer.from(input);
  switch (g.int(7)) {
    case 0: {
      for (let k = 1 + g.int(3); k > 0 && b.length > 0; k--) b[g.int(b.length)] ^= 1 << g.int(8);
      return b;
    }
    case 1: {
      // Overwrite one header-ish byte: frames start at small offsets often enough.
      const at = g.int(Math.max(1, b.length));
      if (b.length > 0) b[at] = g.pick([0, 1, 2, 3, 4, 5, 6, 7, 0x80, 0x81, 0x82, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0xff]);
      return b;
    }
    case 2:
      return b.subarray(0, g.int(b.length + 1));
    case 3: {
      const at = g.int(b.length + 1);
      return Buffer.concat([b.subarray(0, at), g.bytes(1 + g.int(16)), b.subarray(at)]);
    }
    case 4: {
      // A length field set to something random, big or small.
      const at = g.int(Math.max(1, b.length - 4));
      if (b.length >= 4) b.writeUInt32BE(g.pick([0, 1, 7, 40, 1023, 1025, 4097, 0x7fffffff, 0xffffffff, g.int(2 ** 32)]) >>> 0, at);
      return b;
    }
    case 5:
      return Buffer.concat([b, g.bytes(g.int(64))]);
    default: {
      const at = g.int(b.length + 1);
      const from = g.int(b.length + 1);
      return Buffer.concat([b.subarray(0, at), b.subarray(from, from + g.int(64)), b.subarray(at)]);
    }
  }
}

/** Decodes a frame with its type's decoder; a string describing the result or the error. */
function decodeFrame(f: RawFrame): string {
  try {
    let v: unknown;
    switch (f.type) {
      case HELLO:
        v = decodeClientHello(f.payload);
        break;
      case REQUEST:
        v = decodeRequest(f.payload, f.flags);
        break;
      case ABORT:
        v = decodeAbort(f.payload);
        break;
      case D_HELLO:
        v = decodeDaemonHello(f.payload);
        break;
      case D_HEAD:
        v = decodeHead(f.payload);
        break;
      case D_ERROR:
        v = decodeError(f.payload);
        break;
      case D_STATUS:
        v = decodeStatus(f.payload);
        break;
      default:
        v = f.payload.toString('hex');
    }
    return `${f.type}/${f.flags}: ${JSON.stringify(v, (_k, x: unknown) => (typeof x === 'bigint' ? `${x}n` : x))}`;
  } catch (e) {
    if (!(e instanceof WireProtocolError)) throw new Error(`a decoder threw ${String(e)} (not a WireProtocolError) for frame type ${f.type}`, { cause: e });
    return `${f.type}/${f.flags}: rejected: ${e.message}`;
  }
}

interface Result {
  frames: string[];
  error: string | null;
  consumed: number;
}

/** Parses `input` fed in the given pieces, checking the limits after every piece. */
function run(input: Buffer, side: WireSide, cuts: number[]): Result {
  const p = new WireParser({ from: side, limits: FUZZ_LIMITS });
  const frames: string[] = [];
  let error: string | null = null;
  let last = 0;
  for (const cut of [...cuts, input.length]) {
    try {
      p.read(input.subarray(last, cut), (f) => {
        if (f.payload.length > limitOf(f.type)) throw new Error(`a ${f.type} frame of ${f.payload.length} bytes passed the limit ${limitOf(f.type)}`);
        frames.push(decodeFrame(f));
      });
    } catch (e) {
      if (!(e instanceof WireProtocolError)) throw e;
      error = e.message;
      break;
    }
    if (p.bufferedBytes > MAX_HELD) throw new Error(`the parser holds ${p.bufferedBytes} bytes`);
    last = cut;
  }
  return { frames, error, consumed: error ? -1 : p.consumed };
}

function fuzz(side: WireSide, iterations: number, seed: number) {
  const g = new Gen(rng(seed));
  const stats = { ok: 0, errors: 0, incomplete: 0, messages: new Set<string>() };
  for (let i = 0; i < iterations; i++) {
    const valid = validStream(g, side);
    const intact = g.int(5) === 0;
    const input = intact ? valid : mutate(g, valid);
    const whole = run(input, side, []);
    const bytewise = input.length <= 1500 || i % 16 === 0 ? run(input, side, Array.from({ length: input.length }, (_, k) => k)) : null;
    const cuts = Array.from({ length: g.int(6) }, () => g.int(input.length + 1)).sort((a, b) => a - b);
    const random = run(input, side, cuts);
    for (const other of [bytewise, random]) {
      if (other) expect(other, `seed ${seed}, input #${i} (${input.toString('hex').slice(0, 200)})`).toEqual(whole);
    }
    if (intact) {
      expect(whole.error, `intact input #${i} rejected`).toBeNull();
      expect(whole.consumed).toBe(input.length);
      expect(whole.frames.join('\n')).not.toMatch(/rejected/);
    }
    if (whole.error) {
      stats.errors++;
      stats.messages.add(whole.error.replace(/\d+/g, 'N').replace(/"[^"]*"/g, 'S').replace(/0x[0-9a-f]{2}( \(S\))?/g, 'B'));
    } else if (whole.consumed === input.length && !whole.frames.some((f) => f.includes('rejected'))) stats.ok++;
    else stats.incomplete++;
    for (const f of whole.frames) {
      const m = /rejected: (.*)$/.exec(f);
      if (m) stats.messages.add(m[1].replace(/\d+/g, 'N').replace(/"[^"]*"/g, 'S'));
    }
  }
  return stats;
}

describe('fuzzing (bounded; FUZZ_ITERATIONS=N for more)', () => {
  const iterations = Number(process.env.FUZZ_ITERATIONS ?? 3000);
  const seed = Number(process.env.FUZZ_SEED ?? 20261121);
  for (const side of ['client', 'daemon'] as const) {
    it(`${side} frames: ${iterations} valid and mutated streams: only WireProtocolErrors, limits hold, split-independent`, () => {
      const started = Date.now();
      const stats = fuzz(side, iterations, seed + (side === 'client' ? 0 : 1));
      const seconds = (Date.now() - started) / 1000;
      if (process.env.FUZZ_ITERATIONS) {
        process.stdout.write(
          `fuzz tsgi-wire ${side}: ${iterations} inputs in ${seconds.toFixed(1)} s (seed ${seed}): ${stats.ok} parsed, ${stats.errors} rejected, ${stats.incomplete} incomplete or with a rejected payload; ${stats.messages.size} distinct errors\n`,
        );
      }
      // The generator must reach both outcomes, and many different rules.
      expect(stats.ok).toBeGreaterThan(iterations / 10);
      expect(stats.errors).toBeGreaterThan(iterations / 5);
      expect(stats.messages.size).toBeGreaterThan(15);
    }, 600_000);
  }

  it('the frame types of the protocol are all generated (the generator is not vacuous)', () => {
    const g = new Gen(rng(1));
    const seen = { client: new Set<number>(), daemon: new Set<number>() };
    for (let i = 0; i < 300; i++) {
      for (const side of ['client', 'daemon'] as const) {
        for (const f of new WireParser({ from: side }).feed(validStream(g, side))) seen[side].add(f.type);
      }
    }
    expect([...seen.client].sort()).toEqual([HELLO, REQUEST, BODY, BODY_END, ABORT, STATUS].sort());
    expect([...seen.daemon].sort()).toEqual([D_HELLO, D_HEAD, D_BODY, D_END, D_ERROR, D_GOAWAY, D_STATUS].sort());
  });
});
