/**
 * The gateway core: runs one request through a TSGI application, from a
 * transport-neutral request (CGI variables plus a body source) to a transport-neutral
 * response sink (head, body chunks, then end or abort), enforcing docs/spec.md.
 *
 * Every transport (CGI, `tsgi serve`, the daemon protocols, embedded mod_tsgi) calls
 * runRequest(); none re-implements these rules. The outcomes are distinct on purpose:
 *   complete     the application finished and every byte was handed to the sink;
 *   error        the application failed before its headers went out: a 500 was sent;
 *   aborted      the application failed after its headers went out: sink.abort() —
 *                the transport must make the response visibly incomplete;
 *   client-gone  the request's signal fired (client disconnected) before the end.
 * Each failure writes exactly one error-log entry.
 */
import { BadRequest, BodyReadError, RequestAborted, SpecViolation } from './errors';
import { checkHeaders, describe, hasHeader, parseStatus, statusForbidsBody } from './headers';
import { RequestInput } from './input';
import { ErrorsStream, type ErrorLog } from './log';
import { fileWrapper } from './file-wrapper';
import { callApplication, isThenable } from './invoke';
import { TSGI_VERSION } from '../tsgi';
import type { Application, Body, Chunk, Environ, Header, StartResponse, Write } from '../tsgi';

/** Where the gateway gets the application for each request (a loader, or a fixed app). */
export interface AppProvider {
  /** Returns the application to call; throws when it cannot be loaded (→ 500). */
  resolve(): Application;
  /** Names the application in log entries (usually the script path). */
  readonly label: string;
}

/** A provider for an application object that is already in hand. */
export function fixedApp(app: Application, label = app.name || 'application'): AppProvider {
  return { resolve: () => app, label };
}

/** What a server tells every request about itself. */
export interface ServerContext {
  log: ErrorLog;
  multithread: boolean;
  multiprocess: boolean;
  runOnce: boolean;
}

export interface GatewayRequest {
  /** CGI variables, HTTP_* headers and server configuration, as strings; plus server extension keys. */
  environ: Record<string, unknown>;
  /** The body bytes as the transport receives them; null for a request without a body. */
  body: AsyncIterable<Uint8Array> | null;
  urlScheme: 'http' | 'https';
  /** Fired by the transport when the client goes away. */
  signal: AbortSignal;
  /** Sends `100 Continue`; called before the application's first body read. */
  onContinue?: () => void;
}

export interface ResponseHead {
  /** The status line as the application gave it, e.g. "200 OK". */
  status: string;
  code: number;
  reason: string;
  headers: Header[];
  /** The declared (or computed) Content-Length, or null when the length is unknown. */
  contentLength: number | null;
  /** True when no body bytes will follow (HEAD, 204, 304). */
  bodyless: boolean;
}

export interface ResponseSink {
  /** Sends the status and headers. Called once, just before the first body byte or the end. */
  head(head: ResponseHead): void;
  /** Sends body bytes. A returned Promise means "wait until the client has taken them". */
  body(chunk: Uint8Array): void | Promise<void>;
  /** The response is complete. */
  end(): void | Promise<void>;
  /** The response cannot be completed: close it so the client sees it is incomplete. */
  abort(error: Error): void;
}

export type OutcomeState = 'complete' | 'error' | 'aborted' | 'client-gone';

export interface RequestOutcome {
  state: OutcomeState;
  /** The status sent (0 when none was). */
  code: number;
  /** Body bytes handed to the sink. */
  bytes: number;
}

const EMPTY = new Uint8Array(0);
const errorPage = (title: string, text: string) =>
  Buffer.from(`<!DOCTYPE html>\n<html><head><title>${title}</title></head><body>\n<h1>${title.slice(4)}</h1>\n<p>${text}</p>\n</body></html>\n`);
const ERROR_PAGE = errorPage('500 Internal Server Error', 'The server encountered an internal error and was unable to complete your request.');
const BAD_REQUEST_PAGE = errorPage('400 Bad Request', 'The server could not understand the request.');

