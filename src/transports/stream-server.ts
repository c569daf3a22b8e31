/**
 * The SCGI and uwsgi listeners: one request per connection, over node:net (a Unix socket
 * or TCP). Each connection is: the request head (parsed by the pure codecs in
 * ./protocols), exactly CONTENT_LENGTH body bytes, then the response head and body, and
 * the end of the response is the end of the connection (both protocols frame it so).
 *
 *   - Streaming with backpressure both ways: the socket is paused while the application
 *     is not reading the body, and a full send buffer waits for 'drain'.
 *   - A body shorter than declared makes the application's read fail (BodyReadError),
 *     never look like the end of the body; a longer one closes the connection.
 *   - A failed response (sink.abort) resets the connection, so the web server sees a
 *     truncated response rather than one that merely ended early.
 *   - The web server closing the connection aborts the request (tsgi.signal).
 *   - Bad input never crashes and never hangs: a malformed or truncated head, a head past
 *     the limit, a head that takes longer than `timeoutMs`, a body that stops arriving and
 *     a peer that stops reading the response each get one log line and a closed
 *     connection.
 *
 * The end of the web server's stream before the response is complete means it has gone
 * (nginx and lighttpd close the connection when their client does); `allowHalfClose`
 * serves peers that half-close after the request instead. Limits of the protocols: an
 * aborted response without Content-Length is visibly cut short only over TCP (a reset);
 * over a Unix socket the web server sees an ordinary end of stream. A disconnect is
 * noticed while the application reads the body, writes, or after it has read it all.
 */
import * as net from 'node:net';
import { BodyReadError, RequestAborted } from '../gateway/errors';
import type { ErrorLog } from '../gateway/log';
import { runRequest, type AppProvider, type RequestOutcome, type ResponseHead, type ResponseSink, type ServerContext } from '../gateway/run';
import type { Header } from '../tsgi';
import { commonLogLine } from './access-log';
import { RequestExpired, type RequestMonitor } from './monitor';
import { protocolEnviron, urlSchemeOf } from './protocols/cgi-vars';
import { ProtocolError } from './protocols/protocol-error';
import { ScgiParser, scgiResponseHead, type HeadParser, type ParsedRequestHead } from './protocols/scgi';
import { UwsgiParser, uwsgiResponseHead } from './protocols/uwsgi';

export type StreamProtocol = 'scgi' | 'uwsgi';

export interface StreamServerOptions {
  protocol: StreamProtocol;
  provider: AppProvider;
  log: ErrorLog;
  /** Where access-log lines (Apache common log format) go; omit for none. */
  accessLog?: { write(line: string): unknown };
  /** The largest request head accepted (SCGI netstring / uwsgi variable block). Default 64 KiB. */
  maxHeaderBytes?: number;
  /**
   * How long to wait on the web server, in ms: for the whole request head, for each
   * piece of a body the application is waiting for, for a full send buffer to drain,
   * and for the web server to close after the response. Default 30 s.
   */
  timeoutMs?: number;
  /** See CgiPathOptions.mountPoint: recompute SCRIPT_NAME / PATH_INFO for this mount point. */
  mountPoint?: string;
  /** Extra per-request variables; the web server's variables win. */
  setEnv?: Record<string, string>;
  /**
   * Keep answering after the web server ends its side of the connection once the request
   * is sent (a TCP half-close: lighttpd with "tcp-fin-propagate", lighttpd < 1.4.42).
   * Default false: the end of the web server's stream means it has gone (its client
   * disconnected), and the request is aborted.
   */
  allowHalfClose?: boolean;
  /**
   * Told when each request begins and ends (daemon-mode.ts). Ending one early resets the
   * connection: neither protocol can say "timed out", so the web server answers 502/504.
   */
  monitor?: RequestMonitor;
  /** What tsgi.multithread / multiprocess / run_once say. Default: one process, concurrent requests. */
  context?: Partial<Omit<ServerContext, 'log'>>;
}

export const DEFAULT_TIMEOUT_MS = 30_000;

/** Creates (does not start) a server speaking `options.protocol` on every connection. */
export function createStreamServer(options: StreamServerOptions): net.Server {
  const server = net.createServer({ allowHalfOpen: true });
  server.on('connection', (socket) => {
    void serveConnection(socket, options);
  });
  return server;
}

/** Serves one connection: one request. Never rejects; resolves when the connection is done with. */
export function serveConnection(socket: net.Socket, options: StreamServerOptions): Promise<RequestOutcome | null> {
  return new Connection(socket, options).run().catch((err: unknown) => {
    options.log.log('error', `internal error in the ${label(options.protocol)} transport: ${(err as Error)?.stack ?? String(err)}`);
    socket.destroy();
    return null;
  });
}

