/**
 * `environ['tsgi.file_wrapper']` (docs/spec.md §9): a file as a response body. The
 * body carries `filePath`/`fd` so a transport that can send a file natively
 * (sendfile, X-Sendfile, Apache's file buckets) may do so; any other transport just
 * iterates it. close() closes the descriptor, whoever opened it, as PEP 3333 does.
 */
import { closeSync, openSync, read as readCb } from 'node:fs';
import type { FileBody } from '../tsgi';

const DEFAULT_BLOCK = 64 * 1024;

class WrappedFile implements FileBody {
  readonly filePath?: string;
  private descriptor: number | null;
  private closed = false;

  constructor(file: string | number, private readonly blockSize: number) {
    if (typeof file === 'number') {
      this.descriptor = file;
    } else {
      this.filePath = file;
      this.descriptor = null; // opened on first iteration, so an unused wrapper holds no fd
    }
  }

  get fd(): number | undefined {
    return this.descriptor ?? undefined;
  }

  async *[Symbol.asyncIterator](): AsyncIterator<Uint8Array> {
    if (this.closed) throw new Error('tsgi.file_wrapper: body iterated after close()');
    if (this.descriptor === null) this.descriptor = openSync(this.filePath as string, 'r');
    const fd = this.descriptor;
    for (;;) {
      const buf = Buffer.allocUnsafe(this.blockSize);
      const n = await new Promise<number>((resolve, reject) =>
        readCb(fd, buf, 0, buf.byteLength, null, (err, bytesRead) => (err ? reject(err) : resolve(bytesRead))),
      );
      if (n === 0) return;
      yield n === buf.byteLength ? buf : buf.subarray(0, n);
    }
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    if (this.descriptor !== null) closeSync(this.descriptor);
    this.descriptor = null;
  }
}

export function fileWrapper(file: string | number, blockSize: number = DEFAULT_BLOCK): FileBody {
  if (typeof file !== 'string' && typeof file !== 'number') {
    throw new TypeError('tsgi.file_wrapper(file, blockSize): file must be a path or a file descriptor');
  }
  if (!Number.isInteger(blockSize) || blockSize <= 0) {
    throw new TypeError(`tsgi.file_wrapper: blockSize must be a positive integer, got ${blockSize}`);
  }
  return new WrappedFile(file, blockSize);
}
