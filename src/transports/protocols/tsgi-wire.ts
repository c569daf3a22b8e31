/**
 * The mod_tsgi daemon protocol, version 1 (docs/protocol.md), the codec: pure functions
 * over bytes, no I/O. Both directions: the daemon (src/transports/wire-server.ts) parses
 * what the Apache child sends and encodes its answers; tests (test/helpers/wire-client.ts)
 * do the reverse. native/wire.c is the C twin for the Apache child.
 *
 * Every frame is an 8-byte header — type (u8), flags (u8), reserved (u16, 0), payload
 * length (u32), big-endian — and the payload. The rules enforced (each with its own
 * ProtocolError message naming the frame and the byte offset in the stream):
 *   - the type is one the other side sends (the parser is told which side it reads);
 *   - flags hold only the bits defined for the type; the reserved field is 0;
 *   - the length is within the type's limit (exact for HELLO, 0 for the empty frames,
 *     at least 1 for BODY), checked from the header before any payload is buffered;
 *   - the payload's fields add up to its length exactly (decode*);
 *   - with `checkOrder` (the default), frames come in the order of §3: HELLO first and
 *     once, BODY/BODY_END/ABORT only after a REQUEST with HAS_BODY and before its end;
 *     on the daemon's side, HEAD/BODY/END/ERROR in the order of one response, nothing
 *     after a trailer with CLOSE.
 * A parser that threw keeps throwing the same error: a protocol error ends the connection.
 * Strings in REQUEST are decoded as UTF-8 (invalid sequences become U+FFFD); header names,
 * values and the reason phrase in HEAD are Latin-1, as the gateway's headers are.
 */
import { ProtocolError, describeByte, looksLikeHttp } from './protocol-error';

export const WIRE_VERSION = 1;
export const FRAME_HEADER_BYTES = 8;
export const SECRET_BYTES = 32;
const MAGIC = Buffer.from('TSGI', 'latin1');

// Client (Apache child) → daemon.
export const HELLO = 0x01;
export const REQUEST = 0x02;
export const BODY = 0x03;
export const BODY_END = 0x04;
export const ABORT = 0x05;
export const STATUS = 0x06;
// Daemon → client.
export const D_HELLO = 0x81;
export const D_HEAD = 0x82;
export const D_BODY = 0x83;
export const D_END = 0x84;
export const D_ERROR = 0x85;
export const D_GOAWAY = 0x86;
export const D_STATUS = 0x87;

/** REQUEST flags. */
export const FLAG_HAS_BODY = 0x01;
export const FLAG_RELOAD = 0x02;
export const FLAG_HTTPS = 0x04;
/** END / ERROR flag: the daemon closes the connection after this frame. */
export const FLAG_CLOSE = 0x01;

/** ERROR codes (§4). */
export const ErrorCode = {
  APP: 1,
  TIMEOUT: 2,
  QUEUE_TIMEOUT: 3,
  BAD_REQUEST: 4,
  UNAVAILABLE: 5,
  PROTOCOL: 6,
  AUTH: 7,
  VERSION: 8,
  BODY: 9,
} as const;
export type ErrorCodeName = keyof typeof ErrorCode;
export type ErrorCodeValue = (typeof ErrorCode)[ErrorCodeName];
export const ERROR_NAMES: Readonly<Record<number, ErrorCodeName>> = Object.fromEntries(
  Object.entries(ErrorCode).map(([k, v]) => [v, k as ErrorCodeName]),
);

const MiB = 1024 * 1024;
/** The largest payload of each type (§2). */
export const LIMITS: Readonly<Record<number, number>> = {
  [HELLO]: 40,
  [REQUEST]: 2 * MiB,
  [BODY]: MiB,
  [BODY_END]: 0,
  [ABORT]: 1024,
  [STATUS]: 0,
  [D_HELLO]: 12,
  [D_HEAD]: MiB,
  [D_BODY]: MiB,
  [D_END]: 0,
  [D_ERROR]: 4 + 4096,
  [D_GOAWAY]: 0,
  [D_STATUS]: MiB,
};
/** The largest BODY payload: senders split bigger writes. */
export const MAX_BODY_FRAME = MiB;

