/**
 * The Apache parent's supervision of daemon groups (native/daemon_supervisor.c) under a
 * real, private Apache: the supervisor runs under its display name with fds and sockets
 * as the launch contract says, is respawned after kill -9, is replaced (same sockets) on
 * a graceful restart, and stop leaves no process behind; user= is applied; a node that
 * cannot be executed is logged and its respawns slow down; TSGIRestrictEmbedded On
 * refuses undelegated requests without starting the embedded runtime.
 *
 * Times in here are bounds for polling (a test that would otherwise hang), never
 * measurements asserted on.
 */
import { describe, it, expect, beforeAll } from 'vitest';
import { execFileSync } from 'node:child_process';
import { chmodSync, existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startApache, type ApacheInstance } from '../harness/apache';
import { request } from '../harness/http';
import { pidAlive } from '../harness/proc';
import { daemonTrees, ensureMode, groupStatus, pollFor, readStatusSocket, statusSockets, uidGid, type DaemonTree } from '../helpers/mod-tsgi';
import { ensureModTsgiAsan, MOD_TSGI, MOD_TSGI_ASAN, sanitizerEnv } from '../helpers/mod-tsgi';
import { ROOT } from '../helpers/serve';

const APP = join(ROOT, 'examples', 'hello.tsgi');
const idOf = (flag: '-u' | '-g', user: string) => Number(execFileSync('id', [flag, user], { encoding: 'utf8' }).trim());

beforeAll(() => {
  ensureMode('daemon');
}, 600_000);

function cmdline(pid: number): string {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, 'utf8').replace(/\0+$/, '').replace(/\0/g, ' ').trim();
  } catch {
    return '';
  }
}

/**
 * The one daemon tree of `apache`, once it has `workers` workers and its status socket
 * says they are all ready (so a test's stop never lands in the middle of a start).
 */
function tree(apache: ApacheInstance, workers: number, not?: number): Promise<DaemonTree> {
  return pollFor(`a supervisor${not ? ` other than ${not}` : ''} with ${workers} ready worker(s)`, async () => {
    const t = daemonTrees(apache.pid);
    if (t.length !== 1 || t[0]!.supervisor === not || t[0]!.workers.length !== workers) return undefined;
    for (const p of statusSockets(apache.root)) {
      const st = await readStatusSocket(p).catch(() => null);
      if (st?.pid === t[0]!.supervisor && st.processes.length === workers && st.processes.every((w) => w.state === 'ready')) return t[0];
    }
    return undefined;
  }).then((r) => r.value);
}

function dataSockets(dir: string): string[] {
  return statusSockets(dir).map((p) => p.replace(/\.status$/, '.sock'));
}

/** /hello is served by the group's daemons (its environ names the process group). */
async function expectHello(apache: ApacheInstance): Promise<void> {
  const r = await request(apache.url('/hello/x'));
  expect(r.status, r.text).toBe(200);
  expect(r.text).toBe('Hello World!\n');
}

/** The status socket that answers for group `name`. */
async function statusPathOf(dir: string, name: string): Promise<string> {
  for (const p of statusSockets(dir)) {
    if ((await readStatusSocket(p)).group === name) return p;
  }
  throw new Error(`no status socket under ${dir} answers for group ${name}`);
}

/** Runs `body` against a fresh Apache, then checks that its stop needed no SIGKILL: neither the harness's nor the supervisor's (TSGI0240). */
async function withApache(config: string, body: (apache: ApacheInstance) => Promise<void>): Promise<void> {
  const apache = await startApache({ modules: [MOD_TSGI], config });
  let ok = false;
  try {
    await body(apache);
    ok = true;
  } finally {
    const { killed } = await apache.stop();
    if (ok) {
      expect(killed).toEqual([]);
      expect(apache.errorLog()).not.toMatch(/TSGI0240/);
    }
  }
}

