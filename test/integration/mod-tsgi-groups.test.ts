/**
 * Application-group isolation (TSGIApplicationGroup) under a real, private Apache (event
 * MPM, one child). Each application group runs in its own Node environment (its own
 * isolate, event loop and Node thread; docs/embedded.md "Application groups"), so apps
 * in different groups never share module state: test/fixtures/counter.tsgi counts
 * requests in its module scope, in a globalThis property and in a required module (the
 * module cache), and each group sees only its own counts. Apps configured into the same
 * group (%{GLOBAL}, a named group) do share them. Everything runs in one child (same pid).
 *
 * Embedded only: a Node environment per application group is how embedded mode isolates
 * apps inside one Apache child. A daemon process is one Node process (its application
 * groups share its globals); daemon mode isolates with process groups instead, which the
 * second describe checks: two virtual hosts, each with its own TSGIDaemonProcess, run the
 * same script in different processes with separate state, and the application group
 * each app is told is the same as in embedded mode.
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { startApache, type ApacheInstance } from '../harness/apache';
import { request } from '../harness/http';
import { daemonTrees, ensureModTsgi, ensureMode, MOD_TSGI, pollFor } from '../helpers/mod-tsgi';
import { ROOT } from '../helpers/serve';

const COUNTER = join(ROOT, 'test', 'fixtures', 'counter.tsgi');

let apache: ApacheInstance;

beforeAll(async () => {
  ensureModTsgi();
  apache = await startApache({
    modules: [MOD_TSGI],
    config: ({ port }) =>
      [
        // One child: every group below lives in the same process.
        'StartServers 1',
        'MinSpareThreads 1',
        'MaxSpareThreads 64',
        'ThreadsPerChild 16',
        'ServerLimit 1',
        'MaxRequestWorkers 16',
        `<VirtualHost 127.0.0.1:${port}>`,
        '  ServerName a.test',
        // Default groups (%{RESOURCE}): one per (virtual host, mount), even for one file.
        `  TSGIScriptAlias /one ${COUNTER}`,
        `  TSGIScriptAlias /two ${COUNTER}`,
        // Configured into one group: they share.
        `  TSGIScriptAlias /global1 ${COUNTER} application-group=%{GLOBAL}`,
        `  TSGIScriptAlias /global2 ${COUNTER} application-group=%{GLOBAL}`,
        `  TSGIScriptAlias /named1 ${COUNTER} application-group=named`,
        '</VirtualHost>',
        `<VirtualHost 127.0.0.1:${port}>`,
        '  ServerName b.test',
        `  TSGIScriptAlias /one ${COUNTER}`,
        `  TSGIScriptAlias /global ${COUNTER} application-group=%{GLOBAL}`,
        `  TSGIScriptAlias /named2 ${COUNTER} application-group=named`,
        '</VirtualHost>',
      ].join('\n'),
  });
}, 600_000);

afterAll(async () => {
  await apache?.stop();
});

interface Counts {
  pid: number;
  group: string;
  module: number;
  global: number;
  shared: number;
}

async function hit(host: string, path: string): Promise<Counts> {
  const r = await request(apache.url(path), { headers: { Host: `${host}:${apache.port}` } });
  expect(r.status, r.text).toBe(200);
  return JSON.parse(r.text) as Counts;
}

const counts = (c: Counts) => [c.module, c.global, c.shared];

function rssKb(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) : NaN;
}

describe('application groups', () => {
  let pid = 0;

  it('two virtual hosts: the same script, mounted at the same path, keeps separate state', async () => {
    const a1 = await hit('a.test', '/one');
    pid = a1.pid;
    expect(a1.group).toBe(`a.test:${apache.port}|/one`);
    expect(counts(a1)).toEqual([1, 1, 1]);
    expect(counts(await hit('a.test', '/one'))).toEqual([2, 2, 2]);

    const b1 = await hit('b.test', '/one');
    expect(b1.group).toBe(`b.test:${apache.port}|/one`);
    expect(b1.pid).toBe(pid);
    expect(counts(b1)).toEqual([1, 1, 1]);
    expect(counts(await hit('b.test', '/one'))).toEqual([2, 2, 2]);
    expect(counts(await hit('a.test', '/one'))).toEqual([3, 3, 3]);
  });

  it('two mounts of one virtual host (default groups) are isolated from each other', async () => {
    const two = await hit('a.test', '/two');
    expect(two.pid).toBe(pid);
    expect(two.group).toBe(`a.test:${apache.port}|/two`);
    expect(counts(two)).toEqual([1, 1, 1]);
    expect(counts(await hit('a.test', '/one'))).toEqual([4, 4, 4]);
  });

  it('%{GLOBAL}: mounts (and virtual hosts) configured into it share one environment', async () => {
    const g1 = await hit('a.test', '/global1');
    expect(g1.group).toBe('');
    expect(counts(g1)).toEqual([1, 1, 1]);
    // Same group, same script: the same loaded module, globals and module cache.
    expect(counts(await hit('a.test', '/global2'))).toEqual([2, 2, 2]);
    expect(counts(await hit('b.test', '/global'))).toEqual([3, 3, 3]);
  });

  it('a named group shared by two virtual hosts', async () => {
    const n1 = await hit('a.test', '/named1');
    expect(n1.group).toBe('named');
    expect(counts(n1)).toEqual([1, 1, 1]);
    const n2 = await hit('b.test', '/named2');
    expect(n2.group).toBe('named');
    expect(counts(n2)).toEqual([2, 2, 2]);
  });

  it('each group got its own Node environment, all in one child', async () => {
    const log = apache.errorLog();
    // The first group claims the environment started in child_init; each other group
    // starts its own on its first request.
    const started = [...log.matchAll(/TSGI0132: starting a Node environment for application group '([^']*)'/g)].map((m) => m[1]);
    expect(started.sort()).toEqual(
      [`a.test:${apache.port}|/two`, `b.test:${apache.port}|/one`, '', 'named'].sort(),
    );
    expect(new Set([...log.matchAll(/\[pid (\d+):tid \d+\] TSGI0120/g)].map((m) => m[1]))).toEqual(new Set([String(pid)]));
    expect((await hit('a.test', '/one')).pid).toBe(pid);
    console.log(`mod_tsgi groups: child ${pid} with 5 application groups: VmRSS ${Math.round(rssKb(pid) / 1024)} MiB`);
  });
});

describe('daemon mode: process groups isolate virtual hosts', () => {
  let daemon: ApacheInstance;

  beforeAll(async () => {
    ensureMode('daemon');
    daemon = await startApache({
      modules: [MOD_TSGI],
      config: ({ port }) =>
        [
          'StartServers 1',
          'MinSpareThreads 1',
          'MaxSpareThreads 64',
          'ThreadsPerChild 16',
          'ServerLimit 1',
          'MaxRequestWorkers 16',
          `<VirtualHost 127.0.0.1:${port}>`,
          '  ServerName a.test',
          '  TSGIDaemonProcess a-group processes=1',
          '  TSGIProcessGroup a-group',
          `  TSGIScriptAlias /one ${COUNTER}`,
          `  TSGIScriptAlias /global1 ${COUNTER} application-group=%{GLOBAL}`,
          '</VirtualHost>',
          `<VirtualHost 127.0.0.1:${port}>`,
          '  ServerName b.test',
          '  TSGIDaemonProcess b-group processes=1',
          `  TSGIScriptAlias /one ${COUNTER} process-group=b-group`,
          `  TSGIScriptAlias /global ${COUNTER} application-group=%{GLOBAL} process-group=b-group`,
          '</VirtualHost>',
        ].join('\n'),
    });
  }, 600_000);

  afterAll(async () => {
    await daemon?.stop();
  });

  const hitD = async (host: string, path: string): Promise<Counts> => {
    const r = await request(daemon.url(path), { headers: { Host: `${host}:${daemon.port}` } });
    expect(r.status, r.text).toBe(200);
    return JSON.parse(r.text) as Counts;
  };

  it('the same script in two virtual hosts runs in two processes of two groups, with separate state', async () => {
    const { value: trees } = await pollFor('two groups with one worker each', () => {
      const t = daemonTrees(daemon.pid);
      return t.length === 2 && t.every((x) => x.workers.length === 1) ? t : undefined;
    });
    const a1 = await hitD('a.test', '/one');
    expect(a1.group).toBe(`a.test:${daemon.port}|/one`);
    expect(counts(a1)).toEqual([1, 1, 1]);
    expect(counts(await hitD('a.test', '/one'))).toEqual([2, 2, 2]);
    const b1 = await hitD('b.test', '/one');
    expect(b1.group).toBe(`b.test:${daemon.port}|/one`);
    expect(counts(b1)).toEqual([1, 1, 1]);
    expect(b1.pid).not.toBe(a1.pid);
    const workerOf = (pid: number) => trees.find((t) => t.workers.includes(pid));
    expect(workerOf(a1.pid)).toBeDefined();
    expect(workerOf(b1.pid)).toBeDefined();
    expect(workerOf(a1.pid)!.supervisor).not.toBe(workerOf(b1.pid)!.supervisor);
    // %{GLOBAL} in each virtual host is the group's own: a.test's never sees b.test's.
    const ga = await hitD('a.test', '/global1');
    expect(ga.group).toBe('');
    expect(ga.pid).toBe(a1.pid);
    const gb = await hitD('b.test', '/global');
    expect(gb.group).toBe('');
    expect(gb.pid).toBe(b1.pid);
    expect(ga.module).toBe(1);
    expect(gb.module).toBe(1);
    expect(counts(await hitD('a.test', '/one'))).toEqual([3, expect.any(Number), expect.any(Number)]);
  });
});
