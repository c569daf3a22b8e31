/**
 * mod_tsgi embedded mode, the request hand-off under load and when the client leaves
 * (docs/embedded.md; embedding.md §2.4, P17): request bodies stream to the app one
 * 64 KB credit at a time, responses stream with a 64 KB high-water mark and DRAIN, the
 * child's memory stays flat through 64 MiB each way, and a client that goes away aborts
 * the request in JS (its AbortSignal fires, the body's close() runs).
 *
 * One Apache child (event MPM), so the RSS measured is the child that did the work.
 *
 * Everything runs in daemon mode too (processes=2): there the Apache child relays the
 * bodies over the daemon socket with the same backpressure, and the memory checks cover
 * the Apache child and every daemon worker.
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { createHash, randomBytes } from 'node:crypto';
import { readFileSync, readlinkSync, writeFileSync } from 'node:fs';
import * as http from 'node:http';
import { join } from 'node:path';
import { startApache, type ApacheInstance } from '../harness/apache';
import { rawRequest, request, requestAndDisconnect } from '../harness/http';
import { daemonWorkers, ensureMode, MOD_TSGI, modeConfig, TSGI_MODES, type TsgiMode } from '../helpers/mod-tsgi';
import { ROOT } from '../helpers/serve';

const MiB = 1024 * 1024;
const FIXTURES = join(ROOT, 'test', 'fixtures');

describe.each(TSGI_MODES)('%s mode', (mode: TsgiMode) => {
  let apache: ApacheInstance;

  beforeAll(async () => {
    ensureMode(mode);
    apache = await startApache({
      modules: [MOD_TSGI],
      config: [
        `TSGIScriptAlias /echo ${join(FIXTURES, 'echo.tsgi')}`,
        `TSGIScriptAlias /bad ${join(FIXTURES, 'bad-apps.tsgi')}`,
        'StartServers 1',
        'MinSpareThreads 1',
        'MaxSpareThreads 64',
        'ThreadsPerChild 16',
        'ServerLimit 1',
        'MaxRequestWorkers 16',
        modeConfig(mode),
      ].join('\n'),
    });
  }, 600_000);

  afterAll(async () => {
    await apache?.stop();
  });

  /**
   * VmRSS (bytes) of each Apache worker child (not the parent, not the cgid daemon, not a
   * daemon supervisor: those run node).
   */
  function childRss(): Map<number, number> {
    const out = new Map<number, number>();
    for (const pid of apache.processes()) {
      if (pid === apache.pid) continue;
      try {
        if (!readlinkSync(`/proc/${pid}/exe`).endsWith('/apache2')) continue;
        const status = readFileSync(`/proc/${pid}/status`, 'utf8');
        const ppid = Number(/^PPid:\s+(\d+)/m.exec(status)?.[1]);
        const rss = Number(/^VmRSS:\s+(\d+) kB/m.exec(status)?.[1]);
        const threads = Number(/^Threads:\s+(\d+)/m.exec(status)?.[1]);
        // Worker children run many threads (request threads, Node's); the cgid daemon one.
        if (ppid === apache.pid && threads > 2 && Number.isFinite(rss)) out.set(pid, rss * 1024);
      } catch {
        // gone meanwhile
      }
    }
    return out;
  }

  /** childRss() and, in daemon mode, the VmRSS of each daemon worker. */
  function servingRss(): Map<number, number> {
    const out = childRss();
    if (mode === 'daemon') {
      for (const pid of daemonWorkers(apache.pid)) {
        try {
          const rss = Number(/^VmRSS:\s+(\d+) kB/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1]);
          if (Number.isFinite(rss)) out.set(pid, rss * 1024);
        } catch {
          // gone meanwhile
        }
      }
    }
    return out;
  }

  /** The largest RSS growth of a child present before and after. */
  function growth(before: Map<number, number>, after: Map<number, number>): number {
    let max = 0;
    for (const [pid, rss] of after) {
      const b = before.get(pid);
      if (b !== undefined) max = Math.max(max, rss - b);
    }
    return max;
  }

  /**
   * Growth is flat: each Apache child, and in daemon mode each daemon worker, under 32 MiB
   * (a worker collects the body's buffers every 8 MiB moved, src/gateway/transfer-gc.ts;
   * without that it held 31-36 MiB of dead buffers after a 64 or 256 MiB upload).
   */
  function expectFlat(before: Map<number, number>, after: Map<number, number>): void {
    const children = new Set(childRss().keys());
    const only = (keep: (pid: number) => boolean) => new Map([...after].filter(([pid]) => keep(pid)));
    expect(growth(before, only((p) => children.has(p)))).toBeLessThan(32 * MiB);
    if (mode === 'daemon') {
      const workers = growth(before, only((p) => !children.has(p)));
      console.log(`daemon worker RSS growth ${(workers / MiB).toFixed(1)} MiB`);
      expect(workers).toBeLessThan(32 * MiB);
    }
  }

  function report(what: string, bytes: number, ms: number, grew: number): void {
    console.log(`mod_tsgi ${what}: ${bytes / MiB} MiB in ${ms} ms (${((bytes / MiB) / (ms / 1000)).toFixed(1)} MiB/s), child RSS growth ${(grew / MiB).toFixed(1)} MiB`);
  }

  /** What echo.tsgi's ?download=N sends (the same arithmetic, so the same bytes). */
  function expectedDownloadSha(total: number): string {
    const hash = createHash('sha256');
    let seed = 1;
    for (let sent = 0; sent < total; ) {
      const n = Math.min(65536, total - sent);
      const chunk = new Uint8Array(n);
      for (let i = 0; i < n; i++) chunk[i] = (seed = (seed * 1103515245 + 12345) >>> 0) >>> 24;
      sent += n;
      hash.update(chunk);
    }
    return hash.digest('hex');
  }

  describe('request bodies stream with backpressure', () => {
    it('64 MiB upload: SHA-256 matches, child RSS stays flat', async () => {
      await request(apache.url('/echo'), { method: 'POST', body: 'warm up' });
      const body = randomBytes(64 * MiB);
      const sha = createHash('sha256').update(body).digest('hex');
      const before = servingRss();
      expect(childRss().size).toBe(1);
      expect(before.size).toBe(mode === 'daemon' ? 3 : 1);
      const t0 = Date.now();
      const r = await request(apache.url('/echo'), { method: 'POST', body, timeoutMs: 120_000 });
      const ms = Date.now() - t0;
      const after = servingRss();
      const grew = growth(before, after);
      report('upload', body.length, ms, grew);
      expect(r.status).toBe(200);
      expect(r.text).toBe(`${body.length} ${sha} ${body.length}\n`);
      expectFlat(before, after);
    }, 180_000);

    it('a chunked request body (no CONTENT_LENGTH) arrives whole', async () => {
      const parts = [Buffer.from('first part\n'), randomBytes(3 * MiB + 17), Buffer.from(''), Buffer.from('x'), randomBytes(200_000)];
      const all = Buffer.concat(parts);
      async function* body() {
        for (const p of parts) {
          if (p.length > 0) yield p;
          await new Promise((r) => setTimeout(r, 5));
        }
      }
      const r = await request(apache.url('/echo'), { method: 'POST', body: body(), timeoutMs: 60_000 });
      expect(r.status).toBe(200);
      expect(r.text).toBe(`${all.length} ${createHash('sha256').update(all).digest('hex')} -\n`);
    }, 60_000);

    it('a body the app does not read is skipped; the connection stays usable', async () => {
      const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
      try {
        const first = await request(apache.url('/bad/ok'), { method: 'POST', body: randomBytes(300_000), agent });
        expect(first.text).toBe('ok\n');
        const second = await request(apache.url('/bad/ok'), { agent });
        expect(second.text).toBe('ok\n');
      } finally {
        agent.destroy();
      }
    });

    it('a client that leaves mid-upload: the app sees a failed read, never EOF (P17)', async () => {
      const mark = apache.logMark();
      const accessBefore = apache.accessLog().length;
      const head = `POST /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: ${4 * MiB}\r\n\r\n`;
      const got = await rawRequest(apache.port, [head, randomBytes(100_000)], { abortAfterMs: 300, onTimeout: 'resolve' });
      expect(got.length).toBe(0); // the app had not answered: it was still reading
      const [line] = await apache.waitForLog(/request aborted: POST \/echo.*/, 10_000, mark);
      expect(line).toMatch(/request body could not be read/);
      // The app never answered as if the body had ended: the request is not logged as a 200.
      let entry: RegExpExecArray | null = null;
      for (let i = 0; i < 200 && !entry; i++) {
        entry = /"POST \/echo HTTP\/1\.1" (\d+)/.exec(apache.accessLog().slice(accessBefore));
        if (!entry) await new Promise((r) => setTimeout(r, 25));
      }
      expect(entry?.[1]).toBeDefined();
      expect(entry?.[1]).not.toBe('200');
      expect((await request(apache.url('/bad/ok'))).text).toBe('ok\n');
    }, 30_000);
  });

  describe('response bodies stream with backpressure', () => {
    it('64 MiB download: SHA-256 matches, child RSS stays flat', async () => {
      const total = 64 * MiB;
      const expected = expectedDownloadSha(total);
      await request(apache.url('/echo?download=65536'));
      const before = servingRss();
      const t0 = Date.now();
      const r = await request(apache.url(`/echo?download=${total}`), { timeoutMs: 120_000 });
      const ms = Date.now() - t0;
      const after = servingRss();
      const grew = growth(before, after);
      report('download', total, ms, grew);
      expect(r.status).toBe(200);
      expect(r.complete).toBe(true);
      expect(r.body.length).toBe(total);
      expect(createHash('sha256').update(r.body).digest('hex')).toBe(expected);
      expectFlat(before, after);
    }, 180_000);

    it('a slow reader holds the app back instead of filling the child with the response', async () => {
      const total = 32 * MiB;
      const before = servingRss();
      const received = await new Promise<number>((resolve, reject) => {
        http
          .get(apache.url(`/echo?download=${total}`), (res) => {
            let n = 0;
            let peak = 0;
            res.on('data', (c: Buffer) => {
              n += c.length;
              // Read slowly for the first few MiB, measuring the child meanwhile.
              if (n < 4 * MiB) {
                res.pause();
                setTimeout(() => {
                  peak = Math.max(peak, growth(before, servingRss()));
                  res.resume();
                }, 2);
              }
            });
            res.on('end', () => {
              expect(peak).toBeLessThan(16 * MiB);
              resolve(n);
            });
            res.on('error', reject);
          })
          .on('error', reject);
      });
      expect(received).toBe(total);
    }, 120_000);

    it('streams: the first chunk reaches the client before the app finishes', async () => {
      const flag = join(apache.root, 'got-first');
      const text = await new Promise<string>((resolve, reject) => {
        http
          .get(apache.url(`/bad/stream?flag=${encodeURIComponent(flag)}`), (res) => {
            let body = '';
            res.setEncoding('utf8');
            res.on('data', (d: string) => {
              body += d;
              if (body.includes('first\n')) writeFileSync(flag, '1');
            });
            res.on('end', () => resolve(body));
          })
          .on('error', reject);
      });
      expect(text).toBe('first\nsecond\n');
    });
  });

  describe('client disconnect reaches JS', () => {
    it('the request is aborted: close() runs, one log line, the server keeps serving', async () => {
      const mark = apache.logMark();
      const r = await requestAndDisconnect(apache.url('/bad/never-finishes'), 5);
      expect(r.status).toBe(200);
      expect(r.received.toString()).toMatch(/^first/);
      await apache.waitForLog(/never-finishes: closed by the server/, 10_000, mark);
      await apache.waitForLog(/request aborted: GET \/bad\/never-finishes/, 10_000, mark);
      const log = Buffer.from(apache.errorLog()).subarray(mark).toString('utf8');
      expect(log.match(/request aborted: GET \/bad\/never-finishes/g)).toHaveLength(1);
      expect(log).not.toMatch(/TSGI0107|TSGI0108/);
      const ok = await request(apache.url('/bad/ok'));
      expect(ok.status).toBe(200);
      expect(ok.text).toBe('ok\n');
    }, 30_000);

    it('a client that leaves during a large download aborts the app', async () => {
      const mark = apache.logMark();
      const r = await requestAndDisconnect(apache.url(`/echo?download=${256 * MiB}`), 1 * MiB);
      expect(r.status).toBe(200);
      expect(r.ended).toBe(false);
      await apache.waitForLog(/request aborted: GET \/echo\?download=/, 10_000, mark);
      expect((await request(apache.url('/bad/ok'))).text).toBe('ok\n');
    }, 60_000);
  });
});
