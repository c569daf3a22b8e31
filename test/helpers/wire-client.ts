/**
 * A small client of the mod_tsgi daemon protocol (docs/protocol.md) for tests: it plays
 * the Apache child. One connection, one request at a time, frames checked by the same
 * codec the daemon uses (WireParser reading daemon frames, order checked).
 *
 *   const c = await WireClient.connect(socketPath, { secret });     // connect + HELLO
 *   const r = await c.request({ script, vars: cgiVars({ path: '/x' }) });
 *   r.status, r.headers, r.body (Buffer), r.trailer ({ kind: 'end' } | { kind: 'error', … } | { kind: 'eof' })
 *   await c.request({ script, vars: cgiVars({ method: 'POST' }), body: bytes });   // reuse
 *   await c.status();                                              // STATUS → parsed JSON
 *   c.sendRaw(bytes); await c.nextFrame();                         // protocol tests
 *   c.close();
 *
 * `body` may be a Uint8Array or an AsyncIterable of chunks (the test controls timing);
 * bodyEnd 'abort' ends it with ABORT instead of BODY_END, 'open' leaves it open (send
 * the end yourself with sendRaw(encodeBodyEnd()) / encodeAbort()). As the protocol says,
 * when the trailer arrives while body is still being sent, the client stops and sends
 * ABORT ("response complete").
 */
import * as net from 'node:net';
import {
  D_BODY,
  D_END,
  D_ERROR,
  D_GOAWAY,
  D_HEAD,
  D_HELLO,
  D_STATUS,
  FLAG_CLOSE,
  WireParser,
  decodeDaemonHello,
  decodeError,
  decodeHead,
  decodeStatus,
  encodeAbort,
  encodeBody,
  encodeBodyEnd,
  encodeClientHello,
  encodeRequest,
  encodeStatusRequest,
  frameName,
  type DaemonHello,
  type RawFrame,
  type WireError,
  type WireRequestInit,
} from '../../src/transports/protocols/tsgi-wire';

export type WireTrailer = { kind: 'end'; close: boolean } | ({ kind: 'error'; close: boolean } & WireError) | { kind: 'eof' };

export interface WireResponse {
  /** 0 when no HEAD came (an ERROR before HEAD, or end-of-stream). */
  status: number;
  reason: string;
  headers: [string, string][];
  body: Buffer;
  trailer: WireTrailer;
  /** The frame names in order ('HEAD', 'BODY', 'END', 'GOAWAY', …). */
  frames: string[];
}

export interface RequestInit extends Omit<WireRequestInit, 'hasBody'> {
  body?: Uint8Array | AsyncIterable<Uint8Array> | null;
  /** How the body side ends: 'end' (BODY_END, default), 'abort' (ABORT), 'open' (left to the test). */
  bodyEnd?: 'end' | 'abort' | 'open';
}

/** CGI variables as Apache sends them for a request (REQUEST_URI etc. derived from path/query). */
export function cgiVars(o: { method?: string; scriptName?: string; pathInfo?: string; query?: string; headers?: Record<string, string>; extra?: Record<string, string> } = {}): Record<string, string> {
  const scriptName = o.scriptName ?? '/app';
  const pathInfo = o.pathInfo ?? '/';
  const query = o.query ?? '';
  const vars: Record<string, string> = {
    REQUEST_METHOD: o.method ?? 'GET',
    SCRIPT_NAME: scriptName,
    PATH_INFO: pathInfo,
    QUERY_STRING: query,
    REQUEST_URI: `${scriptName}${pathInfo}${query ? `?${query}` : ''}`,
    SERVER_NAME: 'localhost',
    SERVER_PORT: '80',
    SERVER_PROTOCOL: 'HTTP/1.1',
    REMOTE_ADDR: '127.0.0.1',
    GATEWAY_INTERFACE: 'CGI/1.1',
  };
  for (const [k, v] of Object.entries(o.headers ?? {})) vars[`HTTP_${k.toUpperCase().replace(/-/g, '_')}`] = v;
  return { ...vars, ...o.extra };
}

export class WireClient {
  private readonly parser = new WireParser({ from: 'daemon' });
  private readonly frames: RawFrame[] = [];
  private waiters: Array<() => void> = [];
  private ended = false;
  private failure: Error | null = null;
  /** The daemon's HELLO, after hello(). */
  daemon: DaemonHello | null = null;
  /** A GOAWAY arrived at some point. */
  goaway = false;

  private constructor(readonly socket: net.Socket) {
    socket.on('data', (chunk: Buffer) => {
      try {
        this.parser.read(chunk, (f) => {
          if (f.type === D_GOAWAY) this.goaway = true;
          this.frames.push(f);
        });
      } catch (e) {
        this.failure = e as Error;
      }
      this.wake();
    });
    socket.on('error', () => undefined);
    socket.on('close', () => {
      this.ended = true;
      this.wake();
    });
  }

  /** Connects; with `secret`, also says HELLO (and fails unless the daemon answers HELLO). */
  static async connect(path: string, options: { secret?: Uint8Array } = {}): Promise<WireClient> {
    const socket = net.connect(path);
    await new Promise<void>((resolve, reject) => {
      socket.once('connect', resolve);
      socket.once('error', reject);
    });
    const c = new WireClient(socket);
    if (options.secret) {
      const r = await c.hello(options.secret);
      if ('code' in r) throw new Error(`HELLO refused: ${r.name} ${r.message}`);
    }
    return c;
  }

