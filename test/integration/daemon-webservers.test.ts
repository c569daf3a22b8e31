/**
 * The shipped web-server configs, for real: conf/lighttpd-tsgi.conf, conf/nginx-tsgi.conf
 * and the mod_proxy section of conf/httpd-tsgi.conf, each with only its paths (and
 * nginx's listen line) substituted, in front of the four `tsgi daemon` processes those
 * files document (`node bin/tsgi.js daemon …`, the command lines taken from the files).
 * Every pairing (3 web servers × uwsgi, SCGI, FastCGI, HTTP) runs: the mount and
 * PATH_INFO, environ keys, a 64 MiB upload and a 64 MiB download with matching SHA-256,
 * a streamed response (the first chunk reaches the client before the app finishes), an
 * app error (500, and a log line on the daemon's stderr) and a client disconnect
 * mid-response (the daemon logs the abort and closes the app). lighttpd's mod_cgi mount
 * is checked too. The daemons are shared by the three servers; the app is
 * test/fixtures/daemon-suite.tsgi, which mounts rest, env, echo, bad and ticker under the
 * daemon's prefix.
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import * as fs from 'node:fs';
import * as http from 'node:http';
import { join } from 'node:path';
import { createHash, randomBytes } from 'node:crypto';
import { startLighttpd, type LighttpdInstance } from '../harness/lighttpd';
import { startNginx, NGINX_BIN, type NginxInstance } from '../harness/nginx';
import { startApache, type ApacheInstance } from '../harness/apache';
import { freePort } from '../harness/ports';
import { request, requestAndDisconnect } from '../harness/http';
import { ManagedProcess, delay, isRoot, makeReadableTempDir, pidAlive } from '../harness/proc';
import { ROOT } from '../helpers/serve';

const BIN = join(ROOT, 'bin', 'tsgi.js');
const SUITE = join(ROOT, 'test', 'fixtures', 'daemon-suite.tsgi');
const conf = (name: string) => fs.readFileSync(join(ROOT, 'conf', name), 'utf8');
const LIGHTTPD_CONF = conf('lighttpd-tsgi.conf');
const NGINX_CONF = conf('nginx-tsgi.conf');
const HTTPD_CONF = conf('httpd-tsgi.conf');
/** The mod_proxy section of httpd-tsgi.conf: from its heading to the end of the file. */
const HTTPD_PROXY = HTTPD_CONF.slice(HTTPD_CONF.indexOf('# ---- Apps in `tsgi daemon` pools'));

const PROTOCOLS = ['uwsgi', 'scgi', 'fastcgi', 'http'] as const;
type Protocol = (typeof PROTOCOLS)[number];
type Web = 'lighttpd' | 'nginx' | 'apache';

const MiB = 1024 * 1024;
const BIG = 64 * MiB;

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

