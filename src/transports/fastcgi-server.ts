/**
 * The FastCGI transport (`tsgi daemon --protocol fastcgi`): one handler per connection
 * from a web server (lighttpd mod_fastcgi, nginx fastcgi_pass, Apache mod_proxy_fcgi),
 * over the pure codec in ./protocols/fastcgi.ts.
 *
 * Per connection:
 *   - requests are multiplexed when the web server sends them so (none of the three
 *     does; a hand-written client may): each request is its own runRequest() with its
 *     own body from its STDIN records and its own AbortController;
 *   - the response goes out as STDOUT records: a CGI-style head ("Status: NNN Reason",
 *     headers, blank line), the body, an empty STDOUT, then END_REQUEST(0,
 *     REQUEST_COMPLETE). When socket.write() says the kernel buffer is full, the body
 *     waits for 'drain';
 *   - FCGI_KEEP_CONN unset: the connection is closed once the request has been answered;
 *   - ABORT_REQUEST fires the request's signal (the gateway's outcome is client-gone) and
 *     the request is answered with END_REQUEST (appStatus 1) as the spec requires; the
 *     connection stays open;
 *   - GET_VALUES is answered (FCGI_MAX_CONNS, FCGI_MAX_REQS, FCGI_MPXS_CONNS); a
 *     management record of an unknown type gets UNKNOWN_TYPE.
 *
 * Request bodies and backpressure: STDIN records are queued per request. When the
 * connection's queued, unread body bytes pass `bodyHighWaterMark` the socket is paused,
 * so a web server cannot make us buffer an upload the application is not reading; it
 * resumes as the application reads. FastCGI has no per-request flow control, so a
 * paused connection pauses every request on it (head-of-line blocking; the web servers
 * above never multiplex, so in practice it is per request). STDIN that ends before
 * CONTENT_LENGTH is a protocol error: the body read fails (BodyReadError), never EOF.
 * Body bytes for a request the application has already answered are dropped.
 *
 * Abort (the application failed after its head went out; docs/spec.md §12.2): FastCGI
 * has no in-band "this response is incomplete". END_REQUEST carries an appStatus, but
 * nginx and lighttpd ignore it and would finish the HTTP response as if complete (the
 * final chunk, the connection kept alive); so an aborted request gets NO END_REQUEST.
 * Closing the connection alone is not enough either: nginx with `fastcgi_buffering off`
 * takes the end of a response without Content-Length at EOF as its normal end (its
 * non-buffered path finalizes on EOF when the length is unknown). So we send one STDERR
 * record saying the response is incomplete (it lands in the web server's error log),
 * then a record header of type 0, which FastCGI does not define and every web server
 * rejects, and close the connection. Verified against the real servers
 * (test/integration/protocols-fastcgi.test.ts): nginx logs "upstream sent invalid
 * FastCGI record type: 0" and cuts the client's response short (no last chunk);
 * lighttpd logs "response already sent out, but backend returned error … terminating
 * connection". Other requests multiplexed on the same connection are cut short too
 * (client-gone); that is the price of being able to signal the abort at all.
 *
 * The application's tsgi.errors, and the gateway's own error entries, go to the server
 * log (options.log), not to FCGI_STDERR: the gateway core builds tsgi.errors on the
 * server's ErrorLog, the other protocols (SCGI, uwsgi, HTTP) have no stderr channel so
 * the daemon's log is the one place to look, and that log keeps levels and the pid.
 * (nginx would file each STDERR record as a separate "FastCGI sent in stderr" error
 * line, and lighttpd in its error log; encodeStderr() is there if a front end wants it.)
 *
 * Bad input (a malformed or truncated record, PARAMS over the limit, a request id
 * reused, STDIN longer or shorter than CONTENT_LENGTH, …) gets one log line naming the
 * problem and the peer, and the connection is destroyed; requests running on it see
 * their signal fire. Nothing hangs: a connection with no request, or waiting for a
 * request's PARAMS, or with an application waiting for STDIN that does not come, is
 * closed after `timeoutMs` (default 30 s) without input; a peer that stops reading our
 * output is closed after `timeoutMs` without a 'drain'.
 */
