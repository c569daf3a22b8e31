/**
 * A minor GC per so many body bytes moved, for the transports that move large bodies
 * through short-lived buffers.
 */
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';

/**
 * Body bytes moving through a transport (embedded mode's hand-off, the daemon's wire
 * server) become ArrayBuffers (one per chunk) that die young. V8 scavenges because of
 * them only after 32 MB of young backing stores (2 × kMaxSemiSpaceSize in
 * Heap::AllocateExternalBackingStore), so a large transfer would hold about that much
 * dead memory per process (measured 31-36 MiB in a daemon worker, for 64 and 256 MiB
 * uploads alike). A minor GC every 8 MiB moved keeps the process flat; it costs well
 * under a millisecond. The gc function comes from a separate context, so applications
 * never see a global gc().
 */
type GcFunction = (options?: { type: 'minor' | 'major' }) => void;

function privateGc(): GcFunction | null {
  try {
    setFlagsFromString('--expose-gc');
    const gc: unknown = runInNewContext('gc');
    return typeof gc === 'function' ? (gc as GcFunction) : null;
  } catch {
    return null;
  } finally {
    setFlagsFromString('--no-expose-gc');
  }
}

export function transferGc(everyBytes = 8 * 1024 * 1024): (bytes: number) => void {
  const gc = privateGc();
  let moved = 0;
  return (bytes) => {
    moved += bytes;
    if (moved < everyBytes || !gc) return;
    moved = 0;
    gc({ type: 'minor' });
  };
}
