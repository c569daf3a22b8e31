/**
 * A private Apache in the foreground, as a child of this process: started in its own
 * process group (so a terminal's Ctrl-C reaches only us, and we choose how Apache
 * stops), watched until it accepts connections, stopped gracefully and then, if it
 * takes too long, less gracefully, and never left behind:
 *
 * - a graceful stop (SIGWINCH: Apache's `-k graceful-stop`) lets in-flight requests
 *   finish within GracefulShutdownTimeout; Apache itself enforces that bound;
 *   past it and a margin, SIGTERM (`-k stop`); past that, SIGKILL to the group;
 * - after the parent exits, any process still in its group or running its config
 *   (a child that outlived it) is killed; so are daemon-mode processes, which run in
 *   sessions of their own (setsid) and are found by a variable in their environment,
 *   once they have had their graceful-timeout to stop by themselves;
 * - a watchdog shell, blocked reading a pipe from us, sends the group SIGTERM (then
 *   SIGKILL) if we die without cleaning up (even by SIGKILL, where no handler runs).
 *
 * Its error and access logs reach our stderr and stdout through FIFOs (LogRelay).
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as net from 'node:net';

export interface HttpdExit {
  code: number | null;
  signal: NodeJS.Signals | null;
}

export type StopStep = 'graceful' | 'stop' | 'kill';

const delay = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

function readStat(pid: number): { state: string; pgrp: number } | null {
  let text: string;
  try {
    text = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
  } catch {
    return null;
  }
  const rest = text.slice(text.lastIndexOf(')') + 2).split(' ');
  return { state: rest[0] ?? '?', pgrp: Number(rest[2]) };
}

function environHas(pid: number, entry: string): boolean {
  try {
    return fs.readFileSync(`/proc/${pid}/environ`, 'utf8').split('\0').includes(entry);
  } catch {
    return false; /* gone, or not ours to read */
  }
}

/** Live processes whose environment has `entry` ("NAME=VALUE"). */
export function processesWithEnv(entry: string): number[] {
  return fs
    .readdirSync('/proc')
    .filter((name) => /^\d+$/.test(name) && Number(name) !== process.pid)
    .map(Number)
    .filter((pid) => {
      const st = readStat(pid);
      return st !== null && st.state !== 'Z' && st.state !== 'X' && environHas(pid, entry);
    });
}

/**
 * Live (not zombie) processes in group `pgid`, or whose command line contains `marker`,
 * or (with `envEntry`, "NAME=VALUE") whose environment has that entry.
 */
export function httpdProcesses(pgid: number, marker: string, envEntry?: string): number[] {
  const out: number[] = [];
  for (const name of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    const pid = Number(name);
    if (pid === process.pid) continue;
    const st = readStat(pid);
    if (st === null || st.state === 'Z' || st.state === 'X') continue;
    let cmd = '';
    try {
      cmd = fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').join(' ');
    } catch {
      continue;
    }
    if (st.pgrp === pgid || cmd.includes(marker) || (envEntry !== undefined && environHas(pid, envEntry))) out.push(pid);
  }
  return out;
}

function signal(pid: number, sig: NodeJS.Signals): void {
  try {
    process.kill(pid, sig);
  } catch {
    /* ESRCH: already gone */
  }
}

function canConnect(host: string, port: number, timeoutMs = 500): Promise<boolean> {
  return new Promise((resolve) => {
    const sock = net.connect({ host, port });
    const done = (ok: boolean) => {
      clearTimeout(timer);
      sock.destroy();
      resolve(ok);
    };
    const timer = setTimeout(() => done(false), timeoutMs);
    sock.once('connect', () => done(true));
    sock.once('error', () => done(false));
  });
}

function readPid(file: string): number | null {
  try {
    const n = Number.parseInt(fs.readFileSync(file, 'utf8').trim(), 10);
    return Number.isFinite(n) && n > 0 ? n : null;
  } catch {
    return null;
  }
}

export interface ForegroundHttpdOptions {
  apacheBin: string;
  serverRoot: string;
  confPath: string;
  pidFile: string;
  env?: NodeJS.ProcessEnv;
  /**
   * Daemon mode: the "NAME=VALUE" in the environment of the daemon group's processes
   * (httpd-config.ts daemonEnvMarker), and how long they may take to stop by
   * themselves once the Apache parent is gone before they are killed.
   */
  daemons?: { envEntry: string; stopMs: number };
}

export class ForegroundHttpd {
  readonly child: ChildProcess;
  readonly pid: number;
  readonly exited: Promise<HttpdExit>;
  private exit: HttpdExit | null = null;
  private readonly watchdog: ChildProcess;

  constructor(private readonly opts: ForegroundHttpdOptions) {
    this.child = spawn(opts.apacheBin, ['-d', opts.serverRoot, '-f', opts.confPath, '-DFOREGROUND'], {
      cwd: opts.serverRoot,
      env: opts.env ?? process.env,
      // Its own process group (and session): Ctrl-C on the terminal reaches us, not
      // Apache (which would take SIGINT as an immediate stop).
      detached: true,
      // Ours: what Apache says before its ErrorLog is open (a syntax error, say) goes
      // straight to the terminal; the logs themselves come through LogRelay.
      stdio: ['ignore', 'inherit', 'inherit'],
    });
    if (this.child.pid === undefined) throw new Error(`cannot run ${opts.apacheBin}`);
    this.pid = this.child.pid;
    this.exited = new Promise((resolve) => {
      this.child.once('exit', (code, sig) => {
        this.exit = { code, signal: sig };
        resolve(this.exit);
      });
      this.child.once('error', (err) => {
        process.stderr.write(`tsgi express: ${opts.apacheBin}: ${err.message}\n`);
        this.exit = { code: 127, signal: null };
        resolve(this.exit);
      });
    });
    // dash's kill takes `-PGID` (no "--"). The loop bounds the wait to 10 s before SIGKILL.
    const script =
      'read _; kill -TERM -"$1" 2>/dev/null || exit 0; i=0; ' +
      'while kill -0 -"$1" 2>/dev/null && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done; ' +
      'kill -KILL -"$1" 2>/dev/null; exit 0';
    this.watchdog = spawn('/bin/sh', ['-c', script, 'tsgi-express-watchdog', String(this.pid)], {
      detached: true,
      stdio: ['pipe', 'ignore', 'ignore'],
    });
    this.watchdog.on('error', () => {});
    this.watchdog.stdin!.on('error', () => {});
    // Neither the watchdog nor its pipe may keep this process alive.
    this.watchdog.unref();
    (this.watchdog.stdin as unknown as { unref?: () => void }).unref?.();
  }