import * as net from 'node:net';
import { BodyReadError, RequestAborted } from '../gateway/errors';
import type { ErrorLog } from '../gateway/log';
import { runRequest, type AppProvider, type ResponseHead, type ResponseSink, type ServerContext } from '../gateway/run';
import { protocolEnviron, urlSchemeOf, type ProtocolEnvironOptions } from './protocols/cgi-vars';
import {
  FCGI_STDOUT,
  FastCgiDecoder,
  FastCgiProtocolError,
  encodeEndRequest,
  encodeGetValuesResult,
  encodeRecord,
  encodeStderr,
  encodeStdout,
  encodeUnknownType,
  varsFromParams,
  type FcgiEvent,
} from './protocols/fastcgi';
import { RequestExpired, type RequestMonitor } from './monitor';

export interface FastCgiServerOptions {
  provider: AppProvider;
  log: ErrorLog;
  /** The largest PARAMS block of one request. Default 64 KiB. */
  maxParamsBytes?: number;
  /** Requests active at once on one connection (more get OVERLOADED). Default 100. */
  maxRequestsPerConnection?: number;
  /** Answered to GET_VALUES FCGI_MAX_CONNS. Default 1000. */
  maxConnections?: number;
  /** Accept multiplexed requests. Default true (FCGI_MPXS_CONNS=1). */
  multiplex?: boolean;
  /** Input idle / header / output stall timeout in ms. Default 30 000. */
  timeoutMs?: number;
  /** Unread body bytes queued per connection before the socket is paused. Default 1 MiB. */
  bodyHighWaterMark?: number;
  /** Mount point and SetEnv-style variables (see cgi-vars.ts). */
  environ?: ProtocolEnvironOptions;
  multiprocess?: boolean;
  /**
   * Told when each request begins and ends (daemon-mode.ts). Ending one early aborts it
   * like FCGI_ABORT_REQUEST does; other requests on the connection carry on.
   */
  monitor?: RequestMonitor;
}

const DEFAULT_TIMEOUT_MS = 30_000;
const ABORT_NOTE = Buffer.from('tsgi: the application failed after the response started; the response is incomplete (see the tsgi log)\n');
/** A record header of type 0 (FastCGI defines none): nginx and Apache reject it and fail the response. */
const ABORT_MARKER = (id: number) => Buffer.from([1, 0, (id >> 8) & 0xff, id & 0xff, 0, 0, 0, 0]);
const DEFAULT_HIGH_WATER = 1024 * 1024;

/**
 * A net.Server whose connections speak FastCGI. allowHalfOpen, so that the handler
 * decides what a web server's end of stream means (it aborts what is still running).
 */
export function createFastCgiServer(options: FastCgiServerOptions): net.Server {
  const server = net.createServer({ allowHalfOpen: true });
  server.on('connection', (socket) => handleFastCgiConnection(socket, options));
  return server;
}

/** Serves FastCGI on one connected socket until it closes. Never throws; never leaves the socket hanging. */
export function handleFastCgiConnection(socket: net.Socket, options: FastCgiServerOptions): FastCgiConnection {
  return new FastCgiConnection(socket, options);
}

/** A request body fed from STDIN records, read by the gateway as an AsyncIterable. */
class StdinBody implements AsyncIterable<Uint8Array> {
  private queue: Buffer[] = [];
  queued = 0;
  private ended = false;
  private failure: Error | null = null;
  private waiter: { resolve: (r: IteratorResult<Uint8Array>) => void; reject: (e: Error) => void } | null = null;

  constructor(private readonly onRead: (bytes: number) => void) {}

  /** True while the application waits for bytes that have not come. */
  get starving(): boolean {
    return this.waiter !== null;
  }

  push(data: Buffer): void {
    if (this.ended || this.failure) return;
    if (this.waiter) {
      const w = this.waiter;
      this.waiter = null;
      w.resolve({ value: data, done: false });
      return;
    }
    this.queue.push(data);
    this.queued += data.byteLength;
  }

  end(): void {
    this.ended = true;
    if (this.waiter && this.queue.length === 0) {
      const w = this.waiter;
      this.waiter = null;
      w.resolve({ value: undefined, done: true });
    }
  }