const ALLOWED_FLAGS: Readonly<Record<number, number>> = {
  [REQUEST]: FLAG_HAS_BODY | FLAG_RELOAD | FLAG_HTTPS,
  [D_END]: FLAG_CLOSE,
  [D_ERROR]: FLAG_CLOSE,
};
/** Frames whose payload length is fixed: exactly this many bytes. */
const EXACT: Readonly<Record<number, number>> = { [HELLO]: 40, [D_HELLO]: 12 };

export const TYPE_NAMES: Readonly<Record<number, string>> = {
  [HELLO]: 'HELLO',
  [REQUEST]: 'REQUEST',
  [BODY]: 'BODY',
  [BODY_END]: 'BODY_END',
  [ABORT]: 'ABORT',
  [STATUS]: 'STATUS',
  [D_HELLO]: 'HELLO',
  [D_HEAD]: 'HEAD',
  [D_BODY]: 'BODY',
  [D_END]: 'END',
  [D_ERROR]: 'ERROR',
  [D_GOAWAY]: 'GOAWAY',
  [D_STATUS]: 'STATUS',
};

/** Which side wrote the frames a parser reads. */
export type WireSide = 'client' | 'daemon';

/** "HELLO (0x01)", or "type 0x42" for an unknown one. */
export function frameName(type: number): string {
  const n = TYPE_NAMES[type];
  return n ? `${n} (${describeByte(type).slice(0, 4)})` : `type ${describeByte(type)}`;
}

/**
 * A protocol error of this protocol: the message says what and where. `code` is the ERROR
 * code the daemon answers with: PROTOCOL, or AUTH for a connection that did not start
 * with HELLO.
 */
export class WireProtocolError extends ProtocolError {
  constructor(
    readonly detail: string,
    readonly code: ErrorCodeValue = ErrorCode.PROTOCOL,
  ) {
    super('tsgi-wire', detail);
  }
}

const fail = (message: string, code?: ErrorCodeValue) => new WireProtocolError(message, code);

/** One frame as read: type, flags and a payload (a copy or a view of the fed chunk; callers may keep it). */
export interface RawFrame {
  type: number;
  flags: number;
  payload: Buffer;
}

export interface WireParserOptions {
  /** Whose frames this parser reads: 'client' (the daemon's parser) or 'daemon' (a client's). */
  from: WireSide;
  /** Enforce the frame order of §3. Default true. */
  checkOrder?: boolean;
  /** Lower limits per frame type (never raised above LIMITS). */
  limits?: Partial<Record<number, number>>;
}

const EMPTY_BUFFER = Buffer.alloc(0);

// The frame order of §3, as seen by the reader of one side's frames.
const enum Order {
  Hello, // nothing yet: HELLO first
  Idle, // between requests (client) / responses (daemon)
  Body, // client: a request's body frames until BODY_END/ABORT
  Response, // daemon: HEAD sent, BODY* until END/ERROR
  Closed, // daemon: a trailer with CLOSE (or an ERROR before HELLO) was the last frame
}

/**
 * The incremental frame reader: feed() it chunks cut anywhere; it returns the frames they
 * complete, consuming exactly 8 + length bytes per frame. Throws WireProtocolError.
 */
export class WireParser {
  private readonly header = Buffer.alloc(FRAME_HEADER_BYTES);
  private headerFill = 0;
  private type = 0;
  private flags = 0;
  private payload: Buffer | null = null;
  private payloadFill = 0;
  private total = 0;
  private order = Order.Hello;
  private failure: WireProtocolError | null = null;
  private readonly limits: Record<number, number>;
  readonly from: WireSide;
  readonly checkOrder: boolean;

  constructor(options: WireParserOptions) {
    if (options.from !== 'client' && options.from !== 'daemon') throw new RangeError(`WireParser: "from" must be 'client' or 'daemon', got ${String(options.from)}`);
    this.from = options.from;
    this.checkOrder = options.checkOrder ?? true;
    this.limits = { ...LIMITS };
    for (const [k, v] of Object.entries(options.limits ?? {})) {
      const t = Number(k);
      if (!(t in LIMITS)) throw new RangeError(`WireParser: no limit for unknown frame type ${k}`);
      if (v === undefined) continue;
      if (!Number.isInteger(v) || v < 0) throw new RangeError(`WireParser: the limit for ${frameName(t)} must be a non-negative integer, got ${v}`);
      this.limits[t] = Math.min(v, LIMITS[t]);
    }
  }

