/**
 * The error log a gateway writes to. Transports supply one: stderr for `tsgi serve`
 * and `tsgi-cgi` (the web server files it in its error log), Apache's error log for
 * mod_tsgi. One call is one log entry, even when the message spans several lines.
 */
import type { ErrorStream } from '../tsgi';

export type LogLevel = 'error' | 'warn' | 'info' | 'debug';

export interface ErrorLog {
  log(level: LogLevel, message: string): void;
}

/** Writes `[level] message` entries to a stream (stderr by default). */
export function streamLog(out: { write(s: string): unknown } = process.stderr, prefix = 'tsgi'): ErrorLog {
  return {
    log(level, message) {
      out.write(`[${prefix}:${level}] pid ${process.pid}: ${message}\n`);
    },
  };
}

/**
 * `environ['tsgi.errors']`: line-buffered text to the error log at level "error",
 * as mod_wsgi files wsgi.errors. A partial line goes out on flush().
 */
export class ErrorsStream implements ErrorStream {
  private pending = '';

  constructor(private readonly sink: ErrorLog) {}

  write(s: string): void {
    if (typeof s !== 'string') throw new TypeError(`tsgi.errors.write() takes a string, got ${typeof s}`);
    const text = this.pending + s;
    const nl = text.lastIndexOf('\n');
    if (nl < 0) {
      this.pending = text;
      return;
    }
    this.pending = text.slice(nl + 1);
    for (const line of text.slice(0, nl).split('\n')) this.sink.log('error', line);
  }

  flush(): void {
    if (this.pending) {
      this.sink.log('error', this.pending);
      this.pending = '';
    }
  }
}
