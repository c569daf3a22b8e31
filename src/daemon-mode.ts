/**
 * The daemon pool: one master process that owns the listening socket and supervises N
 * workers (src/daemon-worker.ts), each accepting on that socket and running the app.
 * `tsgi daemon` drives it from the command line (src/cli/daemon.ts); for mod_tsgi's
 * daemon mode the Apache parent execs this file with --apache (runApacheDaemon, at the
 * end: the pool on the inherited socket, speaking mod_tsgi's wire protocol).
 *
 * The master opens the socket once (bound, never listening in the master itself, so the
 * master never accepts) and hands it to every worker over IPC. Everything that happens to
 * the pool — a signal, a worker's message, a worker's exit, a reload or stop asked for
 * through the API — is queued as an event, and one loop handles them in order:
 *
 *     take the next event (or a tick), and handle it;
 *     kill workers that stopped answering or never became ready;
 *     let replaced workers drain, now that their replacements are ready;
 *     kill drains that outlived graceful-timeout;
 *     spawn workers up to the target count (with backoff while they keep crashing).
 *
 * Guarantees: a worker being replaced (maximum-requests, request-timeout,
 * inactivity-timeout, a changed script, a reload) keeps taking work until its replacement
 * is ready, then stops accepting and finishes what it accepted; connections arriving
 * meanwhile wait in the socket's backlog, so none is refused or lost. Stop is bounded by
 * graceful-timeout. A crash is logged with pid, exit code or signal, and the requests
 * that were in flight.
 */
import { fork, type ChildProcess } from 'node:child_process';
import * as dns from 'node:dns';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { getSystemErrorName } from 'node:util';
import { apacheFormatLog, parseLogLevel, redirectStdio } from './gateway/apache-log';
import { streamLog, type ErrorLog, type LogLevel } from './gateway/log';
import type { InFlight, MasterMessage, WorkerConfig, WorkerMessage } from './daemon-worker';

/** 'tsgi' is mod_tsgi's own wire protocol (docs/protocol.md), for Apache daemon mode only. */
export type DaemonProtocol = 'http' | 'scgi' | 'uwsgi' | 'fastcgi' | 'tsgi';
/** The protocols `tsgi daemon` offers to other web servers. */
export const DAEMON_PROTOCOLS: readonly DaemonProtocol[] = ['uwsgi', 'scgi', 'fastcgi', 'http'];

/** 'fd': a socket already bound and listening, inherited (the Apache parent's, on fd 3). */
export type ListenAddress = { kind: 'unix'; path: string } | { kind: 'tcp'; host: string; port: number } | { kind: 'fd'; fd: number };

export interface DaemonOptions {
  script: string;
  listen: ListenAddress;
  protocol: DaemonProtocol;
  /** Worker processes. Default 1. */
  processes?: number;
  /** Concurrent requests per worker. Default 15 (as mod_wsgi). */
  threads?: number;
  /** Replace a worker after this many requests; 0 (default) for never. */
  maximumRequests?: number;
  /** Run workers as this user (name or uid), and own the Unix socket by it. Needs root. */
  user?: string;
  /** Run workers with this group (name or gid). Default: the user's primary group. */
  group?: string;
  /** Mode of a Unix socket. Default 0o600. */
  socketMode?: number;
  /** A request running longer is ended (504 over HTTP) and its worker replaced. Default 60 s; 0 for none. */
  requestTimeoutMs?: number;
  /** How long a draining worker may take before it is killed. Default 15 s. */
  gracefulTimeoutMs?: number;
  /** How long a new worker may take to load the script and listen. Default 30 s. */
  startupTimeoutMs?: number;
  /** Replace a worker idle this long; 0 (default) for never. */
  inactivityTimeoutMs?: number;
  callable?: string;
  mountPoint?: string;
  /** Reload the pool gracefully when the script's mtime changes. Default false. */
  reload?: boolean;
  log?: ErrorLog;
  /** The node executable and options for workers. Default: this process's. */
  nodePath?: string;
  nodeOptions?: string[];
  /** The workers' environment. Default: this process's. */
  env?: NodeJS.ProcessEnv;
  /** The worker entry point. Default: daemon-worker.js beside this file. */
  workerEntry?: string;
  /** 'tsgi': the group's shared secret (handed to workers over IPC, never argv or env). */
  secret?: Uint8Array;
  /** 'tsgi': the TSGIDaemonProcess name (status, log tags). */
  processGroup?: string;
  /** 'tsgi': scripts every worker loads at start; one that fails is logged and gets 500s. */
  preload?: string[];
  /** 'tsgi': how long a request may wait for a free thread. Default 30 s. */
  queueTimeoutMs?: number;
  /** What tsgi.multiprocess says. Default: processes > 1. */
  multiprocess?: boolean;
  /** Workers log Apache-format entries on fd 2 at or above this level (Apache daemon mode). */
  workerLog?: { level: LogLevel; tag: string };
  /** The workers' process title. Default "tsgi-worker SCRIPT". */
  workerTitle?: string;
  /** Descriptors this process inherited that workers must close (they are not close-on-exec). */
  workerCloseFds?: number[];
}

export type WorkerState = 'starting' | 'ready' | 'draining';

export interface WorkerStatus {
  pid: number;
  state: WorkerState;
  /** Why it is being replaced, if it is. */
  retiring: string | null;
  requests: number;
  inflight: InFlight[];
  uptimeMs: number;
  /** From the worker's last heartbeat; 0 before the first. */
  rssBytes: number;
}

