/**
 * FastCGI 1.0, the application side, as pure functions over bytes: no sockets, no
 * timers. src/transports/fastcgi-server.ts puts it on a connection.
 *
 *   RecordReader       bytes → records, whatever the chunk boundaries;
 *   FastCgiDecoder     records → request events, tracking every request id on one
 *                      connection (begin, params, stdin, abort, management records),
 *                      with the limits and the errors of a strict server;
 *   decodeNameValuePairs / encodeNameValuePairs   the PARAMS pair format;
 *   encode*            the records an application sends (STDOUT, STDERR, END_REQUEST,
 *                      GET_VALUES_RESULT, UNKNOWN_TYPE) and, for clients and tests,
 *                      BEGIN_REQUEST and generic streams.
 *
 * Every violation is a FastCgiProtocolError (a ProtocolError) whose message says what was
 * wrong and where; the connection handler logs it and closes the connection.
 */

import { ProtocolError } from './protocol-error';

export { ProtocolError };

export const FCGI_VERSION_1 = 1;
export const FCGI_HEADER_LEN = 8;
/** The largest content one record can carry (contentLength is 16 bits). */
export const FCGI_MAX_CONTENT = 0xffff;

export const FCGI_BEGIN_REQUEST = 1;
export const FCGI_ABORT_REQUEST = 2;
export const FCGI_END_REQUEST = 3;
export const FCGI_PARAMS = 4;
export const FCGI_STDIN = 5;
export const FCGI_STDOUT = 6;
export const FCGI_STDERR = 7;
export const FCGI_DATA = 8;
export const FCGI_GET_VALUES = 9;
export const FCGI_GET_VALUES_RESULT = 10;
export const FCGI_UNKNOWN_TYPE = 11;

/** BEGIN_REQUEST flags. */
export const FCGI_KEEP_CONN = 1;

/** Roles. */
export const FCGI_RESPONDER = 1;
export const FCGI_AUTHORIZER = 2;
export const FCGI_FILTER = 3;

/** END_REQUEST protocolStatus. */
export const FCGI_REQUEST_COMPLETE = 0;
export const FCGI_CANT_MPX_CONN = 1;
export const FCGI_OVERLOADED = 2;
export const FCGI_UNKNOWN_ROLE = 3;

export const TYPE_NAMES: Readonly<Record<number, string>> = {
  1: 'BEGIN_REQUEST',
  2: 'ABORT_REQUEST',
  3: 'END_REQUEST',
  4: 'PARAMS',
  5: 'STDIN',
  6: 'STDOUT',
  7: 'STDERR',
  8: 'DATA',
  9: 'GET_VALUES',
  10: 'GET_VALUES_RESULT',
  11: 'UNKNOWN_TYPE',
};

const typeName = (t: number) => TYPE_NAMES[t] ?? `type ${t}`;
const ROLE_NAMES: Readonly<Record<number, string>> = { 1: 'RESPONDER', 2: 'AUTHORIZER', 3: 'FILTER' };

/**
 * The peer broke the FastCGI protocol; the connection cannot continue. A ProtocolError
 * (the one every wire codec throws) whose message is "FastCGI: " + detail.
 */
export class FastCgiProtocolError extends ProtocolError {
  constructor(
    /** What was wrong, without the protocol prefix. */
    readonly detail: string,
    /** The request the bad record belonged to, when it belonged to one. */
    readonly requestId?: number,
  ) {
    super('FastCGI', detail);
  }
}

export interface FcgiRecord {
  type: number;
  requestId: number;
  /** A Buffer: a view of the fed chunk, or a copy when the record spanned chunks. */
  content: Buffer;
}

const EMPTY = new Uint8Array(0);
const EMPTY_BUFFER = Buffer.alloc(0);

// ---------------------------------------------------------------------------
// Records

const enum ReadState {
  Header,
  Content,
  Padding,
}

/**
 * Splits a byte stream into records. feed() accepts chunks cut anywhere and returns
 * the records they complete. A record's content is a view of the input chunk when it
 * lies within one chunk, a fresh copy otherwise: callers may keep it.
 */
export class RecordReader {
  private state = ReadState.Header;
  private readonly header = new Uint8Array(FCGI_HEADER_LEN);
  private headerFill = 0;
  private type = 0;
  private requestId = 0;
  private content: Buffer = EMPTY_BUFFER;
  private contentFill = 0;
  private paddingLeft = 0;
  private failed: FastCgiProtocolError | null = null;
  /** Bytes consumed so far, for error messages. */
  private offset = 0;

