/**
 * The daemon's side of the mod_tsgi daemon protocol (docs/protocol.md): a net.Server
 * whose connections come from Apache children, each authenticated by HELLO and then
 * carrying one request at a time, for as long as the child keeps it in its pool.
 *
 *   - Every request runs through the gateway (runRequest), with the environ Apache built
 *     (SCRIPT_NAME / PATH_INFO are taken as sent: Apache already mapped the URL).
 *   - At most `threads` requests run at once, across all connections; more wait in one
 *     FIFO. A request about to start whose request_start_us is older than queueTimeoutMs
 *     (0 means "unknown" and is never too old) gets ERROR QUEUE_TIMEOUT and its
 *     application is not run. The check is made whenever a request is about to start, so
 *     time spent in the listen backlog counts too, as mod_wsgi's queue-timeout does.
 *   - The body flows with backpressure: BODY frames are queued for tsgi.input and the
 *     socket is paused while more than BODY_HIGH_WATER bytes wait for the application.
 *     BODY_END is the end of the body; ABORT makes reads fail (BodyReadError) and fires
 *     tsgi.signal; the trailer is then ERROR BODY.
 *   - The response: HEAD when the gateway starts it, BODY frames (small writes are
 *     coalesced up to COALESCE_BYTES and flushed at the next turn of the event loop;
 *     a full socket buffer makes sink.body() wait for 'drain'), then END.
 *   - Failures: the gateway answers an application error before the head with its own
 *     500 page. Nothing of it has been written to the socket when runRequest reports the
 *     'error' outcome, so the wire drops that page and sends ERROR APP instead (ERROR
 *     BAD_REQUEST for the gateway's 400): Apache then answers with its own ErrorDocument,
 *     as for any other 500. The same holds for a failure after the application's head
 *     while the head is still unflushed. After the head went out, a failure is ERROR APP
 *     (a truncation). The monitor's expire() sends ERROR TIMEOUT at once (504 before the
 *     head, truncation after) and fires tsgi.signal with RequestExpired.
 *   - Protocol errors: ERROR PROTOCOL with CLOSE, one log line, the request in progress
 *     aborted, the connection closed. A wrong secret or a first frame other than HELLO:
 *     ERROR AUTH with CLOSE and one warning; another version: ERROR VERSION with CLOSE.
 *   - The peer closing the connection aborts the request in progress (tsgi.signal).
 *   - drain(): idle connections get GOAWAY and are closed after DRAIN_IDLE_MS more of
 *     idleness; busy ones get CLOSE on their trailer; connections that say HELLO later
 *     get GOAWAY right after the daemon's HELLO. drain() does not stop the listener:
 *     the caller closes it (server.close()) when it stops accepting.
 */
import * as net from 'node:net';
import { timingSafeEqual } from 'node:crypto';
import { BodyReadError, RequestAborted } from '../gateway/errors';
import type { ErrorLog, LogLevel } from '../gateway/log';
import { transferGc } from '../gateway/transfer-gc';
import { runRequest, type AppProvider, type RequestOutcome, type ResponseHead, type ResponseSink, type ServerContext } from '../gateway/run';
import { RequestExpired, type RequestMonitor } from './monitor';
import { normalizeCgiEnviron } from './protocols/cgi-vars';
import { ProtocolError } from './protocols/protocol-error';
import {
  ABORT,
  BODY,
  BODY_END,
  D_BODY,
  ErrorCode,
  FRAME_HEADER_BYTES,
  HELLO,
  MAX_BODY_FRAME,
  REQUEST,
  SECRET_BYTES,
  STATUS,
  WIRE_VERSION,
  WireParser,
  WireProtocolError,
  decodeAbort,
  decodeClientHello,
  decodeRequest,
  encodeDaemonHello,
  encodeEnd,
  encodeError,
  encodeGoaway,
  encodeHead,
  encodeStatus,
  frameName,
  writeFrameHeader,
  type ErrorCodeValue,
  type RawFrame,
  type WireRequest,
} from './protocols/tsgi-wire';