/** The STATUS reply and the status socket's answer (docs/protocol.md §5). */
export interface PoolStatusReport {
  group: string;
  pid: number;
  startedAt: string;
  threads: number;
  processes: {
    pid: number;
    state: WorkerState;
    requests: number;
    inflight: number;
    rssBytes: number;
    uptimeMs: number;
    running: InFlight[];
  }[];
}

/** The pool could not start (the script fails to load, the socket is in use ...). */
export class DaemonStartError extends Error {
  override readonly name = 'DaemonStartError';
  /** True when the start ended because a stop was asked for, not because something failed. */
  constructor(
    message: string,
    readonly stopped = false,
  ) {
    super(message);
  }
}

interface Worker {
  child: ChildProcess;
  pid: number;
  state: WorkerState;
  startedAt: number;
  readyAt: number;
  lastHeard: number;
  requests: number;
  inflight: InFlight[];
  rssBytes: number;
  retiring: string | null;
  drainDeadline: number;
  loadFailure: string | null;
}

type PoolEvent =
  | { kind: 'message'; worker: Worker; message: WorkerMessage }
  | { kind: 'exit'; worker: Worker; code: number | null; signal: NodeJS.Signals | null }
  | { kind: 'reload'; why: string }
  | { kind: 'stop'; why: string; fast?: boolean };

const TICK_MS = 250;
const CRASH_YOUNG_MS = 10_000;
const BACKOFF_FIRST_MS = 500;
const BACKOFF_MAX_MS = 30_000;

interface ServerHandle {
  close(cb?: () => void): void;
  getsockname?(out: Record<string, unknown>): number;
}

export class DaemonPool {
  readonly options: Required<Pick<DaemonOptions, 'processes' | 'threads' | 'maximumRequests' | 'socketMode' | 'requestTimeoutMs' | 'gracefulTimeoutMs' | 'startupTimeoutMs' | 'inactivityTimeoutMs' | 'callable' | 'mountPoint' | 'reload'>> & DaemonOptions;
  readonly log: ErrorLog;
  /** Where the pool listens, as `unix:PATH` or `tcp:HOST:PORT` (the real port when 0 was asked). */
  address = '';
  private listener: ServerHandle | null = null;
  private uid: number | undefined;
  private gid: number | undefined;
  private readonly workers = new Set<Worker>();
  private readonly events: PoolEvent[] = [];
  private wake: (() => void) | null = null;
  private phase: 'new' | 'starting' | 'running' | 'stopping' | 'stopped' = 'new';
  private startup: { resolve: () => void; reject: (e: Error) => void } | null = null;
  private failures = 0;
  private nextSpawnAt = 0;
  private stopDeadline = 0;
  private scriptMtime = 0;
  private lastMtimeCheck = 0;
  private spawned = 0;
  private readonly startedAt = new Date();
  private pendingReload: string | null = null;
  private done!: Promise<void>;
  private finish!: () => void;

  constructor(options: DaemonOptions) {
    this.options = {
      processes: 1,
      threads: 15,
      maximumRequests: 0,
      socketMode: 0o600,
      requestTimeoutMs: 60_000,
      gracefulTimeoutMs: 15_000,
      startupTimeoutMs: 30_000,
      inactivityTimeoutMs: 0,
      callable: 'application',
      mountPoint: '',
      reload: false,
      ...(stripUndefined(options) as DaemonOptions),
    };
    // '' with 'tsgi': no script of its own, each request names one.
    this.options.script = options.script === '' && options.protocol === 'tsgi' ? '' : path.resolve(options.script);
    if (options.protocol === 'tsgi' && !(options.secret instanceof Uint8Array && options.secret.length > 0)) {
      throw new DaemonStartError("protocol 'tsgi' needs the group's secret");
    }
    this.log = options.log ?? streamLog(process.stderr, 'tsgi-daemon');
    this.done = new Promise((r) => (this.finish = r));
  }

  // ---- the API ---------------------------------------------------------------------------

  /** Opens the socket and starts the workers; resolves once every worker is ready. Throws DaemonStartError. */
  async start(): Promise<void> {
    if (this.phase !== 'new') throw new Error('DaemonPool.start() called twice');
    this.phase = 'starting';
    try {
      this.resolveUser();
      await this.openSocket();
    } catch (err) {
      this.phase = 'stopped';
      this.finish();
      throw err instanceof DaemonStartError ? err : new DaemonStartError((err as Error).message);
    }
    this.scriptMtime = mtimeOf(this.options.script);
    const started = new Promise<void>((resolve, reject) => (this.startup = { resolve, reject }));
    void this.loop();
    await started;
  }

  /** Replaces every worker gracefully (SIGHUP): no accepted request is lost. */
  reload(why = 'reload requested'): void {
    this.push({ kind: 'reload', why });
  }

  /** Stops accepting, lets workers finish up to graceful-timeout, kills the rest. Resolves when all are gone. */
  stop(why = 'stop requested', fast = false): Promise<void> {
    this.push({ kind: 'stop', why, fast });
    return this.done;
  }

  /** Resolves when the pool has stopped. */
  get stopped(): Promise<void> {
    return this.done;
  }

  /** Workers spawned so far (for tests and status pages). */
  get spawnCount(): number {
    return this.spawned;
  }

  status(): WorkerStatus[] {
    const now = Date.now();
    return [...this.workers].map((w) => ({ pid: w.pid, state: w.state, retiring: w.retiring, requests: w.requests, inflight: w.inflight, uptimeMs: now - w.startedAt, rssBytes: w.rssBytes }));
  }

