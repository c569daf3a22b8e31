/**
 * `tsgi express start-server` driven as a user would: the real bin, a real port, the
 * banner on the terminal, requests over HTTP, Ctrl-C (SIGINT) and SIGTERM, and a scan of
 * /proc afterwards for anything of that server root left running. Also: `npm start` is
 * this command, and conf/httpd-tsgi.conf passes `apache2 -t` and serves its sites.
 */
import { describe, it, expect, beforeAll, afterEach } from 'vitest';
import { spawn, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import { join } from 'node:path';
import { configtest, startApache, freePort, makeReadableTempDir, request } from '../harness';
import { ensureModTsgi, MOD_TSGI_SO } from '../helpers/mod-tsgi';
import { ROOT, TSGI_BIN } from '../helpers/serve';

const HELLO = join(ROOT, 'examples', 'hello.tsgi');
const uid = process.getuid?.() ?? 0;

beforeAll(() => {
  ensureModTsgi();
}, 600_000);

/** Live processes whose command line contains `marker` (apache2 has `-d ROOT -f ROOT/httpd.conf` in it). */
function processesMentioning(marker: string): number[] {
  const out: number[] = [];
  for (const name of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(name) || Number(name) === process.pid) continue;
    try {
      const stat = fs.readFileSync(`/proc/${name}/stat`, 'utf8');
      const state = stat.slice(stat.lastIndexOf(')') + 2)[0];
      if (state === 'Z' || state === 'X') continue;
      if (fs.readFileSync(`/proc/${name}/cmdline`, 'utf8').split('\0').join(' ').includes(marker)) out.push(Number(name));
    } catch {
      /* gone meanwhile */
    }
  }
  return out;
}