export interface WireServerOptions {
  /** The group's 32-byte secret; HELLO's is compared in constant time. */
  secret: Uint8Array;
  /** The application for a request; called once per request, just before it runs. */
  providers: (script: string, callable: string, applicationGroup: string, reload: boolean) => AppProvider;
  log: ErrorLog;
  /** What tsgi.multithread / tsgi.multiprocess say. */
  context: { multithread: boolean; multiprocess: boolean };
  /** Requests running at once (all connections together); more wait in a FIFO. */
  threads: number;
  /** 0: none. A request about to start whose request_start_us is older than this gets ERROR QUEUE_TIMEOUT. */
  queueTimeoutMs: number;
  /** Told when each request starts running and ends; its expire() ends one with ERROR TIMEOUT. */
  monitor?: RequestMonitor;
  /** Answers a STATUS frame (JSON.stringify of the result). Default: { pid, threads, running, queued }. */
  status?: () => Promise<unknown>;
  /** Lower frame limits than docs/protocol.md's, per client frame type (REQUEST, BODY, ABORT). */
  maxFrameBytes?: Partial<Record<number, number>>;
}

export interface WireServer extends net.Server {
  /** Draining: GOAWAY to idle connections (closed after 1 s idle), END/ERROR get CLOSE on busy ones. */
  drain(): void;
  /** Requests whose application is running now. */
  readonly running: number;
  /** Requests waiting for a thread. */
  readonly queued: number;
}

/** Bytes of request body held for an application that is not reading before the socket is paused. */
export const BODY_HIGH_WATER = 1024 * 1024;
/** Small response frames are gathered up to this many bytes before a write. */
export const COALESCE_BYTES = 64 * 1024;
/** A draining daemon closes a connection idle this long with its GOAWAY sent. */
export const DRAIN_IDLE_MS = 1000;
/** After our side closed, how long the peer gets to close its side before the socket is destroyed. */
const LINGER_MS = 2000;

const QUIET_ERRORS = new Set(['ECONNRESET', 'EPIPE', 'ERR_STREAM_DESTROYED', 'ERR_STREAM_WRITE_AFTER_END']);

/** Creates (does not start) the daemon's server; listen on the inherited socket with server.listen({ fd: 3 }). */
export function createWireServer(options: WireServerOptions): WireServer {
  if (!(options.secret instanceof Uint8Array) || options.secret.byteLength !== SECRET_BYTES) {
    throw new RangeError(`createWireServer: the secret must be ${SECRET_BYTES} bytes, got ${options.secret?.byteLength ?? typeof options.secret}`);
  }
  if (!Number.isInteger(options.threads) || options.threads < 1) throw new RangeError(`createWireServer: threads must be a positive integer, got ${options.threads}`);
  if (!Number.isFinite(options.queueTimeoutMs) || options.queueTimeoutMs < 0) {
    throw new RangeError(`createWireServer: queueTimeoutMs must be a non-negative number, got ${options.queueTimeoutMs}`);
  }
  const shared: Shared = {
    options,
    secret: Buffer.from(options.secret),
    scheduler: new Scheduler(options.threads, options.queueTimeoutMs),
    connections: new Set(),
    draining: false,
    nextId: 1,
    context: { log: options.log, multithread: options.context.multithread, multiprocess: options.context.multiprocess, runOnce: false },
    moved: transferGc(),
  };
  const server = net.createServer({ allowHalfOpen: false }, (socket) => {
    const c = new Connection(socket, shared);
    shared.connections.add(c);
    socket.once('close', () => shared.connections.delete(c));
  }) as WireServer;
  Object.defineProperties(server, {
    drain: {
      value: () => {
        shared.draining = true;
        for (const c of shared.connections) c.drain();
      },
    },
    running: { get: () => shared.scheduler.running },
    queued: { get: () => shared.scheduler.queued },
  });
  return server;
}

interface Shared {
  options: WireServerOptions;
  secret: Buffer;
  scheduler: Scheduler;
  connections: Set<Connection>;
  draining: boolean;
  nextId: number;
  context: ServerContext;
  /** Counts body bytes moved both ways; a minor GC per 8 MiB keeps a worker's RSS flat (gateway/transfer-gc.ts). */
  moved: (bytes: number) => void;
}

// ---------------------------------------------------------------------------
// Threads: at most N requests run; the rest wait in order.

interface Job {
  /** request_start_us in ms, 0 when unknown. */
  startMs: number;
  cancelled: boolean;
  /** Runs the request; the thread is busy until the promise settles. */
  run(): Promise<void>;
  /** The request waited too long: answer QUEUE_TIMEOUT, do not run it. */
  expire(waitedMs: number): void;
}

class Scheduler {
  running = 0;
  private readonly queue: Job[] = [];

