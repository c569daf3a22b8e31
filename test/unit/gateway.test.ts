/**
 * The gateway core against docs/spec.md, one rule per test, through the real
 * runRequest() with an in-memory sink.
 */
import { describe, it, expect } from 'vitest';
import { runApp } from '../helpers/memory-sink';
import type { Application, Environ } from '../../src/tsgi';

const ok = (sr: Parameters<Application>[1], headers: [string, string][] = [['Content-Type', 'text/plain']]) => sr('200 OK', headers);

describe('application shapes (§3, §6)', () => {
  it('sync array body gets a computed Content-Length', async () => {
    const r = await runApp((e, sr) => (ok(sr), ['Hello ', 'World']));
    expect(r.text).toBe('Hello World');
    expect(r.head?.headers).toContainEqual(['Content-Length', '11']);
    expect(r.outcome).toEqual({ state: 'complete', code: 200, bytes: 11 });
  });

  it('a generator body streams chunk by chunk and gets no computed length', async () => {
    const r = await runApp(function* (e, sr) {
      ok(sr);
      yield 'a';
      yield new Uint8Array([98]);
      yield 'c';
    });
    expect(r.chunks.map((c) => Buffer.from(c).toString())).toEqual(['a', 'b', 'c']);
    expect(r.head?.contentLength).toBeNull();
  });

  it('an async generator body works', async () => {
    const r = await runApp(async function* (e, sr) {
      ok(sr);
      await new Promise((res) => setTimeout(res, 1));
      yield 'async';
    });
    expect(r.text).toBe('async');
  });

  it('a Promise of a body works', async () => {
    const r = await runApp(async (e, sr) => {
      await new Promise((res) => setTimeout(res, 1));
      ok(sr);
      return ['later'];
    });
    expect(r.text).toBe('later');
  });

  it('a class is constructed with new and its instance iterated', async () => {
    class App {
      constructor(
        private e: Environ,
        private sr: Parameters<Application>[1],
      ) {}
      *[Symbol.iterator]() {
        this.sr('200 OK', [['Content-Type', 'text/plain']]);
        yield `class ${this.e.REQUEST_METHOD}`;
      }
    }
    const r = await runApp(App as unknown as Application);
    expect(r.text).toBe('class GET');
  });

  it('strings are UTF-8 encoded', async () => {
    const r = await runApp((e, sr) => (ok(sr), ['café ☕']));
    expect(Buffer.concat(r.chunks)).toEqual(Buffer.from('café ☕', 'utf8'));
    expect(r.head?.headers).toContainEqual(['Content-Length', String(Buffer.byteLength('café ☕'))]);
  });
});

