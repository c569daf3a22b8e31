/**
 * HTTP clients for integration tests. node:http rather than fetch: tests need exact
 * control of framing (chunked uploads, Content-Length, raw header order) and must see
 * truncated responses as truncated instead of as errors.
 */
import * as http from 'node:http';
import * as net from 'node:net';

export type Body = Buffer | Uint8Array | string | AsyncIterable<Uint8Array | string>;

export interface RequestOptions {
  method?: string;
  /** An object, or a flat [name, value, name, value, ...] list to keep order and duplicates. */
  headers?: http.OutgoingHttpHeaders | readonly string[];
  /** Buffer/string: sent with Content-Length. AsyncIterable: sent chunked, one chunk per item. */
  body?: Body;
  /** Whole-exchange limit; default 10 s. */
  timeoutMs?: number;
  /** Default false: a fresh connection per request. */
  agent?: http.Agent | false;
  /** Accept responses node's strict parser rejects (e.g. odd header bytes from a CGI). */
  insecureHTTPParser?: boolean;
}

export interface HttpResponse {
  status: number;
  statusMessage: string;
  httpVersion: string;
  headers: http.IncomingHttpHeaders;
  rawHeaders: string[];
  trailers: NodeJS.Dict<string>;
  body: Buffer;
  readonly text: string;
  /** False when the connection closed (or was cut by the timeout) before the message ended. */
  complete: boolean;
  timedOut: boolean;
  /** The error that ended the response early, if any. */
  error: Error | null;
}

function isAsyncIterable(b: unknown): b is AsyncIterable<Uint8Array | string> {
  return typeof b === 'object' && b !== null && Symbol.asyncIterator in b;
}

function hasHeader(headers: RequestOptions['headers'], name: string): boolean {
  if (!headers) return false;
  const n = name.toLowerCase();
  if (Array.isArray(headers)) {
    for (let i = 0; i < headers.length; i += 2) if (String(headers[i]).toLowerCase() === n) return true;
    return false;
  }
  return Object.keys(headers).some((k) => k.toLowerCase() === n);
}

function withHeader(headers: RequestOptions['headers'], name: string, value: string): http.OutgoingHttpHeaders | string[] {
  if (Array.isArray(headers)) return [...(headers as readonly string[]), name, value];
  return { ...((headers as http.OutgoingHttpHeaders | undefined) ?? {}), [name]: value };
}

function makeResponse(res: http.IncomingMessage): HttpResponse {
  return {
    status: res.statusCode ?? 0,
    statusMessage: res.statusMessage ?? '',
    httpVersion: res.httpVersion,
    headers: res.headers,
    rawHeaders: res.rawHeaders,
    trailers: res.trailers,
    body: Buffer.alloc(0),
    get text() {
      return this.body.toString('utf8');
    },
    complete: false,
    timedOut: false,
    error: null,
  };
}

async function writeBody(req: http.ClientRequest, body: Body | undefined): Promise<void> {
  if (body === undefined) {
    req.end();
    return;
  }
  if (!isAsyncIterable(body)) {
    req.end(body);
    return;
  }
  for await (const chunk of body) {
    if (req.destroyed) return;
    if (!req.write(chunk)) {
      await new Promise<void>((resolve) => {
        const done = () => {
          req.off('drain', done);
          req.off('close', done);
          resolve();
        };
        req.on('drain', done);
        req.on('close', done);
      });
    }
  }
  if (!req.destroyed) req.end();
}

/**
 * One request. Rejects only when no response head arrived (connection refused, reset
 * before the status line, timeout before headers); a response cut short resolves with
 * complete=false.
 */