  constructor(
    private readonly threads: number,
    private readonly queueTimeoutMs: number,
  ) {}

  get queued(): number {
    let n = 0;
    for (const j of this.queue) if (!j.cancelled) n++;
    return n;
  }

  admit(job: Job): void {
    this.queue.push(job);
    this.pump();
  }

  private pump(): void {
    while (this.running < this.threads && this.queue.length > 0) {
      const job = this.queue.shift() as Job;
      if (job.cancelled) continue;
      const waited = job.startMs > 0 ? Date.now() - job.startMs : 0;
      if (this.queueTimeoutMs > 0 && waited > this.queueTimeoutMs) {
        job.expire(waited);
        continue;
      }
      this.running++;
      // run() never rejects (it turns every failure into a trailer).
      void job.run().finally(() => {
        this.running--;
        this.pump();
      });
    }
  }
}

// ---------------------------------------------------------------------------
// One request on a connection

class Exchange {
  readonly controller = new AbortController();
  /** The client's body side is open (HAS_BODY, no BODY_END/ABORT yet). */
  bodyOpen: boolean;
  /** A trailer (END or ERROR) went out: nothing more of this response is written. */
  trailerSent = false;
  /** The gateway is done with it (or it never ran). */
  runFinished = false;
  started = false;
  job: Job | null = null;
  // The body, between the socket and the application.
  chunks: Buffer[] = [];
  queuedBytes = 0;
  bodyEnded = false;
  bodyError: Error | null = null;
  waiter: (() => void) | null = null;
  // The response.
  headFlushed = false;
  headQueued = false;
  timedOut = false;
  aborted: string | null = null;

  constructor(
    readonly req: WireRequest | null,
    readonly what: string,
  ) {
    this.bodyOpen = req?.hasBody ?? false;
  }

  wake(): void {
    const w = this.waiter;
    this.waiter = null;
    w?.();
  }
}

class Connection {
  private readonly id: number;
  private readonly parser: WireParser;
  private authed = false;
  private closed = false;
  /** We sent a trailer with CLOSE, or an ERROR that ends the connection. */
  private ending = false;
  private goawaySent = false;
  private idleTimer: NodeJS.Timeout | null = null;
  private current: Exchange | null = null;
  /** Frames that arrived while the previous request was still finishing (after its trailer). */
  private deferred: RawFrame[] | null = null;
  private pausedForBody = false;
  // Coalesced output.
  private parts: Buffer[] = [];
  private partBytes = 0;
  private flushScheduled = false;

  constructor(
    private readonly socket: net.Socket,
    private readonly shared: Shared,
  ) {
    this.id = shared.nextId++;
    const limits = shared.options.maxFrameBytes;
    this.parser = new WireParser({ from: 'client', limits });
    socket.on('data', (chunk: Buffer) => this.onData(chunk));
    socket.on('error', (e: NodeJS.ErrnoException) => {
      if (!QUIET_ERRORS.has(e.code ?? '')) this.log('warn', `connection error: ${e.message}`);
    });
    socket.once('close', () => this.onClose());
  }

  private log(level: LogLevel, message: string): void {
    this.shared.options.log.log(level, `tsgi-wire connection #${this.id}: ${message}`);
  }

  // ---- input ---------------------------------------------------------------------------

  private onData(chunk: Buffer): void {
    if (this.closed || this.ending) return;
    this.guard(() =>
      this.parser.read(chunk, (f) => {
        if (this.ending) return;
        if (this.deferred) this.deferred.push(f);
        else this.onFrame(f);
      }),
    );
  }

  /** Runs frame handling: a protocol error ends the connection as §6 says; a bug here costs one connection, never the daemon. */
  private guard(fn: () => void): void {
    try {
      fn();
    } catch (e) {
      if (e instanceof ProtocolError) return this.protocolError(e);
      this.log('error', `internal error: ${(e as Error)?.stack ?? String(e)}`);
      this.socket.destroy();
    }
  }