  /** Bytes consumed so far. */
  get consumed(): number {
    return this.total;
  }

  /** Bytes held for an unfinished frame (never more than 8 + the type's limit). */
  get bufferedBytes(): number {
    return this.headerFill + this.payloadFill;
  }

  /** True between frames: the stream may end here without cutting a frame short. */
  get atBoundary(): boolean {
    return this.headerFill === 0 && this.payload === null;
  }

  /** True while a client's request body is open (after REQUEST with HAS_BODY, before BODY_END/ABORT). */
  get inBody(): boolean {
    return this.order === Order.Body;
  }

  /** True while a daemon's response is open (after HEAD, before its trailer). */
  get inResponse(): boolean {
    return this.order === Order.Response;
  }

  /** Says what an end of stream here cuts short ('' at a frame boundary). */
  describeTruncation(): string {
    if (this.atBoundary) return '';
    if (this.payload === null) return `the stream ended inside a frame header (${this.headerFill} of 8 bytes)`;
    return `the stream ended inside a ${frameName(this.type)} frame (${this.payloadFill} of ${this.payload.length} payload bytes)`;
  }

  feed(chunk: Uint8Array): RawFrame[] {
    const out: RawFrame[] = [];
    this.read(chunk, (f) => out.push(f));
    return out;
  }

  /** Like feed(), but hands each frame over as soon as it is complete, so the frames before a bad one are not lost. */
  read(chunk: Uint8Array, onFrame: (f: RawFrame) => void): void {
    if (this.failure) throw this.failure;
    try {
      this.step(chunk, onFrame);
    } catch (e) {
      if (e instanceof WireProtocolError) {
        this.failure = e;
        this.payload = null;
        this.payloadFill = 0;
        this.headerFill = 0;
      }
      throw e;
    }
  }

  private step(chunk: Uint8Array, onFrame: (f: RawFrame) => void): void {
    const n = chunk.byteLength;
    let i = 0;
    while (i < n) {
      if (this.payload === null) {
        const take = Math.min(FRAME_HEADER_BYTES - this.headerFill, n - i);
        this.header.set(chunk.subarray(i, i + take), this.headerFill);
        this.headerFill += take;
        i += take;
        this.total += take;
        if (this.headerFill < FRAME_HEADER_BYTES) return;
        const length = this.startFrame();
        if (length === 0) {
          this.finish(EMPTY_BUFFER, onFrame);
          continue;
        }
        if (n - i >= length) {
          // The whole payload is in this chunk: a view, no copy.
          const payload = Buffer.from(chunk.buffer, chunk.byteOffset + i, length);
          i += length;
          this.total += length;
          this.finish(payload, onFrame);
          continue;
        }
        this.payload = Buffer.allocUnsafe(length);
        this.payloadFill = 0;
      }
      const p = this.payload as Buffer;
      const take = Math.min(p.length - this.payloadFill, n - i);
      p.set(chunk.subarray(i, i + take), this.payloadFill);
      this.payloadFill += take;
      i += take;
      this.total += take;
      if (this.payloadFill === p.length) {
        this.payload = null;
        this.payloadFill = 0;
        this.finish(p, onFrame);
      }
    }
  }

