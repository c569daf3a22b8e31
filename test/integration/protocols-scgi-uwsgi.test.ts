/**
 * The SCGI and uwsgi listeners (src/transports/stream-server.ts) behind REAL, private
 * web servers: lighttpd mod_scgi (scgi.protocol "scgi" and "uwsgi", over Unix sockets)
 * and nginx scgi_pass / uwsgi_pass (over TCP). Each pairing runs the mount/PATH_INFO
 * cases, environ keys, a 64 MiB upload and download with matching SHA-256, a streamed
 * response, an app error and a client disconnect mid-response. Then raw peers send what
 * no web server should: malformed and truncated heads, a head past the limit, bodies
 * shorter and longer than declared, stalls, and a peer that stops reading.
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
import { createStreamServer, listenStream, type StreamProtocol, type StreamServerOptions } from '../../src/transports/stream-server';
import { encodeScgiRequest } from '../../src/transports/protocols/scgi';
import { encodeUwsgiRequest } from '../../src/transports/protocols/uwsgi';

const APPS = {
  rest: join(ROOT, 'examples', 'rest.tsgi'),
  env: join(ROOT, 'test', 'fixtures', 'environ.tsgi'),
  echo: join(ROOT, 'test', 'fixtures', 'echo.tsgi'),
  bad: join(ROOT, 'test', 'fixtures', 'bad-apps.tsgi'),
  ticker: join(ROOT, 'test', 'fixtures', 'ticker.tsgi'),
} as const;
type AppName = keyof typeof APPS;

const MiB = 1024 * 1024;
const BIG = 64 * MiB;

interface MemoryLog extends ErrorLog {
  entries: { level: LogLevel; message: string }[];
  text(): string;
  waitFor(re: RegExp, ms?: number): Promise<void>;
}

function memoryLog(): MemoryLog {
  const entries: { level: LogLevel; message: string }[] = [];
  const text = () => entries.map((e) => `[${e.level}] ${e.message}`).join('\n');
  return {
    entries,
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
  /** `{ path }` for a Unix socket, `{ port }` for TCP. */
  where: { path: string } | { port: number };
}

async function startBackends(protocol: StreamProtocol, log: MemoryLog, unixDir: string | null, extra: Partial<StreamServerOptions> = {}): Promise<Record<AppName, Backend>> {
  const out = {} as Record<AppName, Backend>;
  for (const name of Object.keys(APPS) as AppName[]) {
    const server = createStreamServer({ protocol, provider: new ScriptLoader(APPS[name], { log, reload: false }), log, ...extra });
    if (unixDir) {
      const path = join(unixDir, `${name}.sock`);
      await listenStream(server, { path });
      // lighttpd's workers run as www-data: they need write permission on the socket.
      chmodSync(path, 0o666);
      out[name] = { server, where: { path } };
    } else {
      const addr = (await listenStream(server, { host: '127.0.0.1', port: 0 })) as net.AddressInfo;
      out[name] = { server, where: { port: addr.port } };
    }
  }
  return out;
}