  private onFrame(f: RawFrame): void {
    if (!this.authed) return this.hello(f);
    switch (f.type) {
      case REQUEST:
      case STATUS: {
        const cur = this.current;
        if (cur) {
          if (!cur.trailerSent) {
            throw new WireProtocolError(`${frameName(f.type)} frame before the trailer of the previous response (one request at a time per connection)`);
          }
          // Its trailer is out but the gateway is still finishing it: this one waits.
          this.deferred = [f];
          this.socket.pause();
          return;
        }
        this.stopIdleTimer();
        if (f.type === STATUS) return this.status();
        return this.request(decodeRequest(f.payload, f.flags));
      }
      case BODY:
        return this.bodyFrame(f.payload);
      case BODY_END:
      case ABORT:
        return this.bodyDone(f.type === ABORT ? decodeAbort(f.payload) : null);
      default:
        // The parser lets only client frames through, HELLO first and once.
        throw new WireProtocolError(`${frameName(f.type)} frame is not expected here`);
    }
  }

  private hello(f: RawFrame): void {
    if (f.type !== HELLO) throw new WireProtocolError(`${frameName(f.type)} frame before HELLO`, ErrorCode.AUTH);
    const hello = decodeClientHello(f.payload);
    if (hello.version !== WIRE_VERSION) {
      const message = `this daemon speaks version ${WIRE_VERSION} of the protocol; the client asked for version ${hello.version}`;
      this.log('error', `${message} (an Apache child and a daemon from different builds?); connection closed`);
      return this.endWith(encodeError(ErrorCode.VERSION, message, true));
    }
    if (!timingSafeEqual(hello.secret, this.shared.secret)) {
      this.log('warn', 'HELLO with a wrong secret (a process that is not an Apache child of this server?): ERROR AUTH sent, connection closed');
      return this.endWith(encodeError(ErrorCode.AUTH, 'authentication failed', true));
    }
    this.authed = true;
    this.queue(encodeDaemonHello(process.pid));
    if (this.shared.draining) this.sendGoaway();
    this.flush();
  }

  private protocolError(e: ProtocolError): void {
    const code: ErrorCodeValue = e instanceof WireProtocolError ? e.code : ErrorCode.PROTOCOL;
    const detail = e instanceof WireProtocolError ? e.detail : e.message;
    const cur = this.current;
    if (code === ErrorCode.AUTH) this.log('warn', `${detail}: ERROR AUTH sent, connection closed`);
    else this.log('error', `protocol error: ${detail}${cur && !cur.trailerSent && cur.req ? ` (during ${cur.what})` : ''}; connection closed`);
    if (cur && !cur.trailerSent) {
      cur.trailerSent = true;
      cur.bodyError ??= new BodyReadError('the request was aborted: the Apache child broke the daemon protocol');
      cur.controller.abort(new RequestAborted(`the daemon protocol was broken: ${detail}`));
      cur.wake();
      if (cur.job) cur.job.cancelled = true;
      if (!cur.headFlushed) this.discardOutput();
    }
    this.endWith(encodeError(code, detail, true));
  }

  // ---- requests ------------------------------------------------------------------------

  private request(req: WireRequest): void {
    const environ = environOf(req);
    const what = `${String(environ.REQUEST_METHOD)} ${String(environ.REQUEST_URI)}`;
    const ex = new Exchange(req, what);
    this.current = ex;
    ex.job = {
      startMs: req.requestStartUs > 0n ? Number(req.requestStartUs / 1000n) : 0,
      cancelled: false,
      run: () => this.run(ex, environ),
      expire: (waited) => {
        this.log('warn', `queue-timeout: ${what} waited ${waited} ms for a free thread (queue-timeout ${this.shared.options.queueTimeoutMs} ms); ERROR QUEUE_TIMEOUT sent, the application was not run`);
        ex.runFinished = true;
        this.trailer(ex, encodeError(ErrorCode.QUEUE_TIMEOUT, `waited ${waited} ms for a free thread (queue-timeout ${this.shared.options.queueTimeoutMs} ms)`));
      },
    };
    this.shared.scheduler.admit(ex.job);
  }

