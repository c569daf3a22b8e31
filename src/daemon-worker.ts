/**
 * One worker of the daemon pool (src/daemon-mode.ts forks this file). It:
 *   1. drops privileges (when the master was told --user/--group), then loads the script;
 *   2. accepts on the listening socket the master hands over IPC, speaking one protocol;
 *   3. runs at most `threads` requests at once: at the limit it closes its copy of the
 *      socket (new connections wait in the kernel's backlog for a free worker) and asks
 *      the master for it again when a request finishes;
 *   4. reports readiness, request counts and in-flight requests to the master, and asks
 *      to be replaced after maximum-requests, a request-timeout or inactivity-timeout;
 *   5. on "drain" stops accepting, finishes what it accepted, and exits 0.
 * The master decides when a worker is replaced; a worker never stops taking work on its own.
 *
 * With protocol 'tsgi' (mod_tsgi's Apache daemon mode, docs/protocol.md) a worker serves
 * any script a request names (one ScriptLoader each, src/gateway/providers.ts), preloads
 * the group's scripts, gets the group's secret over IPC (never argv or the environment),
 * logs in Apache's error-log format with the application's console output as entries, and
 * answers STATUS frames for the whole pool by asking the master. A script that fails to
 * load is logged and answered with 500 per request; the worker keeps serving the others.
 * A RELOAD request that finds its script changed runs the new code and asks the master to
 * recycle the pool.
 */
import * as fs from 'node:fs';
import * as net from 'node:net';
import type { Server as HttpServer } from 'node:http';
import { apacheFormatLog, redirectStdio } from './gateway/apache-log';
import { streamLog, type ErrorLog, type LogLevel } from './gateway/log';
import { Providers } from './gateway/providers';
import { ScriptLoader } from './loader';
import { createHttpServer } from './transports/http-server';
import { createStreamServer } from './transports/stream-server';
import { createFastCgiServer } from './transports/fastcgi-server';
import { createWireServer, type WireServer } from './transports/wire-server';
import type { RequestMonitor } from './transports/monitor';

/** What the master passes in argv[2], as JSON (nothing secret: argv is world-readable). */
export interface WorkerConfig {
  /** The script ('' with protocol 'tsgi': each request names its own). */
  script: string;
  callable: string;
  mountPoint: string;
  protocol: 'http' | 'scgi' | 'uwsgi' | 'fastcgi' | 'tsgi';
  threads: number;
  /** 0: no limit. */
  maximumRequests: number;
  /** 0: none. */
  requestTimeoutMs: number;
  /** 0: none. */
  inactivityTimeoutMs: number;
  gracefulTimeoutMs: number;
  multiprocess: boolean;
  uid?: number;
  gid?: number;
  /** 'tsgi': how long a request may wait for a free thread. */
  queueTimeoutMs?: number;
  /** 'tsgi': scripts to load at start (failures are logged, not fatal). */
  preload?: string[];
  /** Apache-format entries on fd 2 at or above `level` (Apache daemon mode); default plain stderr lines. */
  apacheLog?: { level: LogLevel; tag: string };
  /** The process title. */
  title?: string;
  /** Descriptors the master inherited without close-on-exec (its status socket): not ours to hold. */
  closeFds?: number[];
}

/** Worker → master. */
export type WorkerMessage =
  | { t: 'ready'; rssBytes?: number }
  | { t: 'load-failed'; message: string }
  | { t: 'stats'; requests: number; inflight: InFlight[]; rssBytes?: number }
  | { t: 'retire'; reason: string }
  | { t: 'need-listener' }
  /** A STATUS frame arrived: the master answers with the pool's status (same id). */
  | { t: 'status-request'; id: number }
  /** A script changed on disk: replace every worker of the pool, draining. */
  | { t: 'recycle'; reason: string };

/**
 * Master → worker (a 'listen' message carries the socket handle). 'secret' (base64) comes
 * first, before any 'listen', with protocol 'tsgi'.
 */
export type MasterMessage = { t: 'listen' } | { t: 'drain' } | { t: 'secret'; secret: string } | { t: 'status'; id: number; status: unknown };

export interface InFlight {
  what: string;
  ageMs: number;
}