  /** Sends HELLO; resolves with the daemon's HELLO, or with its ERROR. */
  async hello(secret: Uint8Array, version?: number): Promise<DaemonHello | WireError> {
    this.sendRaw(encodeClientHello(secret, version));
    const f = await this.nextFrame();
    if (!f) throw new Error('the daemon closed the connection instead of answering HELLO');
    if (f.type === D_ERROR) return decodeError(f.payload);
    if (f.type !== D_HELLO) throw new Error(`expected HELLO, got ${frameName(f.type)}`);
    this.daemon = decodeDaemonHello(f.payload);
    return this.daemon;
  }

  sendRaw(bytes: Uint8Array): void {
    if (!this.socket.destroyed) this.socket.write(bytes);
  }

  /** True once the daemon closed the connection (end-of-stream). */
  get closed(): boolean {
    return this.ended;
  }

  /** The next frame from the daemon; null at end-of-stream. Rejects when the daemon broke the protocol or after `timeoutMs`. */
  async nextFrame(timeoutMs = 10_000): Promise<RawFrame | null> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const f = this.frames.shift();
      if (f) return f;
      if (this.failure) throw this.failure;
      if (this.ended) return null;
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`no frame from the daemon within ${timeoutMs} ms`);
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, left);
        this.waiters.push(() => {
          clearTimeout(t);
          resolve();
        });
      });
    }
  }

  /** Resolves when the daemon has closed the connection (frames before that are dropped), or rejects after `timeoutMs`. */
  async waitClosed(timeoutMs = 10_000): Promise<void> {
    while ((await this.nextFrame(timeoutMs)) !== null);
  }

  /** Sends a request (and its body), reads the response up to its trailer. */
  async request(init: RequestInit): Promise<WireResponse> {
    const { body, bodyEnd = 'end', ...rest } = init;
    const hasBody = body !== undefined && body !== null;
    this.sendRaw(encodeRequest({ ...rest, hasBody }));
    const state = { done: false };
    const sending = hasBody ? this.sendBody(body, bodyEnd, state) : Promise.resolve();
    const response = await this.readResponse();
    state.done = true;
    await sending;
    return response;
  }

  /** STATUS → the daemon's JSON, parsed. */
  async status(): Promise<unknown> {
    this.sendRaw(encodeStatusRequest());
    for (;;) {
      const f = await this.nextFrame();
      if (!f) throw new Error('the daemon closed the connection instead of answering STATUS');
      if (f.type === D_GOAWAY) continue;
      if (f.type === D_ERROR) throw new Error(`STATUS refused: ${JSON.stringify(decodeError(f.payload))}`);
      if (f.type !== D_STATUS) throw new Error(`expected STATUS, got ${frameName(f.type)}`);
      return decodeStatus(f.payload);
    }
  }

  /** Reads one response: HEAD BODY* (END|ERROR), or ERROR, or end-of-stream. */
  async readResponse(timeoutMs = 20_000): Promise<WireResponse> {
    const r: WireResponse = { status: 0, reason: '', headers: [], body: Buffer.alloc(0), trailer: { kind: 'eof' }, frames: [] };
    const chunks: Buffer[] = [];
    for (;;) {
      const f = await this.nextFrame(timeoutMs);
      if (!f) break;
      r.frames.push(frameName(f.type).split(' ')[0]);
      if (f.type === D_HEAD) {
        const h = decodeHead(f.payload);
        r.status = h.status;
        r.reason = h.reason;
        r.headers = h.headers;
      } else if (f.type === D_BODY) {
        chunks.push(Buffer.from(f.payload));
      } else if (f.type === D_END) {
        r.trailer = { kind: 'end', close: (f.flags & FLAG_CLOSE) !== 0 };
        break;
      } else if (f.type === D_ERROR) {
        r.trailer = { kind: 'error', close: (f.flags & FLAG_CLOSE) !== 0, ...decodeError(f.payload) };
        break;
      } else if (f.type !== D_GOAWAY) {
        throw new Error(`unexpected ${frameName(f.type)} in a response`);
      }
    }
    r.body = Buffer.concat(chunks);
    return r;
  }

  /** A response header's value (case-insensitive), or undefined. */
  static header(r: WireResponse, name: string): string | undefined {
    return r.headers.find(([n]) => n.toLowerCase() === name.toLowerCase())?.[1];
  }

  close(): void {
    this.socket.destroy();
  }

  private async sendBody(body: Uint8Array | AsyncIterable<Uint8Array>, end: 'end' | 'abort' | 'open', state: { done: boolean }): Promise<void> {
    const chunks: AsyncIterable<Uint8Array> | Iterable<Uint8Array> = body instanceof Uint8Array ? slices(body, 256 * 1024) : body;
    for await (const chunk of chunks) {
      if (state.done || this.socket.destroyed) {
        // The trailer came first: the body side ends with ABORT, as Apache's does.
        if (end !== 'open') this.sendRaw(encodeAbort('response complete'));
        return;
      }
      if (chunk.byteLength === 0) continue;
      if (!this.socket.write(encodeBody(chunk))) await this.drainOrClose();
    }
    if (end === 'end') this.sendRaw(encodeBodyEnd());
    else if (end === 'abort') this.sendRaw(encodeAbort('client went away'));
  }

  private drainOrClose(): Promise<void> {
    return new Promise((resolve) => {
      const done = () => {
        this.socket.off('drain', done);
        this.socket.off('close', done);
        resolve();
      };
      this.socket.on('drain', done);
      this.socket.on('close', done);
    });
  }

  private wake(): void {
    const w = this.waiters;
    this.waiters = [];
    for (const f of w) f();
  }
}

function* slices(b: Uint8Array, size: number): Generator<Uint8Array> {
  for (let off = 0; off < b.byteLength; off += size) yield b.subarray(off, Math.min(off + size, b.byteLength));
}
