/**
 * gzip: compresses responses for clients that accept it, TSGI's twin of Paste's
 * gzipper (seed 004).
 *
 * A response is compressed when the request's Accept-Encoding accepts gzip (q > 0),
 * the status allows a body (not 1xx/204/304, and not 206: ranges count uncompressed
 * bytes), the response has no Content-Encoding, Content-Range or
 * `Cache-Control: no-transform`, its media type is compressible, and its length — when
 * known — is at least `minSize`. Content-Length is then removed (an Array body gets a
 * new one from the server), Content-Encoding: gzip added, and a strong ETag weakened,
 * since the bytes differ from the identity representation. Vary: Accept-Encoding is added
 * to every response that could have been compressed, whether or not it was, so caches
 * keep the two variants apart.
 *
 * Streaming stays streaming: every chunk the application yields (or passes to write())
 * is compressed and flushed right away, so a client can decode each one as it arrives.
 */
import { callApplication, isThenable } from '../gateway/invoke';
import * as zlib from 'node:zlib';
import { SpecViolation } from '../gateway/errors';
import { checkHeaders, parseStatus, statusForbidsBody } from '../gateway/headers';
import type { Application, Body, Chunk, Environ, Header, StartResponse, Write } from '../tsgi';

export interface GzipOptions {
  /** Responses whose length is known to be below this many bytes are sent as they are. Default 256. */
  minSize?: number;
  /** zlib compression level, 1 (fastest) to 9 (smallest). Default zlib's, 6. */
  level?: number;
  /** Decides from the media type (lower case, without parameters) whether to compress. */
  compressible?: (mediaType: string) => boolean;
}

/** text/*, JSON, JavaScript, XML and SVG, the types that compress well. */
export function defaultCompressible(mediaType: string): boolean {
  return /^text\/|[/+](json|xml)$|^application\/(x-)?(javascript|ecmascript)$|^image\/svg\+xml$/.test(mediaType);
}

/** Wraps `app` so that its responses are gzip-compressed when the client accepts it. */
export function gzip(app: Application, options: GzipOptions = {}): Application {
  const settings: Settings = {
    minSize: options.minSize ?? 256,
    level: options.level ?? zlib.constants.Z_DEFAULT_COMPRESSION,
    compressible: options.compressible ?? defaultCompressible,
  };
  const call = (environ: Environ, startResponse: StartResponse) => callApplication(app, environ, startResponse);

  return function gzipApp(environ, startResponse) {
    const response = new GzipResponse(environ, startResponse, settings);
    const result = call(environ, response.startResponse);
    if (isThenable(result)) return result.then((body) => response.wrap(body) as Body);
    return response.wrap(result) as Body;
  };
}

interface Settings {
  minSize: number;
  level: number;
  compressible: (mediaType: string) => boolean;
}

/**
 * One response passing through. The decision to compress waits for the first of:
 * write(), the returned body (an Array's size is then known), the first body chunk, or
 * the end of the body — the server sends nothing before that point anyway.
 */
class GzipResponse {
  private status: string | null = null;
  private headers: Header[] = [];
  private declaredLength: number | null = null;
  private committed = false;
  private encoder: GzipEncoder | null = null;
  private outerWrite: Write | null = null;
  private ended = false;
  /** Uncompressed bytes of the current response, checked against its declared length. */
  private rawBytes = 0;
  private readonly accepts: boolean;
  private readonly headRequest: boolean;

  constructor(
    private readonly environ: Environ,
    private readonly outerStart: StartResponse,
    private readonly settings: Settings,
  ) {
    this.accepts = acceptsGzip(environ.HTTP_ACCEPT_ENCODING);
    this.headRequest = environ.REQUEST_METHOD === 'HEAD';
  }

