/**
 * The HTTP transport over node:http: `tsgi serve` (the wsgiref.simple_server twin).
 * It turns each HTTP request into a gateway request and the gateway's sink calls into
 * node:http writes. Keep-alive, chunked bodies both ways, `Expect: 100-continue` and
 * header-size limits come from node:http itself.
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { addHeaderVariables, decodePath, mapMount, splitTarget } from '../gateway/environ';
import { RequestAborted } from '../gateway/errors';
import { runRequest, type AppProvider, type RequestOutcome, type ResponseSink, type ServerContext } from '../gateway/run';
import type { ErrorLog } from '../gateway/log';
import { commonLogLine } from './access-log';
import { RequestExpired, type RequestMonitor } from './monitor';

export const SERVER_SOFTWARE = `tsgi/${(require('../../package.json') as { version: string }).version}`;

export interface HttpTransportOptions {
  provider: AppProvider;
  log: ErrorLog;
  /** Where access-log lines (Apache common log format) go; omit for none. */
  accessLog?: { write(line: string): unknown };
  /** Mount point: SCRIPT_NAME for requests under it, 404 for the rest. Default '' (the root). */
  mountPoint?: string;
  /** Pass the Authorization header to the app (TSGIPassAuthorization On). Default false. */
  passAuthorization?: boolean;
  /** Extra per-request variables (like Apache's SetEnv). */
  setEnv?: Record<string, string>;
  /** Told when each request begins and ends; may end one early with a 504 (daemon-mode.ts). */
  monitor?: RequestMonitor;
  /** What tsgi.multiprocess says. Default false. */
  multiprocess?: boolean;
}

/** Creates (does not start) an HTTP server that runs every request through the gateway. */
export function createHttpServer(options: HttpTransportOptions): Server {
  const server = createServer();
  const context: ServerContext = { log: options.log, multithread: true, multiprocess: options.multiprocess ?? false, runOnce: false };
  const handle = (req: IncomingMessage, res: ServerResponse, expectsContinue: boolean) => {
    handleRequest(req, res, expectsContinue, options, context).catch((err) => {
      options.log.log('error', `internal error in the HTTP transport: ${(err as Error)?.stack ?? String(err)}`);
      res.destroy();
    });
  };
  server.on('request', (req, res) => handle(req, res, false));
  // The 100 is sent when the app first reads tsgi.input, so an app may refuse a body unread.
  server.on('checkContinue', (req, res) => handle(req, res, true));
  server.on('clientError', (err: NodeJS.ErrnoException, socket) => {
    if (socket.writable && err.code !== 'ECONNRESET') {
      const status = err.code === 'HPE_HEADER_OVERFLOW' ? '431 Request Header Fields Too Large' : '400 Bad Request';
      socket.end(`HTTP/1.1 ${status}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n`);
    } else {
      socket.destroy();
    }
    options.log.log('info', `bad request from ${(socket as { remoteAddress?: string }).remoteAddress ?? '?'}: ${err.message}`);
  });
  return server;
}

