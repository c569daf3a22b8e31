/**
 * The JavaScript side of mod_tsgi's embedded mode. The Node thread of each Apache child
 * loads this file (dist/embedded/bootstrap.js) into a fresh Node environment and calls
 * start() with the module's Node-API binding; from then on the binding calls the
 * registered handler once per request. Each request runs through the gateway core
 * (runRequest) with a ScriptLoader, exactly as every other transport does: nothing
 * here re-implements the gateway.
 *
 * Before any application code runs, the bootstrap makes the runtime a safe guest in
 * an Apache child (shared/reference/embedding.md §6):
 *   P11  console.*, process.stdout and process.stderr go to Apache's error log through
 *        the binding (never fd 2, whose flags Node would make non-blocking);
 *   P5   signal listeners are refused: the child's signals belong to Apache;
 *   P9   an uncaught exception or unhandled rejection is logged and the child goes on.
 */
import { Console } from 'node:console';
import { constants as osConstants } from 'node:os';
import { Writable } from 'node:stream';
import { ScriptLoader } from '../loader';
import { runRequest, type AppProvider, type ResponseSink, type ServerContext } from '../gateway/run';
import type { ErrorLog, LogLevel } from '../gateway/log';

/** process._linkedBinding('tsgi'), implemented in native/embed.c. */
export interface Binding {
  setHandler(fn: RequestHandler): void;
  head(h: Handle, status: number, reason: string, headers: string[]): void;
  write(h: Handle, chunk: Uint8Array): boolean;
  end(h: Handle, ok: boolean, why?: string): void;
  log(level: number, message: string): void;
  readonly multithread: boolean;
  readonly multiprocess: boolean;
}

/** An opaque request handle (a Node-API external). */
export type Handle = object;

export type RequestHandler = (
  h: Handle,
  environ: string[],
  body: Buffer | null,
  script: string,
  callable: string,
  applicationGroup: string,
  reload: boolean,
  urlScheme: string,
) => void;

/** Apache's log levels (APLOG_*). */
const APLOG: Record<LogLevel, number> = { error: 3, warn: 4, info: 6, debug: 7 };

export function apacheLog(binding: Binding): ErrorLog {
  return {
    log(level, message) {
      binding.log(APLOG[level], message);
    },
  };
}

/** A stream whose lines become error-log entries at `level`. */
function logStream(log: ErrorLog, level: LogLevel, label: string): Writable {
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

/** P11: stdio and console to the error log. */
function redirectStdio(log: ErrorLog): void {
  const out = logStream(log, 'info', 'stdout');
  const err = logStream(log, 'error', 'stderr');
  Object.defineProperty(process, 'stdout', { configurable: true, enumerable: true, get: () => out });
  Object.defineProperty(process, 'stderr', { configurable: true, enumerable: true, get: () => err });
  Object.defineProperty(globalThis, 'console', { configurable: true, writable: true, value: new Console({ stdout: out, stderr: err }) });
}

/** P5: JS must not install process-wide signal handlers in an Apache child. */
function refuseSignalListeners(): void {
  const signals = new Set(Object.keys(osConstants.signals));
  for (const method of ['on', 'addListener', 'once', 'prependListener', 'prependOnceListener'] as const) {
    const original = process[method] as (this: NodeJS.Process, event: string | symbol, listener: (...args: unknown[]) => void) => NodeJS.Process;
    Object.defineProperty(process, method, {
      configurable: true,
      writable: true,
      value: function (this: NodeJS.Process, event: string | symbol, listener: (...args: unknown[]) => void) {
        if (typeof event === 'string' && signals.has(event)) {
          throw new Error(`mod_tsgi: process.${method}('${event}') is refused: the signals of an Apache child belong to Apache`);
        }
        return original.call(this, event, listener);
      },
    });
  }
}

/** P9/P10: log, and keep serving. */
function guardProcess(log: ErrorLog): void {
  process.on('uncaughtException', (err, origin) => {
    log.log('error', `uncaught exception (${origin}): ${(err as Error)?.stack ?? String(err)}`);
  });
  process.on('unhandledRejection', (reason) => {
    log.log('error', `unhandled promise rejection: ${(reason as Error)?.stack ?? String(reason)}`);
  });
}

/** The providers of this environment, one per (application group, script, callable, reload). */
class Providers {
  private readonly byKey = new Map<string, AppProvider>();
  constructor(private readonly log: ErrorLog) {}

  get(group: string, script: string, callable: string, reload: boolean): AppProvider {
    const key = `${group}\0${script}\0${callable}\0${reload ? 1 : 0}`;
    let p = this.byKey.get(key);
    if (!p) {
      try {
        p = new ScriptLoader(script, { callable, reload, log: this.log });
      } catch (err) {
        const e = err as Error;
        p = {
          label: script,
          resolve: () => {
            throw e;
          },
        };
      }
      this.byKey.set(key, p);
    }
    return p;
  }
}

function flatHeaders(headers: readonly (readonly [string, string])[]): string[] {
  const flat: string[] = [];
  for (const [name, value] of headers) flat.push(name, value);
  return flat;
}

async function* once(body: Uint8Array): AsyncIterable<Uint8Array> {
  if (body.byteLength > 0) yield body;
}

export function start(binding: Binding): void {
  const log = apacheLog(binding);
  redirectStdio(log);
  guardProcess(log);
  refuseSignalListeners();

  const server: ServerContext = { log, multithread: binding.multithread, multiprocess: binding.multiprocess, runOnce: false };
  const providers = new Providers(log);

  binding.setHandler((h, flat, body, script, callable, group, reload, urlScheme) => {
    const environ: Record<string, unknown> = {};
    for (let i = 0; i + 1 < flat.length; i += 2) environ[flat[i]!] = flat[i + 1];
    environ['mod_tsgi.process_group'] = '';
    environ['mod_tsgi.application_group'] = group;
    environ['mod_tsgi.callable_object'] = callable;
    const sink: ResponseSink = {
      head(head) {
        binding.head(h, head.code, head.reason, flatHeaders(head.headers));
      },
      body(chunk) {
        binding.write(h, chunk);
      },
      end() {
        binding.end(h, true);
      },
      abort(error) {
        binding.end(h, false, error.message);
      },
    };
    const request = {
      environ,
      body: body === null ? null : once(body),
      urlScheme: urlScheme === 'https' ? ('https' as const) : ('http' as const),
      signal: new AbortController().signal,
    };
    runRequest(providers.get(group, script, callable, reload), request, sink, server).catch((err: unknown) => {
      // runRequest never rejects; if it ever does, the request must still end.
      log.log('error', `mod_tsgi: gateway failure for ${script}: ${(err as Error)?.stack ?? String(err)}`);
      binding.end(h, false, 'gateway failure');
    });
  });
}