/** Runs one request. Never rejects: every failure becomes an outcome, a log entry and a sink call. */
export function runRequest(provider: AppProvider, req: GatewayRequest, sink: ResponseSink, server: ServerContext): Promise<RequestOutcome> {
  return new RequestRun(provider, req, sink, server).run();
}

/** Builds the environ for a request: the transport's variables plus the tsgi.* keys. */
export function buildEnviron(req: GatewayRequest, server: ServerContext, input: RequestInput): Environ {
  const env = req.environ as Environ;
  env['tsgi.version'] = TSGI_VERSION;
  env['tsgi.url_scheme'] = req.urlScheme;
  env['tsgi.input'] = input;
  env['tsgi.errors'] = new ErrorsStream(server.log);
  env['tsgi.multithread'] = server.multithread;
  env['tsgi.multiprocess'] = server.multiprocess;
  env['tsgi.run_once'] = server.runOnce;
  env['tsgi.signal'] = req.signal;
  env['tsgi.file_wrapper'] = fileWrapper;
  return env;
}

/** Parses CONTENT_LENGTH; null when absent or empty. Throws on a malformed value. */
export function contentLengthOf(environ: Record<string, unknown>): number | null {
  const v = environ.CONTENT_LENGTH;
  if (v === undefined || v === '') return null;
  if (typeof v !== 'string' || !/^[0-9]{1,15}$/.test(v)) throw new BadRequest(`malformed CONTENT_LENGTH ${JSON.stringify(v)}`);
  return Number(v);
}

class RequestRun {
  private environ!: Environ;
  private statusLine: string | null = null;
  private code = 0;
  private reason = '';
  private headers: Header[] = [];
  private declaredLength: number | null = null;
  private headSent = false;
  private sentCode = 0;
  private bodyless = false;
  private bytes = 0;
  private finished = false;
  private pending: Promise<void> | null = null;
  private result: unknown = undefined;
  private iterator: Iterator<unknown> | AsyncIterator<unknown> | null = null;
  private iterationDone = false;
  private closed = false;
  private readonly headRequest: boolean;
  private errors: ErrorsStream | null = null;

  constructor(
    private readonly provider: AppProvider,
    private readonly req: GatewayRequest,
    private readonly sink: ResponseSink,
    private readonly server: ServerContext,
  ) {
    this.headRequest = req.environ.REQUEST_METHOD === 'HEAD';
  }

  async run(): Promise<RequestOutcome> {
    try {
      const input = new RequestInput(this.req.body, {
        contentLength: contentLengthOf(this.req.environ),
        signal: this.req.signal,
        onFirstRead: this.req.onContinue,
      });
      this.environ = buildEnviron(this.req, this.server, input);
      this.errors = this.environ['tsgi.errors'] as ErrorsStream;
      const app = this.provider.resolve();
      let result: unknown = this.invoke(app);
      if (isThenable(result)) {
        // Whatever a late promise resolves to still gets closed if we gave up on it.
        const late = result;
        result = await this.untilAborted(late, () =>
          late.then(
            (b) => this.closeLate(b),
            (e) => {
              if (!abortDerived(e)) this.server.log.log('error', `the application failed after its client left (${this.provider.label}):\n${stackOf(e)}`);
            },
          ),
        );
      }
      this.result = result;
      await this.sendBody(checkBody(result));
      if (this.pending) await this.untilAborted(this.pending);
      if (!this.statusLine) throw new SpecViolation('the application returned without calling startResponse()');
      // Checked before the head goes out, so a short body with nothing sent yet is a clean 500.
      const bodyless = this.headSent ? this.bodyless : this.headRequest || statusForbidsBody(this.code);
      if (this.declaredLength !== null && !bodyless && this.bytes < this.declaredLength) {
        throw new SpecViolation(`the application declared Content-Length: ${this.declaredLength} but sent only ${this.bytes} bytes`);
      }
      if (!this.headSent) this.sendHead();
      this.finished = true;
      await this.close(true);
      // A client that left while close() ran did not get a complete response.
      if (this.req.signal.aborted) throw this.abortReason();
      this.errors?.flush();
      await this.sink.end();
      return { state: 'complete', code: this.sentCode, bytes: this.bytes };
    } catch (err) {
      return this.fail(err);
    }
  }

