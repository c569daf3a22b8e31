/**
 * native/wire.c, the Apache child's side of docs/protocol.md: builds native/test/wire_test
 * and wire_fuzz (ASan+UBSan) with CMake in build/native-test, runs the C unit checks and a
 * bounded fuzz run (FUZZ_ITERATIONS=N for a longer one, FUZZ_SEED=S to replay), and
 * cross-checks the C codec against the TypeScript one (src/transports/protocols/tsgi-wire.ts):
 * daemon frames encoded in TypeScript parse in C to exactly what was encoded, and REQUEST
 * frames encoded in C are byte-identical to TypeScript's and decode to the same fields.
 */
import { describe, it, expect, beforeAll } from 'vitest';
import { spawnSync } from 'node:child_process';
import * as path from 'node:path';
import {
  D_HEAD,
  FRAME_HEADER_BYTES,
  REQUEST,
  decodeRequest,
  encodeBody,
  encodeDaemonHello,
  encodeEnd,
  encodeError,
  encodeGoaway,
  encodeHead,
  encodeRequest,
  encodeStatus,
} from '../../src/transports/protocols/tsgi-wire';

const root = path.resolve(__dirname, '../..');
const buildDir = path.join(root, 'build/native-test');
const bin = (name: string) => path.join(buildDir, 'test', name);
const iterations = Number(process.env.FUZZ_ITERATIONS ?? 4000);
const seed = process.env.FUZZ_SEED ?? String(Date.now() % 1_000_000_007);

function run(cmd: string, args: string[], input?: Buffer | string, timeout = 120_000) {
  const r = spawnSync(cmd, args, { cwd: root, input, timeout, maxBuffer: 256 * 1024 * 1024 });
  if (r.error) throw r.error;
  return { code: r.status, signal: r.signal, stdout: r.stdout, stderr: r.stderr.toString() };
}

beforeAll(() => {
  for (const args of [
    ['-S', 'native', '-B', buildDir, '-DCMAKE_BUILD_TYPE=Debug'],
    ['--build', buildDir, '--target', 'wire_test', 'wire_fuzz'],
  ]) {
    const r = run('cmake', args);
    if (r.code !== 0) throw new Error(`cmake ${args.join(' ')} failed (${r.code}):\n${r.stdout}\n${r.stderr}`);
  }
}, 180_000);

