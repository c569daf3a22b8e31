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
 *
 * The request hand-off (embedding.md §2.4) streams both ways with backpressure: the
 * body is an AsyncIterable that asks the request thread for one chunk at a time
 * (read(h) grants credit; the chunk comes back as a BODY event), and the sink's body()
 * returns a Promise when write() says the 64 KB high-water mark is reached, resolved by
 * the DRAIN event. An ABORT event (client gone, body read error, Timeout, hard stop)
 * fires the request's AbortSignal, which the gateway turns into a client-gone outcome;
 * a body read that fails rejects, and is never an end of body (P17).
 */
import { constants as osConstants } from 'node:os';
import { BodyReadError, RequestAborted } from '../gateway/errors';
import { redirectStdio } from '../gateway/apache-log';
import { Providers } from '../gateway/providers';
import { transferGc } from '../gateway/transfer-gc';
import { runRequest, type ResponseSink, type ServerContext } from '../gateway/run';
import type { ErrorLog, LogLevel } from '../gateway/log';

/** process._linkedBinding('tsgi'), implemented in native/embed.c. */
export interface Binding {
  setHandler(fn: RequestHandler): void;
  head(h: Handle, status: number, reason: string, headers: string[]): void;
  /** Queues response bytes; false once 64 KB are queued: wait for EVENT.DRAIN. */
  write(h: Handle, chunk: Uint8Array): boolean;
  /** Credit for one request-body chunk, delivered as EVENT.BODY (or EOF, BODY_ERROR). */
  read(h: Handle): void;
  end(h: Handle, ok: boolean, why?: string): void;
  log(level: number, message: string): void;
  readonly multithread: boolean;
  readonly multiprocess: boolean;
}

/** An opaque request handle (a Node-API external). */
export type Handle = object;

export type RequestHandler = (
  h: Handle,
  /** The environ as a JSON object of strings (native/embed.c tsgi_make_job). */
  environJson: string,
  hasBody: boolean,
  script: string,
  callable: string,
  applicationGroup: string,
  reload: boolean,
  urlScheme: string,
) => RequestEvents;

/** The request thread's events (native/embed.c JS_*): fn(kind, arg). */
export const EVENT = { BODY: 1, EOF: 2, BODY_ERROR: 3, DRAIN: 4, ABORT: 5 } as const;
export type RequestEvents = (kind: number, arg?: Buffer | string) => void;

/** Apache's log levels (APLOG_*). */
const APLOG: Record<LogLevel, number> = { error: 3, warn: 4, info: 6, debug: 7 };

