/**
 * `tsgi daemon APP.tsgi --listen unix:PATH|tcp:HOST:PORT --protocol uwsgi|scgi|fastcgi|http`:
 * the daemon pool (src/daemon-mode.ts) in the foreground, for lighttpd, nginx and Apache's
 * mod_proxy_*. Logs on stderr with levels; SIGTERM/SIGINT stop gracefully, SIGHUP reloads.
 */
import { parseArgs } from 'node:util';
import { DAEMON_PROTOCOLS, parseListen, runDaemon, type DaemonOptions, type DaemonProtocol } from '../daemon-mode';

export const DAEMON_USAGE = `usage: tsgi daemon APP.tsgi --listen unix:PATH|tcp:HOST:PORT --protocol uwsgi|scgi|fastcgi|http
                   [--processes N] [--threads N] [--maximum-requests N]
                   [--user U] [--group G] [--socket-mode MODE]
                   [--request-timeout S] [--graceful-timeout S] [--startup-timeout S]
                   [--callable NAME] [--mount-point /PATH] [--reload]
`;

class UsageError extends Error {}

function integer(name: string, value: string | undefined, min: number, fallback: number): number {
  if (value === undefined) return fallback;
  if (!/^\d+$/.test(value) || Number(value) < min) throw new UsageError(`--${name} must be an integer >= ${min}, got ${JSON.stringify(value)}`);
  return Number(value);
}

function seconds(name: string, value: string | undefined, fallbackMs: number): number {
  if (value === undefined) return fallbackMs;
  if (!/^\d+(\.\d+)?$/.test(value)) throw new UsageError(`--${name} must be a number of seconds (0 for none), got ${JSON.stringify(value)}`);
  return Math.round(Number(value) * 1000);
}

/** Parses the command line into pool options; throws UsageError naming the option. */
export function parseDaemonArgs(args: string[]): DaemonOptions {
  let parsed;
  try {
    parsed = parseArgs({
      args,
      allowPositionals: true,
      strict: true,
      options: {
        listen: { type: 'string' },
        protocol: { type: 'string' },
        processes: { type: 'string' },
        threads: { type: 'string' },
        'maximum-requests': { type: 'string' },
        user: { type: 'string' },
        group: { type: 'string' },
        'socket-mode': { type: 'string' },
        'request-timeout': { type: 'string' },
        'graceful-timeout': { type: 'string' },
        'startup-timeout': { type: 'string' },
        callable: { type: 'string' },
        'mount-point': { type: 'string' },
        reload: { type: 'boolean' },
      },
    });
  } catch (err) {
    throw new UsageError((err as Error).message);
  }
  const { values: v, positionals } = parsed;
  if (positionals.length !== 1) throw new UsageError(`expected exactly one APP.tsgi argument, got ${positionals.length}`);
  if (v.listen === undefined) throw new UsageError('--listen unix:PATH|tcp:HOST:PORT is required');
  if (v.protocol === undefined) throw new UsageError('--protocol uwsgi|scgi|fastcgi|http is required');
  if (!(DAEMON_PROTOCOLS as readonly string[]).includes(v.protocol)) {
    throw new UsageError(`--protocol must be one of ${DAEMON_PROTOCOLS.join(', ')}, got ${JSON.stringify(v.protocol)}`);
  }
  let listen;
  try {
    listen = parseListen(v.listen);
  } catch (err) {
    throw new UsageError((err as Error).message);
  }
  const mode = v['socket-mode'];
  if (mode !== undefined && !/^0?[0-7]{3}$/.test(mode)) throw new UsageError(`--socket-mode must be an octal mode like 0660, got ${JSON.stringify(mode)}`);
  if (mode !== undefined && listen.kind !== 'unix') throw new UsageError('--socket-mode applies to --listen unix:PATH only');
  const mountPoint = v['mount-point'] ?? '';
  if (mountPoint !== '' && !mountPoint.startsWith('/')) throw new UsageError(`--mount-point must start with "/", got ${JSON.stringify(mountPoint)}`);
  if (v.callable !== undefined && !/^[A-Za-z_$][A-Za-z0-9_$]*$/.test(v.callable)) throw new UsageError(`--callable must be an identifier, got ${JSON.stringify(v.callable)}`);
  if (v.user === '') throw new UsageError('--user must name a user');
  if (v.group === '') throw new UsageError('--group must name a group');
  return {
    script: positionals[0],
    listen,
    protocol: v.protocol as DaemonProtocol,
    processes: integer('processes', v.processes, 1, 1),
    threads: integer('threads', v.threads, 1, 15),
    maximumRequests: integer('maximum-requests', v['maximum-requests'], 0, 0),
    user: v.user,
    group: v.group,
    socketMode: mode === undefined ? 0o600 : parseInt(mode, 8),
    requestTimeoutMs: seconds('request-timeout', v['request-timeout'], 60_000),
    gracefulTimeoutMs: seconds('graceful-timeout', v['graceful-timeout'], 15_000),
    startupTimeoutMs: seconds('startup-timeout', v['startup-timeout'], 30_000) || 30_000,
    callable: v.callable,
    mountPoint,
    reload: v.reload ?? false,
  };
}

export async function daemonCommand(args: string[]): Promise<number> {
  if (args.includes('-h') || args.includes('--help')) {
    process.stdout.write(DAEMON_USAGE);
    return 0;
  }
  let options: DaemonOptions;
  try {
    options = parseDaemonArgs(args);
  } catch (err) {
    if (!(err instanceof UsageError)) throw err;
    process.stderr.write(`tsgi daemon: ${err.message}\n\n${DAEMON_USAGE}`);
    return 2;
  }
  return runDaemon(options);
}