  /** Calls the application; a class is constructed, as seed 004's AppClass is. */
  private invoke(app: Application): unknown {
    if (typeof app !== 'function') throw new SpecViolation(`the application is not callable (${describe(app)})`);
    return callApplication(app, this.environ, this.startResponse);
  }

  private readonly startResponse: StartResponse = (status, headers, excInfo) => {
    if (excInfo !== undefined && excInfo !== null) {
      // PEP 3333: after the headers went out, the original error is re-thrown.
      if (this.headSent) throw excInfo;
    } else if (this.statusLine !== null) {
      throw new SpecViolation('startResponse() called a second time without excInfo');
    }
    if (this.finished) throw new SpecViolation('startResponse() called after the response finished');
    const { code, reason } = parseStatus(status);
    const declared = checkHeaders(headers);
    this.statusLine = status;
    this.code = code;
    this.reason = reason;
    this.headers = headers.map(([n, v]) => [n, v] as Header);
    this.declaredLength = declared;
    return this.write;
  };

  private readonly write: Write = (chunk) => {
    if (this.statusLine === null) throw new SpecViolation('write() called before startResponse()');
    if (this.finished || this.closed) throw new SpecViolation('write() called after the response finished');
    const bytes = toBytes(chunk, 'write()');
    if (bytes.byteLength === 0) return;
    if (this.pending) {
      this.accept(bytes);
      this.pending = this.pending.then(() => this.transmit(bytes));
    } else {
      this.accept(bytes);
      const p = this.transmit(bytes);
      if (p) this.pending = p;
    }
    this.pending?.catch(() => undefined); // observed later; never an unhandled rejection
  };

  private async sendBody(body: Body): Promise<void> {
    if (Array.isArray(body)) return this.sendArray(body);
    const asyncFactory = (body as Partial<AsyncIterable<Chunk>>)[Symbol.asyncIterator];
    const isAsync = typeof asyncFactory === 'function';
    const it: Iterator<unknown> | AsyncIterator<unknown> = isAsync
      ? asyncFactory.call(body)
      : (body as Iterable<Chunk>)[Symbol.iterator]();
    this.iterator = it;
    for (;;) {
      const r = isAsync ? await this.untilAborted((it as AsyncIterator<unknown>).next()) : (it as Iterator<unknown>).next();
      if (r.done) break;
      await this.emit(r.value, 'body chunk');
      if (this.req.signal.aborted) throw this.abortReason();
    }
    this.iterationDone = true;
  }

  /** An Array body is complete up front: when the app declared no length, the server computes it. */
  private async sendArray(body: unknown[]): Promise<void> {
    const chunks: Uint8Array[] = [];
    let total = 0;
    for (const c of body) {
      // Every item is known up front, so a bad one is a 500 before any byte goes out.
      const b = toBytes(c, 'body chunk');
      chunks.push(b);
      total += b.byteLength;
    }
    if (this.statusLine !== null && !this.headSent && this.declaredLength === null && !this.pending && !statusForbidsBody(this.code)) {
      this.headers.push(['Content-Length', String(total)]);
      this.declaredLength = total;
    }
    for (const b of chunks) await this.emit(b, 'body chunk');
  }

  private async emit(value: unknown, what: string): Promise<void> {
    const bytes = toBytes(value, what);
    if (bytes.byteLength === 0) return;
    if (this.statusLine === null) throw new SpecViolation(`the application produced a ${what} before calling startResponse()`);
    if (this.pending) {
      await this.untilAborted(this.pending);
      this.pending = null;
    }
    this.accept(bytes);
    const p = this.transmit(bytes);
    if (p) await this.untilAborted(p);
  }

