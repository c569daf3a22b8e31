/**
 * SCGI (python.ca/scgi/protocol.txt), the codec: pure functions over bytes, no I/O.
 *
 * A request is a netstring of NUL-terminated name/value pairs, then the body:
 *
 *     "70:" "CONTENT_LENGTH\0" "27\0" "SCGI\0" "1\0" "REQUEST_METHOD\0" "POST\0" … "," <27 body bytes>
 *
 * The rules enforced (each with its own ProtocolError message):
 *   - the length is decimal digits, no leading zero (netstring rule), then ':';
 *   - the length is at most `maxHeaderBytes` (default 64 KiB): checked digit by digit, so
 *     nothing past the limit is ever buffered;
 *   - the header block ends with NUL and splits into an even number of fields;
 *   - CONTENT_LENGTH is present, first, non-empty, decimal, and not repeated;
 *   - SCGI is present, once, and "1";
 *   - the netstring ends with ','.
 * Names and values are decoded as UTF-8; invalid sequences become U+FFFD (the environ
 * holds strings, spec §4; a web server sends the raw request path in REQUEST_URI, which
 * stays exact for ASCII and UTF-8 paths). A repeated HTTP_* variable (nginx < 1.23 sends
 * one per header line) is joined with ", " ("; " for HTTP_COOKIE), as node:http and
 * mod_wsgi join repeated headers; any other repeated variable keeps its last value, as
 * the Python SCGI servers do.
 *
 * The response is CGI-style: "Status: 200 OK\r\n", the headers, a blank line, the body,
 * and the end of the body is the end of the connection.
 */
import type { Header } from '../../tsgi';
import { ProtocolError, describeByte } from './protocol-error';

export const DEFAULT_MAX_HEADER_BYTES = 64 * 1024;

export interface ParsedRequestHead {
  /** The request variables (a null-prototype object). */
  vars: Record<string, string>;
  /** CONTENT_LENGTH as a number: how many body bytes follow the head. */
  contentLength: number;
  /** Bytes of the whole head on the wire (for SCGI: length prefix, ':', block and ','). */
  headerBytes: number;
  /** Offset, in the chunk passed to the feed() that completed the head, of the first body byte. */
  bodyStart: number;
}

export interface HeadParser {
  /** Feeds the next bytes; returns the head once it is complete, null while more are needed. Throws ProtocolError. */
  feed(chunk: Uint8Array): ParsedRequestHead | null;
  /** Bytes held right now (never more than the header limit). */
  readonly bufferedBytes: number;
  /** Bytes consumed so far. */
  readonly consumed: number;
}

export interface HeadParserOptions {
  /** The largest header block accepted, in bytes. Default 64 KiB. */
  maxHeaderBytes?: number;
}

const ZERO = 0x30;
const NINE = 0x39;
const COLON = 0x3a;
const COMMA = 0x2c;
const NUL = 0;
const MAX_CONTENT_LENGTH = /^[0-9]{1,15}$/;

function limitOf(options: HeadParserOptions): number {
  const max = options.maxHeaderBytes ?? DEFAULT_MAX_HEADER_BYTES;
  if (!Number.isInteger(max) || max < 1 || max > 0x7fffffff) throw new RangeError(`maxHeaderBytes must be a positive integer, got ${max}`);
  return max;
}

const fail = (message: string) => new ProtocolError('SCGI', message);

/** The incremental SCGI head parser: feed it chunks as they arrive, split anywhere. */
export class ScgiParser implements HeadParser {
  private state: 'length' | 'block' | 'comma' | 'done' = 'length';
  private digits = 0;
  private length = 0;
  private block: Uint8Array | null = null;
  private filled = 0;
  private total = 0;
  private failure: ProtocolError | null = null;
  readonly maxHeaderBytes: number;

  constructor(options: HeadParserOptions = {}) {
    this.maxHeaderBytes = limitOf(options);
  }

  get bufferedBytes(): number {
    return this.filled;
  }

  get consumed(): number {
    return this.total;
  }

  feed(chunk: Uint8Array): ParsedRequestHead | null {
    if (this.failure) throw this.failure;
    if (this.state === 'done') throw new Error('ScgiParser.feed() called after the head was complete');
    try {
      return this.step(chunk);
    } catch (e) {
      if (e instanceof ProtocolError) {
        this.failure = e;
        this.block = null;
        this.filled = 0;
      }
      throw e;
    }
  }

  private step(chunk: Uint8Array): ParsedRequestHead | null {
    let i = 0;
    const n = chunk.byteLength;
    while (i < n) {
      if (this.state === 'length') {
        const b = chunk[i];
        if (b >= ZERO && b <= NINE) {
          if (this.digits > 0 && this.length === 0) throw fail('the netstring length has a leading zero');
          this.length = this.length * 10 + (b - ZERO);
          this.digits++;
          if (this.length > this.maxHeaderBytes) {
            throw fail(`the header block is longer than the limit of ${this.maxHeaderBytes} bytes (its length starts ${this.length})`);
          }
        } else if (b === COLON) {
          if (this.digits === 0) throw fail("the request starts with ':': the netstring length is missing");
          this.block = new Uint8Array(this.length);
          this.state = this.length === 0 ? 'comma' : 'block';
        } else if (this.digits === 0) {
          const hint = b >= 0x41 && b <= 0x5a ? ' (an HTTP request? the peer must speak SCGI to this socket)' : '';
          throw fail(`a request must start with the netstring length (decimal digits), got byte ${describeByte(b)}${hint}`);
        } else {
          throw fail(`expected a digit or ':' in the netstring length, got byte ${describeByte(b)} after "${this.length}"`);
        }
        i++;
        this.total++;
      } else if (this.state === 'block') {
        const take = Math.min(this.length - this.filled, n - i);
        (this.block as Uint8Array).set(chunk.subarray(i, i + take), this.filled);
        this.filled += take;
        i += take;
        this.total += take;
        if (this.filled === this.length) this.state = 'comma';
      } else {
        const b = chunk[i];
        if (b !== COMMA) throw fail(`the netstring is not terminated by ',' (got byte ${describeByte(b)} after the ${this.length}-byte header block)`);
        i++;
        this.total++;
        this.state = 'done';
        const block = this.block as Uint8Array;
        this.block = null;
        this.filled = 0;
        const { vars, contentLength } = decodeScgiBlock(block);
        return { vars, contentLength, headerBytes: this.total, bodyStart: i };
      }
    }
    return null;
  }
}