  /** Checks a complete header; returns the payload length. */
  private startFrame(): number {
    const h = this.header;
    this.headerFill = 0;
    const at = this.total - FRAME_HEADER_BYTES;
    const type = h[0];
    const flags = h[1];
    const reserved = h.readUInt16BE(2);
    const length = h.readUInt32BE(4);
    const mine = this.from === 'client' ? type < 0x80 : type >= 0x80;
    if (!(type in LIMITS) || !mine) {
      if (type in LIMITS) {
        throw fail(`${frameName(type)} frame at byte ${at} goes from the ${this.from === 'client' ? 'daemon to the client' : 'client to the daemon'}, not this way`);
      }
      const hint = at === 0 && looksLikeHttp(h) ? ' (this is HTTP: only an Apache child speaks to this socket)' : '';
      throw fail(`unknown frame type ${describeByte(type)} at byte ${at}${hint}`);
    }
    const name = frameName(type);
    const allowed = ALLOWED_FLAGS[type] ?? 0;
    if ((flags & ~allowed) !== 0) throw fail(`${name} frame at byte ${at} has undefined flag bits set (flags ${describeByte(flags)}, allowed ${describeByte(allowed)})`);
    if (reserved !== 0) throw fail(`${name} frame at byte ${at} has a non-zero reserved field (${reserved})`);
    const exact = EXACT[type];
    if (exact !== undefined && length !== exact) throw fail(`${name} frame at byte ${at} has a ${length}-byte payload (it must be exactly ${exact})`);
    const limit = this.limits[type];
    if (length > limit) {
      throw fail(limit === 0 ? `${name} frame at byte ${at} has a ${length}-byte payload (it must be empty)` : `${name} frame at byte ${at} has a ${length}-byte payload, over the limit of ${limit}`);
    }
    if (length === 0 && (type === BODY || type === D_BODY)) throw fail(`${name} frame at byte ${at} is empty (a BODY frame carries at least 1 byte)`);
    if (this.checkOrder) this.checkSequence(type, flags, at);
    this.type = type;
    this.flags = flags;
    return length;
  }

  private finish(payload: Buffer, onFrame: (f: RawFrame) => void): void {
    onFrame({ type: this.type, flags: this.flags, payload });
  }

  /** Advances the §3 state machine for a frame about to be read; throws when it is out of order. */
  private checkSequence(type: number, flags: number, at: number): void {
    const name = frameName(type);
    const where = `at byte ${at}`;
    if (this.order === Order.Closed) throw fail(`${name} frame ${where} after a trailer with CLOSE (the connection is over)`);
    if (this.order === Order.Hello) {
      if (type === HELLO || type === D_HELLO) {
        this.order = Order.Idle;
        return;
      }
      // A daemon refuses a bad HELLO with ERROR (AUTH, VERSION, PROTOCOL) instead of its own.
      if (type === D_ERROR) {
        this.order = Order.Closed;
        return;
      }
      throw fail(`${name} frame ${where}: the connection must start with HELLO`, this.from === 'client' ? ErrorCode.AUTH : ErrorCode.PROTOCOL);
    }
    if (type === HELLO || type === D_HELLO) throw fail(`a second HELLO ${where}`);
    if (this.from === 'client') {
      switch (type) {
        case REQUEST:
        case STATUS:
          if (this.order === Order.Body) throw fail(`${name} frame ${where} while the previous request's body is still open (BODY_END or ABORT must come first)`);
          if (type === REQUEST && flags & FLAG_HAS_BODY) this.order = Order.Body;
          return;
        case BODY:
        case BODY_END:
        case ABORT:
          if (this.order !== Order.Body) throw fail(`${name} frame ${where} without a request body open (no REQUEST with HAS_BODY before it, or its body already ended)`);
          if (type !== BODY) this.order = Order.Idle;
          return;
      }
      return;
    }
    switch (type) {
      case D_GOAWAY:
        return;
      case D_HEAD:
        if (this.order === Order.Response) throw fail(`a second HEAD ${where} in one response`);
        this.order = Order.Response;
        return;
      case D_BODY:
        if (this.order !== Order.Response) throw fail(`BODY frame ${where} without a HEAD before it`);
        return;
      case D_END:
        if (this.order !== Order.Response) throw fail(`END frame ${where} without a HEAD before it`);
        this.order = flags & FLAG_CLOSE ? Order.Closed : Order.Idle;
        return;
      case D_ERROR:
        this.order = flags & FLAG_CLOSE ? Order.Closed : Order.Idle;
        return;
      case D_STATUS:
        if (this.order === Order.Response) throw fail(`STATUS frame ${where} inside a response`);
        return;
    }
  }
}

// ---------------------------------------------------------------------------
// Payload decoders (each throws WireProtocolError when the fields do not add up)

/** Reads u32-prefixed strings and integers from a payload, naming the frame and field on overrun. */
class Reader {
  pos = 0;
  constructor(
    private readonly b: Buffer,
    private readonly frame: string,
  ) {}

  get left(): number {
    return this.b.length - this.pos;
  }

