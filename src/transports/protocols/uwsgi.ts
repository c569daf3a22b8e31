/**
 * The uwsgi protocol (uWSGI's "uwsgi packet"), the codec: pure functions over bytes, no I/O.
 *
 * A request is a 4-byte header, a block of variables, then the body:
 *
 *     modifier1 (u8, 0 = WSGI-style request variables) | datasize (u16 little-endian) | modifier2 (u8)
 *     datasize bytes of: key length (u16le), key, value length (u16le), value — repeated
 *     CONTENT_LENGTH bytes of body
 *
 * The rules enforced (each with its own ProtocolError message):
 *   - modifier1 is 0 (nginx's uwsgi_modifier1 default, lighttpd's only value); any other
 *     is refused by number; modifier2 is not used by modifier1 0 and is ignored;
 *   - datasize is at most `maxHeaderBytes` (default 64 KiB, so by construction any u16);
 *   - the block parses into whole key/value pairs that end exactly at datasize: a
 *     truncated length or a length running past the block is refused with its offset;
 *   - keys are not empty; CONTENT_LENGTH appears at most once and is decimal; nginx's
 *     uwsgi_params sends it empty for a request without a body, which means 0.
 * Names and values are decoded as UTF-8 (invalid sequences become U+FFFD). A repeated
 * HTTP_* variable is joined with ", " ("; " for HTTP_COOKIE); any other repeated
 * variable keeps its last value, as uWSGI's Python plugin does.
 *
 * The response is what uWSGI sends: a full HTTP status line ("HTTP/1.1 200 OK\r\n"), the
 * headers, a blank line, the body; the end of the body is the end of the connection.
 */
import type { Header } from '../../tsgi';
import { ProtocolError, describeByte, looksLikeHttp } from './protocol-error';
import { DEFAULT_MAX_HEADER_BYTES, type HeadParser, type HeadParserOptions, type ParsedRequestHead } from './scgi';

export { DEFAULT_MAX_HEADER_BYTES };

const fail = (message: string) => new ProtocolError('uwsgi', message);
const MAX_CONTENT_LENGTH = /^[0-9]{1,15}$/;

/** The incremental uwsgi head parser: feed it chunks as they arrive, split anywhere. */
export class UwsgiParser implements HeadParser {
  private header = new Uint8Array(4);
  private headerFill = 0;
  private block: Uint8Array | null = null;
  private datasize = 0;
  private filled = 0;
  private total = 0;
  private done = false;
  private failure: ProtocolError | null = null;
  readonly maxHeaderBytes: number;
  /** The packet's modifier2, once the header is in. */
  modifier2 = 0;

  constructor(options: HeadParserOptions = {}) {
    const max = options.maxHeaderBytes ?? DEFAULT_MAX_HEADER_BYTES;
    if (!Number.isInteger(max) || max < 1) throw new RangeError(`maxHeaderBytes must be a positive integer, got ${max}`);
    this.maxHeaderBytes = max;
  }

  get bufferedBytes(): number {
    return this.headerFill + this.filled;
  }

  get consumed(): number {
    return this.total;
  }

  feed(chunk: Uint8Array): ParsedRequestHead | null {
    if (this.failure) throw this.failure;
    if (this.done) throw new Error('UwsgiParser.feed() called after the head was complete');
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
    if (this.block === null) {
      const take = Math.min(4 - this.headerFill, n);
      this.header.set(chunk.subarray(0, take), this.headerFill);
      this.headerFill += take;
      this.total += take;
      i = take;
      if (this.headerFill < 4) return null;
      const h = this.header;
      const modifier1 = h[0];
      this.datasize = h[1] | (h[2] << 8);
      this.modifier2 = h[3];
      if (modifier1 !== 0) {
        const hint = looksLikeHttp(h)
          ? ' (this is HTTP: the peer must speak uwsgi to this socket)'
          : '; tsgi serves modifier1 0 (WSGI-style request variables) only: check uwsgi_modifier1 in nginx';
        throw fail(`unsupported modifier1 ${modifier1} ${describeByte(modifier1)}${hint}`);
      }
      if (this.datasize > this.maxHeaderBytes) {
        throw fail(`the variable block (datasize ${this.datasize}) is longer than the limit of ${this.maxHeaderBytes} bytes`);
      }
      this.block = new Uint8Array(this.datasize);
    }
    const take = Math.min(this.datasize - this.filled, n - i);
    this.block.set(chunk.subarray(i, i + take), this.filled);
    this.filled += take;
    this.total += take;
    i += take;
    if (this.filled < this.datasize) return null;
    this.done = true;
    const block = this.block;
    this.block = null;
    this.filled = 0;
    this.headerFill = 0;
    const { vars, contentLength } = decodeUwsgiVars(block);
    return { vars, contentLength, headerBytes: this.total, bodyStart: i };
  }
}