/** The `tsgi daemon …` command lines a config documents, one per protocol, whitespace collapsed. */
function daemonCommands(text: string): Map<Protocol, string[]> {
  const out = new Map<Protocol, string[]>();
  for (const m of text.matchAll(/^#\s+tsgi daemon (\S+ --listen .*)$/gm)) {
    const args = m[1]!.trim().split(/\s+/);
    const protocol = args[args.indexOf('--protocol') + 1] as Protocol;
    const prev = out.get(protocol);
    if (prev && prev.join(' ') !== args.join(' ')) throw new Error(`two different commands for ${protocol}:\n${prev.join(' ')}\n${args.join(' ')}`);
    out.set(protocol, args);
  }
  return out;
}

let dir: string;
let sockets: string;
const daemons = new Map<Protocol, ManagedProcess>();
const servers: { lighttpd?: LighttpdInstance; nginx?: NginxInstance; apache?: ApacheInstance } = {};
let nginxPort = 0;

/** The base URL of a web server (nginx's is the config file's own server block). */
function base(web: Web): string {
  if (web === 'nginx') return `http://127.0.0.1:${nginxPort}`;
  return servers[web]!.url('').replace(/\/$/, '');
}
const portOf = (web: Web) => (web === 'nginx' ? nginxPort : servers[web]!.port);

async function waitForStderr(p: Protocol, re: RegExp, ms = 10_000): Promise<void> {
  const proc = daemons.get(p)!;
  const deadline = Date.now() + ms;
  while (!re.test(proc.stderr())) {
    if (Date.now() > deadline || proc.exitedFlag) throw new Error(`no ${re} on the ${p} daemon's stderr:\n${proc.stderr().slice(-4000)}`);
    await delay(20);
  }
}

beforeAll(async () => {
  if (!fs.existsSync(NGINX_BIN)) throw new Error(`${NGINX_BIN} is missing: apt-get install nginx-light (scripts/setup.js installs it for the tests)`);
  dir = makeReadableTempDir('tsgi-dws-');
  sockets = join(dir, 'run');
  fs.mkdirSync(sockets, { mode: 0o755 });

  // The four daemons, as the configs document them (all three files document the same four).
  const commands = daemonCommands(LIGHTTPD_CONF);
  for (const text of [NGINX_CONF, HTTPD_PROXY]) expect([...daemonCommands(text)].sort()).toEqual([...commands].sort());
  expect([...commands.keys()].sort()).toEqual([...PROTOCOLS].sort());
  for (const [protocol, args] of commands) {
    const argv = args.map((a) => a.replace('/srv/tsgi/app.tsgi', SUITE).replace('/run/tsgi/', `${sockets}/`));
    // As the configs advise for production: the workers unprivileged, the socket theirs
    // and the web servers' group's (here both www-data, the user the servers run as).
    if (isRoot()) argv.push('--user', 'www-data', '--group', 'www-data', '--socket-mode', '0660');
    daemons.set(protocol, new ManagedProcess({ command: process.execPath, args: [BIN, 'daemon', ...argv], cwd: dir, marker: `${sockets}/${protocol}.sock` }));
  }
  await Promise.all(PROTOCOLS.map((p) => waitForStderr(p, /\] pid \d+: ready: /, 30_000)));

  const sub = (text: string) => text.replaceAll('/run/tsgi/', `${sockets}/`);
  nginxPort = await freePort();
  const [lighttpd, nginx, apache] = await Promise.all([
    startLighttpd({
      // Debian's lighttpd.conf loads these; the file adds its own with `server.modules +=`.
      baseModules: ['mod_indexfile', 'mod_access', 'mod_alias', 'mod_redirect', 'mod_accesslog'],
      config: LIGHTTPD_CONF.replace(/^var\.tsgi_sockets = .*$/m, `var.tsgi_sockets = "${sockets}"`)
        .replace(/^var\.tsgi_cgi = .*$/m, `var.tsgi_cgi = "${join(ROOT, 'bin', 'tsgi-cgi.js')}"`)
        .replace(/^var\.tsgi_cgi_dir = .*$/m, `var.tsgi_cgi_dir = "${join(ROOT, 'examples')}"`),
    }),
    startNginx({
      // The whole file inside http { }, as Debian's nginx.conf includes sites-enabled/*.
      http: sub(NGINX_CONF)
        .replace(/^(\s*)listen 80;$/m, `$1listen 127.0.0.1:${nginxPort};`)
        .replace(/^(\s*)include (\w+_params);$/gm, '$1include /etc/nginx/$2;'),
    }),
    startApache({ modules: ['proxy', 'proxy_http', 'proxy_scgi', 'proxy_uwsgi', 'proxy_fcgi'], config: sub(HTTPD_PROXY) }),
  ]);
  Object.assign(servers, { lighttpd, nginx, apache });
}, 60_000);

afterAll(async () => {
  await Promise.all([servers.lighttpd?.stop(), servers.nginx?.stop(), servers.apache?.stop()]);
  // A graceful stop: exit 0, the socket removed, no worker left.
  const results = await Promise.all(
    [...daemons].map(async ([p, proc]) => {
      proc.signal('SIGTERM');
      await Promise.race([proc.exited, delay(20_000)]);
      const left = proc.processes().filter(pidAlive);
      await proc.terminate('SIGKILL', 0);
      return { p, code: proc.exitCode, left, socket: fs.existsSync(join(sockets, `${p}.sock`)) };
    }),
  );
  if (dir) fs.rmSync(dir, { recursive: true, force: true });
  for (const r of results) expect(r).toEqual({ p: r.p, code: 0, left: [], socket: false });
}, 60_000);

describe('lighttpd mod_cgi (cgi.assign to tsgi-cgi)', () => {
  it('runs a .tsgi under /cgi-bin/: SCRIPT_NAME is the script, PATH_INFO the rest', async () => {
    const r = await request(`${base('lighttpd')}/cgi-bin/rest.tsgi/custompath`);
    expect(r.status, servers.lighttpd!.cgiLog()).toBe(200);
    expect(r.text).toBe('Hello World!\nPATH_INFO = /custompath\nSCRIPT_NAME = /cgi-bin/rest.tsgi\n');
  });
});

const PAIRINGS: { web: Web; protocol: Protocol }[] = (['lighttpd', 'nginx', 'apache'] as const).flatMap((web) => PROTOCOLS.map((protocol) => ({ web, protocol })));