  get hasExited(): boolean {
    return this.exit !== null;
  }

  /** A string in the command line of every process of this server. */
  get marker(): string {
    return this.opts.confPath;
  }

  /**
   * Resolves 'ready' once Apache has written its pid file and accepts connections on
   * host:port, 'exited' if it exits first, 'timeout' after `timeoutMs`.
   */
  async waitReady(host: string, port: number, timeoutMs: number): Promise<'ready' | 'exited' | 'timeout'> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      if (this.hasExited) return 'exited';
      if (readPid(this.opts.pidFile) === this.pid && (await canConnect(host, port))) {
        return this.hasExited ? 'exited' : 'ready';
      }
      if (Date.now() > deadline) return 'timeout';
      await Promise.race([this.exited, delay(50)]);
    }
  }

  /** Sends the signal for one step of a stop (no-op once the parent has exited, except 'kill'). */
  send(step: StopStep): void {
    if (step === 'kill') {
      signal(-this.pid, 'SIGKILL');
      for (const pid of this.processes()) signal(pid, 'SIGKILL');
      return;
    }
    if (!this.hasExited) signal(this.pid, step === 'graceful' ? 'SIGWINCH' : 'SIGTERM');
  }

  /** Every live process of this server: Apache's and, in daemon mode, the daemon group's. */
  processes(): number[] {
    return httpdProcesses(this.pid, this.marker, this.opts.daemons?.envEntry);
  }

  /**
   * After the parent has exited: kills whatever of this server is still alive, waits
   * until it is gone, and releases the watchdog. Returns the pids it had to kill.
   */
  async reap(): Promise<number[]> {
    await this.exited;
    // A stopping Apache parent asks its daemon supervisors to stop and may exit before
    // they have drained; they get their graceful-timeout (a killed Apache: the
    // supervisors notice the parent is gone and stop the same way).
    const lingerUntil = Date.now() + (this.opts.daemons?.stopMs ?? 0);
    const daemons = this.opts.daemons;
    while (daemons && Date.now() < lingerUntil && processesWithEnv(daemons.envEntry).length > 0) await delay(50);
    const leftovers = this.processes();
    const deadline = Date.now() + 5000;
    for (let left = leftovers; left.length > 0 && Date.now() < deadline; left = this.processes()) {
      this.send('kill');
      await delay(20);
    }
    // The group is gone: the watchdog has nothing to do.
    if (this.watchdog.exitCode === null && this.watchdog.pid !== undefined) signal(this.watchdog.pid, 'SIGKILL');
    this.watchdog.stdin?.destroy();
    try {
      fs.rmSync(this.opts.pidFile, { force: true });
    } catch {
      /* Apache removes it itself on a clean stop */
    }
    return leftovers;
  }
}

/**
 * A log of Apache's relayed to one of our streams through a FIFO in the server root.
 * Apache cannot simply write to /dev/stderr: when our stderr is a socket (any parent
 * that spawns us from Node, systemd's journal) opening /dev/stderr fails with ENXIO,
 * and when it is a file opened without O_APPEND, Apache's appends and our writes
 * overwrite each other. Through the FIFO, every line reaches the terminal (or pipe, or
 * file) through our own descriptor.
 *
 * We hold a write end of our own, so the reader sees no end-of-file while Apache
 * closes and reopens its logs (startup, graceful restart); close() drops it, and the
 * reader then ends once Apache's last writer is gone and everything it wrote is out.
 */
export class LogRelay {
  private readonly reader: net.Socket;
  private writeFd: number | null;
  private readonly ended: Promise<void>;

  constructor(
    readonly fifo: string,
    out: NodeJS.WritableStream,
  ) {
    fs.rmSync(fifo, { force: true });
    // Only the Apache parent (root, or us) opens it; its children inherit the descriptor.
    execFileSync('mkfifo', ['-m', '0600', fifo]);
    const readFd = fs.openSync(fifo, fs.constants.O_RDONLY | fs.constants.O_NONBLOCK);
    this.writeFd = fs.openSync(fifo, fs.constants.O_WRONLY | fs.constants.O_NONBLOCK);
    this.reader = new net.Socket({ fd: readFd, readable: true, writable: false });
    this.reader.on('data', (chunk: Buffer) => out.write(chunk));
    this.ended = new Promise((resolve) => {
      this.reader.once('close', () => resolve());
      this.reader.once('error', () => resolve());
    });
  }

  /** After Apache has exited: relays what is left, then closes; bounded by `timeoutMs`. */
  async close(timeoutMs = 2000): Promise<void> {
    if (this.writeFd !== null) {
      fs.closeSync(this.writeFd);
      this.writeFd = null;
    }
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([this.ended, new Promise<void>((r) => (timer = setTimeout(r, timeoutMs)))]);
    clearTimeout(timer);
    this.reader.destroy();
    fs.rmSync(this.fifo, { force: true });
  }
}