  feed(chunk: Uint8Array): FcgiRecord[] {
    const out: FcgiRecord[] = [];
    this.read(chunk, (r) => out.push(r));
    return out;
  }

  /**
   * Like feed(), but hands each record to `onRecord` as soon as it is complete, so the
   * records before a bad one in the same chunk are not lost when it throws.
   */
  read(chunk: Uint8Array, onRecord: (r: FcgiRecord) => void): void {
    if (this.failed) throw this.failed;
    const out = { push: onRecord };
    let i = 0;
    const n = chunk.byteLength;
    try {
      while (i < n) {
        if (this.state === ReadState.Header) {
          if (this.headerFill === 0 && n - i >= FCGI_HEADER_LEN) {
            this.header.set(chunk.subarray(i, i + FCGI_HEADER_LEN));
            i += FCGI_HEADER_LEN;
            this.headerFill = FCGI_HEADER_LEN;
          } else {
            const take = Math.min(FCGI_HEADER_LEN - this.headerFill, n - i);
            this.header.set(chunk.subarray(i, i + take), this.headerFill);
            this.headerFill += take;
            i += take;
            if (this.headerFill < FCGI_HEADER_LEN) break;
          }
          this.startRecord(out, chunk, i);
          if ((this.state as ReadState) === ReadState.Content && this.content !== EMPTY_BUFFER && this.contentFill === this.content.byteLength) {
            // The whole content was in this chunk (startRecord took a view of it).
            i += this.content.byteLength;
            this.finishContent(out);
          }
        } else if (this.state === ReadState.Content) {
          const take = Math.min(this.content.byteLength - this.contentFill, n - i);
          this.content.set(chunk.subarray(i, i + take), this.contentFill);
          this.contentFill += take;
          i += take;
          if (this.contentFill === this.content.byteLength) this.finishContent(out);
        } else {
          const take = Math.min(this.paddingLeft, n - i);
          this.paddingLeft -= take;
          i += take;
          if (this.paddingLeft === 0) this.state = ReadState.Header;
        }
      }
    } finally {
      this.offset += i;
    }
  }

  /** True between records: the stream may end here without losing anything. */
  get atBoundary(): boolean {
    return this.state === ReadState.Header && this.headerFill === 0;
  }

  /** Says what an end of stream here cuts short ('' at a record boundary). */
  describeTruncation(): string {
    if (this.atBoundary) return '';
    if (this.state === ReadState.Header) return `the stream ended inside a record header (${this.headerFill} of 8 bytes)`;
    if (this.state === ReadState.Content) {
      return `the stream ended inside a ${typeName(this.type)} record for request ${this.requestId} (${this.contentFill} of ${this.content.byteLength} content bytes)`;
    }
    return `the stream ended inside the padding of a ${typeName(this.type)} record for request ${this.requestId}`;
  }

  private startRecord(out: { push(r: FcgiRecord): void }, chunk: Uint8Array, i: number): void {
    const h = this.header;
    this.headerFill = 0;
    if (h[0] !== FCGI_VERSION_1) {
      this.failed = new FastCgiProtocolError(`bad FastCGI version ${h[0]} in the record header at byte ${this.offset + i - FCGI_HEADER_LEN} (expected 1)`);
      throw this.failed;
    }
    this.type = h[1];
    this.requestId = (h[2] << 8) | h[3];
    const contentLength = (h[4] << 8) | h[5];
    this.paddingLeft = h[6];
    if (contentLength === 0) {
      this.content = EMPTY_BUFFER;
      this.contentFill = 0;
      this.state = ReadState.Content;
      this.finishContent(out);
    } else if (chunk.byteLength - i >= contentLength) {
      this.content = Buffer.from(chunk.buffer, chunk.byteOffset + i, contentLength);
      this.contentFill = contentLength;
      this.state = ReadState.Content;
    } else {
      this.content = Buffer.allocUnsafe(contentLength);
      this.contentFill = 0;
      this.state = ReadState.Content;
    }
  }