describe('bad applications get defined outcomes (§10)', () => {
  it('returning undefined → 500 and one log entry', async () => {
    const r = await runApp(((e: Environ, sr: Parameters<Application>[1]) => void ok(sr)) as unknown as Application);
    expect(r.head?.code).toBe(500);
    expect(r.outcome.state).toBe('error');
    expect(r.logs.filter((l) => l.level === 'error')).toHaveLength(1);
    expect(r.logs[0].message).toMatch(/returned undefined/);
  });

  it('returning a non-iterable → 500', async () => {
    const r = await runApp((() => 42) as unknown as Application);
    expect(r.head?.code).toBe(500);
    expect(r.logs[0].message).toMatch(/non-iterable number 42/);
  });

  it('returning a bare string → 500 naming the fix', async () => {
    const r = await runApp(((e: Environ, sr: Parameters<Application>[1]) => (ok(sr), 'Hello')) as unknown as Application);
    expect(r.head?.code).toBe(500);
    expect(r.logs[0].message).toMatch(/return it inside an array/);
  });

  it('yielding numbers before headers → 500', async () => {
    const r = await runApp(((e: Environ, sr: Parameters<Application>[1]) => (ok(sr), [1, 2, 3])) as unknown as Application);
    expect(r.head?.code).toBe(500);
    expect(r.logs[0].message).toMatch(/body chunk must be a Uint8Array or a string, got number 1/);
  });

  it('yielding a number after headers went out → aborted, never ended', async () => {
    const r = await runApp(function* (e, sr) {
      ok(sr);
      yield 'first';
      yield 7 as unknown as string;
    });
    expect(r.head?.code).toBe(200);
    expect(r.aborted).toBeInstanceOf(Error);
    expect(r.ended).toBe(false);
    expect(r.outcome.state).toBe('aborted');
    expect(r.logs.filter((l) => l.level === 'error')).toHaveLength(1);
  });

  it('throwing synchronously → 500 with the stack in the log', async () => {
    const r = await runApp(() => {
      throw new Error('kaboom');
    });
    expect(r.head?.code).toBe(500);
    expect(r.text).toContain('Internal Server Error');
    expect(r.text).not.toContain('kaboom');
    expect(r.logs).toHaveLength(1);
    expect(r.logs[0].message).toMatch(/kaboom\n\s+at /);
  });

  it('a rejected Promise → 500', async () => {
    const r = await runApp(async () => {
      throw new Error('async kaboom');
    });
    expect(r.head?.code).toBe(500);
    expect(r.logs[0].message).toContain('async kaboom');
  });

  it('throwing mid-stream → aborted after the bytes already sent', async () => {
    const r = await runApp(async function* (e, sr) {
      ok(sr);
      yield 'partial';
      throw new Error('mid-stream');
    });
    expect(r.text).toBe('partial');
    expect(r.events).toEqual(['head', 'body', 'abort']);
    expect(r.logs[0].message).toMatch(/after the response started.*\n.*mid-stream/s);
  });

  it('never calling startResponse → 500', async () => {
    const r = await runApp(() => []);
    expect(r.head?.code).toBe(500);
    expect(r.logs[0].message).toMatch(/without calling startResponse/);
  });

  it('a body chunk before startResponse → 500', async () => {
    const r = await runApp(() => ['too early']);
    expect(r.head?.code).toBe(500);
    expect(r.logs[0].message).toMatch(/before calling startResponse/);
  });
});

describe('startResponse rules (§5)', () => {
  const bad = async (status: unknown, headers: unknown) => {
    const r = await runApp((e, sr) => {
      sr(status as string, headers as [string, string][]);
      return ['x'];
    });
    expect(r.head?.code).toBe(500);
    return r.logs[0].message;
  };

  it('status must be "NNN Reason"', async () => {
    expect(await bad('200', [])).toMatch(/status must be "NNN Reason"/);
    expect(await bad('OK 200', [])).toMatch(/status must be/);
    expect(await bad(200, [])).toMatch(/status must be a string/);
  });

  it('1xx statuses are refused', async () => {
    expect(await bad('100 Continue', [])).toMatch(/informational/);
  });

  it('CR/LF in the status is refused', async () => {
    expect(await bad('200 OK\r\nX-Evil: 1', [])).toMatch(/CR or LF/);
  });

  it('CR/LF in a header value is refused', async () => {
    expect(await bad('200 OK', [['X-A', 'a\r\nSet-Cookie: evil=1']])).toMatch(/X-A contains CR or LF/);
  });

  it('CR/LF in a header name is refused', async () => {
    expect(await bad('200 OK', [['X-A\r\nB', 'a']])).toMatch(/name contains CR or LF/);
  });

  it('header names must be tokens', async () => {
    expect(await bad('200 OK', [['Bad Name', 'v']])).toMatch(/not a valid token/);
    expect(await bad('200 OK', [['', 'v']])).toMatch(/not a valid token/);
  });

  it('header values must be Latin-1 without control characters', async () => {
    expect(await bad('200 OK', [['X-A', 'nul\0']])).toMatch(/control or non-Latin-1/);
    expect(await bad('200 OK', [['X-A', 'snow ☃']])).toMatch(/control or non-Latin-1/);
  });

  it('headers must be an array of string pairs', async () => {
    expect(await bad('200 OK', { 'Content-Type': 'text/plain' })).toMatch(/headers must be an array/);
    expect(await bad('200 OK', [['X-A']])).toMatch(/must be a \[name, value\] pair/);
    expect(await bad('200 OK', [['X-A', 5]])).toMatch(/must be strings/);
  });

  it.each(['Connection', 'Keep-Alive', 'Transfer-Encoding', 'Upgrade', 'TE', 'Trailer', 'Proxy-Authenticate'])('hop-by-hop header %s is refused', async (name) => {
    expect(await bad('200 OK', [[name, 'x']])).toMatch(/hop-by-hop/);
  });

  it('a Status header is refused', async () => {
    expect(await bad('200 OK', [['Status', '404']])).toMatch(/Status/);
  });

  it('a malformed Content-Length is refused', async () => {
    expect(await bad('200 OK', [['Content-Length', '-1']])).toMatch(/non-negative integer/);
  });

  it('a second call without excInfo is an error', async () => {
    const r = await runApp((e, sr) => {
      ok(sr);
      ok(sr);
      return ['x'];
    });
    expect(r.head?.code).toBe(500);
    expect(r.logs[0].message).toMatch(/second time without excInfo/);
  });

  it('excInfo before the headers are sent replaces them', async () => {
    const r = await runApp((e, sr) => {
      sr('200 OK', [['Content-Type', 'text/plain'], ['X-First', '1']]);
      try {
        throw new Error('handled');
      } catch (err) {
        sr('503 Service Unavailable', [['Content-Type', 'text/plain']], err);
      }
      return ['sorry'];
    });
    expect(r.head?.code).toBe(503);
    expect(r.head?.headers).not.toContainEqual(['X-First', '1']);
    expect(r.text).toBe('sorry');
  });

  it('excInfo after the headers were sent re-throws the original error', async () => {
    const original = new Error('original failure');
    let rethrown: unknown = null;
    const r = await runApp(async function* (e, sr) {
      ok(sr);
      yield 'part';
      try {
        sr('500 Internal Server Error', [['Content-Type', 'text/plain']], original);
      } catch (err) {
        rethrown = err;
        throw err;
      }
    });
    expect(rethrown).toBe(original);
    expect(r.outcome.state).toBe('aborted');
  });
});