export function request(url: string, opts: RequestOptions = {}): Promise<HttpResponse> {
  const method = opts.method ?? (opts.body !== undefined ? 'POST' : 'GET');
  let headers = opts.headers;
  if (opts.body !== undefined && !hasHeader(headers, 'content-length') && !hasHeader(headers, 'transfer-encoding')) {
    headers = isAsyncIterable(opts.body)
      ? withHeader(headers, 'Transfer-Encoding', 'chunked')
      : withHeader(headers, 'Content-Length', String(Buffer.byteLength(opts.body as string | Uint8Array)));
  }
  const timeoutMs = opts.timeoutMs ?? 10_000;

  return new Promise((resolve, reject) => {
    let settled = false;
    let response: HttpResponse | null = null;
    const chunks: Buffer[] = [];
    const finish = (complete: boolean, error: Error | null, timedOut = false) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      if (response) {
        response.body = Buffer.concat(chunks);
        response.complete = complete;
        response.error = error;
        response.timedOut = timedOut;
        resolve(response);
      } else {
        reject(error ?? new Error('no response'));
      }
    };

    const req = http.request(url, {
      method,
      headers: headers as http.OutgoingHttpHeaders | readonly string[] | undefined,
      agent: opts.agent ?? false,
      insecureHTTPParser: opts.insecureHTTPParser,
    });
    const timer = setTimeout(() => {
      const err = new Error(`request to ${url} timed out after ${timeoutMs} ms`);
      finish(false, err, true);
      req.destroy(err);
    }, timeoutMs);

    req.on('response', (res) => {
      response = makeResponse(res);
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => finish(res.complete, null));
      res.on('error', (e) => finish(false, e));
      res.on('close', () => finish(res.complete && !res.errored, res.errored ?? null));
    });
    // A server that answers early (413, 400) may reset the upload; the response it
    // already sent is what the test wants, so request errors after the head are ignored.
    req.on('error', (e) => {
      if (!response) finish(false, e);
    });
    writeBody(req, opts.body).catch((e: Error) => req.destroy(e));
  });
}

export interface DisconnectResult {
  status: number;
  headers: http.IncomingHttpHeaders;
  /** Body bytes read before hanging up (may exceed the limit by the rest of the last chunk). */
  received: Buffer;
  /** True when the response ended before the limit was reached. */
  ended: boolean;
}

/**
 * Sends a request, reads the response head and `afterBodyBytes` body bytes, then drops
 * the connection: the "client went away mid-response" case.
 */
export function requestAndDisconnect(url: string, afterBodyBytes: number, opts: RequestOptions = {}): Promise<DisconnectResult> {
  const timeoutMs = opts.timeoutMs ?? 10_000;
  return new Promise((resolve, reject) => {
    let settled = false;
    const req = http.request(url, {
      method: opts.method ?? (opts.body !== undefined ? 'POST' : 'GET'),
      headers: opts.headers as http.OutgoingHttpHeaders | readonly string[] | undefined,
      agent: opts.agent ?? false,
    });
    const timer = setTimeout(() => {
      if (settled) return;
      settled = true;
      req.destroy();
      reject(new Error(`requestAndDisconnect: ${url} did not deliver ${afterBodyBytes} bytes in ${timeoutMs} ms`));
    }, timeoutMs);
    req.on('response', (res) => {
      const chunks: Buffer[] = [];
      let n = 0;
      const done = (ended: boolean) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        if (!ended) req.destroy();
        resolve({ status: res.statusCode ?? 0, headers: res.headers, received: Buffer.concat(chunks), ended });
      };
      if (afterBodyBytes <= 0) return done(false);
      res.on('data', (c: Buffer) => {
        chunks.push(c);
        n += c.length;
        if (n >= afterBodyBytes) done(false);
      });
      res.on('end', () => done(true));
      res.on('close', () => done(true));
    });
    req.on('error', (e) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      reject(e);
    });
    writeBody(req, opts.body).catch((e: Error) => req.destroy(e));
  });
}

export interface RawRequestOptions {
  host?: string;
  /** Default 10 s. */
  timeoutMs?: number;
  /** What to do at the timeout: reject (default) or resolve with the bytes read so far. */
  onTimeout?: 'reject' | 'resolve';
  /** Half-close after writing, so a server waiting for more request bytes sees EOF. */
  endAfterWrite?: boolean;
  /** Pause between the parts of an array `raw` (slow-client / split-packet cases). */
  partDelayMs?: number;
  /** Hang up this many ms after the last write and resolve with what was read (client abort). */
  abortAfterMs?: number;
}

export type RawTimeoutError = Error & { received: Buffer };