  /** The pool as docs/protocol.md §5 shows it (STATUS frames, the status socket, `tsgi status`). */
  statusReport(): PoolStatusReport {
    return {
      group: this.options.processGroup ?? '',
      pid: process.pid,
      startedAt: this.startedAt.toISOString(),
      threads: this.options.threads,
      processes: this.status().map((w) => ({
        pid: w.pid,
        state: w.state,
        requests: w.requests,
        inflight: w.inflight.length,
        rssBytes: w.rssBytes,
        uptimeMs: w.uptimeMs,
        running: w.inflight,
      })),
    };
  }

  // ---- the supervisor loop ---------------------------------------------------------------

  private push(event: PoolEvent): void {
    this.events.push(event);
    const w = this.wake;
    this.wake = null;
    w?.();
  }

  private nextEvent(): Promise<PoolEvent | null> {
    const e = this.events.shift();
    if (e) return Promise.resolve(e);
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.wake = null;
        resolve(null);
      }, TICK_MS);
      this.wake = () => {
        clearTimeout(timer);
        resolve(this.events.shift() ?? null);
      };
    });
  }

  private async loop(): Promise<void> {
    while (this.phase !== 'stopped') {
      const event = await this.nextEvent();
      if (event) this.handleEvent(event);
      this.killUnresponsive();
      this.watchScript();
      this.drainReplaced();
      this.killOverdueDrains();
      this.spawnMissing();
      this.finishIfStopped();
    }
  }

  private handleEvent(event: PoolEvent): void {
    switch (event.kind) {
      case 'message':
        return this.onMessage(event.worker, event.message);
      case 'exit':
        return this.onExit(event.worker, event.code, event.signal);
      case 'reload':
        // Asked while starting (a worker already serving saw its script change): once all are up.
        if (this.phase === 'starting') this.pendingReload ??= event.why;
        if (this.phase !== 'running') return;
        this.log.log('info', `graceful reload (${event.why}): replacing ${this.workers.size} worker(s)`);
        for (const w of this.workers) if (w.state !== 'draining') w.retiring ??= event.why;
        this.failures = 0;
        this.nextSpawnAt = 0;
        return;
      case 'stop':
        return this.beginStop(event.why, event.fast ?? false);
    }
  }

  private onMessage(w: Worker, m: WorkerMessage): void {
    w.lastHeard = Date.now();
    switch (m.t) {
      case 'ready':
        w.state = w.state === 'draining' ? 'draining' : 'ready';
        w.readyAt = Date.now();
        // Status must show a ready worker's memory at once, not after its first heartbeat.
        if (m.rssBytes !== undefined) w.rssBytes = m.rssBytes;
        this.log.log('info', `worker pid ${w.pid} ready`);
        if (this.phase === 'starting' && [...this.workers].every((x) => x.state === 'ready') && this.workers.size >= this.options.processes) {
          this.phase = 'running';
          this.startup?.resolve();
          this.startup = null;
          if (this.pendingReload !== null) this.handleEvent({ kind: 'reload', why: this.pendingReload });
          this.pendingReload = null;
        }
        return;
      case 'load-failed':
        w.loadFailure = m.message;
        return;
      case 'stats':
        w.requests = m.requests;
        w.inflight = m.inflight;
        if (m.rssBytes !== undefined) w.rssBytes = m.rssBytes;
        return;
      case 'status-request':
        send(w, { t: 'status', id: m.id, status: this.statusReport() });
        return;
      case 'recycle':
        // The first worker to notice triggers it; the others are being replaced already.
        if (w.state === 'draining' || w.retiring) return;
        this.handleEvent({ kind: 'reload', why: m.reason });
        return;
      case 'retire':
        if (w.state === 'draining' || w.retiring) return;
        w.retiring = m.reason;
        this.log.log('info', `worker pid ${w.pid} will be replaced (${m.reason}) once a new worker is ready`);
        return;
      case 'need-listener':
        if (w.state !== 'draining') this.sendListener(w);
        return;
    }
  }

  private onExit(w: Worker, code: number | null, signal: NodeJS.Signals | null): void {
    this.workers.delete(w);
    const how = signal ? `killed by signal ${signal}` : `exit code ${code}`;
    if (w.state === 'draining' && code === 0) {
      this.log.log('info', `worker pid ${w.pid} exited after draining (${w.requests} request(s) served)`);
      return;
    }
    const inflight = w.inflight.length ? `: ${w.inflight.map((r) => `"${r.what}" (${Math.round(r.ageMs / 100) / 10} s)`).join(', ')}` : '';
    const what = w.state === 'starting' ? 'failed to start' : w.state === 'draining' ? 'died while draining' : 'died';
    this.log.log('error', `worker pid ${w.pid} ${what} (${how}) with ${w.inflight.length} request(s) in flight${inflight}`);
    if (this.phase === 'starting') {
      const reason = w.loadFailure ? `the application failed to load: ${w.loadFailure}` : `a worker ${what} (${how})`;
      this.startup?.reject(new DaemonStartError(reason));
      this.startup = null;
      this.beginStop('start-up failed', true);
      return;
    }
    if (this.phase !== 'running') return;
    // Crash-loop damping: young deaths in a row back off exponentially; an old one resets.
    const young = w.readyAt === 0 || Date.now() - w.readyAt < CRASH_YOUNG_MS;
    this.failures = young ? this.failures + 1 : 1;
    const wait = this.failures <= 1 ? 0 : Math.min(BACKOFF_FIRST_MS * 2 ** (this.failures - 2), BACKOFF_MAX_MS);
    this.nextSpawnAt = Date.now() + wait;
    if (wait > 0) this.log.log('warn', `${this.failures} workers in a row died young; next spawn in ${wait} ms`);
  }

  /** A worker whose event loop stopped (a request stuck in a busy loop) cannot time itself out. */
  private killUnresponsive(): void {
    const now = Date.now();
    const silence = this.options.requestTimeoutMs > 0 ? Math.max(this.options.requestTimeoutMs, 5000) : 0;
    for (const w of this.workers) {
      if (w.state === 'starting' && now - w.startedAt > this.options.startupTimeoutMs) {
        this.log.log('error', `worker pid ${w.pid} not ready after startup-timeout (${this.options.startupTimeoutMs / 1000} s); killing it`);
        w.loadFailure ??= `not ready within the startup-timeout (${this.options.startupTimeoutMs / 1000} s)`;
        kill(w, 'SIGKILL');
        w.startedAt = Infinity;
      } else if (w.state !== 'starting' && silence > 0 && now - w.lastHeard > silence) {
        this.log.log('error', `worker pid ${w.pid} has not answered for ${Math.round((now - w.lastHeard) / 1000)} s (blocked; request-timeout); killing it`);
        kill(w, 'SIGKILL');
        w.lastHeard = Infinity;
      }
    }
  }

  private watchScript(): void {
    if (!this.options.reload || this.phase !== 'running' || Date.now() - this.lastMtimeCheck < 1000) return;
    this.lastMtimeCheck = Date.now();
    const m = mtimeOf(this.options.script);
    if (m !== this.scriptMtime) {
      this.scriptMtime = m;
      this.handleEvent({ kind: 'reload', why: `${this.options.script} changed` });
    }
  }

  /** Keeps `processes` workers accepting: a replaced worker drains only once a new one is ready. */
  private drainReplaced(): void {
    if (this.phase !== 'running') return;
    const accepting = [...this.workers].filter((w) => w.state === 'ready');
    const fresh = accepting.filter((w) => !w.retiring).length;
    const replaced = accepting.filter((w) => w.retiring);
    let allowed = accepting.length - this.options.processes;
    if (fresh >= this.options.processes) allowed = replaced.length;
    for (const w of replaced) {
      if (allowed-- <= 0) break;
      this.drain(w, w.retiring ?? 'replaced');
    }
  }

  private drain(w: Worker, why: string): void {
    if (w.state === 'draining') return;
    if (w.state === 'starting') {
      kill(w, 'SIGKILL');
      w.state = 'draining';
      return;
    }
    this.log.log('info', `worker pid ${w.pid}: drain (${why}), ${w.inflight.length} request(s) in flight`);
    w.state = 'draining';
    w.drainDeadline = Date.now() + this.options.gracefulTimeoutMs;
    send(w, { t: 'drain' });
  }

  private killOverdueDrains(): void {
    const now = Date.now();
    for (const w of this.workers) {
      if (w.state === 'draining' && w.drainDeadline && now > w.drainDeadline) {
        this.log.log('warn', `worker pid ${w.pid} still busy after graceful-timeout (${this.options.gracefulTimeoutMs / 1000} s) with ${w.inflight.length} request(s); killing it`);
        kill(w, 'SIGKILL');
        w.drainDeadline = Infinity;
      }
    }
  }

  private spawnMissing(): void {
    if (this.phase === 'stopping' || this.phase === 'stopped') return;
    const serving = [...this.workers].filter((w) => w.state !== 'draining' && !w.retiring).length;
    let missing = this.options.processes - serving;
    if (missing <= 0) return;
    // During start-up each worker is spawned once: a failure ends the start.
    if (this.phase === 'starting') {
      if (this.spawned >= this.options.processes) return;
    } else if (Date.now() < this.nextSpawnAt) {
      return;
    } else if (this.failures > 1) {
      missing = 1; // while crashing, one at a time
    }
    while (missing-- > 0) this.spawn();
  }

  private spawn(): void {
    const config: WorkerConfig = {
      script: this.options.script,
      callable: this.options.callable,
      mountPoint: this.options.mountPoint,
      protocol: this.options.protocol,
      threads: this.options.threads,
      maximumRequests: this.options.maximumRequests,
      requestTimeoutMs: this.options.requestTimeoutMs,
      inactivityTimeoutMs: this.options.inactivityTimeoutMs,
      gracefulTimeoutMs: this.options.gracefulTimeoutMs,
      multiprocess: this.options.multiprocess ?? this.options.processes > 1,
      uid: this.uid,
      gid: this.gid,
      queueTimeoutMs: this.options.queueTimeoutMs,
      preload: this.options.preload,
      apacheLog: this.options.workerLog,
      title: this.options.workerTitle,
      closeFds: this.options.workerCloseFds,
    };
    const child = fork(this.options.workerEntry ?? path.join(__dirname, 'daemon-worker.js'), [JSON.stringify(config)], {
      execPath: this.options.nodePath ?? process.execPath,
      execArgv: this.options.nodeOptions ?? [],
      env: this.options.env ?? process.env,
      stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
    });
    const now = Date.now();
    const w: Worker = { child, pid: child.pid ?? 0, state: 'starting', startedAt: now, readyAt: 0, lastHeard: now, requests: 0, inflight: [], rssBytes: 0, retiring: null, drainDeadline: 0, loadFailure: null };
    this.spawned++;
    this.workers.add(w);
    this.log.log('info', `spawned worker pid ${w.pid}`);
    child.on('message', (message: WorkerMessage) => this.push({ kind: 'message', worker: w, message }));
    child.on('exit', (code, signal) => this.push({ kind: 'exit', worker: w, code, signal }));
    child.on('error', (err) => this.log.log('error', `worker pid ${w.pid}: ${err.message}`));
    // Before the socket: a 'tsgi' worker cannot serve without it. IPC keeps the order.
    if (this.options.secret) send(w, { t: 'secret', secret: Buffer.from(this.options.secret).toString('base64') });
    this.sendListener(w);
  }

  private sendListener(w: Worker): void {
    if (!this.listener || !w.child.connected) return;
    (w.child.send as (m: MasterMessage, h: unknown, cb: (e: Error | null) => void) => boolean)({ t: 'listen' }, this.listener, () => undefined);
  }

  private beginStop(why: string, fast: boolean): void {
    if (this.phase === 'stopped') return;
    if (this.phase === 'stopping') {
      if (fast) for (const w of this.workers) kill(w, 'SIGKILL');
      return;
    }
    // A stop asked for before every worker was ready ends the start too: start() must
    // settle, or whoever awaits it (the --apache entry) would never reach its exit.
    if (this.phase === 'starting' && this.startup) {
      this.startup.reject(new DaemonStartError(`stopped before the pool was ready (${why})`, true));
      this.startup = null;
    }
    this.phase = 'stopping';
    this.log.log('info', `stopping (${why}): ${this.workers.size} worker(s) finish what they accepted, for up to ${this.options.gracefulTimeoutMs / 1000} s`);
    this.closeSocket();
    for (const w of this.workers) {
      if (fast || w.state === 'starting') kill(w, 'SIGKILL');
      else this.drain(w, why);
    }
    this.stopDeadline = Date.now() + this.options.gracefulTimeoutMs;
  }

  private finishIfStopped(): void {
    if (this.phase !== 'stopping') return;
    if (this.workers.size > 0) {
      if (Date.now() > this.stopDeadline + 2000) for (const w of this.workers) kill(w, 'SIGKILL');
      return;
    }
    if (this.options.listen.kind === 'unix') fs.rmSync(this.options.listen.path, { force: true });
    this.phase = 'stopped';
    this.log.log('info', 'stopped');
    this.finish();
  }

  // ---- the socket and the user ---------------------------------------------------------------

  private resolveUser(): void {
    const { user, group } = this.options;
    if (user === undefined && group === undefined) return;
    const pw = user !== undefined ? lookupUser(user) : null;
    if (user !== undefined && !pw) throw new DaemonStartError(`--user: no such user ${JSON.stringify(user)}`);
    const gid = group !== undefined ? lookupGroup(group) : pw?.gid;
    if (gid === undefined || gid === null) throw new DaemonStartError(`--group: no such group ${JSON.stringify(group)}`);
    const uid = pw?.uid ?? process.getuid?.() ?? 0;
    const root = process.getuid?.() === 0;
    if (!root && (uid !== process.getuid?.() || gid !== process.getgid?.())) {
      throw new DaemonStartError('--user/--group: switching user needs root');
    }
    if (root) {
      this.uid = uid;
      this.gid = gid;
    }
  }

  private async openSocket(): Promise<void> {
    const l = this.options.listen;
    if (l.kind === 'fd') {
      this.listener = inheritedListener(l.fd);
      this.address = `fd:${l.fd}`;
      return;
    }
    const createServerHandle = (net as unknown as { _createServerHandle(a: string | null, p: number, t: number, fd?: number, flags?: number): ServerHandle | number })._createServerHandle;
    let h: ServerHandle | number;
    if (l.kind === 'unix') {
      const p = path.resolve(l.path);
      await removeStaleSocket(p);
      const old = process.umask(0o177);
      try {
        h = createServerHandle(p, -1, -1);
      } finally {
        process.umask(old);
      }
      if (typeof h === 'number') throw new DaemonStartError(`cannot listen on unix:${p}: ${getSystemErrorName(h)}`);
      fs.chmodSync(p, this.options.socketMode);
      if (this.uid !== undefined && this.gid !== undefined) fs.chownSync(p, this.uid, this.gid);
      this.address = `unix:${p}`;
    } else {
      let ip: { address: string; family: number };
      try {
        ip = await dns.promises.lookup(l.host);
      } catch (err) {
        throw new DaemonStartError(`cannot resolve ${l.host}: ${(err as Error).message}`);
      }
      h = createServerHandle(ip.address, l.port, ip.family);
      if (typeof h === 'number') throw new DaemonStartError(`cannot listen on tcp:${l.host}:${l.port}: ${getSystemErrorName(h)}`);
      const out: Record<string, unknown> = {};
      h.getsockname?.(out);
      const host = ip.family === 6 ? `[${ip.address}]` : ip.address;
      this.address = `tcp:${host}:${(out.port as number | undefined) ?? l.port}`;
    }
    this.listener = h;
  }

  private closeSocket(): void {
    try {
      this.listener?.close();
    } catch {
      // already closed
    }
    this.listener = null;
  }
}