describe('headers go out with the first non-empty chunk (§6)', () => {
  it('empty chunks do not send the head', async () => {
    const seen: string[] = [];
    const r = await runApp(function* (e, sr) {
      ok(sr);
      yield '';
      seen.push('after empty');
      yield 'x';
    });
    expect(r.events).toEqual(['head', 'body', 'end']);
    expect(seen).toEqual(['after empty']);
  });

  it('an empty body sends the head at the end', async () => {
    const r = await runApp(function* (e, sr) {
      ok(sr);
    });
    expect(r.events).toEqual(['head', 'end']);
  });

  it('an error after startResponse but before any chunk still yields a clean 500', async () => {
    const r = await runApp(function* (e, sr) {
      sr('200 OK', [['Content-Type', 'text/plain']]);
      yield '';
      throw new Error('changed my mind');
    });
    expect(r.head?.code).toBe(500);
    expect(r.ended).toBe(true);
  });
});

describe('write() (§6)', () => {
  it('write() data comes before the iterable', async () => {
    const r = await runApp((e, sr) => {
      const write = ok(sr);
      write('one ');
      write(new Uint8Array([116, 119, 111, 32]));
      return ['three'];
    });
    expect(r.text).toBe('one two three');
  });

  it('write() of a non-chunk throws a SpecViolation to the caller', async () => {
    let caught: unknown;
    await runApp((e, sr) => {
      const w = ok(sr);
      return {
        *[Symbol.iterator]() {
          yield 'x';
          try {
            w(5 as unknown as string);
          } catch (err) {
            caught = err;
          }
        },
      };
    });
    expect(String(caught)).toMatch(/write\(\) must be a Uint8Array or a string/);
  });

  it('write() with backpressure keeps order', async () => {
    const r = await runApp(
      (e, sr) => {
        const write = ok(sr);
        for (let i = 0; i < 5; i++) write(String(i));
        return ['5', '6'];
      },
      {},
      { slow: true },
    );
    expect(r.text).toBe('0123456');
  });
});

describe('Content-Length (§6)', () => {
  it('declaring 5 and sending 10 in the first chunk → 500 before headers', async () => {
    const r = await runApp((e, sr) => (sr('200 OK', [['Content-Type', 'text/plain'], ['Content-Length', '5']]), ['0123456789']));
    expect(r.head?.code).toBe(500);
    expect(r.logs[0].message).toMatch(/declared Content-Length: 5 but sent more/);
  });

  it('exceeding it later → aborted with exactly the declared bytes sent', async () => {
    const r = await runApp(function* (e, sr) {
      sr('200 OK', [['Content-Type', 'text/plain'], ['Content-Length', '5']]);
      yield '012';
      yield '345';
    });
    expect(r.text).toBe('012');
    expect(r.outcome.state).toBe('aborted');
  });

  it('sending fewer bytes than declared → aborted, never complete', async () => {
    const r = await runApp(function* (e, sr) {
      sr('200 OK', [['Content-Type', 'text/plain'], ['Content-Length', '10']]);
      yield '01234';
    });
    expect(r.outcome.state).toBe('aborted');
    expect(r.ended).toBe(false);
    expect(r.logs[0].message).toMatch(/sent only 5 bytes/);
  });
});