  private async run(ex: Exchange, environ: Record<string, unknown>): Promise<void> {
    const req = ex.req as WireRequest;
    ex.started = true;
    if (ex.controller.signal.aborted || ex.trailerSent) {
      ex.runFinished = true;
      return this.settle(ex);
    }
    const done = this.shared.options.monitor?.begin(ex.what, () => this.expire(ex));
    let outcome: RequestOutcome;
    try {
      let provider: AppProvider;
      try {
        provider = this.shared.options.providers(req.script, req.callable, req.applicationGroup, req.reload);
      } catch (e) {
        provider = { label: req.script, resolve: () => { throw e; } };
      }
      outcome = await runRequest(
        provider,
        { environ, body: req.hasBody ? this.body(ex) : null, urlScheme: req.https ? 'https' : 'http', signal: ex.controller.signal },
        this.sink(ex),
        this.shared.context,
      );
    } catch (e) {
      // runRequest never rejects; if it ever does, the request must still end.
      this.log('error', `internal error running ${ex.what}: ${(e as Error)?.stack ?? String(e)}`);
      outcome = { state: 'aborted', code: 0, bytes: 0 };
      this.failTrailer(ex, ErrorCode.APP, 'internal error in the daemon');
    } finally {
      done?.();
    }
    if (!ex.trailerSent) {
      if (outcome.state === 'error' && !ex.headFlushed) {
        // The gateway's own error page, still unwritten: Apache makes the error response.
        this.discardOutput();
        const code = outcome.code === 400 ? ErrorCode.BAD_REQUEST : ErrorCode.APP;
        this.trailer(ex, encodeError(code, outcome.code === 400 ? 'bad request (see the daemon log)' : 'the application failed (see the daemon log)'));
      } else if (outcome.state === 'complete' || outcome.state === 'error') {
        this.trailer(ex, encodeEnd());
      } else {
        this.failTrailer(ex, ex.aborted ? ErrorCode.BODY : ErrorCode.APP, ex.aborted ?? 'the response was aborted');
      }
    }
    ex.runFinished = true;
    this.settle(ex);
  }

  /** request-timeout: ERROR TIMEOUT now, tsgi.signal fires; the gateway winds the request down. */
  private expire(ex: Exchange): void {
    if (ex.trailerSent || this.closed) return;
    ex.timedOut = true;
    this.log('warn', `request-timeout: ${ex.what} ended${ex.headFlushed ? ' after its response started (truncated)' : ' before its response started'}; ERROR TIMEOUT sent`);
    this.failTrailer(ex, ErrorCode.TIMEOUT, 'the request took longer than the request-timeout');
    ex.controller.abort(new RequestExpired('the request took longer than the request-timeout'));
  }

  /** An ERROR trailer: before the head when nothing of it was written yet, else a truncation. */
  private failTrailer(ex: Exchange, code: ErrorCodeValue, message: string): void {
    if (ex.trailerSent) return;
    if (!ex.headFlushed) this.discardOutput();
    this.trailer(ex, encodeError(code, message));
  }

  /** Sends a request's trailer (with CLOSE when draining); the response is over. */
  private trailer(ex: Exchange, frame: Buffer): void {
    if (ex.trailerSent) return;
    ex.trailerSent = true;
    if (this.closed) return;
    if (this.shared.draining) frame[1] |= 0x01; // FLAG_CLOSE on END and ERROR
    this.queue(frame);
    if (this.shared.draining) {
      this.endWith(null);
      return;
    }
    this.flush();
    // Whatever body the application left unread is dropped from here on.
    ex.chunks = [];
    ex.queuedBytes = 0;
    this.resumeBody();
    this.settle(ex);
  }

  /** Clears a request that is over on both sides; the connection is idle again. */
  private settle(ex: Exchange): void {
    if (this.current !== ex || !ex.trailerSent || !ex.runFinished || ex.bodyOpen) return;
    this.current = null;
    if (this.closed || this.ending) return;
    if (this.shared.draining) this.startIdleTimer();
    const deferred = this.deferred;
    if (deferred) {
      this.deferred = null;
      // Replayed in order; a frame may defer the rest again.
      this.guard(() => {
        while (deferred.length > 0 && !this.deferred && !this.ending) this.onFrame(deferred.shift() as RawFrame);
      });
      if (this.deferred) (this.deferred as RawFrame[]).push(...deferred);
      else if (!this.pausedForBody && !this.closed && !this.ending) this.socket.resume();
    }
  }

  private status(): void {
    const ex = new Exchange(null, 'STATUS');
    this.current = ex;
    const s = this.shared;
    const answer = s.options.status ? s.options.status() : Promise.resolve({ pid: process.pid, threads: s.options.threads, running: s.scheduler.running, queued: s.scheduler.queued });
    answer
      .then((value) => encodeStatus(JSON.stringify(value) ?? 'null'))
      .then(
        (frame) => {
          if (this.closed || ex.trailerSent) return;
          ex.trailerSent = true;
          this.queue(frame);
          this.flush();
        },
        (e: unknown) => {
          this.log('error', `the status callback failed: ${(e as Error)?.stack ?? String(e)}`);
          ex.runFinished = true;
          this.trailer(ex, encodeError(ErrorCode.APP, `status failed: ${(e as Error)?.message ?? String(e)}`));
        },
      )
      .finally(() => {
        ex.trailerSent = true;
        ex.runFinished = true;
        this.settle(ex);
      });
  }