/** The handle of a socket someone else bound and made listen (the Apache parent's fd 3). */
function inheritedListener(fd: number): ServerHandle {
  let st: fs.Stats;
  try {
    st = fs.fstatSync(fd);
  } catch (err) {
    throw new DaemonStartError(`cannot listen on fd ${fd}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message} (the listening socket should be inherited there)`);
  }
  if (!st.isSocket()) throw new DaemonStartError(`cannot listen on fd ${fd}: it is not a socket (the listening socket should be inherited there)`);
  const createServerHandle = (net as unknown as { _createServerHandle(a: string | null, p: number, t: number, fd?: number, flags?: number): ServerHandle | number })._createServerHandle;
  let h: ServerHandle | number;
  try {
    h = createServerHandle(null, 0, -1, fd);
  } catch (err) {
    throw new DaemonStartError(`cannot listen on fd ${fd}: ${(err as Error).message}`);
  }
  if (typeof h === 'number') throw new DaemonStartError(`cannot listen on fd ${fd}: ${getSystemErrorName(h)}`);
  return h;
}

/** A Unix socket path left by a daemon that died is removed; one something listens on is an error. */
async function removeStaleSocket(p: string): Promise<void> {
  let st: fs.Stats;
  try {
    st = fs.lstatSync(p);
  } catch {
    return;
  }
  if (!st.isSocket()) throw new DaemonStartError(`cannot listen on unix:${p}: it exists and is not a socket`);
  const live = await new Promise<boolean>((resolve) => {
    const s = net.connect(p);
    s.once('connect', () => {
      s.destroy();
      resolve(true);
    });
    s.once('error', () => resolve(false));
  });
  if (live) throw new DaemonStartError(`cannot listen on unix:${p}: another process is listening on it`);
  fs.unlinkSync(p);
}

