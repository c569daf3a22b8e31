/**
 * Private Apache httpd instances for integration tests: each gets its own ServerRoot in
 * a temp dir, a complete generated httpd.conf (nothing from /etc/apache2), a random
 * port on 127.0.0.1, and runs in the foreground as a child this process owns.
 */
import { execFile, execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { canConnect, freePort, StartupError, startOnFreePort } from './ports';
import {
  ManagedProcess,
  delay,
  fileSize,
  isRoot,
  keepRootsByEnv,
  makeServerRoot,
  pidAlive,
  readPidFile,
  readText,
  waitForFileMatch,
  writeFiles,
  type FileSpec,
  type StopResult,
} from './proc';

export const APACHE_BIN = '/usr/sbin/apache2';
export const APACHE_MODULES_DIR = '/usr/lib/apache2/modules';

export type Mpm = 'event' | 'worker' | 'prefork';

/** A module by short name ('proxy_http'), by .so path, or with an explicit module identifier. */
export type ModuleSpec = string | { name: string; path: string };

export interface ConfigContext {
  root: string;
  port: number;
  documentRoot: string;
  mpm: Mpm;
}

export interface ApacheOptions {
  mpm?: Mpm;
  /** Fixed port; by default a free one is picked (and re-picked if another process wins the race). */
  port?: number;
  /** LogLevel value, e.g. 'info' (default), 'debug', 'warn tsgi:trace3'. */
  logLevel?: string;
  /** Loaded after the default set; duplicates and modules compiled into apache2 are skipped. */
  modules?: ModuleSpec[];
  /** Replaces the default module set (the MPM is always loaded). */
  baseModules?: ModuleSpec[];
  /** Appended verbatim at the end of httpd.conf; a function gets the root and port first. */
  config?: string | ((ctx: ConfigContext) => string);
  /** Defaults to <root>/htdocs, created empty. */
  documentRoot?: string;
  /** Extra files written under the ServerRoot before start (CGI scripts, Include files). */
  files?: Record<string, FileSpec>;
  /** Worker user/group; default 'www-data' when running as root, none otherwise (a non-root parent cannot switch users). */
  user?: string | null;
  group?: string | null;
  /** `-D NAME` defines passed on the command line. */
  defines?: string[];
  env?: NodeJS.ProcessEnv;
  startTimeoutMs?: number;
  /**
   * Startup counts as failed when the error log matches this once the server reports it
   * is running (e.g. "cgid daemon failed to initialize" is only [crit], Apache keeps
   * going and every CGI request would 503). Default: any emerg/alert/crit line; null disables.
   */
  failOnLog?: RegExp | null;
  /** Leave the ServerRoot on disk after stop() (also: TSGI_KEEP_SERVER_ROOT=1). */
  keepRoot?: boolean;
}

export interface ApacheInstance {
  readonly port: number;
  readonly root: string;
  readonly confPath: string;
  readonly documentRoot: string;
  readonly errorLogPath: string;
  readonly accessLogPath: string;
  /** Line number in httpd.conf where the caller's `config` begins (for file:line assertions). */
  readonly configFirstLine: number;
  /** Pid of the Apache parent process. */
  readonly pid: number;
  url(p?: string): string;
  errorLog(): string;
  accessLog(): string;
  /** Byte offset of the end of the error log now; pass to waitForLog to only see newer lines. */
  logMark(): number;
  waitForLog(re: RegExp, timeoutMs?: number, since?: number): Promise<RegExpMatchArray>;
  /** Every live process of this instance (parent, workers, cgid daemon, CGI scripts). */
  processes(): number[];
  /**
   * Every live descendant of the parent, including those that left its process group
   * with setsid() (mod_tsgi's daemon supervisors and their workers).
   */
  descendants(): number[];
  /** Stdout/stderr of the foreground parent (startup errors land here before ErrorLog opens). */
  output(): string;
  /** `apache2 -k graceful`, then waits until the new generation reports it is running. */
  graceful(timeoutMs?: number): Promise<void>;
  /** Idempotent; graceful=true uses graceful-stop (SIGWINCH), otherwise stop (SIGTERM). */
  stop(opts?: { graceful?: boolean; timeoutMs?: number }): Promise<StopResult>;
  readonly stopped: boolean;
}

const DEFAULT_MODULES = ['authz_core', 'mime', 'dir', 'alias', 'env', 'setenvif', 'log_config', 'unixd', 'actions', 'headers'];

let builtinCache: Set<string> | null = null;

/** Modules compiled into Debian's apache2 (log_config, unixd, ...): LoadModule on them is an error. */
function builtinModules(): Set<string> {
  if (builtinCache) return builtinCache;
  const out = execFileSync(APACHE_BIN, ['-l'], { encoding: 'utf8' });
  builtinCache = new Set(
    [...out.matchAll(/^\s+mod_(\w+)\.c$/gm)].map((m) => `${m[1]}_module`),
  );
  return builtinCache;
}

function resolveModule(spec: ModuleSpec): { name: string; path: string } {
  if (typeof spec !== 'string') return spec;
  if (spec.includes('/') || spec.endsWith('.so')) {
    const base = path.basename(spec).replace(/\.so$/, '').replace(/^mod_/, '');
    return { name: `${base}_module`, path: path.isAbsolute(spec) ? spec : path.resolve(spec) };
  }
  const base = spec.replace(/^mod_/, '').replace(/_module$/, '');
  return { name: `${base}_module`, path: path.join(APACHE_MODULES_DIR, `mod_${base}.so`) };
}

interface Generated {
  root: string;
  confPath: string;
  documentRoot: string;
  errorLogPath: string;
  accessLogPath: string;
  pidPath: string;
  configFirstLine: number;
  port: number;
}

function q(s: string): string {
  return `"${s.replace(/\\/g, '\\\\').replace(/"/g, '\\"')}"`;
}

/** Writes httpd.conf and friends into `root` for `port`. */
function generate(root: string, port: number, opts: ApacheOptions): Generated {
  const mpm = opts.mpm ?? 'event';
  const documentRoot = opts.documentRoot ?? path.join(root, 'htdocs');
  fs.mkdirSync(documentRoot, { recursive: true, mode: 0o755 });
  writeFiles(root, opts.files);
  const errorLogPath = path.join(root, 'error.log');
  const accessLogPath = path.join(root, 'access.log');
  const pidPath = path.join(root, 'httpd.pid');
  const confPath = path.join(root, 'httpd.conf');

  const builtins = builtinModules();
  const modules: { name: string; path: string }[] = [];
  const add = (spec: ModuleSpec) => {
    const m = resolveModule(spec);
    if (builtins.has(m.name) || modules.some((x) => x.name === m.name)) return;
    modules.push(m);
  };
  add(`mpm_${mpm}`);
  // mod_cgid forks its CGI children from a separate daemon, which is what threaded MPMs
  // need; mod_cgi forks from the (single-threaded) prefork child itself.
  for (const m of opts.baseModules ?? [...DEFAULT_MODULES, mpm === 'prefork' ? 'cgi' : 'cgid']) add(m);
  for (const m of opts.modules ?? []) add(m);

  const user = opts.user === undefined ? (isRoot() ? 'www-data' : null) : opts.user;
  const group = opts.group === undefined ? user : opts.group;

  const lines: string[] = [
    '# Generated by test/harness/apache.ts: a private instance, nothing from /etc/apache2.',
    `ServerRoot ${q(root)}`,
    // Sockets, shm and mutex files of this instance stay inside its root, so parallel
    // instances never collide in /var/run/apache2.
    `DefaultRuntimeDir ${q(root)}`,
    `PidFile ${q(pidPath)}`,
    `Listen 127.0.0.1:${port}`,
    'ServerName 127.0.0.1',
    ...modules.map((m) => `LoadModule ${m.name} ${q(m.path)}`),
  ];
  if (user) lines.push(`User ${user}`);
  if (group) lines.push(`Group ${group}`);
  lines.push(
    `Mutex file:${root} default`,
    `ErrorLog ${q(errorLogPath)}`,
    `LogLevel ${opts.logLevel ?? 'info'}`,
  );
  if (modules.some((m) => m.name === 'log_config_module') || builtins.has('log_config_module')) {
    lines.push(
      'LogFormat "%h %l %u %t \\"%r\\" %>s %b %D" tsgi_harness',
      `CustomLog ${q(accessLogPath)} tsgi_harness`,
    );
  }
  if (modules.some((m) => m.name === 'mime_module')) lines.push('TypesConfig /etc/mime.types');
  if (modules.some((m) => m.name === 'cgid_module')) {
    // The cgid daemon creates this as root before dropping privileges; the ServerRoot is
    // root-writable and www-data-traversable, which is all it needs.
    lines.push(`ScriptSock ${q(path.join(root, 'cgid.sock'))}`);
  }
  if (modules.some((m) => m.name === 'dir_module')) lines.push('DirectoryIndex index.html');
  lines.push(
    `DocumentRoot ${q(documentRoot)}`,
    // Without any Require, authz_core grants access, so ScriptAlias targets anywhere work
    // without a <Directory> block; tests that need denial say so in their config.
    '',
    '# ---- caller config ----',
  );
  const configFirstLine = lines.length + 1;
  const ctx: ConfigContext = { root, port, documentRoot, mpm };
  const extra = typeof opts.config === 'function' ? opts.config(ctx) : (opts.config ?? '');
  const text = lines.join('\n') + '\n' + extra + (extra.endsWith('\n') || extra === '' ? '' : '\n');
  fs.writeFileSync(confPath, text, { mode: 0o644 });
  return { root, confPath, documentRoot, errorLogPath, accessLogPath, pidPath, configFirstLine, port };
}

function commandArgs(g: Generated, opts: ApacheOptions): string[] {
  const args = ['-d', g.root, '-f', g.confPath];
  for (const d of opts.defines ?? []) args.push('-D', d);
  return args;
}

function runApache(args: string[], env: NodeJS.ProcessEnv | undefined, cwd: string): Promise<{ code: number; output: string }> {
  return new Promise((resolve) => {
    execFile(APACHE_BIN, args, { cwd, env: env ?? process.env, encoding: 'utf8', timeout: 30_000 }, (err, stdout, stderr) => {
      const code = err ? (typeof (err as { code?: unknown }).code === 'number' ? ((err as { code: number }).code) : 1) : 0;
      resolve({ code, output: `${stdout}${stderr}` });
    });
  });
}

export interface ConfigtestResult {
  code: number;
  /** Combined stdout and stderr of `apache2 -t`. */
  output: string;
  confPath: string;
  root: string;
  configFirstLine: number;
}

/**
 * Generates the same config startApache would and runs `apache2 -t` on it. The root is
 * removed afterwards unless keepRoot, so assert on `output` and the returned paths.
 */
export async function configtest(opts: ApacheOptions = {}): Promise<ConfigtestResult> {
  const root = makeServerRoot('tsgi-apache-t-');
  try {
    const g = generate(root, opts.port ?? (await freePort()), opts);
    const { code, output } = await runApache(['-t', ...commandArgs(g, opts)], opts.env, root);
    return { code, output, confPath: g.confPath, root, configFirstLine: g.configFirstLine };
  } finally {
    if (!opts.keepRoot && !keepRootsByEnv()) fs.rmSync(root, { recursive: true, force: true });
  }
}

/** Live descendants of `pid` (by parent pid, so a setsid() child still counts), sorted. */
export function descendantsOf(pid: number): number[] {
  const parents = new Map<number, number>();
  for (const name of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    let stat: string;
    try {
      stat = fs.readFileSync(`/proc/${name}/stat`, 'utf8');
    } catch {
      continue;
    }
    const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    if (rest[0] === 'Z' || rest[0] === 'X') continue;
    parents.set(Number(name), Number(rest[1]));
  }
  const out: number[] = [];
  const walk = (p: number) => {
    for (const [child, ppid] of parents) {
      if (ppid === p && !out.includes(child)) {
        out.push(child);
        walk(child);
      }
    }
  };
  walk(pid);
  return out.sort((a, b) => a - b);
}

export async function startApache(opts: ApacheOptions = {}): Promise<ApacheInstance> {
  return startOnFreePort(opts.port, (port) => startOnce(opts, port));
}

async function startOnce(opts: ApacheOptions, port: number): Promise<ApacheInstance> {
  const root = makeServerRoot('tsgi-apache-');
  const keep = opts.keepRoot || keepRootsByEnv();
  const g = generate(root, port, opts);
  const args = [...commandArgs(g, opts), '-DFOREGROUND'];
  const proc = new ManagedProcess({ command: APACHE_BIN, args, cwd: root, env: opts.env, marker: g.confPath, root, keepRoot: keep });
  const timeoutMs = opts.startTimeoutMs ?? 15_000;
  const deadline = Date.now() + timeoutMs;

  const fail = async (why: string): Promise<never> => {
    await proc.terminate('SIGKILL', 0).catch(() => []);
    const log = readText(g.errorLogPath);
    const out = proc.stderr() + proc.stdout();
    if (!keep) fs.rmSync(root, { recursive: true, force: true });
    throw new StartupError(
      `Apache (${opts.mpm ?? 'event'}, port ${port}) failed to start: ${why}\n` +
        `--- stderr/stdout ---\n${out}\n--- ${g.errorLogPath} ---\n${log}` +
        (keep ? `\n(root kept at ${root})` : ''),
      /Address already in use|could not bind/i.test(out + log),
    );
  };

  for (;;) {
    if (proc.exitedFlag) {
      await fail(`apache2 exited (code ${proc.exitCode}, signal ${proc.exitSignal})`);
    }
    // The listener is up before modules finish post_config/child init; the notice line
    // (always logged, whatever LogLevel) marks the end of startup.
    if (
      readPidFile(g.pidPath) !== null &&
      /resuming normal operations/.test(readText(g.errorLogPath)) &&
      (await canConnect(port, '127.0.0.1', 500)) &&
      !proc.exitedFlag
    ) {
      break;
    }
    if (Date.now() > deadline) await fail(`not ready after ${timeoutMs} ms`);
    await delay(25);
  }
  const failOnLog = opts.failOnLog === undefined ? /:(emerg|alert|crit)\]/ : opts.failOnLog;
  if (failOnLog) {
    // Child-init hooks (cgid's daemon, MPM children) log a moment after the parent's
    // notice, later still on a loaded machine. When cgid is in use, wait (bounded) until
    // its socket exists or the failure is logged, rather than a fixed pause.
    // mod_cgid appends the parent's pid to ScriptSock: cgid.sock.<pid>.
    const cgidReady = () => fs.readdirSync(g.root).some((f) => f.startsWith('cgid.sock'));
    const usesCgid = /\bmod_cgid\.so\b/.test(readText(g.confPath));
    const waitUntil = Date.now() + (usesCgid ? 3000 : 100);
    for (;;) {
      const bad = readText(g.errorLogPath).split('\n').find((l) => failOnLog.test(l));
      if (bad !== undefined) await fail(`error log matches ${failOnLog}: ${bad}`);
      if (Date.now() > waitUntil || (usesCgid && cgidReady())) break;
      await delay(25);
    }
  }

  let stopped = false;
  let stopping: Promise<StopResult> | null = null;
  let finalErrorLog: string | null = null;
  let finalAccessLog: string | null = null;

  const inst: ApacheInstance = {
    port,
    root,
    confPath: g.confPath,
    documentRoot: g.documentRoot,
    errorLogPath: g.errorLogPath,
    accessLogPath: g.accessLogPath,
    configFirstLine: g.configFirstLine,
    pid: proc.pid,
    get stopped() {
      return stopped;
    },
    url: (p = '/') => `http://127.0.0.1:${port}${p.startsWith('/') ? p : `/${p}`}`,
    errorLog: () => finalErrorLog ?? readText(g.errorLogPath),
    accessLog: () => finalAccessLog ?? readText(g.accessLogPath),
    logMark: () => fileSize(g.errorLogPath),
    async waitForLog(re, ms = 5000, since = 0) {
      if (finalErrorLog !== null) {
        const m = Buffer.from(finalErrorLog).subarray(since).toString('utf8').match(re);
        if (m) return m;
        throw new Error(`${re} not in the error log of a stopped Apache:\n${finalErrorLog}`);
      }
      return waitForFileMatch(g.errorLogPath, re, ms, since);
    },
    processes: () => proc.processes(),
    descendants: () => descendantsOf(proc.pid),
    output: () => proc.stderr() + proc.stdout(),
    async graceful(ms = 10_000) {
      if (stopped || stopping) throw new Error('graceful() on a stopped Apache');
      const mark = fileSize(g.errorLogPath);
      const r = await runApache(['-k', 'graceful', ...commandArgs(g, opts)], opts.env, root);
      if (r.code !== 0) throw new Error(`apache2 -k graceful failed (${r.code}):\n${r.output}`);
      await waitForFileMatch(g.errorLogPath, /resuming normal operations/, ms, mark);
    },
    stop(so = {}) {
      if (stopping) return stopping;
      stopping = (async () => {
        const pidFromFile = readPidFile(g.pidPath);
        const extra = pidFromFile !== null && pidFromFile !== proc.pid ? [pidFromFile] : [];
        // Processes that left the server's process group (daemons started with setsid())
        // are not reached by its group kill: they get the rest of the stop's time to exit
        // on their own once the parent is gone, then count as killed like the others.
        const outside = descendantsOf(proc.pid);
        const stopDeadline = Date.now() + (so.timeoutMs ?? 10_000);
        const killed = await proc.terminate(so.graceful ? 'SIGWINCH' : 'SIGTERM', so.timeoutMs ?? 10_000, extra);
        while (outside.some(pidAlive) && Date.now() < stopDeadline) await delay(25);
        for (const pid of outside.filter(pidAlive)) {
          killed.push(pid);
          try {
            process.kill(pid, 'SIGKILL');
          } catch {
            // gone meanwhile
          }
        }
        for (let i = 0; i < 200 && outside.some(pidAlive); i++) await delay(25);
        const still = [proc.pid, ...extra, ...outside].filter(pidAlive);
        if (still.length) throw new Error(`Apache processes still alive after stop: ${still.join(', ')}`);
        finalErrorLog = readText(g.errorLogPath);
        finalAccessLog = readText(g.accessLogPath);
        stopped = true;
        if (!keep) fs.rmSync(root, { recursive: true, force: true });
        return { killed };
      })();
      return stopping;
    },
  };
  return inst;
}