interface Express {
  child: ChildProcess;
  stdout(): string;
  stderr(): string;
  waitFor(stream: 'stdout' | 'stderr', re: RegExp, timeoutMs?: number): Promise<RegExpMatchArray>;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

const running: Express[] = [];
const roots: string[] = [];

function runExpress(args: string[]): Express {
  const child = spawn(process.execPath, [TSGI_BIN, 'express', ...args], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  child.stdout!.setEncoding('utf8').on('data', (d: string) => (out += d));
  child.stderr!.setEncoding('utf8').on('data', (d: string) => (err += d));
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.on('exit', (code, signal) => resolve({ code, signal })),
  );
  const e: Express = {
    child,
    stdout: () => out,
    stderr: () => err,
    exited,
    async waitFor(stream, re, timeoutMs = 30_000) {
      const deadline = Date.now() + timeoutMs;
      for (;;) {
        const m = (stream === 'stdout' ? out : err).match(re);
        if (m) return m;
        if (child.exitCode !== null || child.signalCode !== null || Date.now() > deadline) {
          throw new Error(`no ${re} on ${stream} (exit ${child.exitCode ?? child.signalCode}); stderr:\n${err}\nstdout:\n${out}`);
        }
        await new Promise((r) => setTimeout(r, 25));
      }
    },
  };
  running.push(e);
  return e;
}

async function exitWithin(e: Express, ms: number) {
  return Promise.race([
    e.exited,
    new Promise<never>((_, reject) => setTimeout(() => reject(new Error(`tsgi express still running after ${ms} ms; stderr:\n${e.stderr()}`)), ms)),
  ]);
}

afterEach(async () => {
  // A failed test must not leave Apache behind: SIGKILL on tsgi makes its watchdog stop
  // Apache's group; anything still mentioning a server root is killed here.
  for (const e of running.splice(0)) {
    if (e.child.exitCode === null && e.child.signalCode === null) e.child.kill('SIGKILL');
  }
  for (const root of roots.splice(0)) {
    for (let i = 0; i < 100 && processesMentioning(`${root}/`).length > 0; i++) await new Promise((r) => setTimeout(r, 50));
    for (const pid of processesMentioning(`${root}/`)) process.kill(pid, 'SIGKILL');
    fs.rmSync(root, { recursive: true, force: true });
  }
});

describe('tsgi express start-server', () => {
  it('serves the app, shows the banner, and leaves nothing behind on Ctrl-C', async () => {
    const port = await freePort();
    const root = join(os.tmpdir(), `tsgi-express-${port}-${uid}`);
    roots.push(root);
    const e = runExpress(['start-server', 'examples/hello.tsgi', '--port', String(port)]);
    await e.waitFor('stderr', /Press Ctrl-C to stop\./);

    const r = await request(`http://127.0.0.1:${port}/`);
    expect(r.status).toBe(200);
    expect(r.text).toBe('Hello World!\n');
    expect((await request(`http://127.0.0.1:${port}/some/path?q=1`)).text).toBe('Hello World!\n');

    const banner = e.stderr().slice(e.stderr().indexOf('tsgi express: serving'));
    expect(banner).toContain(`tsgi express: serving ${HELLO}\n`);
    expect(banner).toMatch(new RegExp(`URL: +http://127\\.0\\.0\\.1:${port}/\\n`));
    expect(banner).toMatch(/Mode: +embedded \(a Node runtime inside each Apache child\), event MPM\n/);
    expect(banner).toMatch(/Capacity: +1 process x 5 threads \(MaxRequestWorkers 5\)\n/);
    expect(banner).toMatch(/Timeouts: +request 60 s, keep-alive 2 s, request headers 15-30 s, body 15 s, graceful stop 15 s\n/);
    expect(banner).toMatch(/Error log: +this terminal \(stderr\), LogLevel info\n/);
    expect(banner).toMatch(/Access log: +this terminal \(stdout\)\n/);
    expect(banner).toContain(`Server root: ${root} (config ${root}/httpd.conf)`);
    expect(banner).toMatch(/Apache: +\/usr\/sbin\/apache2 pid \d+/);
    expect(banner).toContain(`Module:      ${MOD_TSGI_SO}\n`);

    // Logs on the terminal: Apache's error log on stderr, the access log on stdout.
    expect(e.stderr()).toMatch(/AH00489: Apache\/[\d.]+ \(Debian\) mod_tsgi\/[\d.]+ configured -- resuming normal operations/);
    await e.waitFor('stdout', /"GET \/some\/path\?q=1 HTTP\/1\.1" 200 13 /);

    // The config it wrote is the one Apache runs.
    const conf = fs.readFileSync(join(root, 'httpd.conf'), 'utf8');
    expect(conf).toContain(`TSGIScriptAlias / "${HELLO}"`);
    expect(conf).toContain(`Listen 127.0.0.1:${port}`);
    expect(processesMentioning(`${root}/`).length).toBeGreaterThanOrEqual(2); // parent + one child

    e.child.kill('SIGINT');
    const exit = await exitWithin(e, 25_000);
    expect(exit, e.stderr()).toEqual({ code: 0, signal: null });
    expect(e.stderr()).toContain('tsgi express: SIGINT: graceful stop');
    expect(e.stderr()).toContain('AH00492: caught SIGWINCH, shutting down gracefully');
    expect(e.stderr()).toContain('tsgi express: Apache stopped\n');
    expect(e.stderr()).not.toContain('killed leftover');
    expect(processesMentioning(`${root}/`)).toEqual([]);
    expect(fs.existsSync(join(root, 'httpd.pid'))).toBe(false);
  }, 60_000);

  it('a graceful stop lets an in-flight request finish', async () => {
    const port = await freePort();
    const dir = makeReadableTempDir('tsgi-express-app-');
    const serverRoot = join(dir, 'server root');
    roots.push(serverRoot);
    try {
      fs.writeFileSync(
        join(dir, 'slow.tsgi'),
        `export async function application(environ: any, startResponse: any) {
  await new Promise((r) => setTimeout(r, 1500));
  startResponse('200 OK', [['Content-Type', 'text/plain']]);
  return ['finished\\n'];
}
`,
        { mode: 0o644 },
      );
      const e = runExpress(['start-server', join(dir, 'slow.tsgi'), '--port', String(port), '--server-root', serverRoot, '--log-level', 'warn']);
      await e.waitFor('stderr', /Press Ctrl-C to stop\./);
      expect(e.stderr()).toContain(`Server root: ${serverRoot} (config ${serverRoot}/httpd.conf)`);
      expect(e.stderr()).toMatch(/LogLevel warn\n/);

      const inFlight = request(`http://127.0.0.1:${port}/`, { timeoutMs: 20_000 });
      await new Promise((r) => setTimeout(r, 500)); // the app is now sleeping
      e.child.kill('SIGTERM');
      const r = await inFlight;
      expect(r.status, e.stderr()).toBe(200);
      expect(r.text).toBe('finished\n');
      expect(await exitWithin(e, 25_000)).toEqual({ code: 0, signal: null });
      expect(e.stderr()).toContain('tsgi express: SIGTERM: graceful stop');
      expect(processesMentioning(`${serverRoot}/`)).toEqual([]);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  }, 60_000);

  it('refuses --mode daemon with a clear message', async () => {
    const e = runExpress(['start-server', 'examples/hello.tsgi', '--mode', 'daemon']);
    expect(await exitWithin(e, 10_000)).toEqual({ code: 2, signal: null });
    expect(e.stderr()).toBe(
      'tsgi express: --mode daemon is not available yet: daemon mode comes in a later release. Use --mode embedded (the default).\n',
    );
  });

  it('refuses a missing app and bad options before starting anything', async () => {
    for (const [args, message] of [
      [['start-server', 'examples/no-such.tsgi'], `tsgi express: ${join(ROOT, 'examples', 'no-such.tsgi')}: no such file\n`],
      [['start-server', 'examples/hello.tsgi', '--port', 'http'], 'tsgi express: --port must be a port number (1-65535), got "http"\n'],
      [['start-server', 'examples/hello.tsgi', '--log-level', 'loud'], /--log-level must be an Apache LogLevel/],
      [['start-server'], 'tsgi express: expected exactly one APP.tsgi argument\n'],
      [['stop-server'], /unknown subcommand "stop-server" \(available: start-server\)/],
    ] as const) {
      const e = runExpress([...args]);
      expect((await exitWithin(e, 10_000)).code).toBe(2);
      if (typeof message === 'string') expect(e.stderr()).toBe(message);
      else expect(e.stderr()).toMatch(message);
    }
  });

  it('an Apache that cannot start (port taken) is reported, and tsgi exits non-zero', async () => {
    const net = await import('node:net');
    const blocker = net.createServer();
    await new Promise<void>((r) => blocker.listen(0, '127.0.0.1', r));
    const port = (blocker.address() as { port: number }).port;
    const root = join(os.tmpdir(), `tsgi-express-${port}-${uid}`);
    roots.push(root);
    try {
      const e = runExpress(['start-server', 'examples/hello.tsgi', '--port', String(port)]);
      expect((await exitWithin(e, 20_000)).code).toBe(1);
      expect(e.stderr()).toContain('Address already in use');
      expect(e.stderr()).toContain('tsgi express: /usr/sbin/apache2 exited (code 1) before it was ready; its messages are above');
      expect(processesMentioning(`${root}/`)).toEqual([]);
    } finally {
      blocker.close();
    }
  });
});

describe('npm start', () => {
  it('is tsgi express start-server on examples/hello.tsgi, port 8000, with the module built first', () => {
    const pkg = JSON.parse(fs.readFileSync(join(ROOT, 'package.json'), 'utf8'));
    expect(pkg.scripts.start).toBe('node bin/tsgi.js express start-server examples/hello.tsgi --port 8000');
    expect(pkg.scripts.prestart).toBe('node scripts/setup.js --for start');
  });
});

describe('conf/httpd-tsgi.conf', () => {
  const CONF = fs.readFileSync(join(ROOT, 'conf', 'httpd-tsgi.conf'), 'utf8');
  const APP = fs.readFileSync(join(ROOT, 'examples', 'rest.tsgi'), 'utf8');

  /** The example with its Define'd paths pointing at temp files and the built module. */
  function materialize(): { www: string; text: string } {
    const www = makeReadableTempDir('tsgi-conf-www-');
    const files: Record<string, string> = {
      'app1/app.tsgi': APP,
      'app2/api.tsgi': APP.replace('export const application', 'export const app'),
      'app2/tools/report.tsgi': APP.replace('export const application', 'export const handler'),
      'app2/shops/books.tsgi': APP,
      'finance/rest.tsgi': APP,
      'finance/index.html': '<h1>finance</h1>\n',
    };
    for (const [rel, content] of Object.entries(files)) {
      fs.mkdirSync(join(www, rel, '..'), { recursive: true, mode: 0o755 });
      fs.writeFileSync(join(www, rel), content, { mode: 0o644 });
    }
    for (const d of ['app1', 'app2', 'app2/tools', 'app2/shops', 'finance']) fs.chmodSync(join(www, d), 0o755);
    const text = CONF.replace(/^Define TSGI_MODULE .*$/m, `Define TSGI_MODULE ${MOD_TSGI_SO}`).replace(/^Define TSGI_WWW .*$/m, `Define TSGI_WWW ${www}`);
    expect(text).not.toBe(CONF);
    return { www, text };
  }

  it('uses only directives mod_tsgi has, each of those the issue lists', () => {
    for (const d of ['LoadModule tsgi_module', 'TSGIScriptAlias / ', 'TSGIScriptAlias /tools/ ', 'TSGIScriptAliasMatch ', 'TSGICallableObject ', 'TSGIScriptReloading ', 'TSGIPassAuthorization ', 'TSGIApplicationGroup ']) {
      expect(CONF).toContain(d);
    }
    expect(CONF.match(/<VirtualHost /g)?.length).toBe(3);
    const native = fs.readFileSync(join(ROOT, 'native', 'mod_tsgi.c'), 'utf8');
    for (const [, name] of CONF.matchAll(/^\s*(TSGI\w+)/gm)) expect(native).toContain(`"${name}"`);
  });

  it('passes apache2 -t (with its paths pointed at temp files)', async () => {
    const { www, text } = materialize();
    try {
      // No modules: [MOD_TSGI]: the file's own LoadModule must do it.
      const r = await configtest({ config: text });
      expect(r.code, r.output).toBe(0);
      expect(r.output).toContain('Syntax OK');
      expect(r.output).not.toMatch(/AH\d+|TSGI\d+|warn/i);
    } finally {
      fs.rmSync(www, { recursive: true, force: true });
    }
  });

  it('serves its sites: two apps in two VirtualHosts, the mapping forms, and the finance example', async () => {
    const { www, text } = materialize();
    const apache = await startApache({ config: ({ port }) => text.replace(/<VirtualHost \*:80>/g, `<VirtualHost *:${port}>`) });
    try {
      const get = async (host: string, path: string) => {
        const r = await request(apache.url(path), { headers: { Host: host } });
        return `${r.status} ${r.text}`;
      };
      const body = (scriptName: string, pathInfo: string) => `200 Hello World!\nPATH_INFO = ${pathInfo}\nSCRIPT_NAME = ${scriptName}\n`;
      expect(await get('app1.example.org', '/a/b')).toBe(body('empty', '/a/b'));
      expect(await get('app2.example.org', '/api/users/7')).toBe(body('/api', '/users/7'));
      expect(await get('app2.example.org', '/tools/report.tsgi/x')).toBe(body('/tools/report.tsgi', '/x'));
      expect(await get('app2.example.org', '/shop/books/cart')).toBe(body('/shop/books', '/cart'));
      expect(await get('finance.example.org', '/rest/custompath')).toBe(body('/rest', '/custompath'));
      expect(await get('example.org', '/')).toBe('200 <h1>finance</h1>\n');
      expect((await get('app2.example.org', '/apix')).slice(0, 3)).toBe('404');
    } finally {
      await apache.stop();
      fs.rmSync(www, { recursive: true, force: true });
    }
  });
});