async function handleRequest(
  req: IncomingMessage,
  res: ServerResponse,
  expectsContinue: boolean,
  options: HttpTransportOptions,
  context: ServerContext,
): Promise<void> {
  const started = new Date();
  const rawTarget = req.url ?? '/';
  // RFC 9112 §3.2.2: a server must accept the absolute form (what proxies send).
  const originForm = /^https?:\/\//i.test(rawTarget) ? rawTarget.replace(/^https?:\/\/[^/?#]*/i, '').replace(/^(?!\/)/, '/') : rawTarget;
  const { path, query } = splitTarget(originForm);
  const decoded = decodePath(path);
  if (decoded === null || !path.startsWith('/') || decoded.includes('\0')) {
    return plainResponse(req, res, 400, 'Bad Request', options, started);
  }
  // Apache's default (AllowEncodedSlashes Off): an encoded slash is refused with 404.
  if (/%2f/i.test(path)) return plainResponse(req, res, 404, 'Not Found', options, started);
  const mapped = mapMount(decoded, options.mountPoint ?? '');
  if (mapped === null) return plainResponse(req, res, 404, 'Not Found', options, started);

  const local = req.socket.address() as Partial<AddressInfo>;
  const environ: Record<string, unknown> = {
    ...options.setEnv,
    REQUEST_METHOD: req.method ?? 'GET',
    SCRIPT_NAME: mapped.scriptName,
    PATH_INFO: mapped.pathInfo,
    QUERY_STRING: query,
    REQUEST_URI: rawTarget,
    // On a Unix socket there is no local address or port: the Host header (or 80) says
    // what the client asked for.
    SERVER_NAME: hostName(req.headers.host) ?? local.address ?? 'localhost',
    SERVER_PORT: local.port !== undefined ? String(local.port) : (hostPort(req.headers.host) ?? '80'),
    ...(local.address ? { SERVER_ADDR: local.address } : {}),
    SERVER_PROTOCOL: `HTTP/${req.httpVersion}`,
    SERVER_SOFTWARE,
    ...(req.socket.remoteAddress ? { REMOTE_ADDR: req.socket.remoteAddress, REMOTE_PORT: String(req.socket.remotePort) } : {}),
  };
  addHeaderVariables(environ, req.rawHeaders, { passAuthorization: options.passAuthorization, latin1Values: true });
  const hasBody = req.headers['transfer-encoding'] !== undefined || (req.headers['content-length'] ?? '0') !== '0';

  const controller = new AbortController();
  res.on('close', () => {
    if (!res.writableFinished) controller.abort(new RequestAborted('the client closed the connection before the response was complete'));
  });

  // The manager's request-timeout: a 504 if nothing went out yet, else a cut response.
  let expired = false;
  const done = options.monitor?.begin(`${req.method} ${rawTarget}`, () => {
    if (expired || res.writableFinished) return;
    expired = true;
    if (!res.headersSent) {
      const body = '504 Gateway Timeout\n';
      res.writeHead(504, 'Gateway Timeout', { 'Content-Type': 'text/plain; charset=utf-8', 'Content-Length': Buffer.byteLength(body), Connection: 'close' });
      res.end(req.method === 'HEAD' ? undefined : body);
    } else {
      res.destroy();
    }
    controller.abort(new RequestExpired('the request took longer than the request-timeout'));
  });
  let outcome: RequestOutcome;
  try {
    outcome = await runRequest(
      options.provider,
      {
        environ,
        body: hasBody ? req : null,
        urlScheme: 'http',
        signal: controller.signal,
        onContinue: expectsContinue ? () => res.writeContinue() : undefined,
      },
      httpSink(res, () => expired),
      context,
    );
  } finally {
    done?.();
  }
  // A body the app did not read must not be parsed as the next request on this connection.
  if (hasBody && !req.complete && outcome.state === 'complete') req.resume();
  options.accessLog?.write(commonLogLine(req.socket.remoteAddress, started, `${req.method} ${rawTarget} HTTP/${req.httpVersion}`, outcome));
}

/** The gateway's sink as node:http calls. */
function httpSink(res: ServerResponse, expired: () => boolean = () => false): ResponseSink {
  return {
    head(head) {
      if (expired()) return;
      const flat: string[] = [];
      for (const [n, v] of head.headers) flat.push(n, v);
      res.writeHead(head.code, head.reason, flat);
    },
    body(chunk) {
      if (expired() || res.write(chunk)) return;
      return new Promise<void>((resolve) => {
        const done = () => {
          res.off('drain', done);
          res.off('close', done);
          resolve();
        };
        res.on('drain', done);
        res.on('close', done);
      });
    },
    end() {
      if (!expired()) res.end();
    },
    abort(error) {
      // Destroying the socket stops the chunked stream (or the Content-Length body) short,
      // so the client sees an incomplete response rather than a complete one.
      void error;
      res.destroy();
    },
  };
}

function plainResponse(req: IncomingMessage, res: ServerResponse, code: number, reason: string, options: HttpTransportOptions, started: Date): void {
  const body = `${code} ${reason}\n`;
  res.writeHead(code, reason, { 'Content-Type': 'text/plain; charset=utf-8', 'Content-Length': Buffer.byteLength(body) });
  res.end(req.method === 'HEAD' ? undefined : body);
  req.resume();
  const outcome: RequestOutcome = { state: 'complete', code, bytes: req.method === 'HEAD' ? 0 : Buffer.byteLength(body) };
  options.accessLog?.write(commonLogLine(req.socket.remoteAddress, started, `${req.method} ${req.url} HTTP/${req.httpVersion}`, outcome));
}

/** The host part of a Host header, without the port; undefined when absent or malformed. */
function hostName(host: string | undefined): string | undefined {
  if (!host) return undefined;
  const m = /^(\[[0-9A-Fa-f:.]+\]|[^:[\]]+)(?::\d*)?$/.exec(host);
  return m ? m[1] : undefined;
}

/** The port part of a Host header; undefined when absent. */
function hostPort(host: string | undefined): string | undefined {
  const m = host ? /:(\d+)$/.exec(host) : null;
  return m ? m[1] : undefined;
}

/** Starts listening; resolves with the bound address. */
export function listen(server: Server, host: string, port: number): Promise<AddressInfo> {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      server.off('error', reject);
      resolve(server.address() as AddressInfo);
    });
  });
}