  /** Later reads reject with `e` (never an end of body). Queued bytes are discarded. */
  fail(e: Error): void {
    if (this.failure || (this.ended && this.queue.length === 0)) return;
    this.failure = e;
    this.discard();
    if (this.waiter) {
      const w = this.waiter;
      this.waiter = null;
      w.reject(e);
    }
  }

  /** Drops what is queued (the request is over). */
  discard(): void {
    const n = this.queued;
    this.queue = [];
    this.queued = 0;
    if (n) this.onRead(n);
  }

  [Symbol.asyncIterator](): AsyncIterator<Uint8Array> {
    return {
      next: () => {
        if (this.queue.length > 0) {
          const value = this.queue.shift() as Buffer;
          this.queued -= value.byteLength;
          this.onRead(value.byteLength);
          return Promise.resolve({ value, done: false });
        }
        if (this.failure) return Promise.reject(this.failure);
        if (this.ended) return Promise.resolve({ value: undefined, done: true });
        return new Promise((resolve, reject) => {
          this.waiter = { resolve, reject };
        });
      },
      return: () => {
        this.discard();
        return Promise.resolve({ value: undefined, done: true });
      },
    };
  }
}

/** One request on a connection (exported for the sink's signature only). */
export interface ActiveRequest {
  id: number;
  keepConn: boolean;
  controller: AbortController;
  body: StdinBody;
  /** END_REQUEST sent (or the connection is gone): nothing more goes out for it. */
  done: boolean;
  /** The web server sent ABORT_REQUEST. */
  abortRequested: boolean;
  running: boolean;
}

export class FastCgiConnection {
  private readonly decoder: FastCgiDecoder;
  private readonly requests = new Map<number, ActiveRequest>();
  private readonly context: ServerContext;
  private readonly timeoutMs: number;
  private readonly highWater: number;
  private readonly peer: string;
  private queuedBytes = 0;
  private paused = false;
  private closed = false;
  /** No new requests: close once the active ones are answered (KEEP_CONN unset, or the peer half-closed). */
  private closeWhenIdle = false;
  private lastInput = Date.now();
  private timer: NodeJS.Timeout;
  private readonly drainWaiters = new Set<() => void>();

  constructor(
    private readonly socket: net.Socket,
    private readonly options: FastCgiServerOptions,
  ) {
    this.decoder = new FastCgiDecoder({
      maxParamsBytes: options.maxParamsBytes,
      maxRequests: options.maxRequestsPerConnection,
      multiplex: options.multiplex,
    });
    this.context = { log: options.log, multithread: true, multiprocess: options.multiprocess ?? false, runOnce: false };
    this.timeoutMs = options.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    this.highWater = options.bodyHighWaterMark ?? DEFAULT_HIGH_WATER;
    this.peer = socket.remoteAddress ? `${socket.remoteAddress}:${socket.remotePort}` : 'unix socket';
    socket.setNoDelay?.(true);
    socket.on('data', (d: Buffer) => this.onData(d));
    socket.on('end', () => this.onEnd());
    socket.on('drain', () => this.onDrain());
    socket.on('error', (e: NodeJS.ErrnoException) => {
      if (!this.closed) this.options.log.log('info', `FastCGI connection from ${this.peer}: ${e.code ?? e.message}`);
    });
    socket.on('close', () => this.teardown(new RequestAborted('the web server closed the FastCGI connection')));
    this.timer = setTimeout(() => this.onTimer(), this.timeoutMs);
    this.timer.unref?.();
  }

  /** Requests being served on this connection. */
  get activeRequests(): number {
    return this.requests.size;
  }

  // ---- input

  private onData(chunk: Buffer): void {
    if (this.closed) return;
    this.lastInput = Date.now();
    let decoded: { events: FcgiEvent[]; error: FastCgiProtocolError | null };
    try {
      decoded = this.decoder.decode(chunk);
    } catch (e) {
      return this.fatal(`internal error in the FastCGI decoder: ${(e as Error)?.stack ?? String(e)}`, 'error');
    }
    // The events before a violation still happen: a request whose STDIN then turns out
    // short has started, and its read must fail rather than hang or see an end.
    for (const ev of decoded.events) {
      if (this.closed) return;
      this.event(ev);
    }
    if (decoded.error) this.fatal(decoded.error.detail);
  }

