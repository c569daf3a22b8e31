/**
 * mod_tsgi embedded mode under a real, private Apache (event MPM): .tsgi apps run on the
 * libnode runtime inside the Apache children, through the gateway core. What exists so
 * far (docs/embedded.md): hello world, request bodies, errors, the
 * Environment re-created after process.exit(), stdio to the error log, signal listeners
 * refused, reloading on change, graceful restart.
 *
 * Every case also runs in daemon mode (the same config plus `TSGIDaemonProcess
 * tsgi-test processes=2` and `TSGIProcessGroup tsgi-test`): the apps run in the group's
 * Node daemons and the Apache child forwards to them (docs/protocol.md).
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { createHash, randomBytes } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { startApache, type ApacheInstance } from '../harness/apache';
import { request } from '../harness/http';
import { daemonWorkers, ensureMode, MOD_TSGI, modeConfig, pollFor, TSGI_MODES, type TsgiMode } from '../helpers/mod-tsgi';
import { ROOT } from '../helpers/serve';

const APPS: Record<string, string> = {
  'echo.tsgi': `
import { createHash } from 'node:crypto';
export const application = async (environ: any, startResponse: any) => {
  const body = Buffer.from(await environ['tsgi.input'].read());
  startResponse('200 OK', [['Content-Type', 'text/plain'], ['X-Sha256', createHash('sha256').update(body).digest('hex')]]);
  return [String(body.length)];
};`,
  'throws.tsgi': `
export function application(environ: any, startResponse: any) {
  throw new Error('boom from throws.tsgi');
}`,
  'exit.tsgi': `
export function application(environ: any, startResponse: any) {
  setTimeout(() => process.exit(3), 10);
  startResponse('200 OK', [['Content-Type', 'text/plain']]);
  return ['exiting ' + process.pid + '\\n'];
}`,
  'console.tsgi': `
export function application(environ: any, startResponse: any) {
  console.log('hello from console.log');
  console.error('hello from console.error');
  process.stderr.write('hello from process.stderr\\n');
  startResponse('200 OK', [['Content-Type', 'text/plain']]);
  return ['logged\\n'];
}`,
  'signal.tsgi': `
export function application(environ: any, startResponse: any) {
  let result = 'allowed';
  try { process.on('SIGTERM', () => {}); } catch (e) { result = (e as Error).message; }
  startResponse('200 OK', [['Content-Type', 'text/plain']]);
  return [result];
}`,
  'streaming.tsgi': `
export async function* body() { yield 'one\\n'; await new Promise((r) => setTimeout(r, 20)); yield 'two\\n'; }
export function application(environ: any, startResponse: any) {
  startResponse('200 OK', [['Content-Type', 'text/plain'], ['X-Many', 'a'], ['X-Many', 'b']]);
  return body();
}`,
  'version.tsgi': `
export function application(environ: any, startResponse: any) {
  startResponse('200 OK', [['Content-Type', 'text/plain']]);
  return ['version 1'];
}`,
  'process.tsgi': `
export function application(environ: any, startResponse: any) {
  const cwdBefore = process.cwd();
  let chdir = 'allowed';
  try { process.chdir('/tmp'); } catch (e) { chdir = (e as any).code ?? 'threw'; }
  startResponse('200 OK', [['Content-Type', 'application/json']]);
  return [JSON.stringify({ version: process.version, chdir, cwd: process.cwd(), execArgv: process.execArgv, cwdBefore, uid: process.getuid!(), pid: process.pid })];
}`,
};

/** The passwd entry's home directory of `user` (getent), for the daemon's working directory. */
function homeOf(user: string): string {
  return execFileSync('getent', ['passwd', user], { encoding: 'utf8' }).split(':')[5]!;
}