describe('bodyless responses (§6)', () => {
  it('HEAD: head with the length, no body bytes, body still closed', async () => {
    let closed = false;
    const r = await runApp(
      (e, sr) => {
        ok(sr);
        return Object.assign(['hello'], { close: () => void (closed = true) });
      },
      { method: 'HEAD' },
    );
    expect(r.head?.bodyless).toBe(true);
    expect(r.head?.headers).toContainEqual(['Content-Length', '5']);
    expect(r.chunks).toHaveLength(0);
    expect(closed).toBe(true);
  });

  it('204 with a body is an error', async () => {
    const r = await runApp((e, sr) => (sr('204 No Content', []), ['x']));
    expect(r.head?.code).toBe(500);
    expect(r.logs[0].message).toMatch(/204 does not allow a body/);
  });

  it('304 without a body is fine and gets no Content-Length', async () => {
    const r = await runApp((e, sr) => (sr('304 Not Modified', []), []));
    expect(r.head?.code).toBe(304);
    expect(r.head?.headers).toEqual([]);
  });
});

describe('close() and return() are always called (§6)', () => {
  const closable = (chunks: string[], onClose: () => void) => Object.assign(chunks, { close: onClose });

  it('close() on success, before the response ends', async () => {
    let endedAtClose: boolean | null = null;
    let rec: { ended: boolean } = { ended: false };
    const r = await runApp((e, sr) => (ok(sr), closable(['x'], () => void (endedAtClose = rec.ended))));
    rec = r;
    expect(endedAtClose).toBe(false);
    expect(r.ended).toBe(true);
  });

  it('close() when the body throws', async () => {
    let closed = 0;
    await runApp((e, sr) => {
      ok(sr);
      return {
        *[Symbol.iterator]() {
          yield 'a';
          throw new Error('x');
        },
        close: () => void closed++,
      };
    });
    expect(closed).toBe(1);
  });

  it('an async close() is awaited before end', async () => {
    const order: string[] = [];
    const r = await runApp((e, sr) => {
      ok(sr);
      return Object.assign(['x'], {
        close: async () => {
          await new Promise((res) => setTimeout(res, 5));
          order.push('closed');
        },
      });
    });
    expect(order).toEqual(['closed']);
    expect(r.ended).toBe(true);
  });

  it('a generator cut short by an error gets return() (its finally runs)', async () => {
    let finallyRan = false;
    await runApp(function* (e, sr) {
      try {
        ok(sr);
        yield 'a';
        yield 5 as unknown as string;
        yield 'never';
      } finally {
        finallyRan = true;
      }
    });
    expect(finallyRan).toBe(true);
  });

  it('client disconnect: an app that never finishes gets return() and close(), outcome client-gone, one log line', async () => {
    const controller = new AbortController();
    let finallyRan = false;
    let closed = false;
    const run = runApp(
      (e, sr) => {
        ok(sr);
        const gen = (async function* () {
          try {
            yield 'first';
            await new Promise(() => undefined); // never resolves
          } finally {
            finallyRan = true;
          }
        })();
        return Object.assign(gen, { close: () => void (closed = true) });
      },
      { signal: controller.signal },
    );
    setTimeout(() => controller.abort(), 20);
    const r = await run;
    expect(r.outcome.state).toBe('client-gone');
    expect(r.aborted).toBeInstanceOf(Error);
    expect(closed).toBe(true);
    expect(r.logs).toHaveLength(1);
    expect(r.logs[0].level).toBe('info');
    // return() on a generator suspended in an await is queued by the language; it runs
    // when the await settles — which never happens here. close() is the guaranteed hook.
    expect(finallyRan).toBe(false);
  });

  it('client disconnect while the app promise is pending: the late body is still closed', async () => {
    const controller = new AbortController();
    let resolveLate!: (v: unknown) => void;
    let closed = false;
    const run = runApp(() => new Promise((res) => (resolveLate = res)) as never, { signal: controller.signal });
    setTimeout(() => controller.abort(), 10);
    const r = await run;
    expect(r.outcome.state).toBe('client-gone');
    resolveLate(Object.assign([], { close: () => void (closed = true) }));
    await new Promise((res) => setTimeout(res, 5));
    expect(closed).toBe(true);
  });

  it('the app sees the abort through tsgi.signal', async () => {
    const controller = new AbortController();
    let sawAbort = false;
    const run = runApp(
      async (e, sr) => {
        await new Promise<void>((res) => e['tsgi.signal'].addEventListener('abort', () => res()));
        sawAbort = true;
        ok(sr);
        return [];
      },
      { signal: controller.signal },
    );
    setTimeout(() => controller.abort(), 10);
    await run;
    await new Promise((res) => setTimeout(res, 5));
    expect(sawAbort).toBe(true);
  });

  it('a close() that throws is logged and does not break a complete response', async () => {
    const r = await runApp((e, sr) => (ok(sr), closable(['x'], () => { throw new Error('close failed'); })));
    expect(r.outcome.state).toBe('complete');
    expect(r.logs[0].message).toMatch(/close\(\) threw[\s\S]*close failed/);
  });
});