  private event(ev: FcgiEvent): void {
    switch (ev.kind) {
      case 'begin': {
        if (this.closeWhenIdle) {
          // After a request without KEEP_CONN the web server should not send another.
          return this.fatal(`BEGIN_REQUEST for request ${ev.requestId} after a request without FCGI_KEEP_CONN`);
        }
        const req: ActiveRequest = {
          id: ev.requestId,
          keepConn: ev.keepConn,
          controller: new AbortController(),
          body: new StdinBody((n) => this.consumed(n)),
          done: false,
          abortRequested: false,
          running: false,
        };
        this.requests.set(ev.requestId, req);
        return;
      }
      case 'params': {
        const req = this.requests.get(ev.requestId);
        if (req) this.start(req, ev.params);
        return;
      }
      case 'stdin': {
        const req = this.requests.get(ev.requestId);
        if (!req || req.done) return;
        req.body.push(ev.data);
        this.queuedBytes = this.sumQueued();
        if (this.queuedBytes > this.highWater && !this.paused) {
          this.paused = true;
          this.socket.pause();
        }
        return;
      }
      case 'stdin-end': {
        this.requests.get(ev.requestId)?.body.end();
        return;
      }
      case 'abort': {
        const req = this.requests.get(ev.requestId);
        if (!req || req.done) return;
        req.abortRequested = true;
        req.body.fail(new BodyReadError('the web server aborted the request (FCGI_ABORT_REQUEST)'));
        if (!req.running) {
          // PARAMS not complete: no application to stop; answer at once.
          this.endRequest(req, 1);
          return;
        }
        req.controller.abort(new RequestAborted('the web server aborted the request (FCGI_ABORT_REQUEST)'));
        return;
      }
      case 'reject': {
        this.options.log.log('info', `FastCGI request ${ev.requestId} from ${this.peer} refused: ${ev.reason}`);
        this.write(encodeEndRequest(ev.requestId, 0, ev.protocolStatus));
        if (!ev.keepConn) this.closeWhenIdle = true;
        this.maybeClose();
        return;
      }
      case 'get-values': {
        const known = new Map<string, string>([
          ['FCGI_MAX_CONNS', String(this.options.maxConnections ?? 1000)],
          ['FCGI_MAX_REQS', String(this.options.maxRequestsPerConnection ?? 100)],
          ['FCGI_MPXS_CONNS', this.options.multiplex === false ? '0' : '1'],
        ]);
        const answer: Array<[string, string]> = [];
        for (const n of new Set(ev.names)) {
          const v = known.get(n);
          if (v !== undefined) answer.push([n, v]);
        }
        this.write(encodeGetValuesResult(answer));
        return;
      }
      case 'unknown-type':
        this.write(encodeUnknownType(ev.type));
        return;
    }
  }

  private onEnd(): void {
    // The web servers never half-close a connection they still want answers on: an
    // end of stream means they are gone (the client left, or they gave up), so it fires
    // the signal of every request still running (docs/spec.md §12.2).
    const cut = this.decoder.describeEnd();
    if (cut) return this.fatal(cut);
    if (this.requests.size > 0) {
      this.options.log.log('info', `FastCGI connection from ${this.peer}: the web server closed it with ${this.requests.size} request(s) unanswered`);
      return this.destroy();
    }
    this.closeWhenIdle = true;
    this.maybeClose();
  }

  private consumed(n: number): void {
    this.queuedBytes = Math.max(0, this.queuedBytes - n);
    if (this.paused && this.queuedBytes <= this.highWater / 2 && !this.closed) {
      this.paused = false;
      this.socket.resume();
    }
  }

  private sumQueued(): number {
    let n = 0;
    for (const r of this.requests.values()) n += r.body.queued;
    return n;
  }

  // ---- requests