  /** Rules checked before bytes are queued, so a violation before the head still yields a 500. */
  private accept(bytes: Uint8Array): void {
    if (statusForbidsBody(this.code)) {
      throw new SpecViolation(`status ${this.code} does not allow a body, but the application sent ${bytes.byteLength} bytes`);
    }
    if (this.declaredLength !== null && this.bytes + bytes.byteLength > this.declaredLength) {
      throw new SpecViolation(
        `the application declared Content-Length: ${this.declaredLength} but sent more (${this.bytes + bytes.byteLength} bytes so far)`,
      );
    }
    this.bytes += bytes.byteLength;
  }

  private transmit(bytes: Uint8Array): void | Promise<void> {
    if (!this.headSent) this.sendHead();
    if (this.bodyless) return;
    return this.sink.body(bytes);
  }

  private sendHead(): void {
    this.headSent = true;
    this.sentCode = this.code;
    this.bodyless = this.headRequest || statusForbidsBody(this.code);
    this.sink.head({
      status: this.statusLine as string,
      code: this.code,
      reason: this.reason,
      headers: this.headers,
      contentLength: this.declaredLength,
      bodyless: this.bodyless,
    });
  }

  /** Awaits `p`, but gives up when the client goes away. */
  private untilAborted<T>(p: Promise<T>, onAbandon?: () => void): Promise<T> {
    const signal = this.req.signal;
    if (signal.aborted) {
      // Abandoned before it settles: its rejection must still be observed.
      p.then(undefined, () => undefined);
      onAbandon?.();
      return Promise.reject(this.abortReason());
    }
    return new Promise<T>((resolve, reject) => {
      const onAbort = () => {
        onAbandon?.();
        reject(this.abortReason());
      };
      signal.addEventListener('abort', onAbort, { once: true });
      p.then(
        (v) => {
          signal.removeEventListener('abort', onAbort);
          resolve(v);
        },
        (e) => {
          signal.removeEventListener('abort', onAbort);
          reject(e);
        },
      );
    });
  }

  private abortReason(): Error {
    const r: unknown = this.req.signal.reason;
    return r instanceof RequestAborted ? r : new RequestAborted('the client closed the connection before the response was complete');
  }

  private async fail(err: unknown): Promise<RequestOutcome> {
    const error = err instanceof Error ? err : new Error(`non-Error thrown: ${describe(err)}`);
    const where = `${this.req.environ.REQUEST_METHOD ?? '?'} ${this.req.environ.REQUEST_URI ?? ''} (${this.provider.label})`;
    await this.close(false);
    this.errors?.flush();
    if (this.req.signal.aborted || error instanceof RequestAborted) {
      // The abort explains a RequestAborted or a failed body read; any other error is the
      // application's own and keeps its stack in the log.
      const own = !abortDerived(error);
      this.server.log.log(
        own ? 'error' : 'info',
        `request aborted: ${where}: ${own ? stackOf(error) : error.message}; ${this.bytes} body bytes had been sent`,
      );
      this.sink.abort(error);
      return { state: 'client-gone', code: this.sentCode, bytes: this.bytes };
    }
    if (error instanceof BadRequest && !this.headSent) {
      this.server.log.log('info', `bad request, 400 sent: ${where}: ${error.message}`);
      return this.errorResponse(400, 'Bad Request', BAD_REQUEST_PAGE, error);
    }
    if (!this.headSent) {
      this.server.log.log('error', `application error before the response started, 500 sent: ${where}\n${stackOf(error)}`);
      return this.errorResponse(500, 'Internal Server Error', ERROR_PAGE, error);
    }
    this.server.log.log(
      'error',
      `application error after the response started, response aborted after ${this.bytes} body bytes: ${where}\n${stackOf(error)}`,
    );
    this.sink.abort(error);
    return { state: 'aborted', code: this.sentCode, bytes: this.bytes };
  }