  need(n: number, field: string): void {
    if (this.left < n) throw fail(`${this.frame}: the payload ends inside ${field} (${n} bytes needed at offset ${this.pos}, ${this.left} left of ${this.b.length})`);
  }

  u16(field: string): number {
    this.need(2, field);
    const v = this.b.readUInt16BE(this.pos);
    this.pos += 2;
    return v;
  }

  u32(field: string): number {
    this.need(4, field);
    const v = this.b.readUInt32BE(this.pos);
    this.pos += 4;
    return v;
  }

  u64(field: string): bigint {
    this.need(8, field);
    const v = this.b.readBigUInt64BE(this.pos);
    this.pos += 8;
    return v;
  }

  /** A str: u32 length, then that many bytes. */
  bytes(field: string): Buffer {
    const at = this.pos;
    const len = this.u32(`the length of ${field}`);
    if (this.left < len) throw fail(`${this.frame}: ${field} (length ${len} at offset ${at}) runs past the end of the ${this.b.length}-byte payload`);
    const v = this.b.subarray(this.pos, this.pos + len);
    this.pos += len;
    return v;
  }

  str(field: string, encoding: 'utf8' | 'latin1' = 'utf8'): string {
    return this.bytes(field).toString(encoding);
  }

  end(): void {
    if (this.left !== 0) throw fail(`${this.frame}: ${this.left} bytes left over after the last field (the payload is ${this.b.length} bytes)`);
  }
}

export interface ClientHello {
  version: number;
  /** The 32-byte secret (a view of the payload). */
  secret: Buffer;
}

/** Decodes a client HELLO payload: "TSGI", version, 0, secret. The version is returned as sent, for the caller to refuse. */
export function decodeClientHello(payload: Buffer): ClientHello {
  if (payload.length !== 40) throw fail(`HELLO: the payload is ${payload.length} bytes (it must be exactly 40)`);
  checkMagic(payload, 'HELLO');
  if (payload.readUInt16BE(6) !== 0) throw fail('HELLO: the reserved field after the version is not 0');
  return { version: payload.readUInt16BE(4), secret: payload.subarray(8, 40) };
}

export interface DaemonHello {
  version: number;
  pid: number;
}

/** Decodes a daemon HELLO payload: "TSGI", version, 0, pid. */
export function decodeDaemonHello(payload: Buffer): DaemonHello {
  if (payload.length !== 12) throw fail(`daemon HELLO: the payload is ${payload.length} bytes (it must be exactly 12)`);
  checkMagic(payload, 'daemon HELLO');
  if (payload.readUInt16BE(6) !== 0) throw fail('daemon HELLO: the reserved field after the version is not 0');
  return { version: payload.readUInt16BE(4), pid: payload.readUInt32BE(8) };
}

function checkMagic(payload: Buffer, frame: string): void {
  if (!payload.subarray(0, 4).equals(MAGIC)) {
    throw fail(`${frame}: the payload starts with ${JSON.stringify(payload.subarray(0, 4).toString('latin1'))}, not "TSGI"`);
  }
}

export interface WireRequest {
  /** request_start_us exactly. 0n: unknown. */
  requestStartUs: bigint;
  /** request_start_us as a number (exact up to 2^53 µs, the year 2255). */
  requestStartUsNumber: number;
  script: string;
  callable: string;
  applicationGroup: string;
  processGroup: string;
  /** The CGI variables (a null-prototype object); a repeated key keeps its last value. */
  vars: Record<string, string>;
  /** How many variables the frame carried (repeats included). */
  count: number;
  hasBody: boolean;
  reload: boolean;
  https: boolean;
}