  private finishContent(out: { push(r: FcgiRecord): void }): void {
    out.push({ type: this.type, requestId: this.requestId, content: this.content });
    this.content = EMPTY_BUFFER;
    this.contentFill = 0;
    this.state = this.paddingLeft > 0 ? ReadState.Padding : ReadState.Header;
  }
}

// ---------------------------------------------------------------------------
// Name-value pairs

/** A length in a name-value pair: 1 byte (0–127) or 4 bytes with the high bit set. */
function readLength(b: Uint8Array, at: number, what: string): [length: number, next: number] {
  if (at >= b.byteLength) throw new FastCgiProtocolError(`truncated name-value pair: no ${what} length at byte ${at} of ${b.byteLength}`);
  const first = b[at];
  if (first < 0x80) return [first, at + 1];
  if (at + 4 > b.byteLength) {
    throw new FastCgiProtocolError(`truncated name-value pair: the 4-byte ${what} length at byte ${at} has only ${b.byteLength - at} of 4 bytes`);
  }
  const len = ((first & 0x7f) * 0x1000000) + (b[at + 1] << 16) + (b[at + 2] << 8) + b[at + 3];
  return [len, at + 4];
}

/**
 * Decodes a PARAMS (or GET_VALUES) body into [name, value] pairs, in order. Names and
 * values are decoded as UTF-8 (invalid sequences become U+FFFD, docs/spec.md §4).
 */
export function decodeNameValuePairs(b: Uint8Array): Array<[string, string]> {
  const buf = Buffer.from(b.buffer, b.byteOffset, b.byteLength);
  const pairs: Array<[string, string]> = [];
  let at = 0;
  while (at < b.byteLength) {
    const start = at;
    let nameLen: number;
    let valueLen: number;
    [nameLen, at] = readLength(b, at, 'name');
    [valueLen, at] = readLength(b, at, 'value');
    if (at + nameLen > b.byteLength) {
      throw new FastCgiProtocolError(`truncated name-value pair at byte ${start}: a ${nameLen}-byte name, but only ${b.byteLength - at} bytes are left`);
    }
    if (at + nameLen + valueLen > b.byteLength) {
      const name = buf.toString('utf8', at, at + nameLen);
      throw new FastCgiProtocolError(
        `truncated name-value pair at byte ${start}: ${JSON.stringify(name)} has a ${valueLen}-byte value, but only ${b.byteLength - at - nameLen} bytes are left`,
      );
    }
    if (nameLen === 0) throw new FastCgiProtocolError(`name-value pair at byte ${start} has an empty name`);
    const name = buf.toString('utf8', at, at + nameLen);
    at += nameLen;
    const value = buf.toString('utf8', at, at + valueLen);
    at += valueLen;
    pairs.push([name, value]);
  }
  return pairs;
}

function lengthBytes(n: number): number[] {
  if (n < 0x80) return [n];
  if (n > 0x7fffffff) throw new RangeError(`a name or value of ${n} bytes is too long for FastCGI`);
  return [((n >>> 24) & 0x7f) | 0x80, (n >>> 16) & 0xff, (n >>> 8) & 0xff, n & 0xff];
}

/** Encodes [name, value] pairs (strings as UTF-8) in the PARAMS format. */
export function encodeNameValuePairs(pairs: Iterable<readonly [string, string]>): Buffer {
  const parts: Buffer[] = [];
  for (const [name, value] of pairs) {
    const n = Buffer.from(name, 'utf8');
    const v = Buffer.from(value, 'utf8');
    parts.push(Buffer.from([...lengthBytes(n.byteLength), ...lengthBytes(v.byteLength)]), n, v);
  }
  return Buffer.concat(parts);
}

// ---------------------------------------------------------------------------
// Serializers

const paddingFor = (len: number) => (8 - (len & 7)) & 7;

function writeHeader(out: Uint8Array, at: number, type: number, requestId: number, contentLength: number, padding: number): void {
  out[at] = FCGI_VERSION_1;
  out[at + 1] = type;
  out[at + 2] = (requestId >>> 8) & 0xff;
  out[at + 3] = requestId & 0xff;
  out[at + 4] = (contentLength >>> 8) & 0xff;
  out[at + 5] = contentLength & 0xff;
  out[at + 6] = padding;
  out[at + 7] = 0;
}

function checkId(requestId: number): void {
  if (!Number.isInteger(requestId) || requestId < 0 || requestId > 0xffff) throw new RangeError(`FastCGI request id out of range: ${requestId}`);
}