const HEARTBEAT_MS = 1000;
/** How long a STATUS frame waits for the master before answering for this worker alone. */
const STATUS_WAIT_MS = 2000;
const STATS_THROTTLE_MS = 50;

function main(): void {
  const config = JSON.parse(process.argv[2] ?? '{}') as WorkerConfig;
  const apache = config.apacheLog;
  const log: ErrorLog = apache ? apacheFormatLog({ level: apache.level, tag: apache.tag }) : streamLog(process.stderr, 'tsgi-worker');
  const send = (m: WorkerMessage, then?: () => void) => {
    if (!process.connected || !process.send) return then?.();
    process.send(m, undefined, {}, () => then?.());
  };
  process.title = config.title ?? `tsgi-worker ${config.script}`;
  for (const fd of config.closeFds ?? []) closeInheritedSocket(fd);
  if (apache) {
    redirectStdio(log);
    keepServingOnUncaught(log);
  }

  if (config.uid !== undefined && config.gid !== undefined) {
    try {
      process.setgroups?.([config.gid]);
      process.setgid?.(config.gid);
      process.setuid?.(config.uid);
    } catch (err) {
      const message = `cannot switch to uid ${config.uid} / gid ${config.gid}: ${(err as Error).message}`;
      log.log('error', message);
      send({ t: 'load-failed', message }, () => process.exit(3));
      return;
    }
  }

  // One fixed script (tsgi daemon), or whatever script each request names ('tsgi').
  let loader: ScriptLoader | null = null;
  let providers: Providers | null = null;
  if (config.protocol === 'tsgi') {
    providers = new Providers({
      log,
      onReload: (script) => {
        log.log('info', `${script} changed on disk: this request runs the new code; asking for the pool to be recycled`);
        send({ t: 'recycle', reason: `${script} changed` });
      },
    });
    for (const script of config.preload ?? []) preload(providers, script, log);
  } else {
    loader = new ScriptLoader(config.script, { callable: config.callable, reload: false, log });
    try {
      loader.load();
    } catch (err) {
      const message = (err as Error).message;
      log.log('error', `cannot load the application: ${message}`);
      send({ t: 'load-failed', message }, () => process.exit(3));
      return;
    }
  }

  // ---- requests: counted, timed, limited -------------------------------------------------
  let requests = 0;
  let nextId = 0;
  const active = new Map<number, { what: string; started: number; timer: NodeJS.Timeout | null }>();
  let lastActivity = Date.now();
  let retired = false;
  let draining = false;
  const retire = (reason: string) => {
    if (retired || draining) return;
    retired = true;
    send({ t: 'retire', reason });
  };

  let statsTimer: NodeJS.Timeout | null = null;
  const sendStats = () => {
    statsTimer = null;
    const now = Date.now();
    const inflight = [...active.values()].slice(0, 20).map((r) => ({ what: r.what, ageMs: now - r.started }));
    send({ t: 'stats', requests, inflight, rssBytes: process.memoryUsage.rss() });
  };
  const statsChanged = () => {
    statsTimer ??= setTimeout(sendStats, STATS_THROTTLE_MS);
  };

  const monitor: RequestMonitor = {
    begin(what, expire) {
      const id = ++nextId;
      requests++;
      lastActivity = Date.now();
      const timer =
        config.requestTimeoutMs > 0
          ? setTimeout(() => {
              log.log('error', `request-timeout: "${what}" has run for ${config.requestTimeoutMs / 1000} s; ending it and asking to be replaced`);
              expire();
              retire('request-timeout');
            }, config.requestTimeoutMs)
          : null;
      active.set(id, { what, started: lastActivity, timer });
      if (config.maximumRequests > 0 && requests >= config.maximumRequests) retire('maximum-requests');
      statsChanged();
      limitAccepting();
      let finished = false;
      return () => {
        if (finished) return;
        finished = true;
        const r = active.get(id);
        if (r?.timer) clearTimeout(r.timer);
        active.delete(id);
        lastActivity = Date.now();
        statsChanged();
        limitAccepting();
      };
    },
  };

  // ---- STATUS frames: the master knows the whole pool --------------------------------------
  const statusWaiters = new Map<number, (status: unknown) => void>();
  let statusIds = 0;
  const ownStatus = () => ({
    pid: process.pid,
    processes: [{ pid: process.pid, state: draining ? 'draining' : 'ready', requests, inflight: active.size, rssBytes: process.memoryUsage.rss(), uptimeMs: Math.round(process.uptime() * 1000) }],
  });
  const poolStatus = () =>
    new Promise<unknown>((resolve) => {
      if (!process.connected) return resolve(ownStatus());
      const id = ++statusIds;
      const timer = setTimeout(() => {
        statusWaiters.delete(id);
        resolve(ownStatus());
      }, STATUS_WAIT_MS);
      statusWaiters.set(id, (status) => {
        clearTimeout(timer);
        statusWaiters.delete(id);
        resolve(status);
      });
      send({ t: 'status-request', id });
    });

  const makeServer = (secret: Uint8Array | null): net.Server => {
    let server: net.Server;
    if (config.protocol === 'tsgi') {
      const p = providers as Providers;
      server = createWireServer({
        secret: secret as Uint8Array,
        providers: (script, callable, applicationGroup, reload) => p.get(applicationGroup, script, callable, reload),
        log,
        context: { multithread: config.threads > 1, multiprocess: config.multiprocess },
        threads: config.threads,
        queueTimeoutMs: config.queueTimeoutMs ?? 30_000,
        monitor,
        status: poolStatus,
      });
    } else {
      const provider = loader as ScriptLoader;
      server =
        config.protocol === 'http'
          ? createHttpServer({ provider, log, mountPoint: config.mountPoint, monitor, multiprocess: config.multiprocess })
          : config.protocol === 'fastcgi'
            ? createFastCgiServer({ provider, log, environ: { mountPoint: config.mountPoint || undefined }, multiprocess: config.multiprocess, monitor })
            : createStreamServer({
                protocol: config.protocol,
                provider,
                log,
                // '' means "not given": keep the web server's SCRIPT_NAME (an empty mount point
                // would re-split the path as if mounted at /).
                mountPoint: config.mountPoint || undefined,
                monitor,
                context: { multithread: config.threads > 1, multiprocess: config.multiprocess },
              });
    }
    server.on('error', (err) => log.log('error', `listener error: ${err.message}`));
    return server;
  };
  // 'tsgi' waits for the secret (the master's first message) before it can serve.
  let server: net.Server | null = config.protocol === 'tsgi' ? null : makeServer(null);
  let pendingHandle: unknown = null;

  // ---- accepting: the shared socket, held only while there is room -------------------------
  let listening = false;
  let asked = false;
  let readySent = false;
  const stopListening = () => {
    if (!listening || !server) return;
    listening = false;
    netClose(server);
  };
  function limitAccepting(): void {
    if (draining) return;
    if (active.size >= config.threads) stopListening();
    else if (!listening && !asked && readySent) {
      asked = true;
      send({ t: 'need-listener' });
    }
  }
  const onHandle = (handle: unknown) => {
    asked = false;
    if (!server) {
      closeHandle(pendingHandle);
      pendingHandle = handle;
      return;
    }
    if (listening || draining || (readySent && active.size >= config.threads)) {
      closeHandle(handle);
      if (!draining) limitAccepting();
      return;
    }
    listening = true;
    server.listen(handle as net.ListenOptions, () => {
      if (!readySent) {
        readySent = true;
        log.log('info', `ready: serving ${config.protocol} for ${loader ? loader.path : 'the scripts its requests name'}`);
        send({ t: 'ready', rssBytes: process.memoryUsage.rss() });
      }
    });
  };

  // ---- drain: stop accepting, finish what was accepted, exit 0 ---------------------------
  const drain = (why: string) => {
    if (draining) return;
    draining = true;
    log.log('info', `draining (${why}): ${active.size} request(s) in flight`);
    if (listening && server) {
      listening = false;
      netClose(server);
    }
    // GOAWAY on every connection: Apache stops reusing them, and the wire server closes
    // each once it has been idle for a second.
    if (server && config.protocol === 'tsgi') (server as WireServer).drain();
    const since = Date.now();
    let idleSince = active.size === 0 ? since : 0;
    // Longer than the wire server's own idle close, so that one normally comes first.
    const idleExitMs = config.protocol === 'tsgi' ? 2000 : 1000;
    const check = () => {
      if (!server) {
        log.log('info', 'drained before serving anything; exiting');
        send({ t: 'stats', requests, inflight: [] }, () => process.exit(0));
        return;
      }
      (server as HttpServer).closeIdleConnections?.();
      if (active.size > 0) {
        idleSince = 0;
        return;
      }
      idleSince ||= Date.now();
      server.getConnections((_err, n) => {
        // Connections that stay open with nothing running (FastCGI keep-conn) do not hold us up for long.
        if (n === 0 || Date.now() - idleSince > idleExitMs) {
          log.log('info', `drained after ${Date.now() - since} ms; ${requests} request(s) served; exiting`);
          send({ t: 'stats', requests, inflight: [] }, () => process.exit(0));
        }
      });
    };
    setInterval(check, 100);
    check();
    // Bounded even without a master (it kills us itself after graceful-timeout).
    setTimeout(() => {
      log.log('warn', `graceful-timeout: ${active.size} request(s) still running; exiting`);
      process.exit(1);
    }, config.gracefulTimeoutMs + 1000).unref();
  };

  process.on('message', (m: MasterMessage, handle: unknown) => {
    if (m?.t === 'listen' && handle) onHandle(handle);
    else if (m?.t === 'drain') drain('asked by the master');
    else if (m?.t === 'status') statusWaiters.get(m.id)?.(m.status);
    else if (m?.t === 'secret' && !server && config.protocol === 'tsgi') {
      server = makeServer(new Uint8Array(Buffer.from(m.secret, 'base64')));
      const h = pendingHandle;
      pendingHandle = null;
      if (h) onHandle(h);
    }
  });
  // The master is gone (even kill -9): nobody will replace us, so finish up and leave.
  process.on('disconnect', () => drain('the master went away'));
  process.on('SIGTERM', () => drain('SIGTERM'));
  process.on('SIGHUP', () => undefined); // the master's business; a terminal's HUP must not kill us
  process.on('SIGINT', () => undefined); // ^C reaches the whole group; the master decides

  setInterval(() => {
    sendStats();
    if (config.inactivityTimeoutMs > 0 && active.size === 0 && Date.now() - lastActivity > config.inactivityTimeoutMs) retire('inactivity-timeout');
  }, HEARTBEAT_MS);
}