  readonly startResponse: StartResponse = (status, headers, excInfo) => {
    const replacing = excInfo !== undefined && excInfo !== null;
    if (!replacing && this.status !== null) throw new SpecViolation('startResponse() called a second time without excInfo');
    // Checked now, though the server sees them later, so the error is raised in the
    // application's own call (where debugErrors can show it).
    parseStatus(status);
    const declared = checkHeaders(headers);
    this.status = status;
    this.headers = headers.map(([n, v]) => [n, v] as Header);
    this.declaredLength = declared;
    if (this.committed) {
      // The server already has the old response: it re-throws excInfo here when its
      // headers went out; otherwise the new one replaces it, with a fresh compressor.
      this.commit(declared, excInfo);
    }
    return this.write;
  };

  private readonly write: Write = (chunk) => {
    // Raw bytes after the gzip trailer would corrupt the stream.
    if (this.ended) throw new SpecViolation('write() called after the body ended');
    if (!this.committed) this.commit(this.declaredLength);
    const outer = this.outerWrite as Write;
    if (!this.encoder || !isChunk(chunk)) return outer(chunk);
    const out = this.compress(toBytes(chunk));
    if (out.byteLength > 0) outer(out);
  };

  /** Wraps the application's body; the server does the reporting when it is not one. */
  wrap(body: unknown): unknown {
    if (body === null || typeof body !== 'object') return body;
    if (Array.isArray(body) && !this.headRequest && this.status !== null && body.every(isChunk)) return this.wrapArray(body as Chunk[]);
    if (isFileBody(body) && this.status !== null) {
      // Nothing inside a file body can restart the response, so the plan is final and
      // an uncompressed file can go back to the server as it is, for sendfile(2).
      if (!this.committed) this.commit(this.declaredLength);
      if (!this.encoder) return body;
    }
    const close = () => {
      const c = (body as { close?: unknown }).close;
      return typeof c === 'function' ? c.call(body) : undefined;
    };
    const response = this;
    if (typeof (body as Partial<AsyncIterable<unknown>>)[Symbol.asyncIterator] === 'function') {
      const source = body as AsyncIterable<unknown>;
      return {
        async *[Symbol.asyncIterator]() {
          for await (const value of source) yield response.transform(value);
          const tail = response.end();
          if (tail !== null) yield tail;
        },
        close,
      };
    }
    if (typeof (body as Partial<Iterable<unknown>>)[Symbol.iterator] === 'function') {
      const source = body as Iterable<unknown>;
      return {
        *[Symbol.iterator]() {
          for (const value of source) yield response.transform(value);
          const tail = response.end();
          if (tail !== null) yield tail;
        },
        close,
      };
    }
    return body;
  }

  /** A complete body: compressed in one piece and returned as an Array, so the server can set Content-Length. */
  private wrapArray(body: Chunk[]): unknown {
    if (!this.committed) {
      let total = 0;
      for (const c of body) total += typeof c === 'string' ? Buffer.byteLength(c) : c.byteLength;
      this.commit(this.declaredLength ?? total);
    }
    if (!this.encoder) return body;
    const compressed = Buffer.concat([this.compress(Buffer.concat(body.map(toBytes))), this.finish()]);
    const out: Chunk[] = [compressed];
    const close = (body as { close?: unknown }).close;
    return typeof close === 'function' ? Object.assign(out, { close: () => close.call(body) }) : out;
  }

  /**
   * What to pass on for one body value: compressed bytes or the value itself — at least
   * an empty chunk, since a middleware yields once per inner chunk (spec §11.1).
   */
  private transform(value: unknown): unknown {
    // Not a chunk, or a chunk before startResponse: passed on for the server to report.
    if (!isChunk(value) || this.status === null) return value;
    const bytes = toBytes(value);
    if (bytes.byteLength === 0) return bytes;
    if (!this.committed) this.commit(this.declaredLength);
    return this.encoder ? this.compress(bytes) : value;
  }

