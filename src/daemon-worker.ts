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
 */
import * as net from 'node:net';
import type { Server as HttpServer } from 'node:http';
import { streamLog } from './gateway/log';
import { ScriptLoader } from './loader';
import { createHttpServer } from './transports/http-server';
import { createStreamServer } from './transports/stream-server';
import { createFastCgiServer } from './transports/fastcgi-server';
import type { RequestMonitor } from './transports/monitor';

/** What the master passes in argv[2], as JSON. */
export interface WorkerConfig {
  script: string;
  callable: string;
  mountPoint: string;
  protocol: 'http' | 'scgi' | 'uwsgi' | 'fastcgi';
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
}

/** Worker → master. */
export type WorkerMessage =
  | { t: 'ready' }
  | { t: 'load-failed'; message: string }
  | { t: 'stats'; requests: number; inflight: InFlight[] }
  | { t: 'retire'; reason: string }
  | { t: 'need-listener' };

/** Master → worker (a 'listen' message carries the socket handle). */
export type MasterMessage = { t: 'listen' } | { t: 'drain' };

export interface InFlight {
  what: string;
  ageMs: number;
}

const HEARTBEAT_MS = 1000;
const STATS_THROTTLE_MS = 50;

function main(): void {
  const config = JSON.parse(process.argv[2] ?? '{}') as WorkerConfig;
  const log = streamLog(process.stderr, 'tsgi-worker');
  const send = (m: WorkerMessage, then?: () => void) => {
    if (!process.connected || !process.send) return then?.();
    process.send(m, undefined, {}, () => then?.());
  };
  process.title = `tsgi-worker ${config.script}`;

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

  const loader = new ScriptLoader(config.script, { callable: config.callable, reload: false, log });
  try {
    loader.load();
  } catch (err) {
    const message = (err as Error).message;
    log.log('error', `cannot load the application: ${message}`);
    send({ t: 'load-failed', message }, () => process.exit(3));
    return;
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
    send({ t: 'stats', requests, inflight });
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

  const server: net.Server =
    config.protocol === 'http'
      ? createHttpServer({ provider: loader, log, mountPoint: config.mountPoint, monitor, multiprocess: config.multiprocess })
      : config.protocol === 'fastcgi'
        ? createFastCgiServer({ provider: loader, log, environ: { mountPoint: config.mountPoint || undefined }, multiprocess: config.multiprocess, monitor })
        : createStreamServer({
            protocol: config.protocol,
            provider: loader,
            log,
            // '' means "not given": keep the web server's SCRIPT_NAME (an empty mount point
            // would re-split the path as if mounted at /).
            mountPoint: config.mountPoint || undefined,
            monitor,
            context: { multithread: config.threads > 1, multiprocess: config.multiprocess },
          });
  server.on('error', (err) => log.log('error', `listener error: ${err.message}`));

  // ---- accepting: the shared socket, held only while there is room -------------------------
  let listening = false;
  let asked = false;
  let readySent = false;
  const stopListening = () => {
    if (!listening) return;
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
    if (listening || draining || (readySent && active.size >= config.threads)) {
      closeHandle(handle);
      if (!draining) limitAccepting();
      return;
    }
    listening = true;
    server.listen(handle as net.ListenOptions, () => {
      if (!readySent) {
        readySent = true;
        log.log('info', `ready: serving ${config.protocol} for ${loader.path}`);
        send({ t: 'ready' });
      }
    });
  };

  // ---- drain: stop accepting, finish what was accepted, exit 0 ---------------------------
  const drain = (why: string) => {
    if (draining) return;
    draining = true;
    log.log('info', `draining (${why}): ${active.size} request(s) in flight`);
    if (listening) {
      listening = false;
      netClose(server);
    }
    const since = Date.now();
    let idleSince = active.size === 0 ? since : 0;
    const check = () => {
      (server as HttpServer).closeIdleConnections?.();
      if (active.size > 0) {
        idleSince = 0;
        return;
      }
      idleSince ||= Date.now();
      server.getConnections((_err, n) => {
        // Connections that stay open with nothing running (FastCGI keep-conn) do not hold us up for long.
        if (n === 0 || Date.now() - idleSince > 1000) {
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