/**
 * Loads a script the group serves, so its first request does not pay for it and a broken
 * one is reported at start. A failure is not fatal: that script's requests get 500.
 */
function preload(providers: Providers, script: string, log: ErrorLog): void {
  try {
    providers.preload(script);
    log.log('info', `preloaded ${script}`);
  } catch (err) {
    log.log('error', `cannot load ${script} (its requests get 500 until it is fixed): ${(err as Error).message}`);
  }
}

/** Apache daemon mode, as embedded mode (P9): an app's stray exception is logged, the others' requests go on. */
function keepServingOnUncaught(log: ErrorLog): void {
  process.on('uncaughtException', (err, origin) => {
    log.log('error', `uncaught exception (${origin}): ${(err as Error)?.stack ?? String(err)}`);
  });
  process.on('unhandledRejection', (reason) => {
    log.log('error', `unhandled promise rejection: ${(reason as Error)?.stack ?? String(reason)}`);
  });
}

/** Closes `fd` if it is a socket (the master's inherited status socket); anything else is left alone. */
function closeInheritedSocket(fd: number): void {
  try {
    if (fs.fstatSync(fd).isSocket()) fs.closeSync(fd);
  } catch {
    // not open here
  }
}

/**
 * Closes only this process's copy of the listening socket: net.Server's close, not
 * http.Server's, which would close idle keep-alive connections too.
 */
function netClose(server: net.Server): void {
  net.Server.prototype.close.call(server);
}

function closeHandle(handle: unknown): void {
  try {
    (handle as { close?: () => void }).close?.();
  } catch {
    // already closed
  }
}

main();
