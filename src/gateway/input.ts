/**
 * `environ['tsgi.input']`: the request body as an InputStream over whatever byte
 * source the transport has (a socket, stdin, protocol frames).
 *
 * Rules enforced here (docs/spec.md §7): end-of-body comes exactly at CONTENT_LENGTH
 * when one was given, and at the end of the source otherwise (chunked bodies); a
 * source that ends early, fails, or is aborted makes reads reject — a failed read is
 * never reported as end-of-body.
 */
import { BodyReadError } from './errors';
import type { InputStream } from '../tsgi';

const EMPTY = new Uint8Array(0);

export interface InputOptions {
  /** The declared body length, or null for a body of unknown length (chunked). */
  contentLength: number | null;
  /** Aborts pending and future reads (client gone). */
  signal?: AbortSignal;
  /** Called once, before the first byte is pulled: where the transport sends `100 Continue`. */
  onFirstRead?: () => void;
}

export class RequestInput implements InputStream {
  private iterator: AsyncIterator<Uint8Array> | null;
  private readonly source: AsyncIterable<Uint8Array> | null;
  private buffered: Uint8Array = EMPTY;
  private remaining: number; // bytes still to deliver; Infinity when unknown
  private done = false;
  private failure: Error | null = null;
  private started = false;
  private reading = false;

  constructor(source: AsyncIterable<Uint8Array> | null, private readonly options: InputOptions) {
    this.source = source;
    this.iterator = null;
    this.remaining = options.contentLength ?? (source ? Infinity : 0);
    if (this.remaining === 0) this.done = true;
  }

  async read(size?: number): Promise<Uint8Array> {
    if (size === undefined || size === null || size < 0) return this.readAll();
    if (!Number.isInteger(size)) throw new TypeError(`tsgi.input.read(size): size must be an integer, got ${size}`);
    if (size === 0) return EMPTY;
    if (this.buffered.byteLength === 0) {
      const chunk = await this.pull();
      if (chunk === null) return EMPTY;
      this.buffered = chunk;
    }
    const out = this.buffered.subarray(0, size);
    this.buffered = this.buffered.subarray(out.byteLength);
    return out;
  }

  async *[Symbol.asyncIterator](): AsyncIterator<Uint8Array> {
    if (this.buffered.byteLength > 0) {
      const b = this.buffered;
      this.buffered = EMPTY;
      yield b;
    }
    for (;;) {
      const chunk = await this.pull();
      if (chunk === null) return;
      yield chunk;
    }
  }

  private async readAll(): Promise<Uint8Array> {
    const parts: Uint8Array[] = [];
    let total = 0;
    if (this.buffered.byteLength > 0) {
      parts.push(this.buffered);
      total += this.buffered.byteLength;
      this.buffered = EMPTY;
    }
    for (;;) {
      const chunk = await this.pull();
      if (chunk === null) break;
      parts.push(chunk);
      total += chunk.byteLength;
    }
    if (parts.length === 1) return parts[0];
    const out = new Uint8Array(total);
    let off = 0;
    for (const p of parts) {
      out.set(p, off);
      off += p.byteLength;
    }
    return out;
  }

  /** The next chunk from the source, trimmed to the declared length; null at end of body. */
  private async pull(): Promise<Uint8Array | null> {
    if (this.failure) throw this.failure;
    if (this.done) return null;
    if (this.reading) throw new BodyReadError('tsgi.input: concurrent reads are not allowed; await each read');
    this.options.signal?.throwIfAborted();
    if (!this.started) {
      this.started = true;
      this.options.onFirstRead?.();
      this.iterator = this.source ? this.source[Symbol.asyncIterator]() : null;
    }
    if (!this.iterator) {
      this.done = true;
      return null;
    }
    this.reading = true;
    try {
      for (;;) {
        let r: IteratorResult<Uint8Array>;
        try {
          r = await this.nextOrAbort(this.iterator);
        } catch (err) {
          throw this.fail(err instanceof Error ? err : new BodyReadError(String(err)));
        }
        if (r.done) {
          this.done = true;
          if (this.remaining !== Infinity) {
            throw this.fail(new BodyReadError(`request body ended after fewer bytes than CONTENT_LENGTH (${this.remaining} missing)`));
          }
          return null;
        }
        let chunk = r.value;
        if (chunk.byteLength === 0) continue;
        if (chunk.byteLength >= this.remaining) {
          chunk = chunk.subarray(0, this.remaining);
          this.remaining = 0;
          this.done = true;
        } else if (this.remaining !== Infinity) {
          this.remaining -= chunk.byteLength;
        }
        return chunk;
      }
    } finally {
      this.reading = false;
    }
  }

  private nextOrAbort(it: AsyncIterator<Uint8Array>): Promise<IteratorResult<Uint8Array>> {
    const signal = this.options.signal;
    if (!signal) return it.next();
    return new Promise((resolve, reject) => {
      const onAbort = () => reject(signal.reason instanceof Error ? signal.reason : new BodyReadError('request aborted'));
      signal.addEventListener('abort', onAbort, { once: true });
      it.next().then(
        (r) => {
          signal.removeEventListener('abort', onAbort);
          resolve(r);
        },
        (e) => {
          signal.removeEventListener('abort', onAbort);
          reject(e);
        },
      );
    });
  }

  private fail(err: Error): Error {
    const e = err instanceof BodyReadError ? err : new BodyReadError(`request body could not be read: ${err.message}`, { cause: err });
    this.failure = e;
    this.done = true;
    return e;
  }
}