  // ---- the request body ----------------------------------------------------------------

  private bodyFrame(data: Buffer): void {
    const ex = this.current as Exchange;
    if (ex.trailerSent || ex.bodyError) return; // a finished request's body: read and dropped
    // A view of a socket chunk would pin the whole chunk; BODY frames are mostly whole chunks anyway.
    ex.chunks.push(data);
    ex.queuedBytes += data.length;
    this.shared.moved(data.length);
    ex.wake();
    if (ex.queuedBytes >= BODY_HIGH_WATER && !this.pausedForBody) {
      this.pausedForBody = true;
      this.socket.pause();
    }
  }

  private bodyDone(abortReason: string | null): void {
    const ex = this.current as Exchange;
    ex.bodyOpen = false;
    if (abortReason === null) ex.bodyEnded = true;
    else if (!ex.trailerSent) {
      const why = abortReason === '' ? 'the Apache child aborted the request body' : `the Apache child aborted the request body: ${abortReason}`;
      ex.aborted = why;
      ex.bodyError = new BodyReadError(why);
      ex.controller.abort(new RequestAborted(why));
      if (!ex.started && ex.job) {
        // Still waiting for a thread: it never runs.
        ex.job.cancelled = true;
        ex.runFinished = true;
        this.trailer(ex, encodeError(ErrorCode.BODY, why));
      }
    }
    ex.wake();
    this.settle(ex);
  }

  private resumeBody(): void {
    if (!this.pausedForBody) return;
    const ex = this.current;
    if (ex && ex.queuedBytes >= BODY_HIGH_WATER) return;
    this.pausedForBody = false;
    if (!this.deferred && !this.closed) this.socket.resume();
  }

  private async *body(ex: Exchange): AsyncGenerator<Uint8Array> {
    for (;;) {
      const chunk = ex.chunks.shift();
      if (chunk) {
        ex.queuedBytes -= chunk.length;
        this.resumeBody();
        yield chunk;
        continue;
      }
      if (ex.bodyError) throw ex.bodyError;
      if (ex.bodyEnded) return;
      await new Promise<void>((resolve) => {
        ex.waiter = resolve;
      });
    }
  }

  // ---- the response --------------------------------------------------------------------

  private sink(ex: Exchange): ResponseSink {
    return {
      head: (head: ResponseHead) => {
        if (ex.trailerSent || this.closed) return;
        ex.headQueued = true;
        this.queue(encodeHead(head.code, head.reason, head.headers));
      },
      body: (chunk: Uint8Array) => {
        if (ex.trailerSent || this.closed) return;
        this.shared.moved(chunk.byteLength);
        if (chunk.byteLength >= COALESCE_BYTES) {
          // Big chunks go out as they are: a header per MAX_BODY_FRAME bytes, no copy.
          for (let off = 0; off < chunk.byteLength; off += MAX_BODY_FRAME) {
            const n = Math.min(MAX_BODY_FRAME, chunk.byteLength - off);
            const h = Buffer.allocUnsafe(FRAME_HEADER_BYTES);
            writeFrameHeader(h, 0, D_BODY, 0, n);
            this.queue(h);
            this.queue(Buffer.from(chunk.buffer, chunk.byteOffset + off, n));
          }
          this.flush();
        } else {
          const f = Buffer.allocUnsafe(FRAME_HEADER_BYTES + chunk.byteLength);
          writeFrameHeader(f, 0, D_BODY, 0, chunk.byteLength);
          f.set(chunk, FRAME_HEADER_BYTES);
          this.queue(f);
          if (this.partBytes >= COALESCE_BYTES) this.flush();
        }
        if (ex.headQueued && this.parts.length === 0) ex.headFlushed = true;
        if (this.socket.writableNeedDrain) return this.drained();
      },
      // END goes out once runRequest has said how the request ended (see run()).
      end: () => undefined,
      abort: () => {
        // The trailer is chosen in run(), from the outcome.
      },
    };
  }

