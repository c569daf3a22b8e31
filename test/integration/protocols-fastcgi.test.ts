/**
 * The FastCGI listener (src/transports/fastcgi-server.ts) behind REAL, private web
 * servers: lighttpd mod_fastcgi (over Unix sockets) and nginx fastcgi_pass (over TCP,
 * with an upstream keepalive pool and fastcgi_keep_conn on, so FCGI_KEEP_CONN is
 * exercised). Each pairing runs the mount/PATH_INFO cases, environ keys, a 64 MiB upload
 * and download with matching SHA-256, a streamed response, an app error before and after
 * the head (the latter must reach the client visibly incomplete), and a client
 * disconnect mid-response. Bad peers are covered in test/unit/fastcgi-server.test.ts.
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { chmodSync, existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as net from 'node:net';
import { createHash, randomBytes } from 'node:crypto';
import { startLighttpd } from '../harness/lighttpd';
import { startNginx, NGINX_BIN } from '../harness/nginx';
import { makeReadableTempDir } from '../harness/proc';
import { request, requestAndDisconnect } from '../harness/http';
import { expectEnvironKeys, expectMounts, expectUploadIntact } from '../helpers/gateway-checks';
import { ROOT } from '../helpers/serve';
import { ScriptLoader } from '../../src/loader';
import type { ErrorLog, LogLevel } from '../../src/gateway/log';
import { createFastCgiServer } from '../../src/transports/fastcgi-server';

const APPS = {
  rest: join(ROOT, 'examples', 'rest.tsgi'),
  env: join(ROOT, 'test', 'fixtures', 'environ.tsgi'),
  echo: join(ROOT, 'test', 'fixtures', 'echo.tsgi'),
  bad: join(ROOT, 'test', 'fixtures', 'bad-apps.tsgi'),
} as const;
type AppName = keyof typeof APPS;

const MiB = 1024 * 1024;
const BIG = 64 * MiB;

interface MemoryLog extends ErrorLog {
  text(): string;
  waitFor(re: RegExp, ms?: number): Promise<void>;
}

function memoryLog(): MemoryLog {
  const entries: { level: LogLevel; message: string }[] = [];
  const text = () => entries.map((e) => `[${e.level}] ${e.message}`).join('\n');
  return {
    log(level, message) {
      entries.push({ level, message });
      if (process.env.TSGI_TEST_VERBOSE) process.stderr.write(`[${level}] ${message}\n`);
    },
    text,
    async waitFor(re, ms = 5000) {
      const deadline = Date.now() + ms;
      while (!re.test(text())) {
        if (Date.now() > deadline) throw new Error(`timed out waiting for ${re} in the log:\n${text()}`);
        await new Promise((r) => setTimeout(r, 20));
      }
    },
  };
}

/** The bytes echo.tsgi's ?download=N sends, hashed. */
function downloadSha(total: number): string {
  const hash = createHash('sha256');
  let seed = 1;
  for (let sent = 0; sent < total; ) {
    const n = Math.min(65536, total - sent);
    const chunk = Buffer.allocUnsafe(n);
    for (let i = 0; i < n; i++) chunk[i] = (seed = (seed * 1103515245 + 12345) >>> 0) >>> 24;
    sent += n;
    hash.update(chunk);
  }
  return hash.digest('hex');
}

interface Backend {
  server: net.Server;
  where: { path: string } | { port: number };
  /** Connections accepted so far. */
  connections: number;
  sockets: Set<net.Socket>;
}

async function startBackends(log: MemoryLog, unixDir: string | null): Promise<Record<AppName, Backend>> {
  const out = {} as Record<AppName, Backend>;
  for (const name of Object.keys(APPS) as AppName[]) {
    const server = createFastCgiServer({ provider: new ScriptLoader(APPS[name], { log, reload: false }), log });
    const b: Backend = { server, where: { port: 0 }, connections: 0, sockets: new Set() };
    server.on('connection', (s: net.Socket) => {
      b.connections++;
      b.sockets.add(s);
      s.on('close', () => b.sockets.delete(s));
    });
    if (unixDir) {
      const path = join(unixDir, `${name}.sock`);
      await new Promise<void>((r) => server.listen(path, r));
      // lighttpd's workers run as www-data: they need write permission on the socket.
      chmodSync(path, 0o666);
      b.where = { path };
    } else {
      await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
      b.where = { port: (server.address() as net.AddressInfo).port };
    }
    out[name] = b;
  }
  return out;
}

const closeBackends = async (b: Record<AppName, Backend> | undefined) => {
  if (!b) return;
  await Promise.all(
    Object.values(b).map(
      (x) =>
        new Promise<void>((r) => {
          for (const s of x.sockets) s.destroy();
          x.server.close(() => r());
          setTimeout(r, 2000).unref();
        }),
    ),
  );
};

interface WebServer {
  url(p: string): string;
  port: number;
  errorLog(): string;
  stop(): Promise<unknown>;
}