  private start(req: ActiveRequest, params: Array<[string, string]>): void {
    req.running = true;
    const vars = varsFromParams(params);
    const environ = protocolEnviron(vars, this.options.environ);
    const sink = new FcgiSink(this, req);
    const done = this.options.monitor?.begin(`${environ.REQUEST_METHOD} ${environ.REQUEST_URI}`, () => {
      if (req.done || req.controller.signal.aborted) return;
      this.options.log.log('warn', `FastCGI connection from ${this.peer}: request-timeout: request ${req.id} aborted`);
      req.controller.abort(new RequestExpired('the request took longer than the request-timeout'));
    });
    runRequest(
      this.options.provider,
      { environ, body: req.body, urlScheme: urlSchemeOf(vars), signal: req.controller.signal },
      sink,
      this.context,
    ).then(
      () => {
        done?.();
        this.requestFinished(req);
      },
      (e) => {
        done?.();
        // runRequest never rejects; a bug if it does.
        this.options.log.log('error', `internal error in the FastCGI transport: ${(e as Error)?.stack ?? String(e)}`);
        this.destroy();
      },
    );
  }

  private requestFinished(req: ActiveRequest): void {
    if (!req.done) {
      // The gateway always ends with end() or abort(); reaching here means neither went
      // out (the connection died first). Nothing can be sent; make sure it is closed.
      this.destroy();
    }
  }

  /** Sends END_REQUEST and frees the id. */
  endRequest(req: ActiveRequest, appStatus: number, withEmptyStdout = false): void {
    if (req.done) return;
    req.done = true;
    req.body.discard();
    this.requests.delete(req.id);
    this.decoder.finish(req.id);
    this.lastInput = Date.now();
    if (!this.closed) {
      const end = encodeEndRequest(req.id, appStatus);
      this.write(withEmptyStdout ? Buffer.concat([encodeRecord(FCGI_STDOUT, req.id), end]) : end);
    }
    if (!req.keepConn) this.closeWhenIdle = true;
    this.maybeClose();
  }

  /** The application failed after its head went out: see the file comment. */
  abortResponse(req: ActiveRequest): void {
    if (req.done) return;
    if (req.abortRequested && !this.closed) {
      // The web server asked for the abort: it expects END_REQUEST, nothing more.
      this.endRequest(req, 1);
      return;
    }
    req.done = true;
    if (!this.closed) {
      const others = this.requests.size - 1;
      this.options.log.log(
        'info',
        `FastCGI request ${req.id} from ${this.peer}: response aborted; closing the connection without END_REQUEST so the web server sees it incomplete` +
          (others > 0 ? ` (${others} other request(s) on it are cut short)` : ''),
      );
      // A note for the web server's error log, then a record no web server accepts: see
      // the file comment (nginx without fastcgi_buffering takes a bare close as the end).
      this.write(Buffer.concat([encodeStderr(req.id, ABORT_NOTE), ABORT_MARKER(req.id)]));
      this.socket.end();
    }
    this.destroySoon();
  }

  private maybeClose(): void {
    if (!this.closeWhenIdle || this.closed || this.requests.size > 0) return;
    this.closed = true;
    clearTimeout(this.timer);
    this.socket.end();
    // A peer that never reads what is left would keep the socket: bounded by the timeout.
    const t = setTimeout(() => this.socket.destroy(), this.timeoutMs);
    t.unref?.();
    this.socket.once('close', () => clearTimeout(t));
  }

  // ---- output

  /** Writes bytes; false when the kernel buffer is full (wait with drained()). */
  write(bytes: Uint8Array): boolean {
    if (this.closed || this.socket.destroyed) return true;
    return this.socket.write(bytes);
  }

  get isClosed(): boolean {
    return this.closed || this.socket.destroyed;
  }

  /** Resolves on 'drain'; rejects when the connection closes or the peer stops reading for timeoutMs. */
  drained(req: ActiveRequest): Promise<void> {
    return new Promise((resolve, reject) => {
      let timer: NodeJS.Timeout | null = null;
      const done = () => {
        this.drainWaiters.delete(done);
        if (timer) clearTimeout(timer);
        req.controller.signal.removeEventListener('abort', onAbort);
        if (this.isClosed) reject(new RequestAborted('the FastCGI connection closed'));
        else resolve();
      };
      const onAbort = () => {
        this.drainWaiters.delete(done);
        if (timer) clearTimeout(timer);
        reject(req.controller.signal.reason instanceof Error ? req.controller.signal.reason : new RequestAborted('request aborted'));
      };
      this.drainWaiters.add(done);
      req.controller.signal.addEventListener('abort', onAbort, { once: true });
      timer = setTimeout(() => {
        if (!this.drainWaiters.has(done)) return;
        this.fatal(`the web server stopped reading the response of request ${req.id} (no progress for ${this.timeoutMs / 1000} s)`);
      }, this.timeoutMs);
      timer.unref?.();
    });
  }

