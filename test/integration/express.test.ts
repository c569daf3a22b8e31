/**
 * `tsgi express start-server` driven as a user would: the real bin, a real port, the
 * banner on the terminal, requests over HTTP, Ctrl-C (SIGINT) and SIGTERM, and a scan of
 * /proc afterwards for anything of that server root left running. Also: `npm start` is
 * this command, and conf/httpd-tsgi.conf passes `apache2 -t` and serves its sites.
 */
import { describe, it, expect, beforeAll, afterEach } from 'vitest';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import { join } from 'node:path';
import { configtest, startApache, freePort, makeReadableTempDir, request } from '../harness';
import { ensureMode, MOD_TSGI_SO } from '../helpers/mod-tsgi';
import { ROOT, TSGI_BIN } from '../helpers/serve';

const HELLO = join(ROOT, 'examples', 'hello.tsgi');
const uid = process.getuid?.() ?? 0;

beforeAll(() => {
  // The module, and dist/ compiled from the current sources (the bin and daemon mode run it).
  ensureMode('daemon');
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

/**
 * Daemon mode: live processes of the daemon group of server root `root`. They run in a
 * session of their own (not Apache's group) as `node .../daemon-mode.js`, and the config
 * `tsgi express` writes puts TSGI_EXPRESS_ROOT=<root> in their environment.
 */
function daemonProcesses(root: string): number[] {
  const out: number[] = [];
  for (const name of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(name) || Number(name) === process.pid) continue;
    try {
      const stat = fs.readFileSync(`/proc/${name}/stat`, 'utf8');
      const state = stat.slice(stat.lastIndexOf(')') + 2)[0];
      if (state === 'Z' || state === 'X') continue;
      if (fs.readFileSync(`/proc/${name}/environ`, 'utf8').split('\0').includes(`TSGI_EXPRESS_ROOT=${root}`)) out.push(Number(name));
    } catch {
      /* gone meanwhile */
    }
  }
  return out;
}

/** Every process of a server root: Apache's (by command line) and its daemons' (by environment). */
const serverProcesses = (root: string) => [...processesMentioning(`${root}/`), ...daemonProcesses(root)];

afterEach(async () => {
  // A failed test must not leave Apache behind: SIGKILL on tsgi makes its watchdog stop
  // Apache's group; anything still mentioning a server root is killed here.
  for (const e of running.splice(0)) {
    if (e.child.exitCode === null && e.child.signalCode === null) e.child.kill('SIGKILL');
  }
  for (const root of roots.splice(0)) {
    for (let i = 0; i < 100 && serverProcesses(root).length > 0; i++) await new Promise((r) => setTimeout(r, 50));
    for (const pid of serverProcesses(root)) process.kill(pid, 'SIGKILL');
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

  it('refuses an unknown --mode with a clear message', async () => {
    const e = runExpress(['start-server', 'examples/hello.tsgi', '--mode', 'wsgi']);
    expect(await exitWithin(e, 10_000)).toEqual({ code: 2, signal: null });
    expect(e.stderr()).toBe('tsgi express: --mode must be embedded or daemon, got "wsgi"\n');
  });

  it('refuses a missing app and bad options before starting anything', async () => {
    for (const [args, message] of [
      [['start-server', 'examples/no-such.tsgi'], `tsgi express: ${join(ROOT, 'examples', 'no-such.tsgi')}: no such file\n`],
      [['start-server', 'examples/hello.tsgi', '--port', 'http'], 'tsgi express: --port must be a port number (1-65535), got "http"\n'],
      [['start-server', 'examples/hello.tsgi', '--log-level', 'loud'], /--log-level must be an Apache LogLevel/],
      [['start-server'], 'tsgi express: expected exactly one APP.tsgi argument\n'],
      [['stop-server'], /unknown subcommand "stop-server" \(available: start-server, setup-server, module-config, install-module\)/],
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

/** Runs a command to completion: code and combined output. */
function run(cmd: string, args: string[], opts: { env?: NodeJS.ProcessEnv; timeoutMs?: number } = {}) {
  const r = spawnSync(cmd, args, { cwd: ROOT, encoding: 'utf8', env: opts.env ?? process.env, timeout: opts.timeoutMs ?? 30_000, stdio: ['ignore', 'pipe', 'pipe'] });
  return { code: r.status, stdout: r.stdout ?? '', stderr: r.stderr ?? '', output: `${r.stdout ?? ''}${r.stderr ?? ''}` };
}

const tsgi = (...args: string[]) => run(process.execPath, [TSGI_BIN, 'express', ...args]);

async function until(what: string, check: () => boolean | Promise<boolean>, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** A readable temp dir (Apache's workers run as www-data under root) with the given files. */
function appDir(files: Record<string, string>): string {
  const dir = makeReadableTempDir('tsgi-express-opts-');
  for (const [rel, text] of Object.entries(files)) {
    fs.mkdirSync(join(dir, rel, '..'), { recursive: true, mode: 0o755 });
    fs.chmodSync(join(dir, rel, '..'), 0o755);
    fs.writeFileSync(join(dir, rel), text, { mode: 0o644 });
  }
  return dir;
}

const ENVIRON_APP = fs.readFileSync(join(ROOT, 'test', 'fixtures', 'environ.tsgi'), 'utf8');
const versionApp = (v: string) => `export function application(environ: any, startResponse: any) {
  startResponse('200 OK', [['Content-Type', 'text/plain']]);
  return ['${v}\\n'];
}
`;

describe('tsgi express start-server options, over HTTP', () => {
  it('--mount-point, --url-alias, --setenv, --server-status, --include-file, --processes/--threads, --request-timeout', async () => {
    const dir = appDir({
      'app/environ.tsgi': ENVIRON_APP,
      'app/static/hello.txt': 'static hello\n',
      'logo.txt': 'one file\n',
      'extra.conf': '# --include-file\nSetEnv FROM_INCLUDE "yes"\n',
    });
    const serverRoot = join(dir, 'root');
    roots.push(serverRoot);
    try {
      const port = await freePort();
      const e = runExpress([
        'start-server', join(dir, 'app', 'environ.tsgi'), '--port', String(port), '--server-root', serverRoot,
        '--mount-point', '/app/', '--url-alias', '/static', join(dir, 'app', 'static'), '--url-alias', '/logo.txt', join(dir, 'logo.txt'),
        '--setenv', 'GREETING', 'hello "world"', '--setenv', 'EMPTY', '', '--server-status', '--include-file', join(dir, 'extra.conf'),
        '--processes', '2', '--threads', '3', '--request-timeout', '42',
      ]);
      await e.waitFor('stderr', /Press Ctrl-C to stop\./);
      const banner = e.stderr();
      expect(banner).toMatch(new RegExp(`URL: +http://127\\.0\\.0\\.1:${port}/app\\n`));
      expect(banner).toContain(`Static:      http://127.0.0.1:${port}/static -> ${join(dir, 'app', 'static')}\n`);
      expect(banner).toMatch(/Capacity: +2 processes x 3 threads \(MaxRequestWorkers 6\)\n/);
      expect(banner).toMatch(/Timeouts: +request 42 s,/);
      expect(banner).toContain(`Status:      http://127.0.0.1:${port}/server-status (local clients)\n`);
      expect(banner).toMatch(/Reloading: +off/);

      // --mount-point moves the app: SCRIPT_NAME is the mount, / is not the app.
      const r = await request(`http://127.0.0.1:${port}/app/some/path?x=1`);
      expect(r.status, e.stderr()).toBe(200);
      const environ = JSON.parse(r.text);
      expect(environ).toMatchObject({ SCRIPT_NAME: '/app', PATH_INFO: '/some/path', QUERY_STRING: 'x=1' });
      // --setenv reaches environ (quotes and an empty value intact), so does the --include-file's SetEnv.
      expect(environ).toMatchObject({ GREETING: 'hello "world"', EMPTY: '', FROM_INCLUDE: 'yes' });
      // Outside the mount point: the DocumentRoot, which nothing grants (not the app).
      expect((await request(`http://127.0.0.1:${port}/`)).status).toBe(403);
      expect((await request(`http://127.0.0.1:${port}/application`)).status).toBe(403);

      // --url-alias: a directory and a single file beside the app, served by Apache.
      const st = await request(`http://127.0.0.1:${port}/static/hello.txt`);
      expect([st.status, st.text, st.headers['content-type']]).toEqual([200, 'static hello\n', 'text/plain']);
      expect((await request(`http://127.0.0.1:${port}/logo.txt`)).text).toBe('one file\n');
      expect((await request(`http://127.0.0.1:${port}/static/nope.txt`)).status).toBe(404);

      // --server-status: mod_status answers, and shows the 2 x 3 pool.
      const ss = await request(`http://127.0.0.1:${port}/server-status?auto`);
      expect(ss.status).toBe(200);
      expect(ss.text).toContain('ServerMPM: event');
      expect(Number(/BusyWorkers: (\d+)/.exec(ss.text)?.[1]) + Number(/IdleWorkers: (\d+)/.exec(ss.text)?.[1])).toBe(6);

      // --request-timeout: Apache's Timeout and the event-loop watchdog.
      const conf = fs.readFileSync(join(serverRoot, 'httpd.conf'), 'utf8');
      expect(conf).toMatch(/^Timeout 42$/m);
      expect(conf).toMatch(/^TSGIEventLoopTimeout 42$/m);
      expect(conf).toMatch(/^TSGIScriptReloading Off$/m);
      expect(conf).toContain(`Include "${join(dir, 'extra.conf')}"`);

      e.child.kill('SIGINT');
      expect(await exitWithin(e, 25_000)).toEqual({ code: 0, signal: null });
      expect(processesMentioning(`${serverRoot}/`)).toEqual([]);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  }, 60_000);

  it('--reload-on-changes picks up an edit; without it the loaded app stays', async () => {
    for (const reload of [true, false]) {
      const dir = appDir({ 'v.tsgi': versionApp('v1') });
      const serverRoot = join(dir, 'root');
      roots.push(serverRoot);
      try {
        const port = await freePort();
        const e = runExpress(['start-server', join(dir, 'v.tsgi'), '--port', String(port), '--server-root', serverRoot, ...(reload ? ['--reload-on-changes'] : [])]);
        await e.waitFor('stderr', /Press Ctrl-C to stop\./);
        expect(e.stderr()).toMatch(reload ? /Reloading: +on/ : /Reloading: +off/);
        expect((await request(`http://127.0.0.1:${port}/`)).text).toBe('v1\n');
        fs.writeFileSync(join(dir, 'v.tsgi'), versionApp('v2'));
        const later = new Date(Date.now() + 5000);
        fs.utimesSync(join(dir, 'v.tsgi'), later, later); // a new mtime even within the same second
        expect((await request(`http://127.0.0.1:${port}/`)).text).toBe(reload ? 'v2\n' : 'v1\n');
        e.child.kill('SIGTERM');
        expect(await exitWithin(e, 25_000)).toEqual({ code: 0, signal: null });
      } finally {
        fs.rmSync(dir, { recursive: true, force: true });
      }
    }
  }, 60_000);

  it.runIf(uid === 0)('--user/--group (root): the children run as that user', async () => {
    const port = await freePort();
    const root = join(os.tmpdir(), `tsgi-express-${port}-${uid}`);
    roots.push(root);
    const e = runExpress(['start-server', 'examples/hello.tsgi', '--port', String(port), '--user', 'nobody', '--group', 'nogroup']);
    await e.waitFor('stderr', /Press Ctrl-C to stop\./);
    expect(e.stderr()).toMatch(/Apache: +\/usr\/sbin\/apache2 pid \d+, workers run as nobody\n/);
    expect((await request(`http://127.0.0.1:${port}/`)).text).toBe('Hello World!\n');
    const nobody = Number(spawnSync('id', ['-u', 'nobody'], { encoding: 'utf8' }).stdout.trim());
    const uids = processesMentioning(`${root}/`).map((pid) => Number(/^Uid:\s+(\d+)/m.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1]));
    expect(uids).toContain(0); // the parent
    expect(uids).toContain(nobody); // the child that served
    expect(fs.readFileSync(join(root, 'httpd.conf'), 'utf8')).toContain('User nobody\nGroup nogroup\n');
    e.child.kill('SIGINT');
    expect(await exitWithin(e, 25_000)).toEqual({ code: 0, signal: null });
  }, 60_000);

  it('refuses bad options, naming the option, before starting anything', async () => {
    const hello = 'examples/hello.tsgi';
    for (const [args, message] of [
      [[hello, '--processes', '0'], '--processes must be a whole number from 1 to 64, got "0"'],
      [[hello, '--threads', 'many'], '--threads must be a whole number from 1 to 1000, got "many"'],
      [[hello, '--request-timeout', '-1'], '--request-timeout must be a whole number from 1 to 86400, got "-1"'],
      [[hello, '--request-timeout'], '--request-timeout needs a value'],
      [[hello, '--request-timeout', '1.5'], '--request-timeout must be a whole number from 1 to 86400, got "1.5"'],
      [[hello, '--url-alias', '/static'], '--url-alias needs 2 values (--url-alias URL PATH)'],
      [[hello, '--url-alias', 'static', 'examples'], '--url-alias: the URL must be a path such as /static, got "static"'],
      [[hello, '--url-alias', '/s', 'no/such/dir'], `--url-alias /s: ${join(ROOT, 'no/such/dir')}: no such file or directory`],
      [[hello, '--setenv', '1BAD', 'x'], '--setenv: the name must be letters, digits and _, got "1BAD"'],
      [[hello, '--setenv', 'ONLY_NAME'], '--setenv needs 2 values (--setenv NAME VALUE)'],
      [[hello, '--mount-point', 'app'], '--mount-point must be a URL path such as /app, got "app"'],
      [[hello, '--include-file', 'no-such.conf'], `--include-file: ${join(ROOT, 'no-such.conf')}: no such file`],
      [[hello, '--port', '1', '--port', '2'], '--port given more than once'],
      [[hello, '--reload-on-changes=yes'], '--reload-on-changes takes no value'],
      [[hello, '--bogus'], 'unknown option --bogus'],
      [[hello, '--user', 'no-such-user-tsgi'], uid === 0 ? '--user: no such user "no-such-user-tsgi"' : '--user needs root (Apache can only switch users when started as root)'],
    ] as const) {
      for (const sub of ['start-server', 'setup-server']) {
        const r = tsgi(sub, ...args);
        expect(r.code, `${sub} ${args.join(' ')}`).toBe(2);
        expect(r.stderr).toBe(`tsgi express: ${message}\n`);
      }
    }
  });
});

describe('tsgi express setup-server', () => {
  it('writes httpd.conf and apachectl; apachectl start serves in the background, stop leaves nothing', async () => {
    const dir = appDir({ 'app.tsgi': ENVIRON_APP, 'static/a.txt': 'A\n' });
    const serverRoot = join(dir, 'root');
    roots.push(serverRoot);
    try {
      const port = await freePort();
      const setup = tsgi('setup-server', join(dir, 'app.tsgi'), '--port', String(port), '--server-root', serverRoot, '--access-log', '--setenv', 'MODE', 'setup', '--url-alias', '/static', join(dir, 'static'));
      expect(setup.code, setup.output).toBe(0);
      expect(setup.stdout).toContain(`control:  ${serverRoot}/apachectl start|stop|restart|graceful|configtest\n`);
      const ctl = join(serverRoot, 'apachectl');
      expect(fs.statSync(ctl).mode & 0o777).toBe(0o755);
      expect(processesMentioning(`${serverRoot}/`)).toEqual([]); // only written, not started

      expect(run(ctl, ['configtest']).output).toContain('Syntax OK');
      expect(run(ctl, ['bogus'])).toMatchObject({ code: 2, stderr: `usage: ${ctl} start|stop|restart|graceful|graceful-stop|configtest\n` });

      // start returns at once (the server is in the background); stdio not a terminal: logs in files.
      const start = run(ctl, ['start']);
      expect(start.code, start.output).toBe(0);
      await until('the server to answer', async () => (await request(`http://127.0.0.1:${port}/x`).catch(() => null))?.status === 200);
      expect(JSON.parse((await request(`http://127.0.0.1:${port}/x`)).text)).toMatchObject({ MODE: 'setup', PATH_INFO: '/x' });
      expect((await request(`http://127.0.0.1:${port}/static/a.txt`)).text).toBe('A\n');
      expect(processesMentioning(`${serverRoot}/`).length).toBeGreaterThanOrEqual(2);
      await until('the access log', () => fs.existsSync(join(serverRoot, 'access_log')) && fs.readFileSync(join(serverRoot, 'access_log'), 'utf8').includes('"GET /static/a.txt HTTP/1.1" 200 2 '));
      expect(fs.readFileSync(join(serverRoot, 'error_log'), 'utf8')).toMatch(/AH00489: Apache\/[\d.]+ \(Debian\) mod_tsgi\/[\d.]+ configured/);

      // A second start is refused by Apache itself (the pid file's process is alive).
      expect(run(ctl, ['start']).output).toMatch(/already running/);
      expect(run(ctl, ['graceful']).code).toBe(0);
      await until('the server to answer after graceful', async () => (await request(`http://127.0.0.1:${port}/x`).catch(() => null))?.status === 200);

      expect(run(ctl, ['stop']).code).toBe(0);
      await until('every Apache process of the server root to exit', () => processesMentioning(`${serverRoot}/`).length === 0, 15_000);
      expect(fs.existsSync(join(serverRoot, 'httpd.pid'))).toBe(false);
      await expect(request(`http://127.0.0.1:${port}/x`, { timeoutMs: 2000 })).rejects.toThrow();
    } finally {
      run(join(serverRoot, 'apachectl'), ['stop']);
      fs.rmSync(dir, { recursive: true, force: true });
    }
  }, 60_000);

  it.runIf(fs.existsSync('/usr/bin/script'))('--log-to-terminal: apachectl start on a terminal runs in the foreground with the logs on it', async () => {
    const dir = appDir({ 'app.tsgi': versionApp('tty') });
    const serverRoot = join(dir, 'root');
    roots.push(serverRoot);
    try {
      const port = await freePort();
      expect(tsgi('setup-server', join(dir, 'app.tsgi'), '--port', String(port), '--server-root', serverRoot, '--log-to-terminal', '--access-log').code).toBe(0);
      const ctl = join(serverRoot, 'apachectl');
      const typescript = join(dir, 'typescript');
      // util-linux script(1) gives apachectl a pseudo-terminal and records what it prints.
      const tty = spawn('/usr/bin/script', ['-qfec', `${ctl} start`, typescript], { stdio: 'ignore' });
      try {
        await until('the server to answer', async () => (await request(`http://127.0.0.1:${port}/`).catch(() => null))?.status === 200, 20_000);
        expect((await request(`http://127.0.0.1:${port}/t`)).text).toBe('tty\n');
        await until('the access log on the terminal', () => fs.readFileSync(typescript, 'utf8').includes('"GET /t HTTP/1.1" 200 4 '));
        expect(fs.readFileSync(typescript, 'utf8')).toContain('-D TSGI_LOG_TO_TERMINAL -D FOREGROUND');
        expect(fs.existsSync(join(serverRoot, 'error_log'))).toBe(false);
        expect(run(ctl, ['stop']).code).toBe(0);
        await until('every Apache process of the server root to exit', () => processesMentioning(`${serverRoot}/`).length === 0, 15_000);
        await until('script to exit', () => tty.exitCode !== null || tty.signalCode !== null);
      } finally {
        if (tty.exitCode === null) tty.kill('SIGKILL');
      }
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  }, 60_000);

  it('configtest on a broken directive prints the file, the line and the reason; start-server reports it too', async () => {
    const dir = appDir({ 'app.tsgi': versionApp('v1'), 'broken.conf': '# line 1\nTSGIScriptReloading Maybe\n' });
    const serverRoot = join(dir, 'root');
    roots.push(serverRoot);
    try {
      const port = await freePort();
      const broken = join(dir, 'broken.conf');
      expect(tsgi('setup-server', join(dir, 'app.tsgi'), '--port', String(port), '--server-root', serverRoot, '--include-file', broken).code).toBe(0);
      const t = run(join(serverRoot, 'apachectl'), ['configtest']);
      expect(t.code).toBe(1);
      expect(t.output).toContain(`AH00526: Syntax error on line 2 of ${broken}:\nTSGIScriptReloading: expected On or Off, got 'Maybe'\n`);
      expect(run(join(serverRoot, 'apachectl'), ['start']).code).toBe(1);
      expect(processesMentioning(`${serverRoot}/`)).toEqual([]);

      const e = runExpress(['start-server', join(dir, 'app.tsgi'), '--port', String(port), '--server-root', serverRoot, '--include-file', broken]);
      expect((await exitWithin(e, 20_000)).code).toBe(1);
      expect(e.stderr()).toContain(`AH00526: Syntax error on line 2 of ${broken}:\nTSGIScriptReloading: expected On or Off, got 'Maybe'\n`);
      expect(e.stderr()).toContain('exited (code 1) before it was ready');
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  }, 60_000);
});

/** Reports where it runs: the process group, its pid and parent, its user, and a version. */
const whereApp = (v: string) => `export function application(environ: any, startResponse: any) {
  startResponse('200 OK', [['Content-Type', 'application/json']]);
  return [JSON.stringify({
    version: '${v}', group: environ['mod_tsgi.process_group'], pid: process.pid, ppid: process.ppid,
    uid: process.getuid(), multiprocess: environ['tsgi.multiprocess'], PATH_INFO: environ.PATH_INFO,
  })];
}
`;

interface Where {
  version: string;
  group: string;
  pid: number;
  ppid: number;
  uid: number;
  multiprocess: boolean;
  PATH_INFO: string;
}

const cmdline = (pid: number) => {
  try {
    return fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').filter(Boolean);
  } catch {
    return null;
  }
};

/** `ps` rows (pid, pgid, sid, command) of the given pids that still exist. */
function psRows(pids: number[]): string {
  const r = spawnSync('ps', ['-o', 'pid=,pgid=,sid=,args=', '-p', pids.join(',')], { encoding: 'utf8' });
  return r.stdout.trim();
}

/** The process group and session of each pid (from /proc/PID/stat). */
function groupsOf(pids: number[]): Set<number> {
  const out = new Set<number>();
  for (const pid of pids) {
    try {
      const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
      const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      out.add(Number(rest[2])).add(Number(rest[3]));
    } catch {
      /* gone */
    }
  }
  return out;
}

/** `ps` rows of every process whose process group or session is one of `groups`. */
function psInGroups(groups: Set<number>): string {
  const r = spawnSync('ps', ['-e', '-o', 'pid=,pgid=,sid=,args='], { encoding: 'utf8' });
  return r.stdout
    .split('\n')
    .filter((line) => {
      const [, pgid, sid] = line.trim().split(/\s+/).map(Number);
      return groups.has(pgid!) || groups.has(sid!);
    })
    .join('\n');
}

describe('tsgi express --mode daemon', () => {
  it('serves the app from a daemon group (not an Apache child), shows the banner, and Ctrl-C leaves nothing behind', async () => {
    const dir = appDir({ 'app/where.tsgi': whereApp('v1'), 'static/s.txt': 'static\n' });
    const serverRoot = join(dir, 'root');
    roots.push(serverRoot);
    try {
      const port = await freePort();
      const app = join(dir, 'app', 'where.tsgi');
      const e = runExpress([
        'start-server', app, '--mode', 'daemon', '--port', String(port), '--server-root', serverRoot,
        '--processes', '2', '--threads', '3', '--request-timeout', '40', '--server-status', '--url-alias', '/static', join(dir, 'static'),
      ]);
      await e.waitFor('stderr', /Press Ctrl-C to stop\./, 60_000);
      const prefix = join(serverRoot, 'tsgi');
      const banner = e.stderr().slice(e.stderr().indexOf('tsgi express: serving'));
      expect(banner).toContain(`tsgi express: serving ${app}\n`);
      expect(banner).toMatch(new RegExp(`URL: +http://127\\.0\\.0\\.1:${port}/\\n`));
      expect(banner).toContain(
        "  Mode:        daemon (process group where: Node processes started and supervised by Apache; no Node inside Apache's children)\n",
      );
      expect(banner).toContain('  Capacity:    2 processes x 3 threads (6 requests at once); Apache in front: 1 process x 10 threads, event MPM\n');
      expect(banner).toContain(
        '  Timeouts:    request 40 s, queue 30 s, daemon start-up 30 s, keep-alive 2 s, request headers 15-30 s, body 15 s, graceful stop 15 s\n',
      );
      expect(banner).toContain(`  Daemon:      ${process.execPath}${uid === 0 ? ', runs as www-data' : ''}\n`);
      expect(banner).toContain(`  Sockets:     ${prefix}.<pid>.<n>.sock (TSGISocketPrefix)\n`);
      expect(banner).toContain(`  Pool status: npx tsgi status --socket-prefix ${prefix}\n`);
      expect(banner).toContain(`  Status:      http://127.0.0.1:${port}/tsgi-status (the daemon group; local clients)\n`);
      expect(banner).toContain("  Error log:   this terminal (stderr), LogLevel info (Apache's and the daemon group's)\n");

      const conf = fs.readFileSync(join(serverRoot, 'httpd.conf'), 'utf8');
      expect(conf).toMatch(/^TSGIDaemonProcess where processes=2 threads=3 request-timeout=40 /m);
      expect(conf).toMatch(/^TSGIRestrictEmbedded On$/m);

      // The app runs in the daemon group: its pid is a node process outside Apache.
      const seen = new Map<number, Where>();
      for (let i = 0; i < 8; i++) {
        const r = await request(`http://127.0.0.1:${port}/p/${i}`);
        expect(r.status, e.stderr()).toBe(200);
        const w = JSON.parse(r.text) as Where;
        expect(w).toMatchObject({ version: 'v1', group: 'where', PATH_INFO: `/p/${i}`, multiprocess: true });
        seen.set(w.pid, w);
      }
      const apache = processesMentioning(`${serverRoot}/`);
      expect(apache.length).toBeGreaterThanOrEqual(2); // the parent and a child
      const daemons = daemonProcesses(serverRoot);
      const www = Number(spawnSync('id', ['-u', 'www-data'], { encoding: 'utf8' }).stdout.trim());
      for (const [pid, w] of seen) {
        expect(apache, `pid ${pid} is an Apache process`).not.toContain(pid);
        expect(cmdline(pid)?.[0]).not.toMatch(/apache2/);
        expect(daemons).toContain(pid);
        expect(daemons).toContain(w.ppid); // its supervisor, also the group's
        expect(w.uid).toBe(uid === 0 ? www : uid);
      }
      // Static files beside it are Apache's own.
      expect((await request(`http://127.0.0.1:${port}/static/s.txt`)).text).toBe('static\n');
      // The group's status: at /tsgi-status and from `tsgi status` on the socket prefix.
      const st = await request(`http://127.0.0.1:${port}/tsgi-status?json`);
      expect(st.status, st.text).toBe(200);
      expect(st.text).toContain('"where"');
      for (const pid of seen.keys()) expect(st.text).toContain(String(pid));
      const status = run(process.execPath, [TSGI_BIN, 'status', '--socket-prefix', prefix]);
      expect(status.code, status.output).toBe(0);
      expect(status.stdout).toContain('where');
      for (const pid of seen.keys()) expect(status.stdout).toContain(String(pid));

      const all = [...apache, ...daemons];
      // Apache's process group and the daemons' own sessions (setsid).
      const groups = groupsOf(all);
      expect(groups.size).toBeGreaterThanOrEqual(2);
      e.child.kill('SIGINT');
      expect(await exitWithin(e, 40_000)).toEqual({ code: 0, signal: null });
      expect(e.stderr()).toContain('tsgi express: SIGINT: graceful stop');
      expect(e.stderr()).toContain('tsgi express: Apache stopped\n');
      expect(e.stderr()).not.toContain('killed leftover');
      // Nothing of it is left: not by command line, not by environment, not by pid.
      expect(processesMentioning(`${serverRoot}/`)).toEqual([]);
      expect(daemonProcesses(serverRoot)).toEqual([]);
      expect(psRows(all)).toBe('');
      expect(psInGroups(groups)).toBe('');
      expect(fs.readdirSync(serverRoot).filter((f) => /\.(sock|status)$/.test(f))).toEqual([]);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  }, 120_000);

  it('--reload-on-changes: the next request runs the edit, and the group is recycled', async () => {
    const dir = appDir({ 'v.tsgi': whereApp('v1') });
    const serverRoot = join(dir, 'root');
    roots.push(serverRoot);
    try {
      const port = await freePort();
      const e = runExpress(['start-server', join(dir, 'v.tsgi'), '--mode', 'daemon', '--port', String(port), '--server-root', serverRoot, '--reload-on-changes']);
      await e.waitFor('stderr', /Press Ctrl-C to stop\./, 60_000);
      expect(e.stderr()).toMatch(/Reloading: +on: the next request runs the edited app, and the daemon group is recycled/);
      const before = JSON.parse((await request(`http://127.0.0.1:${port}/`)).text) as Where;
      expect(before).toMatchObject({ version: 'v1', group: 'v' });
      fs.writeFileSync(join(dir, 'v.tsgi'), whereApp('v2'));
      const later = new Date(Date.now() + 5000);
      fs.utimesSync(join(dir, 'v.tsgi'), later, later);
      // The request that notices the change runs the new code...
      const r = await request(`http://127.0.0.1:${port}/`);
      expect(r.status, e.stderr()).toBe(200);
      expect(JSON.parse(r.text)).toMatchObject({ version: 'v2', group: 'v' });
      // ... and the group is recycled: a fresh process serves, every request meanwhile gets v2.
      let after = before;
      await until('a recycled daemon process to serve', async () => {
        const next = await request(`http://127.0.0.1:${port}/`);
        expect([next.status, (JSON.parse(next.text) as Where).version]).toEqual([200, 'v2']);
        after = JSON.parse(next.text) as Where;
        return after.pid !== before.pid;
      }, 30_000);
      // The old process drains and exits.
      await until('the recycled process to exit', () => !daemonProcesses(serverRoot).includes(before.pid), 30_000);
      e.child.kill('SIGTERM');
      expect(await exitWithin(e, 40_000)).toEqual({ code: 0, signal: null });
      expect(serverProcesses(serverRoot)).toEqual([]);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  }, 120_000);

  it.runIf(uid === 0)('--user/--group (root): the daemon group runs as that user too (user=/group= in TSGIDaemonProcess)', async () => {
    const dir = appDir({ 'u.tsgi': whereApp('u1') });
    const serverRoot = join(dir, 'root');
    roots.push(serverRoot);
    try {
      const port = await freePort();
      const e = runExpress(['start-server', join(dir, 'u.tsgi'), '--mode', 'daemon', '--port', String(port), '--server-root', serverRoot, '--user', 'nobody', '--group', 'nogroup']);
      await e.waitFor('stderr', /Press Ctrl-C to stop\./, 60_000);
      expect(e.stderr()).toContain(`  Daemon:      ${process.execPath}, runs as nobody\n`);
      expect(fs.readFileSync(join(serverRoot, 'httpd.conf'), 'utf8')).toMatch(/^TSGIDaemonProcess u processes=1 threads=5 user=nobody group=nogroup /m);
      const w = JSON.parse((await request(`http://127.0.0.1:${port}/`)).text) as Where;
      const nobody = Number(spawnSync('id', ['-u', 'nobody'], { encoding: 'utf8' }).stdout.trim());
      expect(w).toMatchObject({ version: 'u1', group: 'u', uid: nobody });
      e.child.kill('SIGINT');
      expect(await exitWithin(e, 40_000)).toEqual({ code: 0, signal: null });
      expect(serverProcesses(serverRoot)).toEqual([]);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  }, 120_000);

  it('setup-server + apachectl start|graceful|stop in daemon mode', async () => {
    const dir = appDir({ 'app.tsgi': whereApp('s1') });
    const serverRoot = join(dir, 'root');
    roots.push(serverRoot);
    try {
      const port = await freePort();
      const prefix = join(serverRoot, 'tsgi');
      const setup = tsgi('setup-server', join(dir, 'app.tsgi'), '--mode', 'daemon', '--port', String(port), '--server-root', serverRoot, '--processes', '2');
      expect(setup.code, setup.output).toBe(0);
      expect(setup.stdout).toContain('  mode:     daemon (process group app, 2 x 5 threads)\n');
      expect(setup.stdout).toContain(`  status:   npx tsgi status --socket-prefix ${prefix}\n`);
      const ctl = join(serverRoot, 'apachectl');
      expect(run(ctl, ['configtest']).output).toContain('Syntax OK');
      expect(serverProcesses(serverRoot)).toEqual([]); // configtest starts no daemon

      const start = run(ctl, ['start']);
      expect(start.code, start.output).toBe(0);
      await until('the server to answer', async () => (await request(`http://127.0.0.1:${port}/x`).catch(() => null))?.status === 200, 30_000);
      const w = JSON.parse((await request(`http://127.0.0.1:${port}/x`)).text) as Where;
      expect(w).toMatchObject({ version: 's1', group: 'app', PATH_INFO: '/x' });
      expect(daemonProcesses(serverRoot)).toContain(w.pid);
      expect(processesMentioning(`${serverRoot}/`)).not.toContain(w.pid);
      expect(fs.readdirSync(serverRoot).some((f) => /^tsgi\.\d+\.\d+\.sock$/.test(f))).toBe(true);

      // graceful: the group carries on serving (a new generation may replace it).
      expect(run(ctl, ['graceful']).code).toBe(0);
      await until('the server to answer after graceful', async () => (await request(`http://127.0.0.1:${port}/y`).catch(() => null))?.status === 200, 30_000);
      expect(JSON.parse((await request(`http://127.0.0.1:${port}/y`)).text)).toMatchObject({ group: 'app', PATH_INFO: '/y' });

      const daemons = daemonProcesses(serverRoot);
      expect(daemons.length).toBeGreaterThanOrEqual(3); // a supervisor and 2 workers
      expect(run(ctl, ['stop']).code).toBe(0);
      await until('every process of the server root to exit', () => serverProcesses(serverRoot).length === 0, 40_000);
      expect(psRows(daemons)).toBe('');
      await expect(request(`http://127.0.0.1:${port}/x`, { timeoutMs: 2000 })).rejects.toThrow();
    } finally {
      run(join(serverRoot, 'apachectl'), ['stop']);
      fs.rmSync(dir, { recursive: true, force: true });
    }
  }, 120_000);
});

describe('tsgi express module-config', () => {
  it('prints the LoadModule line of the built module', () => {
    const r = tsgi('module-config');
    expect(r).toMatchObject({ code: 0, stdout: `LoadModule tsgi_module ${MOD_TSGI_SO}\n` });
    expect(tsgi('module-config', 'extra').code).toBe(2);
  });
});

/** The system Apache (Debian's, started by apache2ctl/the service): its parent has no -f. */
function systemApache(): number[] {
  const out: number[] = [];
  for (const name of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    try {
      const argv = fs.readFileSync(`/proc/${name}/cmdline`, 'utf8').split('\0');
      if ((argv[0] === '/usr/sbin/apache2' || argv[0] === 'apache2') && !argv.includes('-f') && !argv.includes('-t') && !argv.includes('-M')) out.push(Number(name));
    } catch {
      /* gone */
    }
  }
  return out;
}

const canInstall = uid === 0 && fs.existsSync('/usr/sbin/a2enmod') && fs.existsSync('/etc/apache2/mods-available');

describe.runIf(canInstall)('tsgi express install-module + a2enmod tsgi (the system Apache)', () => {
  const INSTALLED = ['/usr/lib/apache2/modules/mod_tsgi.so', '/usr/lib/apache2/modules/tsgi', '/etc/apache2/mods-available/tsgi.load', '/etc/apache2/mods-available/tsgi.conf'];
  const STATE = '/var/lib/apache2/module';

  it('installs, a2enmod tsgi passes apache2ctl -t and loads it, a broken directive is reported, then all of it goes', async () => {
    for (const p of INSTALLED) expect(fs.existsSync(p), `${p} exists before the test: not touching the system Apache`).toBe(false);
    expect(fs.existsSync('/etc/apache2/mods-enabled/tsgi.load')).toBe(false);
    const stateDirsBefore = fs.existsSync(STATE) ? fs.readdirSync(STATE) : [];
    const serviceBefore = systemApache();
    // apache2ctl reads /etc/apache2/envvars itself; APACHE_* from the environment would win.
    const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('APACHE_')));
    let apache: Awaited<ReturnType<typeof startApache>> | null = null;
    try {
      const inst = run(process.execPath, [TSGI_BIN, 'express', 'install-module']);
      expect(inst.code, inst.output).toBe(0);
      expect(inst.stdout).toContain('  /usr/lib/apache2/modules/tsgi/libnode.so.108\n');
      expect(inst.stdout).toContain(`runs its JavaScript from ${join(ROOT, 'dist', 'embedded', 'bootstrap.js')}`);
      expect(fs.readFileSync('/usr/lib/apache2/modules/mod_tsgi.so')).toEqual(fs.readFileSync(MOD_TSGI_SO));
      expect(fs.readFileSync('/etc/apache2/mods-available/tsgi.load', 'utf8')).toMatch(
        /^LoadFile \/usr\/lib\/apache2\/modules\/tsgi\/libnode\.so\.108\nLoadModule tsgi_module \/usr\/lib\/apache2\/modules\/mod_tsgi\.so\n$/m,
      );

      const en = run('a2enmod', ['tsgi'], { env });
      expect(en.code, en.output).toBe(0);
      expect(en.stdout).toContain('Enabling module tsgi.');
      expect(fs.readlinkSync('/etc/apache2/mods-enabled/tsgi.load')).toBe('../mods-available/tsgi.load');

      const t = run('apache2ctl', ['-t'], { env });
      expect(t.code, t.output).toBe(0);
      expect(t.output).toContain('Syntax OK');
      const m = run('apache2ctl', ['-M'], { env });
      expect(m.stdout).toMatch(/^ tsgi_module \(shared\)$/m);

      // The installed copy serves, with libnode from /usr/lib/apache2/modules/tsgi (not build/).
      apache = await startApache({
        config: `Include /etc/apache2/mods-available/tsgi.load\n<Directory "${join(ROOT, 'examples')}">\n    Require all granted\n</Directory>\nTSGIScriptAlias / "${HELLO}"\n`,
      });
      expect((await request(apache.url('/'))).text).toBe('Hello World!\n');
      const maps = fs.readFileSync(`/proc/${apache.pid}/maps`, 'utf8'); // the parent loaded the modules
      expect(maps).toContain('/usr/lib/apache2/modules/tsgi/libnode.so.108');
      expect(maps).not.toContain(join(ROOT, 'build', 'libnode'));
      await apache.stop();
      apache = null;

      // A broken directive in the enabled tsgi.conf: file, line and reason.
      fs.appendFileSync('/etc/apache2/mods-available/tsgi.conf', 'TSGIEventLoopTimeout soon\n');
      const lines = fs.readFileSync('/etc/apache2/mods-available/tsgi.conf', 'utf8').split('\n').length - 1;
      const bad = run('apache2ctl', ['-t'], { env });
      expect(bad.code).not.toBe(0);
      expect(bad.output).toContain(`AH00526: Syntax error on line ${lines} of /etc/apache2/mods-enabled/tsgi.conf:\nTSGIEventLoopTimeout`);

      const dis = run('a2dismod', ['-q', '-p', 'tsgi'], { env });
      expect(dis.code, dis.output).toBe(0);
      expect(fs.existsSync('/etc/apache2/mods-enabled/tsgi.load')).toBe(false);
      expect(run('apache2ctl', ['-M'], { env }).stdout).not.toContain('tsgi_module');
    } finally {
      if (apache) await apache.stop();
      if (fs.existsSync('/etc/apache2/mods-enabled/tsgi.load') || fs.existsSync('/etc/apache2/mods-enabled/tsgi.conf')) run('a2dismod', ['-q', '-f', '-p', 'tsgi'], { env });
      for (const p of INSTALLED) fs.rmSync(p, { recursive: true, force: true });
      // a2enmod's state: per-module marks, and the dirs it created.
      for (const d of fs.existsSync(STATE) ? fs.readdirSync(STATE) : []) {
        fs.rmSync(join(STATE, d, 'tsgi'), { force: true });
        if (!stateDirsBefore.includes(d) && fs.readdirSync(join(STATE, d)).length === 0) fs.rmdirSync(join(STATE, d));
      }
      // Never leave the system service running when it was not.
      const started = systemApache().filter((p) => !serviceBefore.includes(p));
      if (started.length > 0) run('apache2ctl', ['stop'], { env });
      expect(started, 'the system Apache was started').toEqual([]);
    }
    for (const p of INSTALLED) expect(fs.existsSync(p)).toBe(false);
    expect(fs.existsSync('/etc/apache2/mods-enabled/tsgi.load')).toBe(false);
  }, 120_000);
});

describe('npm start', () => {
  it('is tsgi express start-server on examples/hello.tsgi, port 8000, with the module built first', () => {
    const pkg = JSON.parse(fs.readFileSync(join(ROOT, 'package.json'), 'utf8'));
    expect(pkg.scripts.start).toBe('node bin/tsgi.js express start-server examples/hello.tsgi --port 8000');
    expect(pkg.scripts.prestart).toBe('node scripts/setup.js --for start');
  });
});

describe('conf/httpd-tsgi.conf', () => {
  /** Loaded by Debian's stock apache2.conf, which the file relies on, beyond the harness's own set. */
  const STOCK_MODULES = ['authz_host'];
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
      'shop/app.tsgi': ENVIRON_APP,
      'finance/rest.tsgi': APP,
      'finance/index.html': '<h1>finance</h1>\n',
    };
    for (const [rel, content] of Object.entries(files)) {
      fs.mkdirSync(join(www, rel, '..'), { recursive: true, mode: 0o755 });
      fs.writeFileSync(join(www, rel), content, { mode: 0o644 });
    }
    for (const d of ['app1', 'app2', 'app2/tools', 'app2/shops', 'shop', 'finance']) fs.chmodSync(join(www, d), 0o755);
    const text = CONF.replace(/^Define TSGI_MODULE .*$/m, `Define TSGI_MODULE ${MOD_TSGI_SO}`)
      .replace(/^Define TSGI_WWW .*$/m, `Define TSGI_WWW ${www}`)
      .replace(/^Define TSGI_NODE .*$/m, `Define TSGI_NODE ${process.execPath}`);
    expect(text).not.toBe(CONF);
    return { www, text };
  }

  it('uses only directives mod_tsgi has, each of those the issue lists', () => {
    for (const d of [
      'LoadModule tsgi_module', 'TSGIScriptAlias / ', 'TSGIScriptAlias /tools/ ', 'TSGIScriptAliasMatch ', 'TSGICallableObject ', 'TSGIScriptReloading ',
      'TSGIPassAuthorization ', 'TSGIApplicationGroup ', 'TSGIDaemonProcess shop ', 'TSGIProcessGroup shop', 'SetHandler tsgi-status',
      '#TSGISocketPrefix ', '#TSGIRestrictEmbedded On',
    ]) {
      expect(CONF).toContain(d);
    }
    // Two app sites in embedded mode, one in a daemon group, and the finance example.
    expect(CONF.match(/<VirtualHost /g)?.length).toBe(4);
    const native = fs.readdirSync(join(ROOT, 'native')).filter((f) => f.endsWith('.c')).map((f) => fs.readFileSync(join(ROOT, 'native', f), 'utf8')).join('\n');
    for (const [, name] of CONF.matchAll(/^\s*#?(TSGI\w+)/gm)) expect(native).toContain(`"${name}"`);
  });

  it('passes apache2 -t (with its paths pointed at temp files)', async () => {
    const { www, text } = materialize();
    try {
      // No modules: [MOD_TSGI]: the file's own LoadModule must do it. authz_host
      // (Require local) is one of the modules Debian's stock apache2.conf loads.
      const r = await configtest({ config: text, modules: STOCK_MODULES });
      expect(r.code, r.output).toBe(0);
      expect(r.output).toContain('Syntax OK');
      expect(r.output).not.toMatch(/AH\d+|TSGI\d+|warn/i);
    } finally {
      fs.rmSync(www, { recursive: true, force: true });
    }
  });

  it('serves its sites: two apps in two VirtualHosts, the mapping forms, and the finance example', async () => {
    const { www, text } = materialize();
    const apache = await startApache({ modules: STOCK_MODULES, config: ({ port }) => text.replace(/<VirtualHost \*:80>/g, `<VirtualHost *:${port}>`) });
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

      // Site 3 runs in its daemon group, from processes outside Apache's children.
      const shop = await request(apache.url('/cart/7?x=1'), { headers: { Host: 'shop.example.org' } });
      expect(shop.status, apache.errorLog()).toBe(200);
      expect(JSON.parse(shop.text)).toMatchObject({ 'mod_tsgi.process_group': 'shop', SCRIPT_NAME: '', PATH_INFO: '/cart/7', QUERY_STRING: 'x=1', 'tsgi.multiprocess': true });
      const daemons = apache.descendants().filter((pid) => !apache.processes().includes(pid));
      expect(daemons.length).toBeGreaterThanOrEqual(3); // the group's supervisor and its 2 processes
      const status = await request(apache.url('/tsgi-status?json'), { headers: { Host: 'shop.example.org' } });
      expect(status.status, status.text).toBe(200);
      expect(status.text).toContain('"shop"');
      // Only on site 3: elsewhere /tsgi-status is just a path of the app.
      expect(await get('app1.example.org', '/tsgi-status')).toBe(body('empty', '/tsgi-status'));
    } finally {
      await apache.stop();
      fs.rmSync(www, { recursive: true, force: true });
    }
  });
});