describe('environ (§4)', () => {
  it('has the tsgi.* keys with their types', async () => {
    let env!: Environ;
    await runApp((e, sr) => {
      env = e;
      ok(sr);
      return [];
    });
    expect(env['tsgi.version']).toEqual([1, 0]);
    expect(env['tsgi.url_scheme']).toBe('http');
    expect(typeof env['tsgi.input'].read).toBe('function');
    expect(typeof env['tsgi.errors'].write).toBe('function');
    expect(env['tsgi.multithread']).toBe(false);
    expect(env['tsgi.multiprocess']).toBe(false);
    expect(env['tsgi.run_once']).toBe(false);
    expect(env['tsgi.signal']).toBeInstanceOf(AbortSignal);
    expect(typeof env['tsgi.file_wrapper']).toBe('function');
  });

  it('tsgi.errors goes to the error log line by line', async () => {
    const r = await runApp((e, sr) => {
      e['tsgi.errors'].write('one\ntw');
      e['tsgi.errors'].write('o\nthree');
      e['tsgi.errors'].flush();
      ok(sr);
      return [];
    });
    expect(r.logs.map((l) => l.message)).toEqual(['one', 'two', 'three']);
    expect(r.logs.every((l) => l.level === 'error')).toBe(true);
  });
});

describe('tsgi.file_wrapper (§9)', () => {
  it('streams a file and closes it', async () => {
    const { writeFileSync, mkdtempSync } = await import('node:fs');
    const { join } = await import('node:path');
    const { tmpdir } = await import('node:os');
    const dir = mkdtempSync(join(tmpdir(), 'tsgi-fw-'));
    const file = join(dir, 'f.bin');
    const data = Buffer.alloc(200_000, 7);
    writeFileSync(file, data);
    let fd: number | undefined;
    const r = await runApp((e, sr) => {
      ok(sr, [['Content-Type', 'application/octet-stream']]);
      const body = e['tsgi.file_wrapper']!(file, 65536);
      return {
        async *[Symbol.asyncIterator]() {
          for await (const c of body) {
            fd = body.fd;
            yield c;
          }
        },
        close: () => body.close(),
      };
    });
    expect(Buffer.concat(r.chunks).equals(data)).toBe(true);
    expect(r.chunks.length).toBe(4);
    const { fstatSync } = await import('node:fs');
    expect(() => fstatSync(fd as number)).toThrow(/EBADF/);
  });
});

describe('Array bodies are checked whole (§6)', () => {
  it('a bad item anywhere in an Array is a 500 before any byte goes out', async () => {
    const r = await runApp(((e: Environ, sr: Parameters<Application>[1]) => (ok(sr), ['fine', 42])) as unknown as Application);
    expect(r.head?.code).toBe(500);
    expect(r.chunks.map((c) => Buffer.from(c).toString()).join('')).not.toContain('fine');
    expect(r.logs[0].message).toMatch(/got number 42/);
  });
});