  private end(): Uint8Array | null {
    if (this.status === null) return null;
    // Nothing came through, so the length is 0 — except for HEAD, whose body is dropped anyway.
    if (!this.committed) this.commit(this.declaredLength ?? (this.headRequest ? null : 0));
    if (!this.encoder) {
      this.ended = true;
      return null;
    }
    return this.finish();
  }

  /**
   * Compressing drops the declared Content-Length, and with it the server's check that
   * the body has that length; it is done here instead, so a short body still ends in an
   * aborted response rather than a complete-looking gzip stream.
   */
  private compress(bytes: Uint8Array): Uint8Array {
    const declared = this.declaredLength;
    if (declared !== null && !this.headRequest && this.rawBytes + bytes.byteLength > declared) {
      throw new SpecViolation(
        `the application declared Content-Length: ${declared} but sent more (${this.rawBytes + bytes.byteLength} bytes so far)`,
      );
    }
    this.rawBytes += bytes.byteLength;
    return (this.encoder as GzipEncoder).push(bytes);
  }

  private finish(): Uint8Array {
    const declared = this.declaredLength;
    if (declared !== null && !this.headRequest && this.rawBytes < declared) {
      throw new SpecViolation(`the application declared Content-Length: ${declared} but sent only ${this.rawBytes} bytes`);
    }
    this.ended = true;
    return (this.encoder as GzipEncoder).finish();
  }

  private commit(knownLength: number | null, excInfo?: unknown): void {
    const plan = planResponse(this.environ, this.status as string, this.headers, knownLength, this.accepts, this.settings);
    this.outerWrite = this.outerStart(this.status as string, plan.headers, excInfo);
    this.committed = true;
    this.ended = false;
    this.rawBytes = 0;
    this.encoder = plan.compress ? new GzipEncoder(this.settings.level) : null;
  }
}

interface Plan {
  compress: boolean;
  headers: Header[];
}

function planResponse(
  environ: Environ,
  status: string,
  headers: Header[],
  knownLength: number | null,
  accepts: boolean,
  settings: Settings,
): Plan {
  const { code } = parseStatus(status);
  const contentType = headerValue(headers, 'content-type');
  const mediaType = contentType === null ? null : contentType.split(';')[0].trim().toLowerCase();
  const eligible =
    !statusForbidsBody(code) &&
    code !== 206 &&
    headerValue(headers, 'content-encoding') === null &&
    headerValue(headers, 'content-range') === null &&
    !/(^|,)\s*no-transform\s*(,|$)/i.test(headers.filter(([n]) => n.toLowerCase() === 'cache-control').map(([, v]) => v).join(',')) &&
    mediaType !== null &&
    settings.compressible(mediaType) &&
    !(knownLength !== null && knownLength < settings.minSize);
  if (!eligible) return { compress: false, headers };
  const varied = addVary(headers);
  if (!accepts) return { compress: false, headers: varied };
  const out: Header[] = [];
  for (const [name, value] of varied) {
    const lower = name.toLowerCase();
    if (lower === 'content-length') continue;
    if (lower === 'etag' && value.startsWith('"')) out.push([name, `W/${value}`]);
    else out.push([name, value]);
  }
  out.push(['Content-Encoding', 'gzip']);
  return { compress: true, headers: out };
}

function addVary(headers: Header[]): Header[] {
  const existing = headers.filter(([n]) => n.toLowerCase() === 'vary').flatMap(([, v]) => v.split(','));
  const fields = existing.map((f) => f.trim().toLowerCase());
  if (fields.includes('*') || fields.includes('accept-encoding')) return headers;
  return [...headers, ['Vary', 'Accept-Encoding']];
}