function lookupUser(name: string): { uid: number; gid: number } | null {
  for (const line of readLines('/etc/passwd')) {
    const f = line.split(':');
    if (f.length >= 4 && (f[0] === name || (/^\d+$/.test(name) && f[2] === name))) return { uid: Number(f[2]), gid: Number(f[3]) };
  }
  return /^\d+$/.test(name) ? { uid: Number(name), gid: Number(name) } : null;
}

function lookupGroup(name: string): number | null {
  for (const line of readLines('/etc/group')) {
    const f = line.split(':');
    if (f.length >= 3 && (f[0] === name || f[2] === name)) return Number(f[2]);
  }
  return /^\d+$/.test(name) ? Number(name) : null;
}

function readLines(file: string): string[] {
  try {
    return fs.readFileSync(file, 'utf8').split('\n');
  } catch {
    return [];
  }
}

function mtimeOf(file: string): number {
  try {
    return fs.statSync(file).mtimeMs;
  } catch {
    return 0;
  }
}

function kill(w: Worker, signal: NodeJS.Signals): void {
  try {
    w.child.kill(signal);
  } catch {
    // gone already
  }
}

function send(w: Worker, m: MasterMessage): void {
  if (w.child.connected) w.child.send(m, () => undefined);
}

function stripUndefined<T extends object>(o: T): Partial<T> {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as Partial<T>;
}

