/** tsgi.input (docs/spec.md §7) over byte sources, through RequestInput and the gateway. */
import { describe, it, expect } from 'vitest';
import { RequestInput } from '../../src/gateway/input';
import { BodyReadError } from '../../src/gateway/errors';
import { runApp } from '../helpers/memory-sink';

async function* source(...chunks: (string | Error)[]): AsyncGenerator<Uint8Array> {
  for (const c of chunks) {
    if (c instanceof Error) throw c;
    yield Buffer.from(c);
  }
}

describe('tsgi.input', () => {
  it('read(size) returns at most size bytes and an empty array at the end', async () => {
    const input = new RequestInput(source('hello ', 'world'), { contentLength: 11 });
    expect(Buffer.from(await input.read(3)).toString()).toBe('hel');
    expect(Buffer.from(await input.read(100)).toString()).toBe('lo ');
    expect(Buffer.from(await input.read()).toString()).toBe('world');
    const end = await input.read(10);
    expect(end).toBeInstanceOf(Uint8Array);
    expect(end.byteLength).toBe(0);
  });

  it('end of body comes exactly at CONTENT_LENGTH, even if the source has more', async () => {
    const input = new RequestInput(source('0123456789'), { contentLength: 4 });
    expect(Buffer.from(await input.read()).toString()).toBe('0123');
    expect((await input.read()).byteLength).toBe(0);
  });

  it('a chunked body (no length) is read to the end of the source', async () => {
    const input = new RequestInput(source('a', 'b', 'c'), { contentLength: null });
    const parts: string[] = [];
    for await (const c of input) parts.push(Buffer.from(c).toString());
    expect(parts).toEqual(['a', 'b', 'c']);
  });

  it('iteration after a partial read yields the rest', async () => {
    const input = new RequestInput(source('abcdef'), { contentLength: 6 });
    await input.read(2);
    const parts: string[] = [];
    for await (const c of input) parts.push(Buffer.from(c).toString());
    expect(parts.join('')).toBe('cdef');
  });

  it('a body shorter than CONTENT_LENGTH rejects; it is never end-of-body', async () => {
    const input = new RequestInput(source('abc'), { contentLength: 10 });
    await expect(input.read()).rejects.toThrow(/fewer bytes than CONTENT_LENGTH \(7 missing\)/);
    await expect(input.read(1)).rejects.toBeInstanceOf(BodyReadError);
  });

  it('a failing source rejects with a BodyReadError', async () => {
    const input = new RequestInput(source('ab', new Error('ECONNRESET')), { contentLength: null });
    expect(Buffer.from(await input.read(2)).toString()).toBe('ab');
    await expect(input.read(2)).rejects.toThrow(/could not be read: ECONNRESET/);
  });

  it('an abort rejects a pending read', async () => {
    const controller = new AbortController();
    const never = { [Symbol.asyncIterator]: () => ({ next: () => new Promise<IteratorResult<Uint8Array>>(() => undefined) }) };
    const input = new RequestInput(never, { contentLength: 5, signal: controller.signal });
    const p = input.read();
    controller.abort(new Error('client gone'));
    await expect(p).rejects.toThrow(/client gone/);
  });

  it('concurrent reads are refused', async () => {
    let release!: () => void;
    const slow = {
      [Symbol.asyncIterator]: () => ({
        next: () => new Promise<IteratorResult<Uint8Array>>((res) => (release = () => res({ done: false, value: Buffer.from('x') }))),
      }),
    };
    const input = new RequestInput(slow, { contentLength: 1 });
    const first = input.read();
    await expect(input.read()).rejects.toThrow(/concurrent reads/);
    release();
    expect(Buffer.from(await first).toString()).toBe('x');
  });

  it('onFirstRead (100-continue) fires once, on the first read only', async () => {
    let continues = 0;
    const input = new RequestInput(source('abc'), { contentLength: 3, onFirstRead: () => continues++ });
    expect(continues).toBe(0);
    await input.read(1);
    await input.read(1);
    expect(continues).toBe(1);
  });

  it('no body: read() is immediately empty', async () => {
    const input = new RequestInput(null, { contentLength: null });
    expect((await input.read()).byteLength).toBe(0);
  });

  it('read(size) rejects a non-integer size', async () => {
    const input = new RequestInput(source('abc'), { contentLength: 3 });
    await expect(input.read(1.5)).rejects.toThrow(/size must be an integer/);
  });

  it('through the gateway: an app echoes its body', async () => {
    const r = await runApp(
      async (e, sr) => {
        const body = await e['tsgi.input'].read();
        sr('200 OK', [['Content-Type', 'application/octet-stream']]);
        return [body];
      },
      { method: 'POST', headers: { 'Content-Length': '7' }, body: [Buffer.from('abc'), Buffer.from('defg')] },
    );
    expect(r.text).toBe('abcdefg');
  });

  it('through the gateway: a malformed CONTENT_LENGTH is a 400 naming it', async () => {
    const r = await runApp((e, sr) => (sr('200 OK', [['Content-Type', 'text/plain']]), []), { method: 'POST', headers: { 'Content-Length': 'abc' } });
    expect(r.head?.code).toBe(400);
    expect(r.logs[0].message).toMatch(/malformed CONTENT_LENGTH "abc"/);
  });
});
