import * as net from 'node:net';

/**
 * A port that was free a moment ago on 127.0.0.1. Another process can still take it
 * before the server binds, so the server starters retry on "address in use".
 */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen({ host: '127.0.0.1', port: 0, exclusive: true }, () => {
      const addr = srv.address();
      if (addr === null || typeof addr === 'string') {
        srv.close();
        reject(new Error('freePort: listening socket has no TCP address'));
        return;
      }
      srv.close(() => resolve(addr.port));
    });
  });
}

/** Resolves true once something accepts TCP connections on 127.0.0.1:port. */
export function canConnect(port: number, host = '127.0.0.1', timeoutMs = 1000): Promise<boolean> {
  return new Promise((resolve) => {
    const sock = net.connect({ host, port });
    const done = (ok: boolean) => {
      clearTimeout(timer);
      sock.destroy();
      resolve(ok);
    };
    const timer = setTimeout(() => done(false), timeoutMs);
    sock.once('connect', () => done(true));
    sock.once('error', () => done(false));
  });
}

/** A server failed to start; `addressInUse` when another process took its port first. */
export class StartupError extends Error {
  constructor(
    message: string,
    readonly addressInUse: boolean,
  ) {
    super(message);
  }
}

/**
 * Starts a server on a free port, picking another one (up to 4 tries) when a process
 * takes the port between freePort() and the server's bind. A fixed port is tried once.
 */
export async function startOnFreePort<T>(fixedPort: number | undefined, start: (port: number) => Promise<T>): Promise<T> {
  const attempts = fixedPort === undefined ? 4 : 1;
  for (let i = 1; ; i++) {
    try {
      return await start(fixedPort ?? (await freePort()));
    } catch (e) {
      if (!(e instanceof StartupError && e.addressInUse && i < attempts)) throw e;
    }
  }
}