/** One record, its content padded to a multiple of 8 bytes. Content ≤ 65535 bytes. */
export function encodeRecord(type: number, requestId: number, content: Uint8Array = EMPTY): Buffer {
  checkId(requestId);
  const len = content.byteLength;
  if (len > FCGI_MAX_CONTENT) throw new RangeError(`FastCGI record content of ${len} bytes exceeds ${FCGI_MAX_CONTENT}`);
  const pad = paddingFor(len);
  const out = Buffer.alloc(FCGI_HEADER_LEN + len + pad);
  writeHeader(out, 0, type, requestId, len, pad);
  out.set(content, FCGI_HEADER_LEN);
  return out;
}

/**
 * A stream's data (STDOUT, STDERR, or for clients PARAMS/STDIN/DATA) as consecutive
 * records of at most 65535 content bytes each, padded to 8, in one buffer. Empty data
 * gives an empty buffer: the empty end-of-stream record is encodeRecord(type, id).
 */
export function encodeStream(type: number, requestId: number, data: Uint8Array): Buffer {
  checkId(requestId);
  const len = data.byteLength;
  if (len === 0) return Buffer.alloc(0);
  let total = 0;
  for (let off = 0; off < len; off += FCGI_MAX_CONTENT) {
    const n = Math.min(FCGI_MAX_CONTENT, len - off);
    total += FCGI_HEADER_LEN + n + paddingFor(n);
  }
  const out = Buffer.allocUnsafe(total);
  let at = 0;
  for (let off = 0; off < len; off += FCGI_MAX_CONTENT) {
    const n = Math.min(FCGI_MAX_CONTENT, len - off);
    const pad = paddingFor(n);
    writeHeader(out, at, type, requestId, n, pad);
    out.set(data.subarray(off, off + n), at + FCGI_HEADER_LEN);
    at += FCGI_HEADER_LEN + n;
    out.fill(0, at, at + pad);
    at += pad;
  }
  return out;
}

export const encodeStdout = (requestId: number, data: Uint8Array) => encodeStream(FCGI_STDOUT, requestId, data);
export const encodeStderr = (requestId: number, data: Uint8Array) => encodeStream(FCGI_STDERR, requestId, data);

export function encodeEndRequest(requestId: number, appStatus: number, protocolStatus: number = FCGI_REQUEST_COMPLETE): Buffer {
  const body = new Uint8Array(8);
  const s = appStatus >>> 0;
  body[0] = s >>> 24;
  body[1] = (s >>> 16) & 0xff;
  body[2] = (s >>> 8) & 0xff;
  body[3] = s & 0xff;
  body[4] = protocolStatus;
  return encodeRecord(FCGI_END_REQUEST, requestId, body);
}

/** GET_VALUES_RESULT on request id 0. */
export function encodeGetValuesResult(values: Iterable<readonly [string, string]>): Buffer {
  const content = encodeNameValuePairs(values);
  if (content.byteLength > FCGI_MAX_CONTENT) throw new RangeError('GET_VALUES_RESULT does not fit in one record');
  return encodeRecord(FCGI_GET_VALUES_RESULT, 0, content);
}

/** UNKNOWN_TYPE on request id 0: the answer to a management record we do not know. */
export function encodeUnknownType(type: number): Buffer {
  const body = new Uint8Array(8);
  body[0] = type;
  return encodeRecord(FCGI_UNKNOWN_TYPE, 0, body);
}

/** BEGIN_REQUEST (what a web server sends; for clients and tests). */
export function encodeBeginRequest(requestId: number, role: number = FCGI_RESPONDER, flags = 0): Buffer {
  const body = new Uint8Array(8);
  body[0] = (role >>> 8) & 0xff;
  body[1] = role & 0xff;
  body[2] = flags;
  return encodeRecord(FCGI_BEGIN_REQUEST, requestId, body);
}

/** PARAMS records carrying `pairs`, then the empty PARAMS record (for clients and tests). */
export function encodeParams(requestId: number, pairs: Iterable<readonly [string, string]>): Buffer {
  return Buffer.concat([encodeStream(FCGI_PARAMS, requestId, encodeNameValuePairs(pairs)), encodeRecord(FCGI_PARAMS, requestId)]);
}