  /** Sends a server-made error response (the application's head was never sent). */
  private async errorResponse(code: number, reason: string, page: Buffer, error: Error): Promise<RequestOutcome> {
    try {
      this.sink.head({
        status: `${code} ${reason}`,
        code,
        reason,
        headers: [
          ['Content-Type', 'text/html; charset=utf-8'],
          ['Content-Length', String(page.byteLength)],
        ],
        contentLength: page.byteLength,
        bodyless: this.headRequest,
      });
      if (!this.headRequest) await this.sink.body(page);
      await this.sink.end();
    } catch (sinkErr) {
      this.sink.abort(sinkErr instanceof Error ? sinkErr : error);
    }
    return { state: 'error', code, bytes: 0 };
  }

  /**
   * Runs the body's cleanup exactly once: the iterator's return() when iteration was cut
   * short, then close() when the body has one. On the normal path a Promise from close()
   * is awaited, so cleanup (a session save, say) is done before the response completes.
   */
  private async close(normal: boolean): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    const it = this.iterator;
    if (it && !this.iterationDone && typeof it.return === 'function') {
      try {
        const r = it.return();
        if (isThenable(r)) r.then(undefined, (e) => this.logCleanup('iterator return()', e));
      } catch (e) {
        this.logCleanup('iterator return()', e);
      }
    }
    const body = this.result as { close?: unknown } | null | undefined;
    if (body && typeof body.close === 'function') {
      try {
        const r: unknown = body.close();
        if (isThenable(r)) {
          r.then(undefined, (e) => this.logCleanup('close()', e));
          // Bounded by the client: a close() that never settles cannot hold the request.
          if (normal) await this.untilAborted(r).catch(() => undefined);
        }
      } catch (e) {
        this.logCleanup('close()', e);
      }
    }
  }

  private closeLate(body: unknown): void {
    try {
      const c = (body as { close?: unknown } | null)?.close;
      if (typeof c === 'function') {
        const r: unknown = c.call(body);
        if (isThenable(r)) r.then(undefined, (e) => this.logCleanup('close()', e));
      }
    } catch (e) {
      this.logCleanup('close()', e);
    }
  }

  private logCleanup(what: string, e: unknown): void {
    this.server.log.log('error', `the response body's ${what} threw (${this.provider.label}):\n${stackOf(e)}`);
  }
}

/** Checks that an application's return value is a body. */
function checkBody(result: unknown): Body {
  if (result === null || result === undefined) {
    throw new SpecViolation(`the application returned ${result}; it must return an iterable body such as [] or ['text']`);
  }
  if (typeof result === 'string' || result instanceof Uint8Array) {
    throw new SpecViolation(`the application returned a ${describe(result)} itself; return it inside an array: [body]`);
  }
  const o = result as Record<symbol, unknown>;
  if (typeof o[Symbol.asyncIterator] !== 'function' && typeof o[Symbol.iterator] !== 'function') {
    throw new SpecViolation(`the application returned a non-iterable ${describe(result)}; it must return an Iterable or AsyncIterable of chunks`);
  }
  return result as Body;
}

/** A chunk as bytes: Uint8Array as is, strings UTF-8 encoded; anything else breaks the spec. */
function toBytes(chunk: unknown, what: string): Uint8Array {
  if (typeof chunk === 'string') return chunk.length === 0 ? EMPTY : Buffer.from(chunk, 'utf8');
  if (chunk instanceof Uint8Array) return chunk;
  throw new SpecViolation(`${what} must be a Uint8Array or a string, got ${describe(chunk)}`);
}


/**
 * Errors that only say "the request was aborted": ours, a body read that failed because
 * of it, and AbortError, what AbortSignal-aware APIs (timers/promises, fetch, streams)
 * reject with when the app passed them tsgi.signal.
 */
function abortDerived(e: unknown): boolean {
  return e instanceof RequestAborted || e instanceof BodyReadError || (e instanceof Error && e.name === 'AbortError');
}

function stackOf(e: unknown): string {
  if (e instanceof Error) {
    let s = e.stack ?? `${e.name}: ${e.message}`;
    if (e.cause !== undefined) s += `\nCaused by: ${stackOf(e.cause)}`;
    return s;
  }
  return `non-Error thrown: ${describe(e)}`;
}