const label = (p: StreamProtocol) => (p === 'scgi' ? 'SCGI' : 'uwsgi');

const BAD_REQUEST_BODY = Buffer.from('400 Bad Request\n');
const QUIET_ERRORS = new Set(['ECONNRESET', 'EPIPE', 'ERR_STREAM_DESTROYED', 'ERR_STREAM_WRITE_AFTER_END']);

class HeadTimeout extends Error {}
class PeerGone extends Error {}

class Connection {
  private readonly name: string;
  private readonly timeoutMs: number;
  private readonly peer: string;
  private readonly controller = new AbortController();
  private head: ParsedRequestHead | null = null;
  // The body, between the socket and the application.
  private queue: Buffer[] = [];
  private bodyRemaining = 0; // still to arrive from the socket
  private bodyReceived = 0;
  private bodyError: Error | null = null;
  private waiter: { resolve: () => void; timer: NodeJS.Timeout } | null = null;
  private closed = false;
  private responseDone = false;
  private extraReported = false;
  private pendingHead: Buffer | null = null;
  private socketError: Error | null = null;

  constructor(
    private readonly socket: net.Socket,
    private readonly options: StreamServerOptions,
  ) {
    this.name = label(options.protocol);
    this.timeoutMs = options.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    this.peer = socket.remoteAddress ? `${socket.remoteAddress}:${socket.remotePort}` : 'unix socket peer';
    socket.on('error', (e: NodeJS.ErrnoException) => {
      this.socketError = e;
      if (!QUIET_ERRORS.has(e.code ?? '')) this.log('warn', `connection error: ${e.message}`);
    });
    socket.once('close', () => this.onClose());
    if (typeof socket.setNoDelay === 'function' && socket.remoteAddress) socket.setNoDelay(true);
  }

  private log(level: 'error' | 'warn' | 'info' | 'debug', message: string): void {
    this.options.log.log(level, `${this.name} connection from ${this.peer}: ${message}`);
  }

  async run(): Promise<RequestOutcome | null> {
    const parser: HeadParser =
      this.options.protocol === 'scgi' ? new ScgiParser({ maxHeaderBytes: this.options.maxHeaderBytes }) : new UwsgiParser({ maxHeaderBytes: this.options.maxHeaderBytes });
    let leftover: Buffer;
    try {
      ({ head: this.head, leftover } = await this.readHead(parser));
    } catch (e) {
      if (e instanceof ProtocolError) {
        this.log('error', `${e.message.replace(/^\S+: /, '')}; connection closed`);
        this.refuse();
      } else if (e instanceof HeadTimeout) {
        this.log('warn', `${e.message}; connection closed`);
        this.socket.destroy();
      } else if (parser.consumed > 0) {
        this.log('warn', `the connection closed in the middle of the request head (after ${parser.consumed} bytes)`);
        this.socket.destroy();
      } else {
        this.log('debug', 'the connection closed before a request arrived');
        this.socket.destroy();
      }
      return null;
    }
    return this.serve(this.head, leftover);
  }

  /** Reads until the head is complete; the bytes after it are the start of the body. */
  private readHead(parser: HeadParser): Promise<{ head: ParsedRequestHead; leftover: Buffer }> {
    const socket = this.socket;
    return new Promise((resolve, reject) => {
      const done = (err: Error | null, value?: { head: ParsedRequestHead; leftover: Buffer }) => {
        clearTimeout(timer);
        socket.off('data', onData);
        socket.off('end', onEnd);
        socket.off('close', onEnd);
        socket.pause();
        if (err) reject(err);
        else resolve(value as { head: ParsedRequestHead; leftover: Buffer });
      };
      const onData = (chunk: Buffer) => {
        let head: ParsedRequestHead | null;
        try {
          head = parser.feed(chunk);
        } catch (e) {
          return done(e as Error);
        }
        if (head) done(null, { head, leftover: chunk.subarray(head.bodyStart) });
      };
      const onEnd = () => done(new PeerGone());
      const timer = setTimeout(
        () => done(new HeadTimeout(`no complete request head after ${this.timeoutMs / 1000} s (${parser.consumed} bytes received)`)),
        this.timeoutMs,
      );
      socket.on('data', onData);
      socket.once('end', onEnd);
      socket.once('close', onEnd);
      socket.resume();
    });
  }