// ---------------------------------------------------------------------------
// The request state machine of one connection

export interface DecoderOptions {
  /** The largest PARAMS block of one request, counted as its records arrive. Default 64 KiB. */
  maxParamsBytes?: number;
  /** Requests active at once on one connection; more are refused with OVERLOADED. Default 100. */
  maxRequests?: number;
  /** Accept more than one active request per connection. Default true; false refuses with CANT_MPX_CONN. */
  multiplex?: boolean;
}

export type FcgiEvent =
  /** A RESPONDER request began; its PARAMS follow. */
  | { kind: 'begin'; requestId: number; keepConn: boolean }
  /** The PARAMS ended: the request can run. contentLength is CONTENT_LENGTH when it is a valid number. */
  | { kind: 'params'; requestId: number; params: Array<[string, string]>; contentLength: number | null }
  /** Body bytes (never empty). */
  | { kind: 'stdin'; requestId: number; data: Buffer }
  /** The body is complete. */
  | { kind: 'stdin-end'; requestId: number }
  /** The web server abandoned the request. */
  | { kind: 'abort'; requestId: number }
  /**
   * A BEGIN_REQUEST the application refuses: answer END_REQUEST(0, protocolStatus) at once.
   * The id is already inactive in the decoder.
   */
  | { kind: 'reject'; requestId: number; protocolStatus: number; keepConn: boolean; reason: string }
  /** GET_VALUES: answer with the values of these names the application knows. */
  | { kind: 'get-values'; names: string[] }
  /** A management record of a type we do not know: answer UNKNOWN_TYPE. */
  | { kind: 'unknown-type'; type: number };

const enum Phase {
  Params,
  Stdin,
  Done, // STDIN complete, the application is still answering
}

interface RequestState {
  phase: Phase;
  params: Uint8Array[];
  paramsBytes: number;
  contentLength: number | null;
  stdinBytes: number;
}

/**
 * Turns a connection's bytes into request events and checks the protocol as it goes.
 * The owner calls finish(id) once it has sent END_REQUEST for a request: the id is then
 * inactive, records still in flight for it (the rest of a body the application did not
 * read, a late ABORT_REQUEST) are dropped, and a new BEGIN_REQUEST may reuse it.
 */
export class FastCgiDecoder {
  readonly maxParamsBytes: number;
  readonly maxRequests: number;
  readonly multiplex: boolean;
  private readonly reader = new RecordReader();
  /** Active requests (BEGIN_REQUEST seen, END_REQUEST not yet sent). */
  private readonly active = new Map<number, RequestState>();
  /** Ids that were active on this connection and are not any more. */
  private readonly finished = new Set<number>();
  private failed: FastCgiProtocolError | null = null;

  constructor(options: DecoderOptions = {}) {
    this.maxParamsBytes = options.maxParamsBytes ?? 64 * 1024;
    this.maxRequests = options.maxRequests ?? 100;
    this.multiplex = options.multiplex ?? true;
  }

  /**
   * The events the bytes complete; throws a FastCgiProtocolError at the first violation
   * (the events before it in the same chunk are then lost: use decode() to keep them).
   * After a ProtocolError every call throws it again.
   */
  feed(chunk: Uint8Array): FcgiEvent[] {
    const { events, error } = this.decode(chunk);
    if (error) throw error;
    return events;
  }

  /** The events the bytes complete, up to the first violation, and that violation (or null). Never throws a ProtocolError. */
  decode(chunk: Uint8Array): { events: FcgiEvent[]; error: FastCgiProtocolError | null } {
    const events: FcgiEvent[] = [];
    if (this.failed) return { events, error: this.failed };
    try {
      this.reader.read(chunk, (r) => this.record(r, events));
    } catch (e) {
      if (!(e instanceof FastCgiProtocolError)) throw e;
      this.failed = e;
      return { events, error: e };
    }
    return { events, error: null };
  }

  /** The id's END_REQUEST went out: it is inactive from now on. */
  finish(requestId: number): void {
    if (this.active.delete(requestId)) this.finished.add(requestId);
  }

  /** Active request ids. */
  get activeCount(): number {
    return this.active.size;
  }

  /** True when a request is begun but its PARAMS are incomplete, or a record is half-read. */
  get awaitingHead(): boolean {
    if (!this.reader.atBoundary) return true;
    for (const s of this.active.values()) if (s.phase === Phase.Params) return true;
    return false;
  }