describe.each(PAIRINGS)('$web → tsgi daemon over $protocol', ({ web, protocol }) => {
  const url = (p: string) => `${base(web)}/${protocol}${p}`;
  /** Tags a URL so that this pairing's log lines are told apart from the other servers'. */
  const tag = `via=${web}`;

  it('mounts: SCRIPT_NAME is the prefix (plus the app\'s segment), PATH_INFO the rest (decoded)', async () => {
    const r = await request(url('/rest/custompath'));
    expect(r.status).toBe(200);
    expect(r.text).toBe(`Hello World!\nPATH_INFO = /custompath\nSCRIPT_NAME = /${protocol}/rest\n`);
    expect((await request(url('/rest/a%20b/c'))).text).toBe(`Hello World!\nPATH_INFO = /a b/c\nSCRIPT_NAME = /${protocol}/rest\n`);
    expect((await request(url('/rest/rest'))).text).toBe(`Hello World!\nPATH_INFO = /rest\nSCRIPT_NAME = /${protocol}/rest\n`);
  });

  it('environ keys', async () => {
    const r = await request(url('/env/some/path?a=1&b=%20'), { headers: { 'X-Custom': 'v1', Proxy: 'http://evil', Cookie: 'c=1' } });
    expect(r.status).toBe(200);
    const env = JSON.parse(r.text) as Record<string, unknown>;
    expect(env).toMatchObject({
      REQUEST_METHOD: 'GET',
      SCRIPT_NAME: `/${protocol}/env`,
      PATH_INFO: '/some/path',
      QUERY_STRING: 'a=1&b=%20',
      REQUEST_URI: `/${protocol}/env/some/path?a=1&b=%20`,
      SERVER_PROTOCOL: 'HTTP/1.1',
      HTTP_X_CUSTOM: 'v1',
      HTTP_COOKIE: 'c=1',
      'tsgi.url_scheme': 'http',
      'tsgi.multithread': true,
      'tsgi.run_once': false,
      'tsgi.input': '<object>',
      'tsgi.errors': '<object>',
    });
    expect(env.HTTP_HOST).toMatch(/^127\.0\.0\.1/);
    expect(env.HTTP_PROXY).toBeUndefined();
    expect(env.HTTP_CONTENT_LENGTH).toBeUndefined();
    expect(env.HTTP_CONTENT_TYPE).toBeUndefined();
    if (protocol === 'http') {
      // A proxied HTTP request: the client is in X-Forwarded-For (REMOTE_ADDR is the proxy's end of a Unix socket).
      expect(env.HTTP_X_FORWARDED_FOR).toMatch(/127\.0\.0\.1/);
    } else {
      expect(env).toMatchObject({ SERVER_PORT: String(portOf(web)), REMOTE_ADDR: '127.0.0.1' });
      expect(typeof env.SERVER_NAME).toBe('string');
    }
    const p = JSON.parse((await request(url('/env/'), { method: 'POST', body: 'abc', headers: { 'Content-Type': 'text/x-test' } })).text) as Record<string, unknown>;
    expect(p).toMatchObject({ REQUEST_METHOD: 'POST', CONTENT_LENGTH: '3', CONTENT_TYPE: 'text/x-test' });
  });

  it('a 64 MiB upload reaches the app intact, and a 64 MiB download arrives intact (SHA-256)', async () => {
    const data = randomBytes(BIG);
    const up = await request(url('/echo/'), { method: 'POST', body: data, timeoutMs: 60_000 });
    expect(up.status).toBe(200);
    expect(up.text).toBe(`${BIG} ${createHash('sha256').update(data).digest('hex')} ${BIG}\n`);
    const down = await request(url(`/echo/?download=${BIG}`), { timeoutMs: 60_000 });
    expect(down.status).toBe(200);
    expect(down.complete).toBe(true);
    expect(down.body.byteLength).toBe(BIG);
    expect(createHash('sha256').update(down.body).digest('hex')).toBe(downloadSha(BIG));
  }, 120_000);

  it('streams: the first chunk reaches the client before the app finishes', async () => {
    // The app writes "first", then waits for this file (the client saw "first") before "second".
    const flag = join(dir, `got-first-${web}-${protocol}`);
    const text = await new Promise<string>((resolve, reject) => {
      http
        .get(url(`/bad/stream?flag=${encodeURIComponent(flag)}`), (res) => {
          let body = '';
          res.setEncoding('utf8');
          res.on('data', (d: string) => {
            body += d;
            if (body.includes('first\n')) fs.writeFileSync(flag, '1');
          });
          res.on('end', () => resolve(body));
        })
        .on('error', reject);
    });
    expect(text).toBe('first\nsecond\n');
  });

  it('an app error: 500, and the daemon logs why', async () => {
    const r = await request(url(`/bad/throws?${tag}`));
    expect(r.status).toBe(500);
    await waitForStderr(protocol, new RegExp(`application error before the response started, 500 sent: GET /${protocol}/bad/throws\\?${tag} [\\s\\S]*the app threw before starting`));
    expect((await request(url('/bad/ok'))).text).toBe('ok\n');
  });

  it('a client disconnect mid-response aborts the request and closes the app', async () => {
    // lighttpd and Apache notice a gone client only when they next write to it: a
    // ticking app. nginx watches the client while it waits: an app that has gone silent.
    if (web === 'nginx') {
      const r = await requestAndDisconnect(url(`/bad/never-finishes?${tag}`), 5);
      expect(r.status).toBe(200);
      expect(r.received.toString()).toContain('first chunk');
      await waitForStderr(protocol, new RegExp(`request aborted: GET /${protocol}/bad/never-finishes\\?${tag} `));
      await waitForStderr(protocol, /never-finishes: closed by the server/);
    } else {
      const r = await requestAndDisconnect(url(`/ticker/?${tag}`), 20);
      expect(r.status).toBe(200);
      expect(r.received.toString()).toMatch(/^tick 0\n/);
      await waitForStderr(protocol, new RegExp(`request aborted: GET /${protocol}/ticker/\\?${tag} `));
      await waitForStderr(protocol, /ticker: closed by the server after \d+ ticks/);
    }
  });
});