/** True when an Accept-Encoding value gives gzip (or x-gzip, or `*`) a q-value above 0. */
export function acceptsGzip(header: unknown): boolean {
  if (typeof header !== 'string') return false;
  let gzipQ: number | null = null;
  let anyQ: number | null = null;
  for (const item of header.split(',')) {
    const [coding, ...params] = item.split(';').map((s) => s.trim());
    const name = coding.toLowerCase();
    if (name === '') continue;
    let q = 1;
    for (const p of params) {
      const m = /^q\s*=\s*([0-9.]+)$/i.exec(p);
      if (m) q = /^(0(\.[0-9]{0,3})?|1(\.0{0,3})?)$/.test(m[1]) ? Number(m[1]) : 0;
    }
    if (name === 'gzip' || name === 'x-gzip') gzipQ = Math.max(gzipQ ?? 0, q);
    else if (name === '*') anyQ = q;
  }
  return (gzipQ ?? anyQ ?? 0) > 0;
}

/**
 * A gzip member produced piece by piece, synchronously, so write() — a plain function —
 * can compress too. Each piece is raw deflate ending in a sync flush, primed with the
 * last 32 KiB of input as its dictionary: the pieces join into one deflate stream that
 * compresses as well as a single zlib stream flushed after every chunk.
 */
class GzipEncoder {
  private window: Buffer = Buffer.alloc(0);
  private crc = 0;
  private size = 0;
  private headerSent = false;

  constructor(private readonly level: number) {}

  push(data: Uint8Array): Buffer {
    if (data.byteLength === 0) return Buffer.alloc(0);
    const deflated = zlib.deflateRawSync(data, {
      level: this.level,
      finishFlush: zlib.constants.Z_SYNC_FLUSH,
      ...(this.window.byteLength > 0 ? { dictionary: this.window } : {}),
    });
    this.crc = crc32(data, this.crc);
    this.size = (this.size + data.byteLength) % 0x100000000;
    // Copied: the application may reuse the buffer it yielded.
    this.window =
      data.byteLength >= WINDOW ? Buffer.from(data.subarray(data.byteLength - WINDOW)) : Buffer.concat([this.window, data]).subarray(-WINDOW);
    return this.withHeader(deflated);
  }

  finish(): Buffer {
    const last = zlib.deflateRawSync(Buffer.alloc(0), { level: this.level });
    const trailer = Buffer.alloc(8);
    trailer.writeUInt32LE(this.crc >>> 0, 0);
    trailer.writeUInt32LE(this.size, 4);
    return this.withHeader(Buffer.concat([last, trailer]));
  }

  private withHeader(data: Buffer): Buffer {
    if (this.headerSent) return data;
    this.headerSent = true;
    // Magic, deflate, no flags, no mtime, no extra flags, OS unknown.
    return Buffer.concat([Buffer.from([0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff]), data]);
  }
}

const WINDOW = 32 * 1024;

// zlib.crc32 exists from Node 20.15 and 22.2 only; Node 18 gets the table version.
const nativeCrc32 = (zlib as { crc32?: (data: Uint8Array, value?: number) => number }).crc32;
let crcTable: Uint32Array | null = null;
function crc32(data: Uint8Array, value: number): number {
  if (nativeCrc32) return nativeCrc32(data, value);
  if (!crcTable) {
    crcTable = new Uint32Array(256);
    for (let n = 0; n < 256; n++) {
      let c = n;
      for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
      crcTable[n] = c >>> 0;
    }
  }
  let c = ~value >>> 0;
  for (let i = 0; i < data.length; i++) c = crcTable[(c ^ data[i]) & 0xff] ^ (c >>> 8);
  return ~c >>> 0;
}

function headerValue(headers: Header[], lowerName: string): string | null {
  for (const [n, v] of headers) if (n.toLowerCase() === lowerName) return v;
  return null;
}

function isFileBody(body: object): boolean {
  return (body as { filePath?: unknown }).filePath !== undefined || (body as { fd?: unknown }).fd !== undefined;
}

function isChunk(v: unknown): v is Chunk {
  return typeof v === 'string' || v instanceof Uint8Array;
}

function toBytes(chunk: Chunk): Uint8Array {
  return typeof chunk === 'string' ? Buffer.from(chunk, 'utf8') : chunk;
}