/** `unix:PATH` or `tcp:HOST:PORT` (HOST may be `[v6]`). Throws with a message naming --listen. */
export function parseListen(spec: string): ListenAddress {
  if (spec.startsWith('unix:')) {
    const p = spec.slice(5);
    if (!p) throw new Error('--listen unix:PATH needs a path');
    return { kind: 'unix', path: path.resolve(p) };
  }
  const m = /^tcp:(\[[0-9A-Fa-f:.]+\]|[^:[\]]+):(\d{1,5})$/.exec(spec);
  if (m && Number(m[2]) <= 65535) return { kind: 'tcp', host: m[1].replace(/^\[|\]$/g, ''), port: Number(m[2]) };
  throw new Error(`--listen must be unix:PATH or tcp:HOST:PORT, got ${JSON.stringify(spec)}`);
}

/**
 * Starts the pool. Null once it is running; otherwise, after it has stopped, the exit code:
 * 0 when a stop was asked for during the start, 1 (logged) when the start failed.
 */
async function startOrExplain(pool: DaemonPool, log: ErrorLog): Promise<number | null> {
  try {
    await pool.start();
    return null;
  } catch (err) {
    await pool.stopped;
    if (err instanceof DaemonStartError && err.stopped) return 0;
    log.log('error', `cannot start: ${(err as Error).message}`);
    return 1;
  }
}

/**
 * Runs a pool in the foreground until SIGTERM/SIGINT (graceful stop; a second one stops
 * at once); SIGHUP reloads gracefully. Returns the exit code.
 */
export async function runDaemon(options: DaemonOptions): Promise<number> {
  const pool = new DaemonPool(options);
  const log = pool.log;
  const onHup = () => pool.reload('SIGHUP');
  let stops = 0;
  const onStop = (sig: string) => () => void pool.stop(sig, ++stops > 1);
  const onTerm = onStop('SIGTERM');
  const onInt = onStop('SIGINT');
  process.on('SIGHUP', onHup);
  process.on('SIGTERM', onTerm);
  process.on('SIGINT', onInt);
  try {
    const started = await startOrExplain(pool, log);
    if (started !== null) return started;
    const o = pool.options;
    log.log('info', `ready: ${o.processes} worker(s) x ${o.threads} thread(s) serving ${o.protocol} on ${pool.address} for ${o.script}`);
    await pool.stopped;
    return 0;
  } finally {
    process.off('SIGHUP', onHup);
    process.off('SIGTERM', onTerm);
    process.off('SIGINT', onInt);
  }
}

