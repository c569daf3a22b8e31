/**
 * Process plumbing shared by the Apache and lighttpd starters: spawning a server as the
 * leader of its own process group, finding every process that belongs to it, and making
 * sure none survives the test process.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

export const delay = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

export const isRoot = () => typeof process.getuid === 'function' && process.getuid() === 0;

interface ProcStat {
  pid: number;
  state: string;
  ppid: number;
  pgrp: number;
}

function readStat(pid: number): ProcStat | null {
  let text: string;
  try {
    text = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
  } catch {
    return null;
  }
  // comm (field 2) may itself contain spaces and parentheses; everything after the last
  // ')' is fixed-format.
  const rest = text.slice(text.lastIndexOf(')') + 2).split(' ');
  return { pid, state: rest[0] ?? '?', ppid: Number(rest[1]), pgrp: Number(rest[2]) };
}

/** True while pid names a process that can still run; zombies count as gone. */
export function pidAlive(pid: number): boolean {
  const st = readStat(pid);
  return st !== null && st.state !== 'Z' && st.state !== 'X';
}

function cmdline(pid: number): string {
  try {
    return fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').join(' ');
  } catch {
    return '';
  }
}

/**
 * Live processes in process group `pgid`, plus any whose command line mentions `marker`
 * (a private config path), which catches a daemon that left the group with setsid().
 */
export function findProcesses(pgid: number, marker?: string): number[] {
  const out: number[] = [];
  for (const name of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    const pid = Number(name);
    if (pid === process.pid) continue;
    const st = readStat(pid);
    if (st === null || st.state === 'Z' || st.state === 'X') continue;
    if (st.pgrp === pgid || (marker !== undefined && cmdline(pid).includes(marker))) out.push(pid);
  }
  return out;
}

function signalQuietly(pid: number, sig: NodeJS.Signals): void {
  try {
    process.kill(pid, sig);
  } catch {
    // ESRCH: already gone, which is what we want.
  }
}

/** Cleanup that must run even when a test forgets stop() or the worker is torn down. */
const live = new Set<ManagedProcess>();
let hooksInstalled = false;

function installExitHooks(): void {
  if (hooksInstalled) return;
  hooksInstalled = true;
  // 'exit' handlers must be synchronous, so this is SIGKILL without waiting.
  process.on('exit', () => {
    for (const p of live) p.emergencyCleanup();
  });
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
    const handler = () => {
      for (const p of live) p.emergencyCleanup();
      process.removeListener(sig, handler);
      // Only re-raise when nobody else handles the signal; otherwise the other handler
      // decides how the process ends and our 'exit' hook has nothing left to do.
      if (process.listenerCount(sig) === 0) process.kill(process.pid, sig);
    };
    process.on(sig, handler);
  }
}

/** SIGKILLs every server this process started and has not stopped. */
export function killAllServers(): void {
  for (const p of live) p.emergencyCleanup();
}

export interface SpawnOptions {
  command: string;
  args: string[];
  cwd: string;
  env?: NodeJS.ProcessEnv;
  /** A string found in the server's command line (its private config path). */
  marker: string;
  /** Removed by emergencyCleanup (not by terminate, so stop() can still read the logs). */
  root?: string;
  keepRoot?: boolean;
}

const MAX_CAPTURE = 1 << 20;

/**
 * A server spawned in a new session, so it leads its own process group: one kill reaches
 * its workers, cgid daemon and CGI scripts, and prefork's killpg(getpgrp()) on shutdown
 * never reaches the test runner. A separate watchdog shell blocks reading a pipe from
 * this process; when this process dies in any way (even SIGKILL, where no exit hook
 * runs) the pipe closes and the watchdog SIGKILLs the group and removes the root. The
 * watchdog is our child, outside the server's group, so the server's own group signals
 * and our leftover scan never involve it, and stop() can reap it instead of orphaning it
 * (PID 1 here reaps orphans only lazily; they linger as zombies meanwhile).
 */
export class ManagedProcess {
  readonly child: ChildProcess;
  readonly pid: number;
  readonly marker: string;
  private readonly root: string | undefined;
  private readonly watchdog: ChildProcess;
  private out: Buffer[] = [];
  private err: Buffer[] = [];
  private captured = 0;
  exitCode: number | null = null;
  exitSignal: NodeJS.Signals | null = null;
  exitedFlag = false;
  readonly exited: Promise<void>;