describe.each(['lighttpd', 'nginx'] as const)('%s → tsgi over FastCGI', (web) => {
  const log = memoryLog();
  let backends: Record<AppName, Backend> | undefined;
  let server: WebServer;
  let unixDir: string | null = null;

  beforeAll(async () => {
    if (web === 'nginx' && !existsSync(NGINX_BIN)) throw new Error(`${NGINX_BIN} is missing: apt-get install nginx-light`);
    unixDir = web === 'lighttpd' ? makeReadableTempDir('tsgi-fcgi-sock-') : null;
    backends = await startBackends(log, unixDir);
    const b = backends;
    if (web === 'lighttpd') {
      const entries = (Object.keys(APPS) as AppName[])
        .map((name) => `  "/${name}" => (( "socket" => "${(b[name].where as { path: string }).path}", "check-local" => "disable" ))`)
        .join(',\n');
      server = await startLighttpd({
        modules: ['mod_fastcgi'],
        config: `
# Pass response bytes on as they come (the streamed-response case), without buffering them all.
server.stream-response-body = 2
fastcgi.server = (
${entries}
)
`,
      });
    } else {
      const upstreams = (Object.keys(APPS) as AppName[])
        .map((name) => `  upstream tsgi_${name} { server 127.0.0.1:${(b[name].where as { port: number }).port}; keepalive 4; }`)
        .join('\n');
      const locations = (Object.keys(APPS) as AppName[])
        .map(
          (name) => `
    location /${name}/ {
      fastcgi_split_path_info ^(/${name})(/.*)$;
      include /etc/nginx/fastcgi_params;
      fastcgi_param PATH_INFO $fastcgi_path_info;
      fastcgi_buffering off;
      fastcgi_keep_conn on;
      fastcgi_pass tsgi_${name};
    }`,
        )
        .join('\n');
      server = await startNginx({ http: `  client_max_body_size 100m;\n${upstreams}`, server: locations });
    }
  });

  afterAll(async () => {
    await server?.stop();
    await closeBackends(backends);
    if (unixDir) rmSync(unixDir, { recursive: true, force: true });
  });

  it('mounts: SCRIPT_NAME is the location prefix, PATH_INFO the rest (decoded)', async () => {
    await expectMounts(server);
  });

  it('environ keys', async () => {
    await expectEnvironKeys(server);
  });

  it('a 64 MiB upload reaches the app intact (SHA-256)', async () => {
    await expectUploadIntact(server, BIG, () => `${web} error log:\n${server.errorLog().slice(-3000)}\ntsgi log:\n${log.text().slice(-3000)}`);
  }, 180_000);

  it('a 64 MiB download arrives intact (SHA-256)', async () => {
    const r = await request(server.url(`/echo/?download=${BIG}`), { timeoutMs: 120_000 });
    expect(r.status).toBe(200);
    expect(r.complete).toBe(true);
    expect(r.body.byteLength).toBe(BIG);
    expect(createHash('sha256').update(r.body).digest('hex')).toBe(downloadSha(BIG));
  }, 180_000);

  it('streams: the first chunk reaches the client before the app finishes', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'tsgi-flag-'));
    const flag = join(dir, 'got-first');
    const http = await import('node:http');
    const text = await new Promise<string>((resolve, reject) => {
      http
        .get(server.url(`/bad/stream?flag=${encodeURIComponent(flag)}`), (res) => {
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
    rmSync(dir, { recursive: true, force: true });
    expect(text).toBe('first\nsecond\n');
  });

  it('an app error: 500 and a log line; after the head the response is visibly incomplete', async () => {
    const r = await request(server.url('/bad/throws'));
    expect(r.status).toBe(500);
    await log.waitFor(/application error before the response started, 500 sent: GET \/bad\/throws[\s\S]*the app threw before starting/);
    const m = await request(server.url('/bad/throws-mid-stream'));
    expect(m.status).toBe(200);
    expect(m.body.toString()).toBe('partial');
    expect(m.complete).toBe(false);
    await log.waitFor(/application error after the response started[\s\S]*the app threw mid-stream/);
    await log.waitFor(/FastCGI request \d+ from .*: response aborted; closing the connection without END_REQUEST/);
    expect((await request(server.url('/bad/ok'))).text).toBe('ok\n');
  });

  it('a client disconnect mid-response (a streaming download) aborts the request', async () => {
    const r = await requestAndDisconnect(server.url(`/echo/?download=${64 * 1024 * MiB}`), 5);
    expect(r.status).toBe(200);
    expect(r.ended).toBe(false);
    await log.waitFor(/request aborted: GET \/echo\/\?download=\d+ .*; \d+ body bytes had been sent/, 10_000);
  });

  // lighttpd notices that a client left only when it next writes to it: an app that has
  // gone silent is not told until it writes again (or lighttpd gives up on it).
  // Not generated for lighttpd: it notices a departed client only when it writes again.
  if (web === 'nginx') {
    it('a client disconnect while the app is silent aborts the request and closes the app', async () => {
      const r = await requestAndDisconnect(server.url('/bad/never-finishes'), 5);
      expect(r.status).toBe(200);
      expect(r.received.toString()).toContain('first chunk');
      await log.waitFor(/never-finishes: closed by the server/, 10_000);
      await log.waitFor(/request aborted: GET \/bad\/never-finishes/, 10_000);
    });
  }

  it('FCGI_KEEP_CONN: nginx reuses its connections; lighttpd gets one per request', async () => {
    const b = backends!.rest;
    const before = b.connections;
    for (let i = 0; i < 10; i++) expect((await request(server.url('/rest/k'))).status).toBe(200);
    const used = b.connections - before;
    if (web === 'nginx') expect(used).toBeLessThanOrEqual(2);
    else expect(used).toBe(10);
  });
});