// ---- Apache daemon mode: what the Apache parent execs ---------------------------------------
//
// The launch contract (docs/daemon.md, "Apache daemon mode"): `node [node-options]
// dist/daemon-mode.js --apache` with fd 3 the group's listening socket, fd 4 a pipe with
// one JSON config object, fd 5 the status socket, fds 1 and 2 the defining server's error
// log. Everything below is the work; the entry at the end only calls it.

export const APACHE_LISTEN_FD = 3;
export const APACHE_CONFIG_FD = 4;
export const APACHE_STATUS_FD = 5;

/** The launch config, as parsed and checked. Durations in ms. */
export interface ApacheDaemonConfig {
  group: string;
  secret: Uint8Array;
  processes: number;
  processesGiven: boolean;
  threads: number;
  maximumRequests: number;
  inactivityTimeoutMs: number;
  requestTimeoutMs: number;
  gracefulTimeoutMs: number;
  startupTimeoutMs: number;
  queueTimeoutMs: number;
  displayName: string;
  preload: string[];
  logLevel: LogLevel;
  replaces: number;
  startDelayMs: number;
  parentPid: number;
}

const CONFIG_KEYS = new Set([
  'group', 'secret', 'processes', 'processesGiven', 'threads', 'maximumRequests', 'inactivityTimeoutMs', 'requestTimeoutMs',
  'gracefulTimeoutMs', 'startupTimeoutMs', 'queueTimeoutMs', 'displayName', 'preload', 'logLevel', 'replaces', 'startDelayMs', 'parentPid',
]);

/**
 * Parses the launch config. Throws an Error naming `where` and the field for anything
 * malformed; keys it does not know are returned as warnings (a newer Apache side may add
 * some), not refused.
 */
export function parseApacheConfig(text: string, where = `the launch config (fd ${APACHE_CONFIG_FD})`): { config: ApacheDaemonConfig; warnings: string[] } {
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (err) {
    throw new Error(`${where}: not JSON: ${(err as Error).message}${text.trim() === '' ? ' (it is empty)' : ''}`);
  }
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) throw new Error(`${where}: must be a JSON object`);
  const o = raw as Record<string, unknown>;
  const bad = (key: string, what: string) => new Error(`${where}: "${key}" must be ${what}, got ${JSON.stringify(o[key])}`);
  const int = (key: string, min: number, fallback?: number): number => {
    const v = o[key];
    if (v === undefined && fallback !== undefined) return fallback;
    if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < min) throw bad(key, `an integer >= ${min}`);
    return v;
  };
  if (typeof o.group !== 'string' || o.group === '' || /[\0\n]/.test(o.group)) throw bad('group', 'a non-empty name');
  const group = o.group;
  if (typeof o.secret !== 'string' || !/^[A-Za-z0-9+/]+={0,2}$/.test(o.secret)) throw bad('secret', 'base64 text');
  const secret = new Uint8Array(Buffer.from(o.secret, 'base64'));
  if (secret.length !== 32) throw new Error(`${where}: "secret" must decode to 32 bytes, got ${secret.length}`);
  if (o.processesGiven !== undefined && typeof o.processesGiven !== 'boolean') throw bad('processesGiven', 'true or false');
  if (o.displayName !== undefined && (typeof o.displayName !== 'string' || o.displayName === '')) throw bad('displayName', 'a non-empty string');
  const preload = o.preload ?? [];
  if (!Array.isArray(preload) || preload.some((p) => typeof p !== 'string' || !path.isAbsolute(p))) throw bad('preload', 'an array of absolute paths');
  let logLevel: LogLevel;
  try {
    logLevel = parseLogLevel(o.logLevel ?? 'warn', `${where}: "logLevel"`);
  } catch (err) {
    throw new Error((err as Error).message);
  }
  const config: ApacheDaemonConfig = {
    group,
    secret,
    processes: int('processes', 1, 1),
    processesGiven: (o.processesGiven as boolean | undefined) ?? false,
    threads: int('threads', 1, 15),
    maximumRequests: int('maximumRequests', 0, 0),
    inactivityTimeoutMs: int('inactivityTimeoutMs', 0, 0),
    requestTimeoutMs: int('requestTimeoutMs', 0, 60_000),
    gracefulTimeoutMs: int('gracefulTimeoutMs', 0, 15_000),
    startupTimeoutMs: int('startupTimeoutMs', 1, 30_000),
    queueTimeoutMs: int('queueTimeoutMs', 0, 30_000),
    displayName: (o.displayName as string | undefined) ?? `tsgi-daemon (${group})`,
    preload: preload as string[],
    logLevel,
    replaces: int('replaces', 0, 0),
    startDelayMs: int('startDelayMs', 0, 0),
    parentPid: int('parentPid', 0, 0),
  };
  const warnings = Object.keys(o)
    .filter((k) => !CONFIG_KEYS.has(k))
    .map((k) => `${where}: unknown key "${k}" ignored`);
  return { config, warnings };
}

