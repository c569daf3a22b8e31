/**
 * mod_tsgi embedded mode and Apache's stops and restarts with a request in flight (P15,
 * the child_stopping hook): graceful restart and graceful-stop let it finish with a
 * complete, correct response; stop ends it at once, with no SIGKILL from anyone.
 *
 * The app waits for a flag file before it finishes, so nothing depends on timing: the
 * test creates the flag only once the restart or stop is under way.
 *
 * In daemon mode (processes=2) the same: the request runs in a daemon of the group,
 * which Apache's graceful restart and graceful-stop let finish (the old daemons drain);
 * a stop ends it, bounded, and leaves no daemon behind.
 */
import { describe, it, expect, afterEach } from 'vitest';
import { writeFileSync } from 'node:fs';
import * as http from 'node:http';
import { join } from 'node:path';
import { startApache, type ApacheInstance, type Mpm } from '../harness/apache';
import { request } from '../harness/http';
import { daemonTrees, ensureMode, MOD_TSGI, modeConfig, TSGI_MODES, type TsgiMode } from '../helpers/mod-tsgi';
import { ROOT } from '../helpers/serve';

const WAIT_APP = `
import { existsSync } from 'node:fs';
export async function* application(environ: any, startResponse: any) {
  const flag = new URLSearchParams(environ.QUERY_STRING).get('flag') ?? '';
  startResponse('200 OK', [['Content-Type', 'text/plain']]);
  yield 'started\\n';
  for (let i = 0; i < 6000 && !existsSync(flag); i++) await new Promise((r) => setTimeout(r, 10));
  yield existsSync(flag) ? 'finished\\n' : 'gave up waiting\\n';
}`;

const instances: ApacheInstance[] = [];

afterEach(async () => {
  for (const a of instances.splice(0)) if (!a.stopped) await a.stop().catch(() => undefined);
});

async function start(mpm: Mpm, mode: TsgiMode, daemonOptions?: string): Promise<ApacheInstance> {
  ensureMode(mode);
  const a = await startApache({
    mpm,
    modules: [MOD_TSGI],
    files: { 'apps/wait.tsgi': WAIT_APP },
    config: ({ root }) =>
      [
        `TSGIScriptAlias /wait ${root}/apps/wait.tsgi`,
        `TSGIScriptAlias /hello ${join(ROOT, 'examples', 'hello.tsgi')}`,
        ...(mpm === 'prefork'
          ? ['StartServers 2', 'MinSpareServers 1', 'MaxSpareServers 4', 'MaxRequestWorkers 8']
          : [
              'StartServers 1',
              'MinSpareThreads 1',
              'MaxSpareThreads 64',
              'ThreadsPerChild 16',
              // Room for the next generation's child while the old one finishes.
              'ServerLimit 2',
              'MaxRequestWorkers 32',
            ]),
        modeConfig(mode, { options: daemonOptions }),
      ].join('\n'),
  });
  instances.push(a);
  return a;
}

interface InFlight {
  /** Resolves once the app's first chunk has arrived (the app is running). */
  started: Promise<void>;
  done: Promise<{ status: number; body: string; complete: boolean }>;
}

function inFlight(url: string): InFlight {
  let onStarted!: () => void;
  const started = new Promise<void>((resolve) => (onStarted = resolve));
  const done = new Promise<{ status: number; body: string; complete: boolean }>((resolve, reject) => {
    const req = http.get(url, { agent: false }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (d: string) => {
        body += d;
        if (body.includes('started\n')) onStarted();
      });
      const finish = () => resolve({ status: res.statusCode ?? 0, body, complete: res.complete && !res.errored });
      res.on('end', finish);
      res.on('close', finish);
      res.on('error', finish);
    });
    req.on('error', reject);
  });
  done.catch(() => onStarted());
  return { started, done };
}

const CASES = (['event', 'worker', 'prefork'] as const).flatMap((mpm) => TSGI_MODES.map((mode) => [mpm, mode] as const));

