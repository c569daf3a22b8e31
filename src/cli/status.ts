/**
 * `tsgi status [--socket-prefix PREFIX] [--json]`: the state of every Apache daemon-mode
 * group on this machine. Each group's supervisor serves its status (docs/protocol.md §5)
 * on `<PREFIX>.<apache pid>.<n>.status` (mode 0600, owned by the daemon's user), so this
 * needs root or that user.
 */
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { parseArgs } from 'node:util';
import type { PoolStatusReport } from '../daemon-mode';

/** Debian's DefaultRuntimeDir + "tsgi", as TSGISocketPrefix defaults to. */
export const DEFAULT_SOCKET_PREFIX = '/var/run/apache2/tsgi';

export const STATUS_USAGE = `usage: tsgi status [--socket-prefix PREFIX] [--json]
  PREFIX: TSGISocketPrefix (default ${DEFAULT_SOCKET_PREFIX}), or a directory to search
`;

class StatusError extends Error {}

/** The status sockets for `prefix`: `<prefix>.*.status`, or every `*.status` in a directory. */
export function findStatusSockets(prefix: string): string[] {
  let dir: string;
  let base: string;
  let isDir = false;
  try {
    isDir = fs.statSync(prefix).isDirectory();
  } catch {
    // a prefix, not a file
  }
  if (isDir) {
    dir = prefix;
    base = '';
  } else {
    dir = path.dirname(prefix);
    base = path.basename(prefix) + '.';
  }
  let names: string[];
  try {
    names = fs.readdirSync(dir);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'EACCES') throw new StatusError(`cannot list ${dir}: permission denied; run as root or as the daemon's user`);
    if (code === 'ENOENT') throw new StatusError(`no status sockets: ${dir} does not exist (is --socket-prefix TSGISocketPrefix?)`);
    throw new StatusError(`cannot list ${dir}: ${(err as Error).message}`);
  }
  return names
    .filter((n) => n.startsWith(base) && n.endsWith('.status') && n.length > base.length + '.status'.length)
    .map((n) => path.join(dir, n))
    .filter((p) => {
      try {
        return fs.lstatSync(p).isSocket();
      } catch {
        return false;
      }
    })
    .sort();
}

/** Connects, reads the JSON the supervisor writes, and returns it. Rejects with the errno code in the message. */
export function queryStatusSocket(socketPath: string, timeoutMs = 5000): Promise<PoolStatusReport> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    const sock = net.connect(socketPath);
    const timer = setTimeout(() => {
      sock.destroy();
      reject(Object.assign(new Error(`${socketPath}: no answer within ${timeoutMs / 1000} s`), { code: 'ETIMEDOUT' }));
    }, timeoutMs);
    sock.on('data', (c: Buffer) => chunks.push(c));
    sock.on('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
    sock.on('end', () => {
      clearTimeout(timer);
      const text = Buffer.concat(chunks).toString('utf8');
      try {
        resolve(JSON.parse(text) as PoolStatusReport);
      } catch {
        reject(new Error(`${socketPath}: the answer is not JSON: ${JSON.stringify(text.slice(0, 200))}`));
      }
    });
  });
}

export function formatDuration(ms: number): string {
  const s = Math.max(0, Math.floor(ms / 1000));
  if (s < 60) return `${s}s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m}m${String(s % 60).padStart(2, '0')}s`;
  const h = Math.floor(m / 60);
  if (h < 48) return `${h}h${String(m % 60).padStart(2, '0')}m`;
  return `${Math.floor(h / 24)}d${String(h % 24).padStart(2, '0')}h`;
}

export function formatBytes(n: number): string {
  if (!(n > 0)) return '-';
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(0)} KiB`;
  if (n < 1024 * 1024 * 1024) return `${(n / 1024 / 1024).toFixed(1)} MiB`;
  return `${(n / 1024 / 1024 / 1024).toFixed(2)} GiB`;
}

/** One group as a table: pid, state, requests, in-flight, RSS, uptime per process. */
export function formatStatusTable(report: PoolStatusReport, socketPath: string, now = Date.now()): string {
  const started = Date.parse(report.startedAt);
  const up = Number.isFinite(started) ? `, up ${formatDuration(now - started)}` : '';
  const lines = [`group ${report.group} (supervisor pid ${report.pid}${up}, ${report.threads} thread(s) per process) ${socketPath}`];
  const rows = [['PID', 'STATE', 'REQUESTS', 'IN-FLIGHT', 'RSS', 'UPTIME']];
  for (const p of report.processes ?? []) {
    rows.push([String(p.pid), p.state, String(p.requests), String(p.inflight), formatBytes(p.rssBytes), formatDuration(p.uptimeMs)]);
  }
  const widths = rows[0].map((_, i) => Math.max(...rows.map((r) => r[i].length)));
  for (const r of rows) lines.push('  ' + r.map((c, i) => c.padEnd(widths[i])).join('  ').trimEnd());
  if ((report.processes ?? []).length === 0) lines.push('  (no processes)');
  for (const p of report.processes ?? []) {
    for (const r of p.running ?? []) lines.push(`  ${p.pid}: ${r.what} (${formatDuration(r.ageMs)})`);
  }
  return lines.join('\n') + '\n';
}

export async function statusCommand(args: string[], out: (s: string) => void = (s) => process.stdout.write(s), err: (s: string) => void = (s) => process.stderr.write(s)): Promise<number> {
  let values;
  try {
    values = parseArgs({ args, strict: true, allowPositionals: false, options: { 'socket-prefix': { type: 'string' }, json: { type: 'boolean' }, help: { type: 'boolean', short: 'h' } } }).values;
  } catch (e) {
    err(`tsgi status: ${(e as Error).message}\n\n${STATUS_USAGE}`);
    return 2;
  }
  if (values.help) {
    out(STATUS_USAGE);
    return 0;
  }
  const prefix = values['socket-prefix'] ?? DEFAULT_SOCKET_PREFIX;
  if (prefix === '') {
    err(`tsgi status: --socket-prefix must not be empty\n\n${STATUS_USAGE}`);
    return 2;
  }
  let sockets: string[];
  try {
    sockets = findStatusSockets(prefix);
  } catch (e) {
    err(`tsgi status: ${(e as Error).message}\n`);
    return 1;
  }
  if (sockets.length === 0) {
    err(`tsgi status: no daemon-mode status sockets match ${prefix}.*.status (is Apache running with a TSGIDaemonProcess? is --socket-prefix its TSGISocketPrefix?)\n`);
    return 1;
  }
  const reports: { socket: string; report: PoolStatusReport }[] = [];
  let denied = 0;
  for (const socket of sockets) {
    try {
      reports.push({ socket, report: await queryStatusSocket(socket) });
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code === 'EACCES' || code === 'EPERM') {
        denied++;
        err(`tsgi status: ${socket}: permission denied; run as root or as the daemon's user\n`);
      } else if (code === 'ECONNREFUSED') {
        // A previous Apache generation's socket: nobody serves it any more.
        err(`tsgi status: ${socket}: stale (no daemon behind it)\n`);
      } else {
        err(`tsgi status: ${socket}: ${(e as Error).message}\n`);
      }
    }
  }
  if (values.json) out(JSON.stringify(reports.map((r) => r.report), null, 2) + '\n');
  else for (const r of reports) out(formatStatusTable(r.report, r.socket));
  if (reports.length === 0) {
    if (denied === 0) err(`tsgi status: none of the ${sockets.length} status socket(s) answered\n`);
    return 1;
  }
  return 0;
}