  /** What an end of stream here cuts short; '' when nothing (no partial record, no request waiting for input). */
  describeEnd(): string {
    const partial = this.reader.describeTruncation();
    if (partial) return partial;
    for (const [id, s] of this.active) {
      if (s.phase === Phase.Params) return `the connection closed before the PARAMS of request ${id} ended`;
      if (s.phase === Phase.Stdin) return `the connection closed before the STDIN of request ${id} ended (${s.stdinBytes} bytes received)`;
    }
    return '';
  }

  private record(r: FcgiRecord, events: FcgiEvent[]): void {
    const { type, requestId: id, content } = r;
    if (id === 0) return this.management(type, content, events);
    switch (type) {
      case FCGI_BEGIN_REQUEST:
        return this.begin(id, content, events);
      case FCGI_ABORT_REQUEST: {
        const s = this.stateFor(type, id);
        if (s) events.push({ kind: 'abort', requestId: id });
        return;
      }
      case FCGI_PARAMS: {
        const s = this.stateFor(type, id);
        if (!s) return;
        if (s.phase !== Phase.Params) throw new FastCgiProtocolError(`PARAMS record for request ${id} after its PARAMS had ended`, id);
        if (content.byteLength === 0) {
          s.phase = Phase.Stdin;
          const block = s.params.length === 1 ? s.params[0] : Buffer.concat(s.params);
          s.params = [];
          let params: Array<[string, string]>;
          try {
            params = decodeNameValuePairs(block);
          } catch (e) {
            if (e instanceof FastCgiProtocolError) throw new FastCgiProtocolError(`PARAMS of request ${id}: ${e.detail}`, id);
            throw e;
          }
          s.contentLength = contentLengthIn(params);
          events.push({ kind: 'params', requestId: id, params, contentLength: s.contentLength });
          return;
        }
        s.paramsBytes += content.byteLength;
        if (s.paramsBytes > this.maxParamsBytes) {
          throw new FastCgiProtocolError(`PARAMS of request ${id} exceed the limit of ${this.maxParamsBytes} bytes (${s.paramsBytes} so far)`, id);
        }
        s.params.push(content);
        return;
      }
      case FCGI_STDIN: {
        const s = this.stateFor(type, id);
        if (!s) return;
        if (s.phase === Phase.Params) throw new FastCgiProtocolError(`STDIN record for request ${id} before its PARAMS ended`, id);
        if (s.phase === Phase.Done) throw new FastCgiProtocolError(`STDIN record for request ${id} after its STDIN had ended`, id);
        if (content.byteLength === 0) {
          if (s.contentLength !== null && s.stdinBytes < s.contentLength) {
            throw new FastCgiProtocolError(`request ${id}: STDIN ended after ${s.stdinBytes} bytes, but CONTENT_LENGTH is ${s.contentLength}`, id);
          }
          s.phase = Phase.Done;
          events.push({ kind: 'stdin-end', requestId: id });
          return;
        }
        s.stdinBytes += content.byteLength;
        if (s.contentLength !== null && s.stdinBytes > s.contentLength) {
          throw new FastCgiProtocolError(`request ${id}: STDIN carries more than CONTENT_LENGTH (${s.contentLength}) bytes (${s.stdinBytes} so far)`, id);
        }
        events.push({ kind: 'stdin', requestId: id, data: content });
        return;
      }
      case FCGI_DATA: {
        const s = this.stateFor(type, id);
        if (s) throw new FastCgiProtocolError(`DATA record for request ${id}, a RESPONDER (DATA is for the FILTER role)`, id);
        return;
      }
      case FCGI_END_REQUEST:
      case FCGI_STDOUT:
      case FCGI_STDERR:
        throw new FastCgiProtocolError(`${typeName(type)} record for request ${id}: that record goes from the application to the web server, not back`, id);
      case FCGI_GET_VALUES:
      case FCGI_GET_VALUES_RESULT:
      case FCGI_UNKNOWN_TYPE:
        throw new FastCgiProtocolError(`${typeName(type)} record with request id ${id}: management records use request id 0`, id);
      default:
        throw new FastCgiProtocolError(`unknown record type ${type} for request ${id}`, id);
    }
  }

