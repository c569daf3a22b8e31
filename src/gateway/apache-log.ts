/**
 * Logging for processes that write straight into an Apache error log: the daemon-mode
 * supervisor and its workers, which inherit the defining server's error log as fd 2 from
 * the Apache parent (docs/daemon.md, "Apache daemon mode"). Lines look like Apache's own,
 *
 *     [Sat Nov 21 21:30:00.123456 2026] [tsgi:error] [pid 1234] message
 *
 * so they sort and grep with the rest of that log. Also here: the stdio redirection that
 * embedded mode and the daemon workers share (application console output becomes log
 * entries with levels instead of raw bytes on the log file).
 */
import { Console } from 'node:console';
import { writeSync } from 'node:fs';
import { Writable } from 'node:stream';
import type { ErrorLog, LogLevel } from './log';

export const LOG_LEVELS: readonly LogLevel[] = ['error', 'warn', 'info', 'debug'];

/** Parses a LogLevel; throws naming `where` when it is not one. */
export function parseLogLevel(value: unknown, where = 'logLevel'): LogLevel {
  if (typeof value === 'string' && (LOG_LEVELS as readonly string[]).includes(value)) return value as LogLevel;
  throw new Error(`${where} must be one of ${LOG_LEVELS.join(', ')}, got ${JSON.stringify(value)}`);
}

/** True when an entry at `level` passes a filter set to `threshold` (Apache's LogLevel). */
export function levelEnabled(level: LogLevel, threshold: LogLevel): boolean {
  return LOG_LEVELS.indexOf(level) <= LOG_LEVELS.indexOf(threshold);
}

const DAYS = ['Sun', 'Mon', 'Tue', 'Wed', 'Thu', 'Fri', 'Sat'];
const MONTHS = ['Jan', 'Feb', 'Mar', 'Apr', 'May', 'Jun', 'Jul', 'Aug', 'Sep', 'Oct', 'Nov', 'Dec'];
const pad = (n: number, w = 2) => String(n).padStart(w, '0');

/**
 * Apache's error-log time stamp (local time, microseconds, as ErrorLogFormat's %{u}t):
 * "Sat Nov 21 21:30:00.123456 2026". `micros` is the time in µs since the epoch.
 */
export function apacheTimestamp(micros: number): string {
  const d = new Date(Math.floor(micros / 1000));
  const us = Math.floor(micros) % 1_000_000;
  return `${DAYS[d.getDay()]} ${MONTHS[d.getMonth()]} ${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.${pad(us, 6)} ${d.getFullYear()}`;
}

/** Now in µs since the epoch (Date has only milliseconds). */
export function nowMicros(): number {
  return Math.floor((performance.timeOrigin + performance.now()) * 1000);
}

/**
 * One entry as Apache-format lines. A multi-line message (a stack trace) gets the prefix
 * on every line: a log file has no other way to say which entry a line belongs to.
 */
export function formatApacheEntry(level: LogLevel, message: string, pid: number, micros: number, module = 'tsgi'): string {
  const prefix = `[${apacheTimestamp(micros)}] [${module}:${level}] [pid ${pid}] `;
  return message
    .replace(/\r?\n$/, '')
    .split(/\r?\n/)
    .map((line) => prefix + line + '\n')
    .join('');
}

export interface ApacheLogOptions {
  /** Entries below this level are dropped. Default 'warn' (Apache's default LogLevel). */
  level?: LogLevel;
  /** Put before every message, e.g. "tsgi-daemon (app): ". */
  tag?: string;
  /** Where the lines go. Default: written synchronously to fd 2, so nothing is lost at exit. */
  write?: (text: string) => void;
}

/** An ErrorLog writing Apache-format lines (to fd 2 unless told otherwise). */
export function apacheFormatLog(options: ApacheLogOptions = {}): ErrorLog {
  const threshold = options.level ?? 'warn';
  const write = options.write ?? ((text: string) => writeFd(2, text));
  const tag = options.tag ?? '';
  return {
    log(level, message) {
      if (!levelEnabled(level, threshold)) return;
      write(formatApacheEntry(level, tag + message, process.pid, nowMicros()));
    },
  };
}

/**
 * Writes all of `text` to `fd`. The error log may be a pipe (a piped logger) that some
 * other code made non-blocking: EAGAIN is retried a bounded number of times rather than
 * dropping the entry silently; a log that is gone (EPIPE, EBADF) drops it.
 */
export function writeFd(fd: number, text: string): void {
  let buf = Buffer.from(text, 'utf8');
  for (let tries = 0; buf.length > 0 && tries < 1000; ) {
    try {
      const n = writeSync(fd, buf);
      buf = buf.subarray(n);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EAGAIN') return;
      tries++;
      Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 1);
    }
  }
}

/** A stream whose lines become error-log entries at `level`, labelled ("stdout: …"). */
export function logStream(log: ErrorLog, level: LogLevel, label: string): Writable {
  let pending = '';
  return new Writable({
    decodeStrings: false,
    write(chunk: Buffer | string, _enc, cb) {
      pending += typeof chunk === 'string' ? chunk : chunk.toString('utf8');
      let nl: number;
      while ((nl = pending.indexOf('\n')) >= 0) {
        log.log(level, `${label}: ${pending.slice(0, nl)}`);
        pending = pending.slice(nl + 1);
      }
      cb();
    },
    final(cb) {
      if (pending) log.log(level, `${label}: ${pending}`);
      pending = '';
      cb();
    },
  });
}

/**
 * Application output to the error log with levels (embedded mode's P11, and the daemon
 * workers): process.stdout and console.log/info/debug at info, process.stderr and
 * console.error/warn at error. console.warn is filed at warn: Console sends it to the
 * stderr stream, so the console gets its own warn stream.
 */
export function redirectStdio(log: ErrorLog): void {
  const out = logStream(log, 'info', 'stdout');
  const err = logStream(log, 'error', 'stderr');
  const warnOut = logStream(log, 'warn', 'stderr');
  Object.defineProperty(process, 'stdout', { configurable: true, enumerable: true, get: () => out });
  Object.defineProperty(process, 'stderr', { configurable: true, enumerable: true, get: () => err });
  const c = new Console({ stdout: out, stderr: err });
  const w = new Console({ stdout: warnOut, stderr: warnOut });
  c.warn = w.warn.bind(w);
  Object.defineProperty(globalThis, 'console', { configurable: true, writable: true, value: c });
}