describe('server-side request faults and edge rules', () => {
  it('status codes outside 200–599 are refused', async () => {
    const r = await runApp((e, sr) => (sr('600 Custom', [['Content-Type', 'text/plain']]), []));
    expect(r.head?.code).toBe(500);
    expect(r.logs[0].message).toMatch(/status must be "NNN Reason"/);
  });

  it('a malformed CONTENT_LENGTH is the client\'s fault: 400, logged at info', async () => {
    let called = false;
    const r = await runApp(() => ((called = true), []), { method: 'POST', headers: { 'Content-Length': '12x' } });
    expect(r.head?.code).toBe(400);
    expect(called).toBe(false);
    expect(r.logs).toEqual([{ level: 'info', message: expect.stringMatching(/bad request, 400 sent: .*malformed CONTENT_LENGTH "12x"/) }]);
  });

  it('a declared length with nothing sent is a clean 500, not an aborted 200', async () => {
    const r = await runApp(function* (e, sr) {
      sr('200 OK', [['Content-Type', 'text/plain'], ['Content-Length', '4']]);
    });
    expect(r.head?.code).toBe(500);
    expect(r.ended).toBe(true);
  });

  it('a partial tsgi.errors line is flushed at the end of the request', async () => {
    const r = await runApp((e, sr) => {
      e['tsgi.errors'].write('no newline at the end');
      sr('200 OK', [['Content-Type', 'text/plain']]);
      return [];
    });
    expect(r.logs).toEqual([{ level: 'error', message: 'no newline at the end' }]);
  });

  it('a client that leaves while close() runs does not count as complete', async () => {
    const controller = new AbortController();
    const r = await runApp(
      (e, sr) => {
        sr('200 OK', [['Content-Type', 'text/plain']]);
        return Object.assign(['x'], { close: () => new Promise<void>(() => setTimeout(() => controller.abort(), 5)) });
      },
      { signal: controller.signal },
    );
    expect(r.outcome.state).toBe('client-gone');
    expect(r.ended).toBe(false);
  });

  it('an application error while the client is gone keeps its stack in the log', async () => {
    const controller = new AbortController();
    const r = await runApp(
      async (e) => {
        controller.abort();
        throw new Error('own failure');
      },
      { signal: controller.signal },
    );
    expect(r.outcome.state).toBe('client-gone');
    await new Promise((res) => setTimeout(res, 5));
    expect(r.logs.filter((l) => l.level === 'error').map((l) => l.message)).toEqual([expect.stringMatching(/own failure\n\s+at /)]);
  });
});

describe('abort-derived errors', () => {
  it('an AbortError from a signal-aware API after the client left is logged at info, without a stack', async () => {
    const controller = new AbortController();
    const { setTimeout: sleep } = await import('node:timers/promises');
    const run = runApp(
      async (e, sr) => {
        await sleep(10_000, undefined, { signal: e['tsgi.signal'] });
        sr('200 OK', [['Content-Type', 'text/plain']]);
        return [];
      },
      { signal: controller.signal },
    );
    setTimeout(() => controller.abort(), 5);
    const r = await run;
    await new Promise((res) => setTimeout(res, 5));
    expect(r.outcome.state).toBe('client-gone');
    expect(r.logs.map((l) => l.level)).not.toContain('error');
  });
});

describe('a promise abandoned after the client left', () => {
  it('is observed: its later rejection is not an unhandled rejection', async () => {
    const controller = new AbortController();
    controller.abort();
    const unhandled: unknown[] = [];
    const onUnhandled = (e: unknown) => unhandled.push(e);
    process.on('unhandledRejection', onUnhandled);
    try {
      const body = {
        [Symbol.asyncIterator]: () => ({
          next: () => new Promise<IteratorResult<string>>((_, reject) => setTimeout(() => reject(new Error('late rejection')), 5)),
        }),
      };
      const r = await runApp((e, sr) => (sr('200 OK', [['Content-Type', 'text/plain']]), body), { signal: controller.signal });
      expect(r.outcome.state).toBe('client-gone');
      await new Promise((res) => setTimeout(res, 30));
      expect(unhandled).toEqual([]);
    } finally {
      process.off('unhandledRejection', onUnhandled);
    }
  });
});