  /** The state of an active id; undefined for a finished one (the record is dropped); throws for an id never begun. */
  private stateFor(type: number, id: number): RequestState | undefined {
    const s = this.active.get(id);
    if (s) return s;
    if (this.finished.has(id)) return undefined;
    throw new FastCgiProtocolError(`${typeName(type)} record for request ${id}, which has no BEGIN_REQUEST`, id);
  }

  private begin(id: number, content: Uint8Array, events: FcgiEvent[]): void {
    if (content.byteLength !== 8) throw new FastCgiProtocolError(`BEGIN_REQUEST for request ${id} has ${content.byteLength} content bytes (expected 8)`, id);
    if (this.active.has(id)) throw new FastCgiProtocolError(`request id reused: BEGIN_REQUEST for request ${id}, which is still active`, id);
    const role = (content[0] << 8) | content[1];
    const keepConn = (content[2] & FCGI_KEEP_CONN) !== 0;
    let status = -1;
    let reason = '';
    if (role !== FCGI_RESPONDER) {
      status = FCGI_UNKNOWN_ROLE;
      reason = `role ${ROLE_NAMES[role] ?? role} is not supported (only RESPONDER)`;
    } else if (!this.multiplex && this.active.size > 0) {
      status = FCGI_CANT_MPX_CONN;
      reason = 'this server does not multiplex requests on one connection';
    } else if (this.active.size >= this.maxRequests) {
      status = FCGI_OVERLOADED;
      reason = `${this.active.size} requests are already active on this connection (the limit)`;
    }
    if (status >= 0) {
      // Inactive at once; its PARAMS and STDIN are dropped when they come.
      this.finished.add(id);
      events.push({ kind: 'reject', requestId: id, protocolStatus: status, keepConn, reason });
      return;
    }
    this.finished.delete(id);
    this.active.set(id, { phase: Phase.Params, params: [], paramsBytes: 0, contentLength: null, stdinBytes: 0 });
    events.push({ kind: 'begin', requestId: id, keepConn });
  }

  private management(type: number, content: Uint8Array, events: FcgiEvent[]): void {
    switch (type) {
      case FCGI_GET_VALUES: {
        let pairs: Array<[string, string]>;
        try {
          pairs = decodeNameValuePairs(content);
        } catch (e) {
          if (e instanceof FastCgiProtocolError) throw new FastCgiProtocolError(`GET_VALUES: ${e.detail}`, 0);
          throw e;
        }
        events.push({ kind: 'get-values', names: pairs.map(([n]) => n) });
        return;
      }
      case FCGI_BEGIN_REQUEST:
      case FCGI_ABORT_REQUEST:
      case FCGI_PARAMS:
      case FCGI_STDIN:
      case FCGI_DATA:
        throw new FastCgiProtocolError(`${typeName(type)} record with request id 0 (reserved for management records)`, 0);
      case FCGI_END_REQUEST:
      case FCGI_STDOUT:
      case FCGI_STDERR:
      case FCGI_GET_VALUES_RESULT:
      case FCGI_UNKNOWN_TYPE:
        throw new FastCgiProtocolError(`${typeName(type)} record with request id 0: that record goes from the application to the web server, not back`, 0);
      default:
        events.push({ kind: 'unknown-type', type });
    }
  }
}

/**
 * PARAMS pairs as request variables (a null-prototype object), as the SCGI codec makes
 * them: a repeated HTTP_* variable (nginx < 1.23 sends one per header line) is joined
 * with ", " ("; " for HTTP_COOKIE); any other repeated variable keeps its last value.
 */
export function varsFromParams(params: ReadonlyArray<readonly [string, string]>): Record<string, string> {
  const vars: Record<string, string> = Object.create(null) as Record<string, string>;
  for (const [name, value] of params) {
    const prev = vars[name];
    vars[name] = prev !== undefined && name.startsWith('HTTP_') ? prev + (name === 'HTTP_COOKIE' ? '; ' : ', ') + value : value;
  }
  return vars;
}

/** CONTENT_LENGTH from the params when it is a valid length (the last one wins); null otherwise. */
function contentLengthIn(params: Array<[string, string]>): number | null {
  let v: string | undefined;
  for (const [n, val] of params) if (n === 'CONTENT_LENGTH') v = val;
  return v !== undefined && /^[0-9]{1,15}$/.test(v) ? Number(v) : null;
}
