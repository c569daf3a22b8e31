/**
 * mod_tsgi for integration tests: makes sure build/native/mod_tsgi.so is built and
 * current (the same steps as `npm run build:native`, under a lock so parallel test files
 * build it once), and gives the harness its module spec. Likewise for the copy built
 * with sanitizers (build/native-asan/, mod-tsgi-sanitize.test.ts).
 */
import { spawnSync } from 'node:child_process';
import { mkdirSync, readdirSync, readFileSync, readlinkSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { ROOT } from './serve';
import { queryStatusSocket } from '../../src/cli/status';
import type { PoolStatusReport } from '../../src/daemon-mode';

export const MOD_TSGI_SO = join(ROOT, 'build', 'native', 'mod_tsgi.so');
export const MOD_TSGI = { name: 'tsgi_module', path: MOD_TSGI_SO };

function mtime(p: string): number {
  try {
    return statSync(p).mtimeMs;
  } catch {
    return -1;
  }
}

/** The newest build input under dir (lsan.supp is read at run time, not built). */
function newest(dir: string): number {
  let n = -1;
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    if (e.name.endsWith('.supp')) continue;
    const p = join(dir, e.name);
    n = Math.max(n, e.isDirectory() ? newest(p) : mtime(p));
  }
  return n;
}

/** Runs `cmake` for `buildDir` under the build lock when `so` is missing or older than native/. */
function build(so: string, buildDir: string, cmakeArgs: string): string {
  if (mtime(so) >= newest(join(ROOT, 'native'))) return so;
  mkdirSync(join(ROOT, 'build'), { recursive: true });
  const script =
    'bash scripts/setup-native.sh && ' +
    `cmake -S native -B ${buildDir} -DCMAKE_BUILD_TYPE=RelWithDebInfo ${cmakeArgs} >/dev/null && ` +
    `cmake --build ${buildDir}`;
  const r = spawnSync('flock', [join(ROOT, 'build', '.native-build.lock'), 'bash', '-c', script], {
    cwd: ROOT,
    encoding: 'utf8',
    timeout: 600_000,
  });
  if (r.status !== 0) {
    throw new Error(`building ${so} failed (${r.error?.message ?? r.signal ?? `exit ${r.status}`}):\n${r.stdout}\n${r.stderr}`);
  }
  return so;
}

/** Builds the module when it is missing or older than native/; throws with the build output on failure. */
export function ensureModTsgi(): string {
  return build(MOD_TSGI_SO, 'build/native', '');
}

/**
 * The instrumented module: our sources with AddressSanitizer, LeakSanitizer and UBSan
 * (`-DTSGI_SANITIZE=address,undefined`, in its own build dir). apache2 must run with
 * sanitizerEnv(); docs/embedded.md "Sanitizers".
 */
export const MOD_TSGI_ASAN_SO = join(ROOT, 'build', 'native-asan', 'mod_tsgi.so');
export const MOD_TSGI_ASAN = { name: 'tsgi_module', path: MOD_TSGI_ASAN_SO };
export const LSAN_SUPPRESSIONS = join(ROOT, 'native', 'lsan.supp');

/** Builds the instrumented module when it is missing or older than native/ (same lock as ensureModTsgi). */
export function ensureModTsgiAsan(): string {
  return build(MOD_TSGI_ASAN_SO, 'build/native-asan', '-DTSGI_SANITIZE=address,undefined');
}

/**
 * The environment for apache2 (and `apache2 -t`) with the instrumented module: libasan
 * preloaded (it must come before every other library), ASan and LSan reports written to
 * `<logDir>/asan.<pid>`, leaks checked at each process's exit with native/lsan.supp.
 * UBSan's go to stderr (Apache's error log): its runtime, once it initializes at a first
 * finding, sends that process's later ASan output there too. `logDir` must be writable
 * by the Apache user.
 */