  /** Answers a request whose head could not be accepted with a 400, then closes. */
  private refuse(): void {
    const headers: Header[] = [
      ['Content-Type', 'text/plain'],
      ['Content-Length', String(BAD_REQUEST_BODY.length)],
    ];
    const head = this.options.protocol === 'scgi' ? scgiResponseHead('400 Bad Request', headers) : uwsgiResponseHead('400 Bad Request', headers);
    this.responseDone = true;
    if (this.socket.destroyed) return;
    this.socket.end(Buffer.concat([head, BAD_REQUEST_BODY]));
    this.linger(Math.min(this.timeoutMs, 2000));
  }

  /** After our side is done: read (and drop) until the peer closes, so unread input cannot reset the response away. */
  private linger(ms: number): void {
    if (this.closed) return;
    const timer = setTimeout(() => this.socket.destroy(), ms);
    timer.unref();
    this.socket.once('close', () => clearTimeout(timer));
    this.socket.on('end', () => this.socket.destroy());
    this.socket.resume();
  }

  private async serve(head: ParsedRequestHead, leftover: Buffer): Promise<RequestOutcome> {
    const started = new Date();
    const environ = protocolEnviron(head.vars, { mountPoint: this.options.mountPoint, setEnv: this.options.setEnv });
    this.bodyRemaining = head.contentLength;
    this.socket.on('data', (chunk: Buffer) => this.onData(chunk));
    this.socket.on('end', () => this.onEnd());
    if (leftover.length > 0) this.onData(leftover);
    if (this.bodyRemaining === 0) this.socket.resume();
    // Refused before the application ran (a body longer than declared in the first bytes).
    if (this.controller.signal.aborted) return { state: 'client-gone', code: 0, bytes: 0 };
    const context: ServerContext = { multithread: true, multiprocess: false, runOnce: false, ...this.options.context, log: this.options.log };
    const done = this.options.monitor?.begin(`${environ.REQUEST_METHOD} ${environ.REQUEST_URI}`, () => {
      if (this.responseDone || this.controller.signal.aborted) return;
      this.log('warn', 'request-timeout: the response is cut short');
      this.controller.abort(new RequestExpired('the request took longer than the request-timeout'));
      this.reset();
    });
    let outcome: RequestOutcome;
    try {
      outcome = await runRequest(
        this.options.provider,
        {
          environ,
          body: head.contentLength > 0 ? this.body() : null,
          urlScheme: urlSchemeOf(head.vars),
          signal: this.controller.signal,
        },
        this.sink(),
        context,
      );
    } finally {
      done?.();
    }
    if (this.options.accessLog) {
      const line = `${environ.REQUEST_METHOD} ${environ.REQUEST_URI} ${environ.SERVER_PROTOCOL}`;
      this.options.accessLog.write(commonLogLine(head.vars.REMOTE_ADDR, started, line, outcome));
    }
    return outcome;
  }

  // ---- the request body ----------------------------------------------------------------

  private onData(chunk: Buffer): void {
    // After the response: the rest of an unread body, read and dropped while lingering.
    if (this.responseDone) return;
    let rest = chunk;
    if (this.bodyRemaining > 0) {
      const take = Math.min(chunk.length, this.bodyRemaining);
      this.queue.push(chunk.subarray(0, take));
      this.bodyRemaining -= take;
      this.bodyReceived += take;
      rest = chunk.subarray(take);
      this.wake();
      // Backpressure: nothing more is read until the application asks for it.
      if (this.bodyRemaining > 0) this.socket.pause();
    }
    if (rest.length > 0 && !this.extraReported) {
      this.extraReported = true;
      this.log('warn', `the web server sent more than CONTENT_LENGTH (${this.head?.contentLength}) bytes of request body; connection closed`);
      this.controller.abort(new RequestAborted(`the ${this.name} peer sent more request body than CONTENT_LENGTH`));
      this.reset();
    }
  }

  private onEnd(): void {
    if (this.bodyRemaining > 0 && !this.bodyError) {
      const declared = this.head?.contentLength ?? 0;
      this.bodyError = new BodyReadError(`the web server ended the request body after ${this.bodyReceived} of ${declared} bytes (CONTENT_LENGTH)`);
      this.log('warn', `request body shorter than CONTENT_LENGTH: ${this.bodyReceived} of ${declared} bytes arrived`);
      this.wake();
    } else if (!this.responseDone && !this.options.allowHalfClose) {
      // nginx and lighttpd close the connection when their client goes away; neither
      // half-closes after a request (lighttpd only with tcp-fin-propagate), so the end
      // of their stream means nobody is left to read the response.
      this.controller.abort(new RequestAborted(`the web server closed the ${this.name} connection before the response was complete`));
    }
  }