  private onDrain(): void {
    for (const w of [...this.drainWaiters]) w();
  }

  // ---- timeouts, errors, teardown

  private onTimer(): void {
    if (this.closed) return;
    const idle = Date.now() - this.lastInput;
    if (idle < this.timeoutMs) {
      this.rearm(this.timeoutMs - idle);
      return;
    }
    const secs = `${this.timeoutMs / 1000} s`;
    if (this.requests.size === 0 && this.decoder.awaitingHead === false) {
      // An idle keep-alive connection: close it quietly.
      this.options.log.log('debug', `FastCGI connection from ${this.peer} idle for ${secs}; closing it`);
      this.closeWhenIdle = true;
      this.maybeClose();
      return;
    }
    if (this.decoder.awaitingHead) {
      return this.fatal(`no complete request head within ${secs} (${this.decoder.describeEnd() || 'waiting for a record'})`);
    }
    for (const r of this.requests.values()) {
      if (r.body.starving) {
        return this.fatal(`request ${r.id}: no STDIN for ${secs} while the application waits for its body${this.paused ? ' (the connection is paused: another request is not reading its body)' : ''}`);
      }
    }
    // The applications are busy, not waiting on the web server: not a stall.
    this.lastInput = Date.now();
    this.rearm(this.timeoutMs);
  }

  private rearm(ms: number): void {
    this.timer = setTimeout(() => this.onTimer(), Math.max(1, ms));
    this.timer.unref?.();
  }

  /** Logs one line and destroys the connection. */
  private fatal(why: string, level: 'error' | 'warn' | 'info' = 'warn'): void {
    if (this.closed && this.socket.destroyed) return;
    this.options.log.log(level, `FastCGI connection from ${this.peer} closed: ${why}`);
    for (const r of this.requests.values()) {
      if (!r.done) r.body.fail(new BodyReadError(`the FastCGI connection failed: ${why}`));
    }
    this.destroy();
  }

  /** Destroys the socket once what was written has gone out (bounded by the timeout). */
  private destroySoon(): void {
    this.closed = true;
    clearTimeout(this.timer);
    if (this.socket.destroyed) return;
    if (this.socket.writableLength === 0) {
      this.socket.destroy();
      return;
    }
    this.socket.end(() => this.socket.destroy());
    const t = setTimeout(() => this.socket.destroy(), Math.min(this.timeoutMs, 5000));
    t.unref?.();
    this.socket.once('close', () => clearTimeout(t));
  }

  private destroy(): void {
    this.closed = true;
    clearTimeout(this.timer);
    this.socket.destroy();
    // 'close' follows and tears the requests down.
  }

  private teardown(reason: Error): void {
    this.closed = true;
    clearTimeout(this.timer);
    for (const w of [...this.drainWaiters]) w();
    for (const r of this.requests.values()) {
      if (r.done) continue;
      r.body.fail(new BodyReadError('the FastCGI connection closed before the request body was complete'));
      if (!r.controller.signal.aborted) r.controller.abort(reason);
    }
  }
}

/** The gateway's sink for one request: STDOUT records, END_REQUEST, or an abort. */
class FcgiSink implements ResponseSink {
  constructor(
    private readonly conn: FastCgiConnection,
    private readonly req: ActiveRequest,
  ) {}

  head(head: ResponseHead): void {
    let text = `Status: ${head.status}\r\n`;
    for (const [n, v] of head.headers) text += `${n}: ${v}\r\n`;
    this.send(Buffer.from(text + '\r\n', 'latin1'));
  }

  body(chunk: Uint8Array): void | Promise<void> {
    return this.send(chunk);
  }

  end(): void {
    this.conn.endRequest(this.req, 0, true);
  }

  abort(): void {
    this.conn.abortResponse(this.req);
  }

  private send(bytes: Uint8Array): void | Promise<void> {
    if (this.req.done || this.conn.isClosed) throw new RequestAborted('the FastCGI connection closed');
    if (this.conn.write(encodeStdout(this.req.id, bytes))) return;
    return this.conn.drained(this.req);
  }
}