  constructor(opts: SpawnOptions) {
    installExitHooks();
    this.child = spawn(opts.command, opts.args, {
      cwd: opts.cwd,
      env: opts.env ?? process.env,
      detached: true,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    if (this.child.pid === undefined) throw new Error(`could not spawn ${opts.command}`);
    this.pid = this.child.pid;
    this.marker = opts.marker;
    this.root = opts.keepRoot ? undefined : opts.root;
    // dash's kill takes no "--"; `-PID` alone names the group.
    const script = this.root ? 'read _; kill -KILL -"$1"; sleep 0.2; rm -rf "$2"' : 'read _; kill -KILL -"$1"';
    this.watchdog = spawn('/bin/sh', ['-c', script, 'watchdog', String(this.pid), this.root ?? ''], {
      // Its own session too, so a terminal's ^C does not kill it before it can act.
      detached: true,
      stdio: ['pipe', 'ignore', 'ignore'],
    });
    this.watchdog.on('error', () => {});
    this.watchdog.stdin!.on('error', () => {});
    const keep = (into: Buffer[]) => (b: Buffer) => {
      if (this.captured < MAX_CAPTURE) {
        into.push(b);
        this.captured += b.length;
      }
    };
    this.child.stdout!.on('data', keep(this.out));
    this.child.stderr!.on('data', keep(this.err));
    this.exited = new Promise((resolve) => {
      this.child.once('exit', (code, signal) => {
        this.exitCode = code;
        this.exitSignal = signal;
        this.exitedFlag = true;
        resolve();
      });
      this.child.once('error', () => {
        this.exitedFlag = true;
        resolve();
      });
    });
    // A forgotten server must not keep the test process alive; the exit hook kills it.
    for (const h of [this.child, this.child.stdout, this.child.stderr, this.watchdog, this.watchdog.stdin]) {
      (h as unknown as { unref?: () => void } | null)?.unref?.();
    }
    live.add(this);
  }

  stdout(): string {
    return Buffer.concat(this.out).toString('utf8');
  }

  stderr(): string {
    return Buffer.concat(this.err).toString('utf8');
  }

  signal(sig: NodeJS.Signals): void {
    if (!this.exitedFlag) signalQuietly(this.pid, sig);
  }

  /** Every live process that belongs to this server. */
  processes(): number[] {
    return findProcesses(this.pid, this.marker);
  }

  /** Synchronous, for exit hooks: SIGKILL everything and remove the private root. */
  emergencyCleanup(): void {
    this.killNow();
    if (this.root) fs.rmSync(this.root, { recursive: true, force: true });
  }

  killNow(): void {
    signalQuietly(-this.pid, 'SIGKILL');
    for (const pid of findProcesses(this.pid, this.marker)) signalQuietly(pid, 'SIGKILL');
    if (this.watchdog.pid !== undefined) signalQuietly(this.watchdog.pid, 'SIGKILL');
    live.delete(this);
  }

  /**
   * Sends `sig`, waits up to `timeoutMs` for the server to exit, then SIGKILLs whatever
   * is left and waits for it to be gone. Returns the pids that had to be killed, for
   * diagnostics.
   */
  async terminate(sig: NodeJS.Signals, timeoutMs: number, extraPids: number[] = []): Promise<number[]> {
    this.signal(sig);
    await Promise.race([this.exited, delay(timeoutMs)]);
    const leftovers = [...new Set([...this.processes(), ...extraPids])].filter(pidAlive);
    this.killNow();
    for (const pid of extraPids) signalQuietly(pid, 'SIGKILL');
    const deadline = Date.now() + 5000;
    while (Date.now() < deadline) {
      const remaining = [...this.processes(), ...extraPids].filter(pidAlive);
      if (remaining.length === 0 && this.exitedFlag) break;
      for (const pid of remaining) signalQuietly(pid, 'SIGKILL');
      await delay(20);
    }
    const stuck = [...this.processes(), ...extraPids].filter(pidAlive);
    if (stuck.length > 0) throw new Error(`processes survived SIGKILL: ${stuck.join(', ')}`);
    return leftovers;
  }
}

/** A fresh private directory under the OS temp dir that unprivileged server workers can traverse. */
export function makeServerRoot(prefix: string): string {
  const root = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
  // mkdtemp makes 0700; workers running as www-data must reach their config, scripts
  // and document root below it.
  fs.chmodSync(root, 0o755);
  return root;
}

export interface StopResult {
  /**
   * Processes still alive when the stop signal's grace period ended (or orphans left by
   * a server that did exit), which the harness then SIGKILLed. Empty after a clean stop.
   */
  killed: number[];
}

export type FileSpec = string | Buffer | { content: string | Buffer; mode?: number };

/** Writes `files` (paths relative to root) with readable-by-all defaults. */
export function writeFiles(root: string, files: Record<string, FileSpec> | undefined): void {
  if (!files) return;
  for (const [rel, spec] of Object.entries(files)) {
    const abs = path.resolve(root, rel);
    fs.mkdirSync(path.dirname(abs), { recursive: true, mode: 0o755 });
    const content = typeof spec === 'string' || Buffer.isBuffer(spec) ? spec : spec.content;
    const mode = typeof spec === 'string' || Buffer.isBuffer(spec) ? 0o644 : (spec.mode ?? 0o644);
    fs.writeFileSync(abs, content);
    // writeFileSync's mode is filtered by the umask; tests rely on the exact mode.
    fs.chmodSync(abs, mode);
  }
}

/** Reads a file, '' if it does not exist yet. */
export function readText(file: string): string {
  try {
    return fs.readFileSync(file, 'utf8');
  } catch {
    return '';
  }
}

/** Polls `file` until `re` matches its text after byte offset `since`. */
export async function waitForFileMatch(
  file: string,
  re: RegExp,
  timeoutMs: number,
  since = 0,
): Promise<RegExpMatchArray> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const text = readFromOffset(file, since);
    const m = text.match(re);
    if (m) return m;
    if (Date.now() >= deadline) {
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${re} in ${file}; it contains:\n${text}`);
    }
    await delay(25);
  }
}

function readFromOffset(file: string, since: number): string {
  try {
    const buf = fs.readFileSync(file);
    return buf.subarray(Math.min(since, buf.length)).toString('utf8');
  } catch {
    return '';
  }
}

export function fileSize(file: string): number {
  try {
    return fs.statSync(file).size;
  } catch {
    return 0;
  }
}

export function readPidFile(file: string): number | null {
  const n = Number.parseInt(readText(file).trim(), 10);
  return Number.isFinite(n) && n > 0 ? n : null;
}

/** Whether a root directory should be left on disk for post-mortem reading. */
export const keepRootsByEnv = () => process.env['TSGI_KEEP_SERVER_ROOT'] === '1';

/** A temp dir (0755) for scripts or document roots that live outside a server root; remove it yourself. */
export const makeReadableTempDir = (prefix = 'tsgi-test-') => makeServerRoot(prefix);