/** Decodes a REQUEST payload (§2); `flags` are the frame's flags. */
export function decodeRequest(payload: Buffer, flags = 0): WireRequest {
  const r = new Reader(payload, 'REQUEST');
  const requestStartUs = r.u64('request_start_us');
  const script = r.str('script');
  const callable = r.str('callable');
  const applicationGroup = r.str('application_group');
  const processGroup = r.str('process_group');
  const count = r.u32('the variable count');
  // Each variable takes at least 8 bytes: a count past that cannot be honest, and is
  // refused before any work is done for it.
  if (count > r.left / 8) throw fail(`REQUEST: the variable count ${count} cannot fit in the ${r.left} bytes left of the payload`);
  const vars = Object.create(null) as Record<string, string>;
  // The hot loop of every request: plain offset arithmetic, field names built only for an error.
  const b = payload;
  let pos = r.pos;
  for (let k = 0; k < count; k++) {
    if (b.length - pos < 4 || b.length - pos - 4 < b.readUInt32BE(pos)) {
      r.pos = pos;
      r.bytes(`the name of variable #${k + 1}`);
    }
    const klen = b.readUInt32BE(pos);
    if (klen === 0) throw fail(`REQUEST: variable #${k + 1} has an empty name`);
    const key = b.toString('utf8', pos + 4, pos + 4 + klen);
    pos += 4 + klen;
    if (b.length - pos < 4 || b.length - pos - 4 < b.readUInt32BE(pos)) {
      r.pos = pos;
      r.bytes(`the value of variable ${JSON.stringify(key.slice(0, 40))}`);
    }
    const vlen = b.readUInt32BE(pos);
    vars[key] = b.toString('utf8', pos + 4, pos + 4 + vlen);
    pos += 4 + vlen;
  }
  r.pos = pos;
  r.end();
  if (script === '') throw fail('REQUEST: the script is empty');
  return {
    requestStartUs,
    requestStartUsNumber: Number(requestStartUs),
    script,
    callable,
    applicationGroup,
    processGroup,
    vars,
    count,
    hasBody: (flags & FLAG_HAS_BODY) !== 0,
    reload: (flags & FLAG_RELOAD) !== 0,
    https: (flags & FLAG_HTTPS) !== 0,
  };
}

export interface WireHead {
  status: number;
  reason: string;
  headers: [string, string][];
}

/** Decodes a HEAD payload: status 100–599, reason, headers (Latin-1). */
export function decodeHead(payload: Buffer): WireHead {
  const r = new Reader(payload, 'HEAD');
  const status = r.u16('the status');
  if (status < 100 || status > 599) throw fail(`HEAD: status ${status} is not in 100–599`);
  const reason = r.str('the reason', 'latin1');
  const count = r.u32('the header count');
  if (count > r.left / 8) throw fail(`HEAD: the header count ${count} cannot fit in the ${r.left} bytes left of the payload`);
  const headers: [string, string][] = [];
  for (let k = 0; k < count; k++) {
    const name = r.str(`the name of header #${k + 1}`, 'latin1');
    if (name === '') throw fail(`HEAD: header #${k + 1} has an empty name`);
    headers.push([name, r.str(`the value of header ${JSON.stringify(name.slice(0, 40))}`, 'latin1')]);
  }
  r.end();
  return { status, reason, headers };
}

export interface WireError {
  code: number;
  /** ERROR_NAMES[code]. */
  name: ErrorCodeName;
  message: string;
}

/** Decodes an ERROR payload: code (one of §4), 0, UTF-8 message. */
export function decodeError(payload: Buffer): WireError {
  const r = new Reader(payload, 'ERROR');
  const code = r.u16('the error code');
  const zero = r.u16('the reserved field');
  const name = ERROR_NAMES[code];
  if (!name) throw fail(`ERROR: unknown error code ${code}`);
  if (zero !== 0) throw fail(`ERROR: the reserved field after the code is ${zero}, not 0`);
  return { code, name, message: payload.toString('utf8', 4) };
}

/** The reason an ABORT carries. */
export function decodeAbort(payload: Buffer): string {
  return payload.toString('utf8');
}

/** The JSON of a daemon STATUS frame, parsed. */
export function decodeStatus(payload: Buffer): unknown {
  try {
    return JSON.parse(payload.toString('utf8')) as unknown;
  } catch (e) {
    throw fail(`STATUS: the payload is not JSON (${(e as Error).message})`);
  }
}

// ---------------------------------------------------------------------------
// Encoders

/** One frame: header and payload in one buffer. Throws RangeError past the type's limit. */
export function encodeFrame(type: number, flags = 0, payload: Uint8Array = EMPTY_BUFFER): Buffer {
  const limit = LIMITS[type];
  if (limit === undefined) throw new RangeError(`tsgi-wire: unknown frame type ${describeByte(type)}`);
  if (payload.byteLength > limit) throw new RangeError(`tsgi-wire: a ${frameName(type)} payload of ${payload.byteLength} bytes is over the limit of ${limit}`);
  const out = Buffer.allocUnsafe(FRAME_HEADER_BYTES + payload.byteLength);
  writeFrameHeader(out, 0, type, flags, payload.byteLength);
  out.set(payload, FRAME_HEADER_BYTES);
  return out;
}