export function sanitizerEnv(logDir: string): NodeJS.ProcessEnv {
  const libasan = spawnSync('gcc', ['-print-file-name=libasan.so'], { encoding: 'utf8' }).stdout.trim();
  if (!libasan.startsWith('/')) throw new Error(`gcc -print-file-name=libasan.so: ${libasan || 'no answer'}`);
  return {
    ...process.env,
    LD_PRELOAD: libasan,
    ASAN_OPTIONS: [`log_path=${join(logDir, 'asan')}`, 'detect_leaks=1', 'malloc_context_size=30'].join(':'),
    // print_suppressions: a process whose leak check ran and matched a suppression says
    // so in its log; the test uses that to know the check ran at all.
    LSAN_OPTIONS: [`suppressions=${LSAN_SUPPRESSIONS}`, 'print_suppressions=1'].join(':'),
    UBSAN_OPTIONS: ['print_stacktrace=1', 'halt_on_error=0'].join(':'),
  };
}

// ---- daemon mode ----------------------------------------------------------------------

/**
 * The two ways mod_tsgi runs an app. The integration files that cover embedded mode run
 * their cases in both: `daemon` is the same config plus a TSGIDaemonProcess group that
 * every TSGIScriptAlias of the server is routed to (modeConfig).
 */
export type TsgiMode = 'embedded' | 'daemon';
export const TSGI_MODES: readonly TsgiMode[] = ['embedded', 'daemon'];

/** The daemon process group the mode-parametrized files use. */
export const DAEMON_GROUP = 'tsgi-test';

export interface DaemonGroupOptions {
  /** Default DAEMON_GROUP. */
  name?: string;
  /** Default 2 (what "every embedded test passes in daemon mode" is measured with). */
  processes?: number;
  /** More TSGIDaemonProcess options, verbatim: 'request-timeout=2 threads=1'. */
  options?: string;
  /**
   * How apps reach the group: 'directive' (default) adds a server-wide
   * `TSGIProcessGroup NAME`; 'alias' adds nothing here, the caller puts
   * aliasOption(mode) on its TSGIScriptAlias lines instead.
   */
  route?: 'directive' | 'alias';
}

/**
 * The lines a test's httpd.conf gains in `mode`: nothing for embedded; for daemon, the
 * group (`TSGIDaemonProcess NAME processes=2 ...`) and, unless route='alias', a
 * `TSGIProcessGroup NAME` at server level, which virtual hosts and directories inherit.
 */
export function modeConfig(mode: TsgiMode, opts: DaemonGroupOptions = {}): string {
  if (mode === 'embedded') return '';
  const name = opts.name ?? DAEMON_GROUP;
  const lines = [`TSGIDaemonProcess ${name} processes=${opts.processes ?? 2}${opts.options ? ` ${opts.options}` : ''}`];
  if ((opts.route ?? 'directive') === 'directive') lines.push(`TSGIProcessGroup ${name}`);
  return lines.join('\n') + '\n';
}

/** ` process-group=NAME` (the TSGIScriptAlias option) in daemon mode, '' in embedded mode. */
export function aliasOption(mode: TsgiMode, name = DAEMON_GROUP): string {
  return mode === 'daemon' ? ` process-group=${name}` : '';
}

/** What the app's environ says mod_tsgi.process_group is in `mode`. */
export function expectedProcessGroup(mode: TsgiMode, name = DAEMON_GROUP): string {
  return mode === 'daemon' ? name : '';
}

const DIST_DAEMON = join(ROOT, 'dist', 'daemon-mode.js');

/**
 * Daemon mode runs `node dist/daemon-mode.js --apache` of this checkout: compiles src/
 * (tsc, under the native build lock, without wiping dist/ under other running tests)
 * when any source is newer than that file. Throws with tsc's output on failure.
 */
export function ensureDist(): string {
  if (mtime(DIST_DAEMON) >= newest(join(ROOT, 'src'))) return DIST_DAEMON;
  mkdirSync(join(ROOT, 'build'), { recursive: true });
  const r = spawnSync('flock', [join(ROOT, 'build', '.native-build.lock'), process.execPath, join(ROOT, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', 'tsconfig.build.json'], {
    cwd: ROOT,
    encoding: 'utf8',
    timeout: 300_000,
  });
  if (r.status !== 0) throw new Error(`tsc -p tsconfig.build.json failed (${r.error?.message ?? r.signal ?? `exit ${r.status}`}):\n${r.stdout}\n${r.stderr}`);
  return DIST_DAEMON;
}

/** ensureModTsgi(), plus the compiled daemon in daemon mode. */
export function ensureMode(mode: TsgiMode): void {
  ensureModTsgi();
  if (mode === 'daemon') ensureDist();
}

function procStatus(pid: number): Record<string, string> | null {
  let text: string;
  try {
    text = readFileSync(`/proc/${pid}/status`, 'utf8');
  } catch {
    return null;
  }
  const out: Record<string, string> = {};
  for (const line of text.split('\n')) {
    const i = line.indexOf(':');
    if (i > 0) out[line.slice(0, i)] = line.slice(i + 1).trim();
  }
  return out;
}

function exeOf(pid: number): string {
  try {
    return readlinkSync(`/proc/${pid}/exe`);
  } catch {
    return '';
  }
}

/** Live (not zombie) processes whose parent is `ppid`. */
export function childPids(ppid: number): number[] {
  const out: number[] = [];
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    const st = procStatus(Number(name));
    if (!st || Number(st['PPid']) !== ppid || /^[ZX]/.test(st['State'] ?? '')) continue;
    out.push(Number(name));
  }
  return out.sort((a, b) => a - b);
}