/** The pool options a launch config asks for. */
export function apachePoolOptions(config: ApacheDaemonConfig, log: ErrorLog): DaemonOptions {
  return {
    script: '',
    listen: { kind: 'fd', fd: APACHE_LISTEN_FD },
    protocol: 'tsgi',
    secret: config.secret,
    processGroup: config.group,
    processes: config.processes,
    threads: config.threads,
    maximumRequests: config.maximumRequests,
    inactivityTimeoutMs: config.inactivityTimeoutMs,
    requestTimeoutMs: config.requestTimeoutMs,
    gracefulTimeoutMs: config.gracefulTimeoutMs,
    startupTimeoutMs: config.startupTimeoutMs,
    queueTimeoutMs: config.queueTimeoutMs,
    preload: config.preload,
    // As mod_wsgi: writing processes= at all makes the app multiprocess.
    multiprocess: config.processesGiven || config.processes > 1,
    log,
    workerLog: { level: config.logLevel, tag: apacheLogTag(config.group) },
    workerTitle: `${config.displayName} worker`,
    // The status socket is not close-on-exec here; a worker holding it would keep it
    // "listening" after the supervisor is gone, and `tsgi status` would hang on it.
    workerCloseFds: [APACHE_STATUS_FD],
    nodePath: process.execPath,
    nodeOptions: process.execArgv,
    env: process.env,
  };
}

function apacheLogTag(group: string): string {
  return `daemon ${group}: `;
}

/** Reads fd `fd` to its end and closes it. */
function readConfigFd(fd: number): string {
  try {
    return fs.readFileSync(fd, 'utf8');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code ?? (err as Error).message;
    throw new Error(`cannot read the launch config from fd ${fd}: ${code} (daemon-mode.js --apache is started by mod_tsgi's Apache parent)`);
  } finally {
    try {
      fs.closeSync(fd);
    } catch {
      // not open
    }
  }
}

/** The status socket: each connection gets the pool's status JSON, then is closed. */
function serveStatus(fd: number, pool: DaemonPool, log: ErrorLog): net.Server {
  const server = net.createServer((sock) => {
    sock.on('error', () => undefined);
    sock.end(JSON.stringify(pool.statusReport()) + '\n');
  });
  server.on('error', (err) => log.log('warn', `status socket (fd ${fd}): ${err.message}; \`tsgi status\` will not see this group`));
  server.listen({ fd });
  return server;
}

/** Once the new pool is ready, the previous generation's supervisor drains and goes. */
function retirePrevious(pid: number, log: ErrorLog): void {
  if (pid <= 0 || pid === process.pid) return;
  try {
    process.kill(pid, 'SIGTERM');
    log.log('info', `ready; sent SIGTERM to the previous supervisor, pid ${pid}`);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ESRCH') return;
    log.log('error', `cannot stop the previous supervisor pid ${pid}: ${code ?? (err as Error).message}`);
  }
}

/**
 * Runs one group's supervisor as the Apache parent launched it, until a signal or the
 * parent's death stops it. Returns the exit code: 0 after a clean stop, 1 when the pool
 * could not start, 2 for a bad launch.
 */
export async function runApacheDaemon(): Promise<number> {
  let log = apacheFormatLog({ level: 'warn', tag: 'daemon: ' });
  let config: ApacheDaemonConfig;
  try {
    const parsed = parseApacheConfig(readConfigFd(APACHE_CONFIG_FD));
    config = parsed.config;
    log = apacheFormatLog({ level: config.logLevel, tag: apacheLogTag(config.group) });
    for (const w of parsed.warnings) log.log('warn', w);
  } catch (err) {
    log.log('error', (err as Error).message);
    return 2;
  }
  if (config.startDelayMs > 0) {
    log.log('info', `waiting ${config.startDelayMs} ms before starting (the previous start failed)`);
    await new Promise((r) => setTimeout(r, config.startDelayMs));
  }
  process.title = config.displayName;
  // Node's own warnings and anything else written to stdio become log entries too.
  redirectStdio(log);
  process.on('uncaughtException', (err) => {
    log.log('error', `supervisor failure: ${err?.stack ?? String(err)}`);
    process.exit(70);
  });

  let pool: DaemonPool;
  try {
    pool = new DaemonPool(apachePoolOptions(config, log));
  } catch (err) {
    log.log('error', `cannot start: ${(err as Error).message}`);
    return 2;
  }
  let stops = 0;
  const stop = (why: string) => void pool.stop(why, ++stops > 1);
  const onTerm = () => stop('SIGTERM');
  const onInt = () => stop('SIGINT');
  const onHup = () => pool.reload('SIGHUP');
  process.on('SIGTERM', onTerm);
  process.on('SIGINT', onInt);
  process.on('SIGHUP', onHup);
  // The Apache parent killed hard leaves us to init: nobody would ever stop us.
  const parentWatch = setInterval(() => {
    if (config.parentPid > 0 && process.ppid !== config.parentPid && stops === 0) {
      log.log('warn', `the Apache parent (pid ${config.parentPid}) is gone; stopping`);
      stop('the Apache parent is gone');
    }
  }, PARENT_POLL_MS);
  const status = serveStatus(APACHE_STATUS_FD, pool, log);
  try {
    const started = await startOrExplain(pool, log);
    if (started !== null) return started;
    log.log('info', `ready: ${config.processes} process(es) x ${config.threads} thread(s) on fd ${APACHE_LISTEN_FD}`);
    retirePrevious(config.replaces, log);
    await pool.stopped;
    return 0;
  } finally {
    clearInterval(parentWatch);
    status.close();
    process.off('SIGTERM', onTerm);
    process.off('SIGINT', onInt);
    process.off('SIGHUP', onHup);
  }
}

const PARENT_POLL_MS = 1000;

if (require.main === module) {
  if (process.argv[2] === '--apache' && process.argv.length === 3) {
    void runApacheDaemon().then((code) => process.exit(code));
  } else {
    process.stderr.write('usage: node daemon-mode.js --apache   (started by mod_tsgi\'s Apache parent; see docs/daemon.md)\n');
    process.exitCode = 2;
  }
}
