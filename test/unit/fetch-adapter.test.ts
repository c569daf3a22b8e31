/** The fetch-handler adapters (src/adapters/fetch.ts), through the real gateway core. */
import { describe, it, expect } from 'vitest';
import { fromFetch, toFetch } from '../../src/adapters/fetch';
import { runApp } from '../helpers/memory-sink';
import type { Application } from '../../src/tsgi';

describe('fromFetch: a fetch handler as a TSGI application', () => {
  it('builds the Request from the environ and sends the Response', async () => {
    let seen: Request | null = null;
    const app = fromFetch(async (req) => {
      seen = req;
      const headers = new Headers({ 'Content-Type': 'text/plain', 'X-Id': '7' });
      headers.append('Set-Cookie', 'a=1');
      headers.append('Set-Cookie', 'b=2');
      return new Response('created', { status: 201, statusText: 'Created', headers });
    });
    const r = await runApp(app, { path: '/items/1', query: 'q=x%20y', headers: { Host: 'example.test:8080', 'X-Trace': 'abc' } });
    expect(seen!.url).toBe('http://example.test:8080/items/1?q=x%20y');
    expect(seen!.method).toBe('GET');
    expect(seen!.headers.get('x-trace')).toBe('abc');
    expect(r.head?.status).toBe('201 Created');
    expect(r.head?.headers).toContainEqual(['set-cookie', 'a=1']);
    expect(r.head?.headers).toContainEqual(['set-cookie', 'b=2']);
    expect(r.head?.headers).toContainEqual(['x-id', '7']);
    expect(r.text).toBe('created');
  });

  it('streams the request body in and the response body out', async () => {
    const app = fromFetch(async (req) => {
      const text = await req.text();
      const stream = new ReadableStream<Uint8Array>({
        start(c) {
          for (const part of ['<', text, '>']) c.enqueue(new TextEncoder().encode(part));
          c.close();
        },
      });
      return new Response(stream, { headers: { 'Content-Type': 'text/plain' } });
    });
    const r = await runApp(app, { method: 'POST', headers: { 'Content-Length': '6', Host: 'h' }, body: [Buffer.from('abc'), Buffer.from('def')] });
    expect(r.text).toBe('<abcdef>');
    expect(r.chunks.length).toBe(3);
  });

  it('a handler that throws is a 500; a non-Response is a 500 naming it', async () => {
    const boom = await runApp(fromFetch(() => Promise.reject(new Error('handler failed'))), { headers: { Host: 'h' } });
    expect(boom.head?.code).toBe(500);
    expect(boom.logs[0].message).toContain('handler failed');
    const bad = await runApp(fromFetch((() => 'nope') as never), { headers: { Host: 'h' } });
    expect(bad.logs[0].message).toMatch(/must return a Response, got string/);
  });

  it('a client that goes away aborts request.signal and cancels the response stream', async () => {
    const controller = new AbortController();
    let cancelled = false;
    let signalAborted = false;
    const run = runApp(
      fromFetch((req) => {
        req.signal.addEventListener('abort', () => (signalAborted = true));
        const stream = new ReadableStream<Uint8Array>({
          start(c) {
            c.enqueue(new TextEncoder().encode('first'));
          },
          cancel() {
            cancelled = true;
          },
        });
        return new Response(stream, { headers: { 'Content-Type': 'text/plain' } });
      }),
      { signal: controller.signal, headers: { Host: 'h' } },
    );
    setTimeout(() => controller.abort(), 20);
    const r = await run;
    expect(r.outcome.state).toBe('client-gone');
    expect(signalAborted).toBe(true);
    // close() runs on the abort path without being awaited; the cancel settles just after.
    await new Promise((res) => setTimeout(res, 10));
    expect(cancelled).toBe(true);
  });
});

describe('toFetch: a TSGI application as a fetch handler', () => {
  const hello: Application = (environ, sr) => {
    sr('200 OK', [['Content-Type', 'text/plain'], ['X-Path', environ.PATH_INFO]]);
    return [`hello ${environ.QUERY_STRING} ${environ.HTTP_X_TRACE ?? '-'}`];
  };

  it('runs the app through the gateway and returns a Response', async () => {
    const res = await toFetch(hello)(new Request('http://h.test/caf%C3%A9?x=1', { headers: { 'X-Trace': 't1' } }));
    expect(res.status).toBe(200);
    expect(res.headers.get('x-path')).toBe('/café');
    expect(res.headers.get('content-length')).toBe(String(Buffer.byteLength('hello x=1 t1')));
    expect(await res.text()).toBe('hello x=1 t1');
  });

  it('a request body reaches tsgi.input', async () => {
    const echo: Application = async (environ, sr) => {
      const body = await environ['tsgi.input'].read();
      sr('200 OK', [['Content-Type', 'application/octet-stream']]);
      return [body];
    };
    const res = await toFetch(echo)(new Request('http://h/', { method: 'POST', body: 'posted bytes' }));
    expect(await res.text()).toBe('posted bytes');
  });

  it('spec violations are enforced: 500 before headers, an errored body after', async () => {
    const logs: string[] = [];
    const log = { log: (_l: string, m: string) => void logs.push(m) };
    const bad = await toFetch(((e: unknown, sr: (s: string, h: [string, string][]) => unknown) => (sr('200 OK', [['X', 'a\r\nb']]), [])) as Application, { log })(new Request('http://h/'));
    expect(bad.status).toBe(500);
    expect(logs[0]).toMatch(/CR or LF/);
    const mid = await toFetch(async function* (e, sr) {
      sr('200 OK', [['Content-Type', 'text/plain']]);
      yield 'part';
      throw new Error('mid-stream');
    } as Application, { log })(new Request('http://h/'));
    expect(mid.status).toBe(200);
    await expect(mid.text()).rejects.toThrow();
  });

  it('round trip: toFetch(fromFetch(handler)) behaves like the handler', async () => {
    const handler = (req: Request) => new Response(`${req.method} ${new URL(req.url).pathname}`, { status: 202, headers: { 'Content-Type': 'text/plain' } });
    const res = await toFetch(fromFetch(handler))(new Request('http://h.test/a/b'));
    expect(res.status).toBe(202);
    expect(await res.text()).toBe('GET /a/b');
  });
});