/** Writes an 8-byte frame header at `at`. */
export function writeFrameHeader(out: Uint8Array, at: number, type: number, flags: number, length: number): void {
  out[at] = type;
  out[at + 1] = flags;
  out[at + 2] = 0;
  out[at + 3] = 0;
  out[at + 4] = (length >>> 24) & 0xff;
  out[at + 5] = (length >>> 16) & 0xff;
  out[at + 6] = (length >>> 8) & 0xff;
  out[at + 7] = length & 0xff;
}

/** Concatenates [u32 length, bytes] for each string or buffer. */
class Writer {
  private parts: Buffer[] = [];
  private size = 0;

  raw(b: Buffer): this {
    this.parts.push(b);
    this.size += b.length;
    return this;
  }

  u16(v: number): this {
    const b = Buffer.allocUnsafe(2);
    b.writeUInt16BE(v);
    return this.raw(b);
  }

  u32(v: number): this {
    const b = Buffer.allocUnsafe(4);
    b.writeUInt32BE(v);
    return this.raw(b);
  }

  str(s: string | Uint8Array, encoding: 'utf8' | 'latin1' = 'utf8'): this {
    const b = typeof s === 'string' ? Buffer.from(s, encoding) : Buffer.from(s.buffer, s.byteOffset, s.byteLength);
    this.u32(b.length);
    return this.raw(b);
  }

  done(): Buffer {
    return Buffer.concat(this.parts, this.size);
  }
}

/** A client HELLO. `version` is for tests of the VERSION refusal. */
export function encodeClientHello(secret: Uint8Array, version: number = WIRE_VERSION): Buffer {
  if (secret.byteLength !== SECRET_BYTES) throw new RangeError(`tsgi-wire: the secret must be ${SECRET_BYTES} bytes, got ${secret.byteLength}`);
  const p = Buffer.alloc(40);
  MAGIC.copy(p, 0);
  p.writeUInt16BE(version, 4);
  p.set(secret, 8);
  return encodeFrame(HELLO, 0, p);
}

/** The daemon's HELLO. */
export function encodeDaemonHello(pid: number, version: number = WIRE_VERSION): Buffer {
  const p = Buffer.alloc(12);
  MAGIC.copy(p, 0);
  p.writeUInt16BE(version, 4);
  p.writeUInt32BE(pid >>> 0, 8);
  return encodeFrame(D_HELLO, 0, p);
}

export interface WireRequestInit {
  /** µs since the epoch; default now. 0: unknown (no queue-timeout check). */
  requestStartUs?: number | bigint;
  script: string;
  callable?: string;
  applicationGroup?: string;
  processGroup?: string;
  /** The CGI variables, in order (an object or [name, value] pairs; pairs may repeat a name). */
  vars: Record<string, string> | readonly (readonly [string, string])[];
  hasBody?: boolean;
  reload?: boolean;
  https?: boolean;
}

/** A REQUEST frame (what the Apache child sends). Throws RangeError past the 2 MiB limit. */
export function encodeRequest(init: WireRequestInit): Buffer {
  const start = init.requestStartUs ?? BigInt(Date.now()) * 1000n;
  const w = new Writer();
  const s = Buffer.allocUnsafe(8);
  s.writeBigUInt64BE(BigInt(start));
  w.raw(s)
    .str(init.script)
    .str(init.callable ?? 'application')
    .str(init.applicationGroup ?? '')
    .str(init.processGroup ?? '');
  const entries = Array.isArray(init.vars) ? (init.vars as readonly (readonly [string, string])[]) : Object.entries(init.vars);
  w.u32(entries.length);
  for (const [k, v] of entries) w.str(k).str(v);
  const flags = (init.hasBody ? FLAG_HAS_BODY : 0) | (init.reload ? FLAG_RELOAD : 0) | (init.https ? FLAG_HTTPS : 0);
  return encodeFrame(REQUEST, flags, w.done());
}