/** Writes exact bytes to 127.0.0.1:port and returns everything read until the server closes. */
export function rawRequest(
  port: number,
  raw: string | Buffer | readonly (string | Buffer)[],
  opts: RawRequestOptions = {},
): Promise<Buffer> {
  const parts = Array.isArray(raw) ? (raw as readonly (string | Buffer)[]) : [raw as string | Buffer];
  const timeoutMs = opts.timeoutMs ?? 10_000;
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let settled = false;
    const sock = net.connect({ host: opts.host ?? '127.0.0.1', port });
    const settle = (err: Error | null) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      sock.destroy();
      const received = Buffer.concat(chunks);
      if (err) reject(Object.assign(err, { received }));
      else resolve(received);
    };
    const timer = setTimeout(() => {
      if (opts.onTimeout === 'resolve') settle(null);
      else settle(new Error(`rawRequest: no close from port ${port} within ${timeoutMs} ms`));
    }, timeoutMs);
    sock.on('data', (c: Buffer) => chunks.push(c));
    sock.on('end', () => settle(null));
    sock.on('close', () => settle(null));
    // A reset after the server has answered (it closed with unread request bytes) still
    // counts as a finished exchange; the bytes are what the test inspects.
    sock.on('error', (e) => settle(chunks.length > 0 ? null : e));
    sock.once('connect', async () => {
      for (let i = 0; i < parts.length; i++) {
        if (settled) return;
        if (i > 0 && opts.partDelayMs) await new Promise((r) => setTimeout(r, opts.partDelayMs));
        sock.write(parts[i]!);
      }
      if (opts.endAfterWrite) sock.end();
      if (opts.abortAfterMs !== undefined) setTimeout(() => settle(null), opts.abortAfterMs);
    });
  });
}

export interface ParsedRawResponse {
  statusLine: string;
  status: number;
  /** In wire order, names as sent. */
  headers: [string, string][];
  header(name: string): string | undefined;
  /** Bytes after the blank line, still chunk-encoded if the response was chunked. */
  body: Buffer;
}

/** Splits the bytes of one HTTP/1.x response into head and body. */
export function parseRawResponse(buf: Buffer): ParsedRawResponse {
  const end = buf.indexOf('\r\n\r\n');
  const head = (end < 0 ? buf : buf.subarray(0, end)).toString('latin1');
  const [statusLine = '', ...lines] = head.split('\r\n');
  const headers = lines.map((l): [string, string] => {
    const i = l.indexOf(':');
    return i < 0 ? [l, ''] : [l.slice(0, i), l.slice(i + 1).trim()];
  });
  return {
    statusLine,
    status: Number(statusLine.split(' ')[1] ?? 0),
    headers,
    header: (name) => headers.find(([n]) => n.toLowerCase() === name.toLowerCase())?.[1],
    body: end < 0 ? Buffer.alloc(0) : buf.subarray(end + 4),
  };
}

/** Decodes a chunked body; throws on malformed framing, which tests may want to assert. */
export function decodeChunked(body: Buffer): { data: Buffer; complete: boolean } {
  const out: Buffer[] = [];
  let pos = 0;
  for (;;) {
    const eol = body.indexOf('\r\n', pos);
    if (eol < 0) return { data: Buffer.concat(out), complete: false };
    const size = Number.parseInt(body.subarray(pos, eol).toString('latin1').split(';')[0]!.trim(), 16);
    if (!Number.isFinite(size)) throw new Error(`bad chunk size at byte ${pos}`);
    if (size === 0) return { data: Buffer.concat(out), complete: true };
    const start = eol + 2;
    if (start + size + 2 > body.length) {
      out.push(body.subarray(start, Math.min(start + size, body.length)));
      return { data: Buffer.concat(out), complete: false };
    }
    out.push(body.subarray(start, start + size));
    pos = start + size + 2;
  }
}

/** An async iterable of the given chunks, optionally paced, for chunked uploads. */
export async function* chunks(parts: readonly (string | Buffer)[], delayMs = 0): AsyncIterable<Buffer> {
  for (let i = 0; i < parts.length; i++) {
    if (i > 0 && delayMs > 0) await new Promise((r) => setTimeout(r, delayMs));
    const p = parts[i]!;
    yield Buffer.isBuffer(p) ? p : Buffer.from(p);
  }
}