/** Decodes a variable block, enforcing the rules above. */
export function decodeUwsgiVars(block: Uint8Array): { vars: Record<string, string>; contentLength: number } {
  const buf = Buffer.from(block.buffer, block.byteOffset, block.byteLength);
  const size = buf.length;
  const vars = Object.create(null) as Record<string, string>;
  let contentLength: number | null = null;
  let pos = 0;
  while (pos < size) {
    if (pos + 2 > size) throw fail(`truncated key length at offset ${pos} of the ${size}-byte variable block`);
    const klen = buf.readUInt16LE(pos);
    if (klen === 0) throw fail(`empty variable name at offset ${pos}`);
    if (pos + 2 + klen > size) throw fail(`the key length ${klen} at offset ${pos} runs past the end of the ${size}-byte variable block`);
    const name = buf.toString('utf8', pos + 2, pos + 2 + klen);
    pos += 2 + klen;
    const shown = JSON.stringify(name.slice(0, 40));
    if (pos + 2 > size) throw fail(`variable ${shown}: truncated value length at offset ${pos} of the ${size}-byte variable block`);
    const vlen = buf.readUInt16LE(pos);
    if (pos + 2 + vlen > size) throw fail(`variable ${shown}: the value length ${vlen} at offset ${pos} runs past the end of the ${size}-byte variable block`);
    const value = buf.toString('utf8', pos + 2, pos + 2 + vlen);
    pos += 2 + vlen;
    if (name === 'CONTENT_LENGTH') {
      if (contentLength !== null) throw fail('CONTENT_LENGTH appears twice');
      if (value !== '' && !MAX_CONTENT_LENGTH.test(value)) throw fail(`CONTENT_LENGTH ${JSON.stringify(value.slice(0, 40))} is not a decimal number of at most 15 digits`);
      contentLength = value === '' ? 0 : Number(value);
    }
    const prev = vars[name];
    if (prev !== undefined && name.startsWith('HTTP_')) vars[name] = prev + (name === 'HTTP_COOKIE' ? '; ' : ', ') + value;
    else vars[name] = value;
  }
  return { vars, contentLength: contentLength ?? 0 };
}

/** Parses a complete head from one buffer; null when the buffer ends before the head does. */
export function parseUwsgi(bytes: Uint8Array, options: HeadParserOptions = {}): ParsedRequestHead | null {
  return new UwsgiParser(options).feed(bytes);
}

/** Encodes a request head (what a web server sends): modifier1 0, the variables in order. Throws RangeError past 65535 bytes. */
export function encodeUwsgiRequest(vars: Record<string, string> | readonly (readonly [string, string])[], options: { modifier1?: number; modifier2?: number } = {}): Buffer {
  const entries = Array.isArray(vars) ? (vars as readonly (readonly [string, string])[]) : Object.entries(vars);
  const parts: Buffer[] = [];
  for (const [k, v] of entries) {
    const kb = Buffer.from(k, 'utf8');
    const vb = Buffer.from(v, 'utf8');
    if (kb.length > 0xffff || vb.length > 0xffff) throw new RangeError(`uwsgi: variable ${k} is longer than 65535 bytes`);
    const kl = Buffer.alloc(2);
    kl.writeUInt16LE(kb.length);
    const vl = Buffer.alloc(2);
    vl.writeUInt16LE(vb.length);
    parts.push(kl, kb, vl, vb);
  }
  const block = Buffer.concat(parts);
  if (block.length > 0xffff) throw new RangeError(`uwsgi: the variable block (${block.length} bytes) is longer than 65535 bytes`);
  const head = Buffer.alloc(4);
  head[0] = options.modifier1 ?? 0;
  head.writeUInt16LE(block.length, 1);
  head[3] = options.modifier2 ?? 0;
  return Buffer.concat([head, block]);
}

/** The response head as uWSGI sends it: "HTTP/1.1 200 OK\r\n", one line per header, a blank line. */
export function uwsgiResponseHead(status: string, headers: readonly Header[]): Buffer {
  let text = `HTTP/1.1 ${status}\r\n`;
  for (const [n, v] of headers) text += `${n}: ${v}\r\n`;
  return Buffer.from(text + '\r\n', 'latin1');
}