export interface DaemonTree {
  /** The group supervisors: the Apache parent's children that run node (setsid'd out of its process group). */
  supervisor: number;
  /** The supervisor's node children: the workers that serve requests. */
  workers: number[];
}

/** Every daemon supervisor of the Apache whose parent is `apachePid`, with its workers, from /proc. */
export function daemonTrees(apachePid: number): DaemonTree[] {
  const isNode = (pid: number) => /\/node[^/]*$/.test(exeOf(pid));
  return childPids(apachePid)
    .filter(isNode)
    .map((supervisor) => ({ supervisor, workers: childPids(supervisor).filter(isNode) }));
}

/** All daemon workers of that Apache, sorted. */
export function daemonWorkers(apachePid: number): number[] {
  return daemonTrees(apachePid)
    .flatMap((t) => t.workers)
    .sort((a, b) => a - b);
}

/** Effective uid and gid of a process (/proc/PID/status), or null when it is gone. */
export function uidGid(pid: number): { uid: number; gid: number } | null {
  const st = procStatus(pid);
  if (!st) return null;
  return { uid: Number(st['Uid']!.split(/\s+/)[1]), gid: Number(st['Gid']!.split(/\s+/)[1]) };
}

/** docs/protocol.md §5: the supervisor's own type. */
export type DaemonStatus = PoolStatusReport;

/** The status sockets (`<prefix>.<parentpid>.<n>.status`) under `dir` (the harness's DefaultRuntimeDir is the ServerRoot). */
export function statusSockets(dir: string): string[] {
  return readdirSync(dir)
    .filter((f) => /^tsgi\.\d+\.\d+\.status$/.test(f))
    .map((f) => join(dir, f))
    .sort();
}

/** Connects to a status socket and reads the JSON it sends before closing (the launch contract's fd 5): `tsgi status`'s own reader. */
export function readStatusSocket(path: string, timeoutMs = 5000): Promise<DaemonStatus> {
  return queryStatusSocket(path, timeoutMs);
}

/** The status of group `name` from the first status socket under `dir` that answers for it. */
export async function groupStatus(dir: string, name = DAEMON_GROUP): Promise<DaemonStatus> {
  const errors: string[] = [];
  for (const p of statusSockets(dir)) {
    try {
      const st = await readStatusSocket(p);
      if (st.group === name) return st;
      errors.push(`${p}: group ${st.group}`);
    } catch (e) {
      errors.push(`${p}: ${(e as Error).message}`);
    }
  }
  throw new Error(`no status socket under ${dir} answers for group ${name}: ${errors.join('; ') || 'none found'}`);
}

/**
 * Polls `probe` every 25 ms until it returns a value other than undefined, or throws
 * `what` after `timeoutMs` (a bound for a test that would otherwise hang, never a
 * measurement). Returns the value and how long it took.
 */
export async function pollFor<T>(what: string, probe: () => T | undefined | Promise<T | undefined>, timeoutMs = 20_000): Promise<{ value: T; ms: number }> {
  const t0 = Date.now();
  let last: unknown;
  for (;;) {
    try {
      const v = await probe();
      if (v !== undefined) return { value: v, ms: Date.now() - t0 };
    } catch (e) {
      last = e;
    }
    if (Date.now() - t0 > timeoutMs) throw new Error(`${what}: not within ${timeoutMs} ms${last ? ` (last error: ${(last as Error).message})` : ''}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}