  private drained(): Promise<void> {
    return new Promise<void>((resolve) => {
      const done = () => {
        this.socket.off('drain', done);
        this.socket.off('close', done);
        resolve();
      };
      this.socket.on('drain', done);
      this.socket.on('close', done);
    });
  }

  private queue(frame: Buffer): void {
    this.parts.push(frame);
    this.partBytes += frame.length;
    if (!this.flushScheduled) {
      this.flushScheduled = true;
      setImmediate(() => {
        this.flushScheduled = false;
        this.flush();
      });
    }
  }

  private flush(): void {
    if (this.parts.length === 0) return;
    const parts = this.parts;
    this.parts = [];
    this.partBytes = 0;
    const cur = this.current;
    if (cur?.headQueued) cur.headFlushed = true;
    if (this.closed || this.socket.destroyed || this.socket.writableEnded) return;
    if (parts.length === 1) {
      this.socket.write(parts[0]);
      return;
    }
    this.socket.cork();
    for (const p of parts) this.socket.write(p);
    this.socket.uncork();
  }

  /** Drops what is queued and not yet written (an error page, a head that must not go out). */
  private discardOutput(): void {
    this.parts = [];
    this.partBytes = 0;
  }

  // ---- connection lifetime -------------------------------------------------------------

  /** Writes `frame` (if any) and closes our side; the peer gets LINGER_MS to close its side. */
  private endWith(frame: Buffer | null): void {
    if (this.ending) return;
    this.ending = true;
    this.stopIdleTimer();
    if (frame) this.queue(frame);
    this.flush();
    if (this.closed) return;
    this.socket.end();
    // Keep reading (and dropping) so unread input cannot turn our close into a reset.
    this.socket.resume();
    const t = setTimeout(() => this.socket.destroy(), LINGER_MS);
    t.unref();
    this.socket.once('close', () => clearTimeout(t));
  }

  drain(): void {
    if (this.closed || this.ending || !this.authed) return;
    if (this.current === null) {
      this.sendGoaway();
      this.flush();
      this.startIdleTimer();
    }
    // A busy connection gets CLOSE on its trailer (see trailer()).
  }

  private sendGoaway(): void {
    if (this.goawaySent) return;
    this.goawaySent = true;
    this.queue(encodeGoaway());
  }

  private startIdleTimer(): void {
    this.stopIdleTimer();
    this.idleTimer = setTimeout(() => {
      this.idleTimer = null;
      if (this.current === null) this.endWith(null);
    }, DRAIN_IDLE_MS);
    this.idleTimer.unref();
  }

  private stopIdleTimer(): void {
    if (this.idleTimer) clearTimeout(this.idleTimer);
    this.idleTimer = null;
  }

  private onClose(): void {
    this.closed = true;
    this.stopIdleTimer();
    const ex = this.current;
    if (!ex) return;
    if (!this.parser.atBoundary || ex.bodyOpen) {
      ex.bodyError ??= new BodyReadError(`the Apache child closed the connection before the request body ended${this.parser.describeTruncation() ? ` (${this.parser.describeTruncation()})` : ''}`);
    }
    if (!ex.trailerSent) {
      if (ex.job && !ex.started) ex.job.cancelled = true;
      ex.controller.abort(new RequestAborted('the Apache child closed the daemon connection before the response was complete'));
      if (ex.req) this.log('info', `the Apache child closed the connection during ${ex.what}`);
    }
    ex.wake();
  }
}

/**
 * The environ base from a REQUEST: Apache's variables as they are (it mapped the URL to
 * SCRIPT_NAME / PATH_INFO already, exactly as embedded mode does), normalized like every
 * CGI-variable transport, plus the mod_tsgi.* keys embedded mode sets.
 */
export function environOf(req: WireRequest): Record<string, unknown> {
  const environ: Record<string, unknown> = {};
  for (const k of Object.keys(req.vars)) environ[k] = req.vars[k];
  if (environ.CONTENT_LENGTH === '') delete environ.CONTENT_LENGTH;
  if (environ.CONTENT_TYPE === '') delete environ.CONTENT_TYPE;
  normalizeCgiEnviron(environ);
  environ['mod_tsgi.process_group'] = req.processGroup;
  environ['mod_tsgi.application_group'] = req.applicationGroup;
  environ['mod_tsgi.callable_object'] = req.callable;
  return environ;
}