export function apacheLog(binding: Binding): ErrorLog {
  return {
    log(level, message) {
      binding.log(APLOG[level], message);
    },
  };
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

/**
 * P14: in an Apache child process.execPath is /usr/sbin/apache2, so child_process.fork()
 * would run Apache with the script as its argument. fork() without an explicit
 * execPath is refused with a clear error; with one (say, a node binary) it works.
 */
function guardFork(): void {
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const childProcess = require('node:child_process') as typeof import('node:child_process');
  const original = childProcess.fork;
  const guarded = function (this: unknown, modulePath: string | URL, ...rest: unknown[]) {
    const options = [...rest].reverse().find((a) => a !== null && typeof a === 'object' && !Array.isArray(a)) as { execPath?: unknown } | undefined;
    if (!options || typeof options.execPath !== 'string' || options.execPath === '') {
      throw new Error(
        `mod_tsgi: child_process.fork(${JSON.stringify(String(modulePath))}) is refused: in an Apache child process.execPath is ${process.execPath}, ` +
          'so fork() would start Apache. Pass { execPath: "/usr/bin/node" } (a node binary) or use child_process.spawn("node", …)',
      );
    }
    return (original as (...a: unknown[]) => unknown).call(this, modulePath, ...rest);
  };
  Object.defineProperty(childProcess, 'fork', { configurable: true, writable: true, value: guarded });
  // So `import { fork } from 'node:child_process'` in ESM code sees the guarded one too.
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  (require('node:module') as typeof import('node:module')).syncBuiltinESMExports();
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

function flatHeaders(headers: readonly (readonly [string, string])[]): string[] {
  const flat: string[] = [];
  for (const [name, value] of headers) flat.push(name, value);
  return flat;
}

/**
 * One request's side of the hand-off: the body source the gateway reads, the waits for
 * DRAIN, and the AbortController the transport fires. Events come from the request
 * thread through event().
 */
export class EmbeddedRequest {
  readonly controller = new AbortController();
  private readonly chunks: Buffer[] = [];
  private eof = false;
  private failure: Error | null = null;
  private waiter: (() => void) | null = null;
  private drainWaiters: (() => void)[] = [];

  constructor(
    private readonly binding: Binding,
    private readonly h: Handle,
    private readonly moved: (bytes: number) => void = () => undefined,
  ) {}

  readonly event: RequestEvents = (kind, arg) => {
    switch (kind) {
      case EVENT.BODY:
        if (arg instanceof Uint8Array) {
          this.chunks.push(arg);
          this.moved(arg.byteLength);
        }
        break;
      case EVENT.EOF:
        this.eof = true;
        break;
      case EVENT.BODY_ERROR:
        this.failure ??= new BodyReadError(String(arg ?? 'the request body could not be read'));
        break;
      case EVENT.DRAIN:
        this.releaseDrain();
        return;
      case EVENT.ABORT: {
        const why = String(arg ?? 'the request was aborted');
        if (!this.eof) this.failure ??= new BodyReadError(`the request body could not be read: ${why}`);
        this.releaseDrain();
        if (!this.controller.signal.aborted) this.controller.abort(new RequestAborted(why));
        break;
      }
      default:
        return;
    }
    const w = this.waiter;
    this.waiter = null;
    w?.();
  };

  /** The request body, pulled one chunk of credit at a time. */
  async *body(): AsyncGenerator<Uint8Array> {
    for (;;) {
      const chunk = this.chunks.shift();
      if (chunk) {
        yield chunk;
        continue;
      }
      if (this.failure) throw this.failure;
      if (this.eof) return;
      this.binding.read(this.h);
      await new Promise<void>((resolve) => {
        this.waiter = resolve;
      });
    }
  }

  /** The sink's body(): a Promise when the request thread has 64 KB to flush first. */
  write(chunk: Uint8Array): void | Promise<void> {
    this.moved(chunk.byteLength);
    if (this.binding.write(this.h, chunk)) return;
    if (this.controller.signal.aborted) return;
    return new Promise<void>((resolve) => this.drainWaiters.push(resolve));
  }

  private releaseDrain(): void {
    const waiters = this.drainWaiters;
    this.drainWaiters = [];
    for (const w of waiters) w();
  }
}

export function start(binding: Binding): void {
  const log = apacheLog(binding);
  redirectStdio(log);
  guardProcess(log);
  refuseSignalListeners();
  guardFork();

  const server: ServerContext = { log, multithread: binding.multithread, multiprocess: binding.multiprocess, runOnce: false };
  const providers = new Providers({ log });
  const moved = transferGc();

  binding.setHandler((h, environJson, hasBody, script, callable, group, reload, urlScheme) => {
    const port = new EmbeddedRequest(binding, h, moved);
    // One JSON.parse is several times cheaper than a property store per variable.
    const environ = JSON.parse(environJson) as Record<string, unknown>;
    environ['mod_tsgi.process_group'] = '';
    environ['mod_tsgi.application_group'] = group;
    environ['mod_tsgi.callable_object'] = callable;
    const sink: ResponseSink = {
      head(head) {
        binding.head(h, head.code, head.reason, flatHeaders(head.headers));
      },
      body(chunk) {
        return port.write(chunk);
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
      body: hasBody ? port.body() : null,
      urlScheme: urlScheme === 'https' ? ('https' as const) : ('http' as const),
      signal: port.controller.signal,
    };
    runRequest(providers.get(group, script, callable, reload), request, sink, server).catch((err: unknown) => {
      // runRequest never rejects; if it ever does, the request must still end.
      log.log('error', `mod_tsgi: gateway failure for ${script}: ${(err as Error)?.stack ?? String(err)}`);
      binding.end(h, false, 'gateway failure');
    });
    return port.event;
  });
}