/** Seeded PRNG (mulberry32): a failing cross-check replays with FUZZ_SEED. */
function rng(s: number) {
  return () => {
    s = (s + 0x6d2b79f5) | 0;
    let t = Math.imul(s ^ (s >>> 15), 1 | s);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const hex = (b: Uint8Array | string) => {
  const h = Buffer.from(typeof b === 'string' ? Buffer.from(b, 'latin1') : b).toString('hex');
  return h === '' ? '-' : h;
};

describe('native wire.c', () => {
  it('passes its C unit checks under ASan+UBSan', () => {
    const r = run(bin('wire_test'), []);
    expect(r.stderr).toBe('');
    expect(r.stdout.toString()).toMatch(/^wire_test: \d+ checks, 0 failed$/m);
    expect(r.code).toBe(0);
  });

  it(`survives ${iterations} fuzz iterations (whole and split, mutated, garbage)`, () => {
    const r = run(bin('wire_fuzz'), [String(iterations), seed], undefined, 600_000);
    expect(r.stderr).toBe('');
    expect(r.stdout.toString()).toContain(`wire_fuzz: ok, ${iterations} iterations`);
    expect(r.code).toBe(0);
  }, 600_000);

  it('usage errors are clear', () => {
    const r = run(bin('wire_test'), ['bogus']);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain('usage: wire_test');
  });
});

describe('C and TypeScript codecs agree', () => {
  const rand = rng(Number(seed));
  const int = (n: number) => Math.floor(rand() * n);
  const tokenChars = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_!#$%&'*+.^`|~";
  const token = () => Array.from({ length: 1 + int(20) }, () => tokenChars[int(tokenChars.length)]).join('');
  // Header values and reasons as TypeScript encodes them: Latin-1, no CR/LF/NUL.
  const latin1 = (max: number) =>
    Array.from({ length: int(max) }, () => String.fromCharCode(int(4) ? 0x20 + int(0x5f) : 0xa0 + int(0x60))).join('');
  const unicode = (max: number) =>
    Array.from({ length: int(max) }, () => (int(5) ? String.fromCharCode(0x20 + int(0x5f)) : ['é', '€', '😀', '\n', '\u0000'][int(5)])).join('');

  it('daemon frames encoded in TypeScript parse in C to exactly what was encoded (whole streams)', () => {
    for (let round = 0; round < 20; round++) {
      const frames: Buffer[] = [];
      const want: string[] = [];
      const pid = 1 + int(4_000_000);
      frames.push(encodeDaemonHello(pid));
      want.push(`HELLO pid=${pid}`);
      const exchanges = 1 + int(5);
      for (let e = 0; e < exchanges; e++) {
        if (int(5) === 0) {
          frames.push(encodeGoaway());
          want.push('GOAWAY');
        }
        if (int(5) === 0) {
          const code = 1 + int(9);
          const msg = unicode(60);
          const close = int(2) === 1;
          frames.push(encodeError(code, msg, close));
          want.push(`ERROR flags=${close ? 1 : 0} code=${code} message=${hex(Buffer.from(msg, 'utf8'))}`);
          continue;
        }
        const status = 100 + int(500);
        const reason = latin1(30);
        const headers: [string, string][] = Array.from({ length: int(8) }, () => [token(), latin1(60)]);
        frames.push(encodeHead(status, reason, headers));
        want.push(`HEAD status=${status} reason=${hex(reason)} count=${headers.length}`);
        for (const [n, v] of headers) want.push(`H ${hex(n)} ${hex(v)}`);
        // Bodies past the 1 MiB frame limit come out as several BODY frames.
        const sizes = Array.from({ length: int(4) }, () => (int(10) === 0 ? (1 << 20) + 1 + int(5000) : 1 + int(3000)));
        for (const size of sizes) {
          const body = Buffer.alloc(size);
          for (let i = 0; i < size; i += 97) body[i] = int(256);
          frames.push(encodeBody(body, 0x83));
          for (let off = 0; off < size; off += 1 << 20) want.push(`BODY ${hex(body.subarray(off, Math.min(size, off + (1 << 20))))}`);
        }
        if (int(4) === 0) {
          const code = 1 + int(9);
          const msg = unicode(40);
          frames.push(encodeError(code, msg, true));
          want.push(`ERROR flags=1 code=${code} message=${hex(Buffer.from(msg, 'utf8'))}`);
        } else {
          const close = int(2) === 1;
          frames.push(encodeEnd(close));
          want.push(`END flags=${close ? 1 : 0}`);
        }
      }
      const r = run(bin('wire_test'), ['dump'], Buffer.concat(frames));
      expect(r.stderr).toBe('');
      expect(r.stdout.toString()).toBe(want.join('\n') + '\n');
    }
  });

  it('STATUS replies and a HEAD the C side refuses (CR/LF in a value) are seen the same way', () => {
    const json = JSON.stringify({ group: 'app', pid: 1, processes: [{ pid: 2, state: 'ready', note: 'é😀' }] });
    let r = run(bin('wire_test'), ['dump', '--status'], Buffer.concat([encodeDaemonHello(7), encodeStatus(json)]));
    expect(r.stdout.toString()).toBe(`HELLO pid=7\nSTATUS ${hex(Buffer.from(json, 'utf8'))}\n`);
    // The TypeScript codec does not police header values (the gateway does); the module
    // refuses response splitting on its own.
    r = run(bin('wire_test'), ['dump'], Buffer.concat([encodeDaemonHello(7), encodeHead(200, 'OK', [['X', 'a\r\nb']])]));
    expect(r.stdout.toString()).toBe('HELLO pid=7\nPROTOCOL-ERROR HEAD frame: header 1 (X): the value contains byte 0x0d at offset 1\n');
    expect(D_HEAD).toBe(0x82);
  });

  it('REQUEST frames encoded in C are byte-identical to TypeScript and decode to the same fields', () => {
    for (let round = 0; round < 40; round++) {
      const start = BigInt(int(2 ** 31)) * 1_000_000n + BigInt(int(1_000_000));
      const flags = int(8);
      const script = '/srv/' + unicode(30) + '.tsgi';
      const callable = int(2) ? 'application' : token();
      const applicationGroup = int(3) ? '' : unicode(20);
      const processGroup = token();
      const keys = new Set<string>();
      while (keys.size < int(25)) keys.add(int(2) ? 'HTTP_' + token().toUpperCase() : 'K' + unicode(15));
      const vars = [...keys].map((k) => [k, int(6) ? unicode(80) : ''] as [string, string]);
      const spec = [
        `${start} ${flags}`,
        hex(Buffer.from(script, 'utf8')),
        hex(Buffer.from(callable, 'utf8')),
        hex(Buffer.from(applicationGroup, 'utf8')),
        hex(Buffer.from(processGroup, 'utf8')),
        ...vars.map(([k, v]) => `${hex(Buffer.from(k, 'utf8'))} ${hex(Buffer.from(v, 'utf8'))}`),
      ].join('\n');
      const r = run(bin('wire_test'), ['encode-request'], spec + '\n');
      expect(r.stderr).toBe('');
      expect(r.code).toBe(0);
      const frame: Buffer = r.stdout;
      const ts = encodeRequest({
        requestStartUs: start,
        script,
        callable,
        applicationGroup,
        processGroup,
        vars,
        hasBody: (flags & 1) !== 0,
        reload: (flags & 2) !== 0,
        https: (flags & 4) !== 0,
      });
      expect(frame.equals(ts)).toBe(true);
      expect(frame[0]).toBe(REQUEST);
      expect(frame.readUInt32BE(4)).toBe(frame.length - FRAME_HEADER_BYTES);
      const q = decodeRequest(frame.subarray(FRAME_HEADER_BYTES), frame[1]);
      expect(q.requestStartUs).toBe(start);
      expect([q.script, q.callable, q.applicationGroup, q.processGroup]).toEqual([script, callable, applicationGroup, processGroup]);
      expect([q.hasBody, q.reload, q.https]).toEqual([(flags & 1) !== 0, (flags & 2) !== 0, (flags & 4) !== 0]);
      expect(q.count).toBe(vars.length);
      expect(Object.entries(q.vars)).toEqual(vars);
    }
  });

  it('a REQUEST over the 2 MiB limit is refused by the C encoder with the reason', () => {
    const big = 'ab'.repeat(2 << 20);
    const r = run(bin('wire_test'), ['encode-request'], `0 0\n${hex('/x.tsgi')}\n${hex('application')}\n-\n${hex('g')}\n${hex('K')} ${big}\n`);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain('REQUEST frame: the request\'s fields and 1 CGI variables take more than the 2097152-byte limit');
  });
});