/** Decodes the header block (the netstring's content) into variables, enforcing the rules above. */
export function decodeScgiBlock(block: Uint8Array): { vars: Record<string, string>; contentLength: number } {
  if (block.byteLength === 0) throw fail('the header block is empty; CONTENT_LENGTH is required');
  if (block[block.byteLength - 1] !== NUL) throw fail('the header block does not end with NUL (the last field is unterminated)');
  const buf = Buffer.from(block.buffer, block.byteOffset, block.byteLength);
  const fields: string[] = [];
  for (let start = 0; start < buf.length; ) {
    const end = buf.indexOf(NUL, start);
    fields.push(buf.toString('utf8', start, end));
    start = end + 1;
  }
  if (fields.length % 2 !== 0) {
    throw fail(`the header block has an odd number of NUL-terminated fields (${fields.length}): "${fields[fields.length - 1].slice(0, 40)}" has no value`);
  }
  if (fields[0] !== 'CONTENT_LENGTH') {
    let at = -1;
    for (let k = 2; k < fields.length && at < 0; k += 2) if (fields[k] === 'CONTENT_LENGTH') at = k / 2 + 1;
    if (at > 0) throw fail(`CONTENT_LENGTH must be the first variable, but it is #${at}`);
    throw fail(`CONTENT_LENGTH is missing (the first variable is ${JSON.stringify(fields[0].slice(0, 40))})`);
  }
  const vars = Object.create(null) as Record<string, string>;
  let contentLength = -1;
  for (let k = 0; k < fields.length; k += 2) {
    const name = fields[k];
    const value = fields[k + 1];
    const index = k / 2 + 1;
    if (name === '') throw fail(`variable #${index} has an empty name`);
    if (name === 'CONTENT_LENGTH') {
      if (k !== 0) throw fail(`CONTENT_LENGTH appears twice (again as variable #${index})`);
      if (value === '') throw fail('CONTENT_LENGTH is empty (it must be present even when 0)');
      if (!MAX_CONTENT_LENGTH.test(value)) throw fail(`CONTENT_LENGTH ${JSON.stringify(value.slice(0, 40))} is not a decimal number of at most 15 digits`);
      contentLength = Number(value);
    }
    if (name === 'SCGI' && 'SCGI' in vars) throw fail('SCGI appears twice');
    const prev = vars[name];
    if (prev !== undefined && name.startsWith('HTTP_')) vars[name] = prev + (name === 'HTTP_COOKIE' ? '; ' : ', ') + value;
    else vars[name] = value;
  }
  const scgi = vars.SCGI;
  if (scgi === undefined) throw fail('the SCGI variable is missing (it must be "1"; with nginx, include scgi_params)');
  if (scgi !== '1') throw fail(`SCGI must be "1", got ${JSON.stringify(scgi.slice(0, 40))}`);
  return { vars, contentLength };
}

/** Parses a complete head from one buffer; null when the buffer ends before the head does. */
export function parseScgi(bytes: Uint8Array, options: HeadParserOptions = {}): ParsedRequestHead | null {
  return new ScgiParser(options).feed(bytes);
}

/**
 * Encodes a request head (what a web server sends). CONTENT_LENGTH comes first and SCGI
 * second; the given variables follow in order (CONTENT_LENGTH and SCGI among them are skipped).
 */
export function encodeScgiRequest(vars: Record<string, string> | readonly (readonly [string, string])[], contentLength: number | string): Buffer {
  const entries = Array.isArray(vars) ? (vars as readonly (readonly [string, string])[]) : Object.entries(vars);
  const parts: Buffer[] = [Buffer.from(`CONTENT_LENGTH\0${contentLength}\0SCGI\x001\0`, 'utf8')];
  for (const [k, v] of entries) {
    if (k === 'CONTENT_LENGTH' || k === 'SCGI') continue;
    parts.push(Buffer.from(`${k}\0${v}\0`, 'utf8'));
  }
  const block = Buffer.concat(parts);
  return Buffer.concat([Buffer.from(`${block.length}:`, 'latin1'), block, Buffer.from(',', 'latin1')]);
}

/** The response head: "Status: 200 OK\r\n", one line per header, a blank line (Latin-1, as headers are). */
export function scgiResponseHead(status: string, headers: readonly Header[]): Buffer {
  let text = `Status: ${status}\r\n`;
  for (const [n, v] of headers) text += `${n}: ${v}\r\n`;
  return Buffer.from(text + '\r\n', 'latin1');
}