describe.each(CASES)('%s MPM, %s mode: a request in flight across restarts and stops', (mpm, mode) => {
  it('graceful restart: it finishes with a complete response; the new generation serves', async () => {
    const a = await start(mpm, mode);
    const flag = join(a.root, 'flag-graceful');
    const req = inFlight(a.url(`/wait?flag=${encodeURIComponent(flag)}`));
    await req.started;
    await a.graceful();
    // The next generation's child starts its own Node runtime first (slow under load).
    const hello = await request(a.url('/hello'), { timeoutMs: 30_000 }).catch((e: Error) => {
      throw new Error(`${e.message}\n${a.errorLog()}`);
    });
    expect(hello.text).toBe('Hello World!\n');
    writeFileSync(flag, '1');
    expect(await req.done).toEqual({ status: 200, body: 'started\nfinished\n', complete: true });
    expect((await a.stop()).killed).toEqual([]);
  }, 60_000);

  it('graceful-stop: it finishes with a complete response, then Apache exits cleanly', async () => {
    const a = await start(mpm, mode);
    const flag = join(a.root, 'flag-graceful-stop');
    const req = inFlight(a.url(`/wait?flag=${encodeURIComponent(flag)}`));
    await req.started;
    const mark = a.logMark();
    const stopping = a.stop({ graceful: true, timeoutMs: 30_000 });
    await a.waitForLog(/caught SIGWINCH, shutting down gracefully/, 10_000, mark);
    writeFileSync(flag, '1');
    expect(await req.done).toEqual({ status: 200, body: 'started\nfinished\n', complete: true });
    expect((await stopping).killed).toEqual([]);
    expect(a.errorLog()).not.toMatch(/still did not exit|SIGKILL|exit signal/);
  }, 60_000);

  if (mode === 'embedded') {
    // Embedded only: child_stopping wakes the request thread waiting on the Node thread inside the child.
    it('stop: the waiting request gives up at once (child_stopping); no SIGKILL escalation', async () => {
      const a = await start(mpm, mode);
      const req = inFlight(a.url(`/wait?flag=${encodeURIComponent(join(a.root, 'never'))}`));
      await req.started;
      const t0 = Date.now();
      const { killed } = await a.stop();
      console.log(`mod_tsgi (${mpm}): apache2 stop with a request in flight took ${Date.now() - t0} ms`);
      expect(killed).toEqual([]);
      const r = await req.done;
      expect(r.body).toBe('started\n');
      expect(r.complete).toBe(false);
      const log = a.errorLog();
      // The hook ran in the child and woke the waiting request thread. (Its own TSGI0107
      // line may not make it: an event child stopping non-gracefully exits without waiting
      // for its workers.)
      expect(log).toMatch(/TSGI0129: the child is stopping \(not gracefully\): 1 request\(s\) waiting on JavaScript give up/);
      expect(log).not.toMatch(/still did not exit|SIGKILL|exit signal/);
    }, 60_000);
  } else {
    it('stop: the client\'s response ends at once, the daemons stop within graceful-timeout, no SIGKILL escalation', async () => {
      // The app ignores the abort and polls for a flag that never comes: only the
      // daemon's bounded drain (graceful-timeout=3) ends it.
      const a = await start(mpm, mode, 'graceful-timeout=3');
      const req = inFlight(a.url(`/wait?flag=${encodeURIComponent(join(a.root, 'never'))}`));
      await req.started;
      const daemons = daemonTrees(a.pid).flatMap((t) => [t.supervisor, ...t.workers]);
      expect(daemons).toHaveLength(3);
      const t0 = Date.now();
      const { killed } = await a.stop({ timeoutMs: 20_000 });
      console.log(`mod_tsgi (${mpm}, daemon): apache2 stop with a request in flight took ${Date.now() - t0} ms`);
      expect(killed).toEqual([]);
      const r = await req.done;
      expect(r.body).toBe('started\n');
      expect(r.complete).toBe(false);
      // Apache never had to escalate (the daemon's own kill of its stuck worker after
      // graceful-timeout is the bounded drain working, not an escalation).
      expect(a.errorLog()).not.toMatch(/still did not exit|exit signal/);
    }, 60_000);
  }
});
