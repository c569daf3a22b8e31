/**
 * mod_tsgi's event-loop watchdog (TSGIEventLoopTimeout, embedding.md P18) under a real,
 * private Apache (event MPM, one child). test/fixtures/spin.tsgi runs `while (true) {}`;
 * the requests waiting on that loop get 504 with one TSGI0109 line each naming the
 * script, the watchdog logs TSGI0130, the Node environment is stopped (TerminateExecution
 * breaks the loop) and re-created, and the same child serves the next request from a
 * fresh environment. Another application group (its own Node environment and event
 * loop) is served while the first one is blocked, and keeps its state. The timeout is a
 * config value (2 s), not a timing assertion.
 *
 * The watchdog is embedded mode's (TSGIEventLoopTimeout guards the Node thread inside an
 * Apache child). Daemon mode's analogue is the group's request-timeout: the blocked
 * request gets 504, its daemon process is replaced, the group's other process serves
 * meanwhile (the second describe).
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { join } from 'node:path';
import { startApache, type ApacheInstance } from '../harness/apache';
import { request } from '../harness/http';
import { daemonWorkers, ensureModTsgi, ensureMode, MOD_TSGI, modeConfig, pollFor } from '../helpers/mod-tsgi';
import { ROOT } from '../helpers/serve';

const SPIN = join(ROOT, 'test', 'fixtures', 'spin.tsgi');

let apache: ApacheInstance;

beforeAll(async () => {
  ensureModTsgi();
  apache = await startApache({
    modules: [MOD_TSGI],
    config: [
      'TSGIEventLoopTimeout 2',
      'Timeout 60',
      `TSGIScriptAlias /app ${SPIN}`,
      // Another application group (the default: one per mount): its own Node environment.
      `TSGIScriptAlias /other ${SPIN}`,
      // One child: the requests after the stall must reach the child that had it.
      'StartServers 1',
      'MinSpareThreads 1',
      'MaxSpareThreads 64',
      'ThreadsPerChild 16',
      'ServerLimit 1',
      'MaxRequestWorkers 16',
    ].join('\n'),
  });
}, 600_000);

afterAll(async () => {
  await apache?.stop();
});

const ok = async (mount = '/app') => {
  const r = await request(apache.url(`${mount}/ok`));
  expect(r.status, r.text).toBe(200);
  return JSON.parse(r.text) as { pid: number; count: number };
};

const count = (text: string, re: RegExp) => (text.match(new RegExp(re.source, 'g')) ?? []).length;

describe('event-loop watchdog', () => {
  it('a while (true): the waiting requests get 504, the environment is re-created, the child serves on', async () => {
    const before = await ok();
    expect((await ok()).count).toBe(before.count + 1);
    expect((await ok('/other')).count).toBe(1);
    const processes = apache.processes().sort();

    const mark = apache.logMark();
    let spinDone = false;
    const spin = request(apache.url('/app/spin')).finally(() => (spinDone = true));
    await apache.waitForLog(/spin\.tsgi: entering while \(true\)/, 10_000, mark);
    // Queued behind the blocked loop: it waits too, and gets the same answer.
    const queued = request(apache.url('/app/ok'));
    // Another application group is another event loop: it is served meanwhile.
    const other = await ok('/other');
    expect(other).toEqual({ pid: before.pid, count: 2 });
    expect(spinDone).toBe(false);
    const [a, b] = await Promise.all([spin, queued]);
    expect(a.status).toBe(504);
    expect(b.status).toBe(504);

    await apache.waitForLog(
      /TSGI0130: watchdog: the Node event loop of application group '127\.0\.0\.1:\d+\|\/app' has not turned for 2 s; 2 waiting request\(s\) get 504/,
      5000,
      mark,
    );
    await apache.waitForLog(/TSGI0124: re-creating the Node environment/, 10_000, mark);
    await apache.waitForLog(/TSGI0120: embedded runtime ready/, 30_000, mark);

    // One line per request, each naming the script.
    const log = Buffer.from(apache.errorLog()).subarray(mark).toString('utf8');
    const lines = log.split('\n').filter((l) => l.includes('TSGI0109'));
    expect(lines, log).toHaveLength(2);
    for (const l of lines) expect(l).toContain(`TSGI0109: ${SPIN}: the Node event loop of its application group was blocked for more than 2 s`);
    // The stop is the watchdog's, not a failure of the app or the binding.
    expect(log).not.toMatch(/TSGI011[0-4]|TSGI0108|TSGI0121|TSGI0123/);

    // The same child, a fresh environment (the module state starts over).
    const after = await ok();
    expect(after.pid).toBe(before.pid);
    expect(after.count).toBe(1);
    // The other group's environment was not touched.
    expect(await ok('/other')).toEqual({ pid: before.pid, count: 3 });
    expect(apache.processes().sort()).toEqual(processes);
  });

  it('a request waiting longer than the timeout on a timer is not blocked: the idle loop answers the pings', async () => {
    const mark = apache.logMark();
    const r = await request(apache.url('/app/sleep?ms=3500'));
    expect(r.status).toBe(200);
    expect(r.text).toBe('slept 3500 ms\n');
    const log = Buffer.from(apache.errorLog()).subarray(mark).toString('utf8');
    expect(log).not.toContain('TSGI0130');
  });
});

describe('daemon mode: a blocked event loop ends with request-timeout', () => {
  let daemon: ApacheInstance;

  beforeAll(async () => {
    ensureMode('daemon');
    daemon = await startApache({
      modules: [MOD_TSGI],
      config: [
        'Timeout 60',
        `TSGIScriptAlias /app ${SPIN}`,
        'StartServers 1',
        'MinSpareThreads 1',
        'MaxSpareThreads 64',
        'ThreadsPerChild 16',
        'ServerLimit 1',
        'MaxRequestWorkers 16',
        modeConfig('daemon', { options: 'request-timeout=2' }),
      ].join('\n'),
    });
  }, 600_000);

  afterAll(async () => {
    await daemon?.stop();
  });

  it('a while (true): the request gets 504, its process is replaced, the other process serves meanwhile', async () => {
    const { value: before } = await pollFor('two workers', () => {
      const w = daemonWorkers(daemon.pid);
      return w.length === 2 ? w : undefined;
    });
    const mark = daemon.logMark();
    let spinDone = false;
    const spin = request(daemon.url('/app/spin'), { timeoutMs: 30_000 }).finally(() => (spinDone = true));
    await daemon.waitForLog(/spin\.tsgi: entering while \(true\)/, 10_000, mark);
    const served: number[] = [];
    while (!spinDone) {
      const r = await request(daemon.url('/app/ok'), { timeoutMs: 30_000 });
      expect(r.status, r.text).toBe(200);
      served.push((JSON.parse(r.text) as { pid: number }).pid);
      await new Promise((res) => setTimeout(res, 50));
    }
    expect((await spin).status).toBe(504);
    expect(served.length).toBeGreaterThan(0);
    // Exactly one process was replaced: the one that spun, which served none of the others.
    const { value: after } = await pollFor('the blocked process replaced', () => {
      const w = daemonWorkers(daemon.pid);
      return w.length === 2 && w.filter((p) => !before.includes(p)).length === 1 ? w : undefined;
    });
    const victim = before.find((p) => !after.includes(p))!;
    expect(served).not.toContain(victim);
    const ok = await request(daemon.url('/app/ok'));
    expect(ok.status).toBe(200);
    // The watchdog is embedded mode's: it never fires here.
    expect(daemon.errorLog()).not.toMatch(/TSGI0130|TSGI0109/);
  }, 60_000);

  it('a request waiting on a timer for less than request-timeout is not ended', async () => {
    const r = await request(daemon.url('/app/sleep?ms=1500'));
    expect(r.status).toBe(200);
    expect(r.text).toBe('slept 1500 ms\n');
  });
});