describe('daemon supervisor', () => {
  it('runs under its display name with a 0600 socket owned by the Apache user, answers status, survives kill -9 and graceful, stop leaves nothing', async () => {
    const apache = await startApache({
      modules: [MOD_TSGI],
      config: `TSGIDaemonProcess sup processes=2 display-name=%{GROUP} graceful-timeout=3\nTSGIScriptAlias /hello ${APP} process-group=sup\n`,
    });
    let stopped = false;
    try {
      const first = await tree(apache, 2);
      expect(cmdline(first.supervisor)).toBe('(tsgi:sup)');
      await apache.waitForLog(new RegExp(`preloaded ${APP.replace(/\./g, '\\.')}`));
      expect(apache.errorLog()).toMatch(new RegExp(`TSGI0226: group sup: started supervisor pid ${first.supervisor} \\(\\S*node \\S*/dist/daemon-mode\\.js --apache, 2 process\\(es\\)\\)`));

      // The sockets of the contract: <prefix>.<parentpid>.<n>.sock and .status, 0600.
      const [sock] = dataSockets(apache.root);
      const [status] = statusSockets(apache.root);
      expect(sock).toBe(join(apache.root, `tsgi.${apache.pid}.0.sock`));
      const st = statSync(sock!);
      expect(st.isSocket()).toBe(true);
      expect(st.mode & 0o777).toBe(0o600);
      expect(st.uid).toBe(idOf('-u', 'www-data'));
      expect(statSync(status!).mode & 0o777).toBe(0o600);
      const s1 = await groupStatus(apache.root, 'sup');
      expect(s1.pid).toBe(first.supervisor);
      expect(s1.processes.map((p) => p.pid).sort()).toEqual(first.workers);
      await expectHello(apache);

      // kill -9 of the supervisor: logged with the signal, replaced at once.
      const mark = apache.logMark();
      process.kill(first.supervisor, 'SIGKILL');
      const second = await tree(apache, 2, first.supervisor);
      await apache.waitForLog(new RegExp(`TSGI0212: group sup: supervisor \\(pid ${first.supervisor}\\) ended with exit code or signal 9 \\(Killed\\) after \\d+ ms; starting a new one\\n`), 5000, mark);
      expect((await groupStatus(apache.root, 'sup')).pid).toBe(second.supervisor);
      await pollFor('the old workers to go', () => (first.workers.some(pidAlive) ? undefined : true));
      await expectHello(apache);

      // Graceful restart: a new supervisor, the old one drains and goes; same sockets.
      const mark2 = apache.logMark();
      await apache.graceful();
      const third = await tree(apache, 2, second.supervisor);
      await apache.waitForLog(new RegExp(`TSGI0226: group sup: started supervisor pid ${third.supervisor} .*replacing pid ${second.supervisor}\\)`), 5000, mark2);
      await apache.waitForLog(new RegExp(`TSGI0210: group sup: the previous supervisor \\(pid ${second.supervisor}\\) exited with code 0`), 10_000, mark2);
      expect(pidAlive(second.supervisor)).toBe(false);
      expect(dataSockets(apache.root)).toEqual([sock]);
      expect(statusSockets(apache.root)).toEqual([status]);
      expect((await groupStatus(apache.root, 'sup')).pid).toBe(third.supervisor);
      await expectHello(apache);

      // Stop: every tsgi process exits on its own (nothing for the harness to kill).
      const all = [third.supervisor, ...third.workers];
      const { killed } = await apache.stop();
      stopped = true;
      expect(killed).toEqual([]);
      expect(all.filter(pidAlive)).toEqual([]);
      expect(apache.errorLog()).not.toMatch(/TSGI0240|:(emerg|alert|crit)\]/);
    } finally {
      if (!stopped) await apache.stop();
    }
  });

  it('user= and group=: the daemons run as that user, the status socket is theirs, the data socket stays the Apache user\'s', async () => {
    const nobody = idOf('-u', 'nobody');
    const nogroup = idOf('-g', 'nobody');
    // Routed by a server-level TSGIProcessGroup this time (the other test: process-group=).
    await withApache(`TSGIDaemonProcess nob processes=1 user=nobody graceful-timeout=3\nTSGIProcessGroup nob\nTSGIScriptAlias /hello ${APP}\n`, async (apache) => {
      const t = await tree(apache, 1);
      for (const pid of [t.supervisor, ...t.workers]) expect(uidGid(pid)).toEqual({ uid: nobody, gid: nogroup });
      expect(statSync(statusSockets(apache.root)[0]!).uid).toBe(nobody);
      expect(statSync(dataSockets(apache.root)[0]!).uid).toBe(idOf('-u', 'www-data'));
      expect((await groupStatus(apache.root, 'nob')).pid).toBe(t.supervisor);
      // The script is in the launch config's "preload": the worker loaded it at start.
      await apache.waitForLog(new RegExp(`preloaded ${APP.replace(/\./g, '\\.')}`));
      await expectHello(apache);
    });
  });

  it('node=/nonexistent: each failed start is logged clearly and the respawns slow down', async () => {
    await withApache('TSGIDaemonProcess broken node=/nonexistent/node graceful-timeout=1\n', async (apache) => {
      await apache.waitForLog(/TSGI0221: group broken: node=\/nonexistent\/node is not an executable file/);
      await apache.waitForLog(/TSGI0237: group broken: cannot execute node \/nonexistent\/node: No such file or directory/);
      const { value: delays } = await pollFor('four respawns', () => {
        const d = [...apache.errorLog().matchAll(/TSGI0212: group broken: supervisor \(pid \d+\) exited with code 127 after \d+ ms; starting a new one(?: in (\d+) ms)?/g)].map((m) => Number(m[1] ?? 0));
        return d.length >= 4 ? d : undefined;
      });
      // At once after the first failure, then 500 ms doubling.
      expect(delays.slice(0, 4)).toEqual([0, 500, 1000, 2000]);
    });
  });

  it('TSGIRestrictEmbedded On: an undelegated script gets 500 naming it, and no embedded runtime starts', async () => {
    await withApache(
      `TSGIRestrictEmbedded On\nTSGIDaemonProcess r processes=1 graceful-timeout=3\nTSGIScriptAlias /embedded ${APP}\n`,
      async (apache) => {
        await tree(apache, 1);
        const mark = apache.logMark();
        const res = await request(apache.url('/embedded'));
        expect(res.status).toBe(500);
        await apache.waitForLog(new RegExp(`TSGI0009: TSGIRestrictEmbedded On: ${APP.replace(/[.]/g, '\\.')} is not delegated to a daemon process group`), 5000, mark);
        expect(apache.errorLog()).not.toMatch(/TSGI0120: embedded runtime ready/);
      },
    );
  });

  it('graceful with a changed configuration: a removed group stops and loses its sockets, a group whose user= changed is replaced', async () => {
    const before = 'TSGIDaemonProcess keep processes=1 user=nobody graceful-timeout=3\nTSGIDaemonProcess drop processes=1 graceful-timeout=3\n';
    await withApache(before, async (apache) => {
      const trees = await pollFor('two supervisors', () => {
        const t = daemonTrees(apache.pid);
        return t.length === 2 && t.every((x) => x.workers.length === 1) ? t : undefined;
      }).then((r) => r.value);
      const statusOf = async (name: string) => (await groupStatus(apache.root, name)).pid;
      const keepOld = await statusOf('keep');
      const dropOld = await statusOf('drop');
      expect(trees.map((t) => t.supervisor).sort()).toEqual([keepOld, dropOld].sort());
      expect(statusSockets(apache.root)).toHaveLength(2);
      const keepStatus = await statusPathOf(apache.root, 'keep');

      const conf = readFileSync(apache.confPath, 'utf8');
      writeFileSync(apache.confPath, conf.replace(before, 'TSGIDaemonProcess keep processes=1 graceful-timeout=3\n'));
      const mark = apache.logMark();
      await apache.graceful();
      await apache.waitForLog(new RegExp(`TSGI0215: group drop: no longer configured: stopping supervisor pid ${dropOld}`), 5000, mark);
      await apache.waitForLog(new RegExp(`TSGI0210: group drop: the previous supervisor \\(pid ${dropOld}\\) exited with code 0`), 10_000, mark);
      await apache.waitForLog(new RegExp(`TSGI0210: group keep: the previous supervisor \\(pid ${keepOld}\\) exited with code 0`), 10_000, mark);
      const keepNew = await tree(apache, 1, keepOld);
      expect(uidGid(keepNew.supervisor)?.uid).toBe(idOf('-u', 'www-data'));
      expect(await statusOf('keep')).toBe(keepNew.supervisor);
      // Only keep's two sockets are left, under their old paths; the status socket now
      // belongs to keep's new user.
      expect(statusSockets(apache.root)).toEqual([keepStatus]);
      expect(dataSockets(apache.root)).toEqual([keepStatus.replace(/\.status$/, '.sock')]);
      expect(statSync(keepStatus).uid).toBe(idOf('-u', 'www-data'));
    });
  });

  it("a group defined in a virtual host logs to that host's ErrorLog; .htaccess picks a group, and an undefined one is a 500", async () => {
    const app = "export function application(environ: any, startResponse: any) {\n  startResponse('200 OK', [['Content-Type', 'text/plain']]);\n  return [`${environ['mod_tsgi.process_group']} ${process.pid}`];\n}\n";
    const apache = await startApache({
      modules: [MOD_TSGI],
      files: { 'ht/good/app.tsgi': app, 'ht/good/.htaccess': 'TSGIProcessGroup vh\n', 'ht/bad/app.tsgi': app, 'ht/bad/.htaccess': 'TSGIProcessGroup nosuch\n' },
      config: ({ root, port }) => `
Alias /ht ${root}/ht
<Directory ${root}/ht>
  AllowOverride FileInfo
  Options +ExecCGI
  AddHandler tsgi-script .tsgi
</Directory>
<VirtualHost 127.0.0.1:${port}>
  ServerName v.test
  ErrorLog ${root}/vhost-error.log
  TSGIDaemonProcess vh processes=1 graceful-timeout=3
</VirtualHost>
`,
    });
    try {
      const t = await tree(apache, 1);
      const good = await request(apache.url('/ht/good/app.tsgi'));
      expect(good.status, good.text).toBe(200);
      expect(good.text).toBe(`vh ${t.workers[0]}`);
      const bad = await request(apache.url('/ht/bad/app.tsgi'));
      expect(bad.status).toBe(500);
      const vhostLog = () => readFileSync(join(apache.root, 'vhost-error.log'), 'utf8');
      await pollFor('the .htaccess error in the error log', () => (/TSGIProcessGroup: no TSGIDaemonProcess named 'nosuch' is defined/.test(vhostLog() + apache.errorLog()) ? true : undefined));
      // The daemons write to the defining host's log, not the main server's.
      const own = new RegExp(`\\[tsgi:\\w+\\] \\[pid (${t.supervisor}|${t.workers[0]})\\]`);
      expect(vhostLog()).toMatch(own);
      expect(apache.errorLog()).not.toMatch(own);
    } finally {
      await apache.stop();
    }
  });

  for (const mpm of ['worker', 'prefork'] as const) {
    it(`under the ${mpm} MPM: serves, respawns after kill -9, stops clean`, async () => {
      const apache = await startApache({ mpm, modules: [MOD_TSGI], config: `TSGIDaemonProcess m processes=1 graceful-timeout=3\nTSGIScriptAlias /hello ${APP} process-group=m\n` });
      let stopped = false;
      try {
        const first = await tree(apache, 1);
        await expectHello(apache);
        process.kill(first.supervisor, 'SIGKILL');
        const second = await tree(apache, 1, first.supervisor);
        await expectHello(apache);
        const { killed } = await apache.stop();
        stopped = true;
        expect(killed).toEqual([]);
        expect([second.supervisor, ...second.workers].filter(pidAlive)).toEqual([]);
      } finally {
        if (!stopped) await apache.stop();
      }
    });
  }

  it('the process options reach the daemons: env=, env-file=, lang=, home=, node-options=; SetEnv stays per request; inactivity-timeout recycles an idle worker', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'tsgi-daemon-options-'));
    chmodSync(dir, 0o755);
    try {
      const home = join(dir, 'home');
      execFileSync('mkdir', ['-p', home]);
      chmodSync(home, 0o755);
      const envFile = join(dir, 'daemon.env');
      writeFileSync(envFile, '# a comment\nFROM_FILE=file value\n\nOVERRIDDEN=from the file\n');
      const app = join(dir, 'env.tsgi');
      writeFileSync(
        app,
        `export function application(environ: any, startResponse: any) {
  startResponse('200 OK', [['Content-Type', 'application/json']]);
  return [JSON.stringify({ pid: process.pid, cwd: process.cwd(), execArgv: process.execArgv, env: {
    FROM_ENV: process.env.FROM_ENV, FROM_FILE: process.env.FROM_FILE, OVERRIDDEN: process.env.OVERRIDDEN,
    LANG: process.env.LANG, LC_ALL: process.env.LC_ALL, PER_REQUEST: process.env.PER_REQUEST },
    perRequest: environ.PER_REQUEST })];
}
`,
      );
      chmodSync(app, 0o644);
      const config = [
        `TSGIDaemonProcess opts processes=1 graceful-timeout=3 inactivity-timeout=2 env=FROM_ENV=hello env-file=${envFile} env=OVERRIDDEN=from-env lang=C.UTF-8 home=${home} "node-options=--max-old-space-size=123 --no-warnings"`,
        `TSGIScriptAlias /env ${app} process-group=opts`,
        `<Directory ${dir}>\n  Require all granted\n</Directory>`,
        'SetEnv PER_REQUEST per-request-value',
      ].join('\n');
      await withApache(config, async (apache) => {
        const first = await tree(apache, 1);
        const r = await request(apache.url('/env'));
        expect(r.status, r.text).toBe(200);
        const seen = JSON.parse(r.text) as { pid: number; cwd: string; execArgv: string[]; env: Record<string, string | undefined>; perRequest: string };
        expect(first.workers).toContain(seen.pid);
        expect(seen.env).toEqual({ FROM_ENV: 'hello', FROM_FILE: 'file value', OVERRIDDEN: 'from-env', LANG: 'C.UTF-8', LC_ALL: 'C.UTF-8', PER_REQUEST: undefined });
        expect(seen.perRequest).toBe('per-request-value');
        expect(seen.cwd).toBe(home);
        expect(seen.execArgv).toEqual(expect.arrayContaining(['--max-old-space-size=123', '--no-warnings']));
        // Idle past inactivity-timeout: the worker is replaced (a new one ready first).
        const later = await pollFor('the idle worker to be replaced', async () => {
          const t = daemonTrees(apache.pid);
          return t.length === 1 && t[0]!.workers.length === 1 && !t[0]!.workers.includes(seen.pid) ? t[0] : undefined;
        }).then((x) => x.value);
        expect(later.supervisor).toBe(first.supervisor);
        const again = JSON.parse((await request(apache.url('/env'))).text) as { pid: number };
        expect(again.pid).not.toBe(seen.pid);
      });
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('socket-timeout: a daemon that sends nothing for that long gets 504 from the Apache child, which says why in the log', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'tsgi-socket-timeout-'));
    chmodSync(dir, 0o755);
    try {
      const app = join(dir, 'hang.tsgi');
      writeFileSync(app, 'export function application() {\n  return new Promise(() => undefined);\n}\n');
      chmodSync(app, 0o644);
      const config = [
        // request-timeout=0: the daemon never ends the request itself; only the Apache side's wait is bounded.
        'TSGIDaemonProcess quiet processes=1 graceful-timeout=1 request-timeout=0 socket-timeout=1',
        `TSGIScriptAlias /hang ${app} process-group=quiet`,
        `<Directory ${dir}>\n  Require all granted\n</Directory>`,
      ].join('\n');
      await withApache(config, async (apache) => {
        await tree(apache, 1);
        const r = await request(apache.url('/hang'), { timeoutMs: 30_000 });
        expect(r.status).toBe(504);
        await pollFor('the TSGI0311 line', async () => (/TSGI0311: group quiet \(daemon pid \d+\): no frame within socket-timeout \(1 s\)/.test(apache.errorLog()) ? true : undefined));
      });
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('the sockets are removed at stop', async () => {
    const apache = await startApache({ modules: [MOD_TSGI], config: 'TSGIDaemonProcess gone processes=1 graceful-timeout=2\n', keepRoot: true });
    let sockets: string[] = [];
    try {
      await tree(apache, 1);
      sockets = [...dataSockets(apache.root), ...statusSockets(apache.root)];
      expect(sockets).toHaveLength(2);
    } finally {
      await apache.stop();
    }
    expect(sockets.filter((p) => existsSync(p))).toEqual([]);
    execFileSync('rm', ['-rf', apache.root]);
  });

  it('under ASan, LSan and UBSan: start, kill -9, graceful, stop leave no sanitizer report', async () => {
    ensureModTsgiAsan();
    const logDir = mkdtempSync(join(tmpdir(), 'tsgi-asan-sup-'));
    chmodSync(logDir, 0o777);
    const REPORT = /ERROR: (AddressSanitizer|LeakSanitizer)|WARNING: (AddressSanitizer|LeakSanitizer)|runtime error:|Sanitizer has encountered a fatal error|Sanitizer CHECK failed/;
    const apache = await startApache({
      modules: [MOD_TSGI_ASAN],
      env: sanitizerEnv(logDir),
      config: `TSGIDaemonProcess asan processes=1 graceful-timeout=3 env=A=1\nTSGIScriptAlias /hello ${APP} process-group=asan\n`,
    });
    let log = '';
    try {
      const first = await tree(apache, 1);
      await expectHello(apache);
      process.kill(first.supervisor, 'SIGKILL');
      const second = await tree(apache, 1, first.supervisor);
      await expectHello(apache);
      await apache.graceful();
      await tree(apache, 1, second.supervisor);
      await expectHello(apache);
    } finally {
      await apache.stop();
      log = apache.errorLog();
    }
    const reports = readdirSync(logDir).map((f) => readFileSync(join(logDir, f), 'utf8')).filter((t) => REPORT.test(t));
    expect(reports.join('\n')).toBe('');
    expect(log).not.toMatch(REPORT);
    rmSync(logDir, { recursive: true, force: true });
  }, 600_000); // the instrumented build, when it is missing or stale
});