/**
 * Body bytes as BODY frames of at most MAX_BODY_FRAME bytes each, in one buffer; `type`
 * is BODY (client) or D_BODY (daemon). Empty data gives an empty buffer.
 */
export function encodeBody(data: Uint8Array, type: typeof BODY | typeof D_BODY = BODY): Buffer {
  const len = data.byteLength;
  if (len === 0) return EMPTY_BUFFER;
  const frames = Math.ceil(len / MAX_BODY_FRAME);
  const out = Buffer.allocUnsafe(len + frames * FRAME_HEADER_BYTES);
  let at = 0;
  for (let off = 0; off < len; off += MAX_BODY_FRAME) {
    const n = Math.min(MAX_BODY_FRAME, len - off);
    writeFrameHeader(out, at, type, 0, n);
    out.set(data.subarray(off, off + n), at + FRAME_HEADER_BYTES);
    at += FRAME_HEADER_BYTES + n;
  }
  return out;
}

export const encodeBodyEnd = (): Buffer => encodeFrame(BODY_END);

/** ABORT with a reason (cut to the 1024-byte limit on a character boundary). */
export function encodeAbort(reason = ''): Buffer {
  return encodeFrame(ABORT, 0, truncateUtf8(reason, LIMITS[ABORT]));
}

export const encodeStatusRequest = (): Buffer => encodeFrame(STATUS);

/** HEAD: status, reason and headers (Latin-1). Throws RangeError for a status outside 100–599 or over 1 MiB. */
export function encodeHead(status: number, reason: string, headers: readonly (readonly [string, string])[]): Buffer {
  if (!Number.isInteger(status) || status < 100 || status > 599) throw new RangeError(`tsgi-wire: HEAD status ${status} is not in 100–599`);
  // Once per response: sized up front and written in place (Latin-1 is one byte per character).
  let size = 2 + 4 + reason.length + 4;
  for (const [n, v] of headers) size += 8 + n.length + v.length;
  if (size > LIMITS[D_HEAD]) throw new RangeError(`tsgi-wire: a HEAD payload of ${size} bytes is over the limit of ${LIMITS[D_HEAD]}`);
  const out = Buffer.allocUnsafe(FRAME_HEADER_BYTES + size);
  writeFrameHeader(out, 0, D_HEAD, 0, size);
  let at = out.writeUInt16BE(status, FRAME_HEADER_BYTES);
  const str = (s: string) => {
    at = out.writeUInt32BE(s.length, at);
    at += out.write(s, at, 'latin1');
  };
  str(reason);
  at = out.writeUInt32BE(headers.length, at);
  for (const [n, v] of headers) {
    str(n);
    str(v);
  }
  return out;
}

export const encodeEnd = (close = false): Buffer => encodeFrame(D_END, close ? FLAG_CLOSE : 0);

/** ERROR with a code of §4 and a message (cut to 4096 bytes on a character boundary). */
export function encodeError(code: number, message: string, close = false): Buffer {
  if (!ERROR_NAMES[code]) throw new RangeError(`tsgi-wire: unknown error code ${code}`);
  const m = truncateUtf8(message, LIMITS[D_ERROR] - 4);
  const p = Buffer.allocUnsafe(4 + m.length);
  p.writeUInt16BE(code, 0);
  p.writeUInt16BE(0, 2);
  m.copy(p, 4);
  return encodeFrame(D_ERROR, close ? FLAG_CLOSE : 0, p);
}

export const encodeGoaway = (): Buffer => encodeFrame(D_GOAWAY);

/** The daemon's STATUS answer: the JSON text. Throws RangeError past 1 MiB. */
export function encodeStatus(json: string): Buffer {
  return encodeFrame(D_STATUS, 0, Buffer.from(json, 'utf8'));
}

/** UTF-8 bytes of `s`, at most `max` of them, never ending inside a character. */
export function truncateUtf8(s: string, max: number): Buffer {
  const b = Buffer.from(s, 'utf8');
  if (b.length <= max) return b;
  let end = max;
  // Back up over continuation bytes (10xxxxxx) to the start of the cut character.
  while (end > 0 && (b[end] & 0xc0) === 0x80) end--;
  return b.subarray(0, end);
}