describe.each(TSGI_MODES)('%s mode', (mode: TsgiMode) => {
  let apache: ApacheInstance;

  beforeAll(async () => {
    ensureMode(mode);
    const files: Record<string, string> = {};
    for (const [name, src] of Object.entries(APPS)) files[`apps/${name}`] = src;
    apache = await startApache({
      modules: [MOD_TSGI],
      files,
      config: ({ root }) =>
        [
          `TSGIScriptAlias /hello ${join(ROOT, 'examples', 'hello.tsgi')}`,
          `TSGIScriptAlias /rest ${join(ROOT, 'examples', 'rest.tsgi')}`,
          `TSGIScriptAlias /apps/ ${root}/apps/`,
          // One child: the process.exit() test must hit the child it restarted.
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

  const get = (p: string) => request(apache.url(p));

  it('serves examples/hello.tsgi', async () => {
    const r = await get('/hello');
    expect(r.status).toBe(200);
    expect(r.text).toBe('Hello World!\n');
  });

  it('examples/rest.tsgi sees the mount', async () => {
    const r = await get('/rest/custompath');
    expect(r.text).toBe('Hello World!\nPATH_INFO = /custompath\nSCRIPT_NAME = /rest\n');
  });

  it('a request body reaches the app intact (1 MiB, SHA-256)', async () => {
    const body = randomBytes(1024 * 1024);
    const r = await request(apache.url('/apps/echo.tsgi'), { method: 'POST', body });
    expect(r.status).toBe(200);
    expect(r.text).toBe(String(body.length));
    expect(r.headers['x-sha256']).toBe(createHash('sha256').update(body).digest('hex'));
  });

  it('an async-iterable body streams, repeated headers are kept', async () => {
    const r = await get('/apps/streaming.tsgi');
    expect(r.status).toBe(200);
    expect(r.text).toBe('one\ntwo\n');
    expect(r.headers['x-many']).toBe('a, b');
    expect(r.complete).toBe(true);
  });

  it('an app that throws: 500 and one error-log entry with the .tsgi stack', async () => {
    const mark = apache.logMark();
    const r = await get('/apps/throws.tsgi');
    expect(r.status).toBe(500);
    // The daemon writes the stack as lines of its own; embedded mode as one entry.
    await apache.waitForLog(mode === 'embedded' ? /boom from throws\.tsgi.*throws\.tsgi:\d+/ : /boom from throws\.tsgi[\s\S]*throws\.tsgi:\d+/, 5000, mark);
  });

  it('console and process.stderr go to the error log (P11)', async () => {
    const mark = apache.logMark();
    expect((await get('/apps/console.tsgi')).status).toBe(200);
    await apache.waitForLog(/\[tsgi:info\].*stdout: hello from console\.log/, 5000, mark);
    await apache.waitForLog(/\[tsgi:error\].*stderr: hello from console\.error/, 5000, mark);
    await apache.waitForLog(/\[tsgi:error\].*stderr: hello from process\.stderr/, 5000, mark);
  });

  if (mode === 'embedded') {
    // Embedded only: the signals of an Apache child are Apache's; a daemon is its own process.
    it('signal listeners are refused (P5)', async () => {
      const r = await get('/apps/signal.tsgi');
      expect(r.text).toBe("mod_tsgi: process.on('SIGTERM') is refused: the signals of an Apache child belong to Apache");
    });

    // Embedded only: libnode's Node 18 inside apache2; daemons run the group's node executable.
    it('Node 18 from libnode, no process-wide state for JS (chdir refused), no NODE_OPTIONS', async () => {
      const r = await get('/apps/process.tsgi');
      const info = JSON.parse(r.text) as { version: string; chdir: string; cwd: string; execArgv: string[] };
      expect(info.version).toMatch(/^v18\./);
      expect(info.chdir).toBe('ERR_WORKER_UNSUPPORTED_OPERATION');
      expect(info.cwd).not.toBe('/tmp'); // the Apache child's cwd is untouched
      expect(info.execArgv).toEqual([]);
    });

    it('process.exit() re-creates the Node environment; the child survives (P8)', async () => {
      const pidsBefore = apache.processes().sort();
      const mark = apache.logMark();
      expect((await get('/apps/exit.tsgi')).status).toBe(200);
      await apache.waitForLog(/TSGI0121: process\.exit\(3\) called by JavaScript/, 5000, mark);
      await apache.waitForLog(/TSGI0124: re-creating the Node environment/, 5000, mark);
      await apache.waitForLog(/TSGI0120: embedded runtime ready/, 10_000, mark);
      const r = await get('/hello');
      expect(r.status).toBe(200);
      expect(r.text).toBe('Hello World!\n');
      expect(apache.processes().sort()).toEqual(pidsBefore);
    });
  } else {
    it('signal listeners are allowed: a daemon is a process of its own (P5 does not apply)', async () => {
      expect((await get('/apps/signal.tsgi')).text).toBe('allowed');
    });

    it('the daemon runs the node on PATH as Apache\'s User, in its home, with no node options', async () => {
      const r = await get('/apps/process.tsgi');
      const info = JSON.parse(r.text) as { version: string; chdir: string; cwdBefore: string; execArgv: string[]; uid: number; pid: number };
      expect(info.version).toBe(execFileSync('node', ['--version'], { encoding: 'utf8' }).trim());
      expect(info.chdir).toBe('allowed');
      expect(daemonWorkers(apache.pid)).toContain(info.pid);
      if (process.getuid!() === 0) {
        // The harness runs Apache's children as www-data; a group without user= runs as Apache's User.
        expect(info.uid).toBe(Number(execFileSync('id', ['-u', 'www-data'], { encoding: 'utf8' }).trim()));
        expect(info.cwdBefore).toBe(homeOf('www-data'));
      }
      expect(info.execArgv).toEqual([]);
    });

    it('process.exit() in a daemon: the response was complete, the crash is logged with pid and exit code, a new worker serves', async () => {
      const before = daemonWorkers(apache.pid);
      expect(before).toHaveLength(2);
      const mark = apache.logMark();
      const r = await get('/apps/exit.tsgi');
      expect(r.status).toBe(200);
      expect(r.complete).toBe(true);
      const pid = Number(/^exiting (\d+)\n$/.exec(r.text)?.[1]);
      expect(before).toContain(pid);
      await apache.waitForLog(new RegExp(`\\b${pid}\\b.*(exit(ed)?|code)\\D*\\b3\\b`), 5000, mark);
      // The group is back to two workers, the one that exited replaced.
      const { value: after } = await pollFor('two daemon workers again', () => {
        const now = daemonWorkers(apache.pid);
        return now.length === 2 && !now.includes(pid) ? now : undefined;
      });
      expect(after.filter((p) => before.includes(p))).toHaveLength(1);
      const hello = await get('/hello');
      expect(hello.status).toBe(200);
      expect(hello.text).toBe('Hello World!\n');
    });
  }

  it('editing the script reloads it on the next request (TSGIScriptReloading On)', async () => {
    expect((await get('/apps/version.tsgi')).text).toBe('version 1');
    const file = join(apache.root, 'apps', 'version.tsgi');
    writeFileSync(file, APPS['version.tsgi']!.replace('version 1', 'version 2'));
    // mtime resolution: make sure the change is visible as a different mtime.
    const later = new Date(Date.now() + 2000);
    const { utimesSync } = await import('node:fs');
    utimesSync(file, later, later);
    expect((await get('/apps/version.tsgi')).text).toBe('version 2');
    // Every process that serves it has the new code (daemon mode: both workers).
    for (let i = 0; i < 4; i++) expect((await get('/apps/version.tsgi')).text).toBe('version 2');
  });

  it('graceful restart: the new generation serves', async () => {
    await apache.graceful();
    const r = await get('/hello');
    expect(r.status).toBe(200);
    expect(r.text).toBe('Hello World!\n');
  });
});