const closeBackends = async (b: Record<AppName, Backend> | undefined) => {
  if (!b) return;
  await Promise.all(
    Object.values(b).map(
      (x) =>
        new Promise<void>((r) => {
          x.server.close(() => r());
          // Connections a test left open (the stalled peers) must not hold the close.
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

const PAIRINGS: { web: 'lighttpd' | 'nginx'; protocol: StreamProtocol }[] = [
  { web: 'lighttpd', protocol: 'scgi' },
  { web: 'lighttpd', protocol: 'uwsgi' },
  { web: 'nginx', protocol: 'scgi' },
  { web: 'nginx', protocol: 'uwsgi' },
];

describe.each(PAIRINGS)('$web → tsgi over $protocol', ({ web, protocol }) => {
  const log = memoryLog();
  let backends: Record<AppName, Backend> | undefined;
  let server: WebServer;
  let unixDir: string | null = null;

  beforeAll(async () => {
    if (web === 'nginx' && !existsSync(NGINX_BIN)) throw new Error(`${NGINX_BIN} is missing: apt-get install nginx-light (scripts/setup.js installs it for the tests)`);
    // lighttpd + SCGI over Unix sockets; the other pairings over TCP.
    unixDir = web === 'lighttpd' && protocol === 'scgi' ? makeReadableTempDir('tsgi-sock-') : null;
    backends = await startBackends(protocol, log, unixDir);
    const b = backends;
    if (web === 'lighttpd') {
      const entries = (Object.keys(APPS) as AppName[])
        .map((name) => {
          const w = b[name].where;
          const to = 'path' in w ? `"socket" => "${w.path}"` : `"host" => "127.0.0.1", "port" => ${w.port}`;
          return `  "/${name}" => (( ${to}, "check-local" => "disable" ))`;
        })
        .join(',\n');
      server = await startLighttpd({
        modules: ['mod_scgi'],
        config: `
scgi.protocol = "${protocol}"
# Pass response bytes on as they come (the streamed-response case), without buffering them all.
server.stream-response-body = 2
scgi.server = (
${entries}
)
`,
      });
    } else {
      const pass = protocol === 'scgi' ? 'scgi' : 'uwsgi';
      const locations = (Object.keys(APPS) as AppName[])
        .map(
          (name) => `
    location /${name}/ {
      include /etc/nginx/${pass}_params;
      ${pass}_param SCRIPT_NAME /${name};
      ${pass}_buffering off;
      ${pass}_pass 127.0.0.1:${(b[name].where as { port: number }).port};
    }`,
        )
        .join('\n');
      server = await startNginx({ http: '  client_max_body_size 100m;', server: locations });
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
    await expectUploadIntact(server, BIG);
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

  it('an app error: 500, and the log says why', async () => {
    const r = await request(server.url('/bad/throws'));
    expect(r.status).toBe(500);
    await log.waitFor(/application error before the response started, 500 sent: GET \/bad\/throws[\s\S]*the app threw before starting/);
    // An error after the head: the response is cut short, visibly.
    const m = await request(server.url('/bad/throws-mid-stream'));
    expect(m.status).toBe(200);
    expect(m.body.toString()).toMatch(/^partial/);
    // Over TCP the connection is reset and the web server cuts its response short; a Unix
    // socket has no reset, and the web server sees an ordinary end (the protocol's limit).
    if (!unixDir) expect(m.complete).toBe(false);
    await log.waitFor(/application error after the response started[\s\S]*the app threw mid-stream/);
    expect((await request(server.url('/bad/ok'))).text).toBe('ok\n');
  });

  it('a client disconnect mid-response aborts the request and closes the app', async () => {
    const r = await requestAndDisconnect(server.url('/ticker/'), 20);
    expect(r.status).toBe(200);
    expect(r.received.toString()).toMatch(/^tick 0\n/);
    await log.waitFor(/ticker: closed by the server after \d+ ticks/, 10_000);
    await log.waitFor(/request aborted: GET \/ticker\//, 10_000);
  });

  // nginx watches its client while it waits for the upstream; lighttpd notices a gone
  // client only when it next writes to it (the ticker case above).
  // Not generated for lighttpd: it notices a departed client only when it writes again.
  if (web === 'nginx') {
    it('nginx: a client disconnect reaches an app that is not writing', async () => {
      const r = await requestAndDisconnect(server.url('/bad/never-finishes'), 5);
      expect(r.received.toString()).toContain('first chunk');
      await log.waitFor(/never-finishes: closed by the server/, 10_000);
      await log.waitFor(/request aborted: GET \/bad\/never-finishes/, 10_000);
    });
  }
});

// ---------------------------------------------------------------------------------------
// What no web server should send: every case gets one log line and a closed connection.

interface RawResult {
  data: Buffer;
  /** How the connection ended: 'end' (FIN), 'reset', or 'open' (still open at the deadline). */
  how: 'end' | 'reset' | 'open';
}

/** Connects, writes `bytes` (then half-closes if told to), collects what comes back until the connection ends. */
function raw(port: number, bytes: Buffer, opts: { halfClose?: boolean; read?: boolean; waitMs?: number } = {}): Promise<RawResult> {
  return new Promise((resolve) => {
    const c = net.connect(port, '127.0.0.1');
    const parts: Buffer[] = [];
    let how: RawResult['how'] = 'end';
    const timer = setTimeout(() => {
      how = 'open';
      c.destroy();
    }, opts.waitMs ?? 5000);
    if (opts.read !== false) c.on('data', (d: Buffer) => parts.push(d));
    // A peer that stops reading: it reads nothing for a while, then (to see the connection end) drains what is left.
    else setTimeout(() => c.on('data', () => undefined), 2000).unref();
    c.on('error', () => (how = 'reset'));
    c.on('close', () => {
      clearTimeout(timer);
      resolve({ data: Buffer.concat(parts), how });
    });
    c.write(bytes);
    if (opts.halfClose) c.end();
  });
}

describe.each(['scgi', 'uwsgi'] as const)('bad %s peers', (protocol) => {
  const log = memoryLog();
  let backends: Record<AppName, Backend>;
  const port = (name: AppName) => (backends[name].where as { port: number }).port;
  const encode = (vars: Record<string, string>, contentLength: number) =>
    protocol === 'scgi' ? encodeScgiRequest(vars, contentLength) : encodeUwsgiRequest({ ...vars, CONTENT_LENGTH: String(contentLength) });
  const post = (n: number) => encode({ REQUEST_METHOD: 'POST', REQUEST_URI: '/echo' }, n);
  const name = protocol === 'scgi' ? 'SCGI' : 'uwsgi';

  beforeAll(async () => {
    backends = await startBackends(protocol, log, null, { timeoutMs: 600, maxHeaderBytes: 4096 });
  });
  afterAll(() => closeBackends(backends));

  it('a well-formed request works (the baseline)', async () => {
    const r = await raw(port('echo'), Buffer.concat([post(3), Buffer.from('abc')]));
    expect(r.data.toString()).toMatch(protocol === 'scgi' ? /^Status: 200 OK\r\n/ : /^HTTP\/1\.1 200 OK\r\n/);
    expect(r.data.toString()).toMatch(/\r\n\r\n3 [0-9a-f]{64} 3\n$/);
  });

  it('HTTP sent to the socket: 400, a log line naming the problem, closed', async () => {
    const r = await raw(port('echo'), Buffer.from('GET / HTTP/1.1\r\nHost: x\r\n\r\n'));
    expect(r.data.toString()).toMatch(/400 Bad Request/);
    expect(r.how).toBe('end');
    await log.waitFor(new RegExp(`${name} connection from 127\\.0\\.0\\.1:\\d+: .*(HTTP request|this is HTTP).*; connection closed`));
  });

  it('a head past the limit: 400 before the block is read, closed', async () => {
    const big = encode({ REQUEST_METHOD: 'GET', HTTP_X_BIG: 'x'.repeat(5000) }, 0);
    const r = await raw(port('echo'), big);
    expect(r.data.toString()).toMatch(/400 Bad Request/);
    await log.waitFor(/longer than the limit of 4096 bytes.*; connection closed/);
  });

  it('a truncated head (the peer closes): a log line, closed', async () => {
    const r = await raw(port('echo'), post(3).subarray(0, 9), { halfClose: true });
    expect(r.data.length).toBe(0);
    await log.waitFor(/the connection closed in the middle of the request head \(after 9 bytes\)/);
  });

  it('a stalled head: closed after the timeout', async () => {
    const r = await raw(port('echo'), post(3).subarray(0, 9));
    expect(r.how).not.toBe('open');
    await log.waitFor(/no complete request head after 0\.6 s \(9 bytes received\); connection closed/);
  });

  it('a body shorter than declared: the app read fails (500), never a short body', async () => {
    const r = await raw(port('echo'), Buffer.concat([post(10), Buffer.from('abc')]), { halfClose: true });
    expect(r.data.toString()).toMatch(/500 Internal Server Error/);
    await log.waitFor(/request body shorter than CONTENT_LENGTH: 3 of 10 bytes arrived/);
    await log.waitFor(/TsgiBodyReadError: the web server ended the request body after 3 of 10 bytes/);
  });

  it('a body that stops arriving: closed after the timeout', async () => {
    const r = await raw(port('echo'), Buffer.concat([post(10), Buffer.from('abc')]));
    expect(r.how).not.toBe('open');
    await log.waitFor(/no request body bytes for 0\.6 s \(3 of 10 received\); connection closed/);
  });

  it('a body longer than declared: a log line, the connection reset', async () => {
    const r = await raw(port('echo'), Buffer.concat([post(3), Buffer.from('abcdef')]));
    expect(r.data.toString()).not.toMatch(/200 OK/);
    await log.waitFor(/sent more than CONTENT_LENGTH \(3\) bytes of request body; connection closed/);
  });

  it('a peer that stops reading the response: closed after the timeout', async () => {
    const get = encode({ REQUEST_METHOD: 'GET', REQUEST_URI: `/echo?download=${BIG}`, QUERY_STRING: `download=${BIG}` }, 0);
    const r = await raw(port('echo'), get, { read: false, waitMs: 10_000 });
    expect(r.how).not.toBe('open');
    await log.waitFor(/the web server has not read the response for 0\.6 s \(\d+ bytes sent\); connection closed/);
    await log.waitFor(/request aborted: GET \/echo\?download=/);
  });

  it('the end of the peer\'s stream after the request aborts it; with allowHalfClose it is a half-close', async () => {
    const get = encode({ REQUEST_METHOD: 'GET', REQUEST_URI: '/ticker' }, 0);
    const gone = await raw(port('ticker'), get, { halfClose: true });
    expect(gone.how).not.toBe('open');
    await log.waitFor(/request aborted: GET \/ticker .*closed the \w+ connection before the response was complete/);
    const halfLog = memoryLog();
    const half = await startBackends(protocol, halfLog, null, { allowHalfClose: true, timeoutMs: 600 });
    try {
      const r = await raw((half.ticker.where as { port: number }).port, get, { halfClose: true, waitMs: 300 });
      expect(r.how).toBe('open');
      expect(r.data.toString()).toMatch(/tick 0\ntick 1\ntick 2\n/);
    } finally {
      await closeBackends(half);
    }
  });

  it('an empty connection is not an error', async () => {
    const before = log.entries.filter((e) => e.level !== 'debug').length;
    const r = await raw(port('echo'), Buffer.alloc(0), { halfClose: true });
    expect(r.data.length).toBe(0);
    await new Promise((res) => setTimeout(res, 50));
    expect(log.entries.filter((e) => e.level !== 'debug').length).toBe(before);
  });

  it('the server is still serving after all that', async () => {
    const r = await raw(port('rest'), encode({ REQUEST_METHOD: 'GET', SCRIPT_NAME: '/rest', PATH_INFO: '/x' }, 0));
    expect(r.data.toString()).toMatch(/PATH_INFO = \/x\nSCRIPT_NAME = \/rest\n$/);
  });
});