  private onClose(): void {
    this.closed = true;
    if (!this.responseDone) {
      const why = this.socketError ? ` (${this.socketError.message})` : '';
      this.controller.abort(new RequestAborted(`the web server closed the ${this.name} connection before the response was complete${why}`));
    }
    if (this.bodyRemaining > 0 && !this.bodyError) {
      this.bodyError = new BodyReadError(`the ${this.name} connection closed after ${this.bodyReceived} of ${this.head?.contentLength ?? 0} request body bytes`);
    }
    this.wake();
  }

  private wake(): void {
    const w = this.waiter;
    if (w) {
      this.waiter = null;
      clearTimeout(w.timer);
      w.resolve();
    }
  }

  private async *body(): AsyncGenerator<Uint8Array> {
    for (;;) {
      const chunk = this.queue.shift();
      if (chunk) {
        yield chunk;
        continue;
      }
      if (this.bodyRemaining === 0) return;
      if (this.bodyError) throw this.bodyError;
      await new Promise<void>((resolve) => {
        const timer = setTimeout(() => {
          this.waiter = null;
          if (this.bodyError) return resolve();
          this.bodyError = new BodyReadError(`no request body bytes for ${this.timeoutMs / 1000} s (${this.bodyReceived} of ${this.head?.contentLength} received)`);
          this.log('warn', `${this.bodyError.message}; connection closed`);
          this.controller.abort(new RequestAborted(`the ${this.name} request body stopped arriving`));
          this.socket.destroy();
          resolve();
        }, this.timeoutMs);
        this.waiter = { resolve, timer };
        this.socket.resume();
      });
    }
  }

  // ---- the response ----------------------------------------------------------------------

  private sink(): ResponseSink {
    const serialize = this.options.protocol === 'scgi' ? scgiResponseHead : uwsgiResponseHead;
    return {
      head: (head: ResponseHead) => {
        this.pendingHead = serialize(head.status, head.headers);
      },
      body: (chunk: Uint8Array) => {
        if (this.socket.destroyed) return;
        let ok: boolean;
        if (this.pendingHead) {
          this.socket.cork();
          this.socket.write(this.pendingHead);
          this.pendingHead = null;
          ok = this.socket.write(chunk);
          this.socket.uncork();
        } else {
          ok = this.socket.write(chunk);
        }
        if (!ok) return this.drained();
      },
      end: () => {
        this.responseDone = true;
        if (this.socket.destroyed) return;
        if (this.pendingHead) this.socket.end(this.pendingHead);
        else this.socket.end();
        this.pendingHead = null;
        // Read what is left (an unread body) until the peer closes, bounded.
        this.linger(this.timeoutMs);
      },
      abort: () => {
        this.responseDone = true;
        this.reset();
      },
    };
  }

  /** Waits until the send buffer drains (or the connection closes); gives up after timeoutMs. */
  private drained(): Promise<void> {
    return new Promise<void>((resolve) => {
      const done = () => {
        clearTimeout(timer);
        this.socket.off('drain', done);
        this.socket.off('close', done);
        resolve();
      };
      const timer = setTimeout(() => {
        this.log('warn', `the web server has not read the response for ${this.timeoutMs / 1000} s (${this.socket.bytesWritten} bytes sent); connection closed`);
        this.controller.abort(new RequestAborted(`the ${this.name} peer stopped reading the response`));
        this.reset();
        done();
      }, this.timeoutMs);
      this.socket.on('drain', done);
      this.socket.on('close', done);
    });
  }

  /**
   * Closes with a TCP reset, so the web server sees the response as cut short rather than
   * complete (both protocols end a response without Content-Length at the end of the
   * stream). A Unix socket has no reset: there the web server sees an ordinary end.
   */
  private reset(): void {
    const s = this.socket as net.Socket & { resetAndDestroy?: () => net.Socket };
    if (s.destroyed) return;
    if (typeof s.resetAndDestroy === 'function' && s.remoteAddress) s.resetAndDestroy();
    else s.destroy();
  }
}

/** Starts listening on `unix:PATH`-style paths or host/port; resolves with the address. */
export function listenStream(server: net.Server, where: { path: string } | { host: string; port: number }): Promise<string | net.AddressInfo> {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    const cb = () => {
      server.off('error', reject);
      resolve(server.address() as string | net.AddressInfo);
    };
    if ('path' in where) server.listen(where.path, cb);
    else server.listen(where.port, where.host, cb);
  });
}
