/**
 * Adapters between TSGI and the fetch-handler shape (`(request: Request) => Response`)
 * that Hono, itty-router, Remix, Deno, Bun and Workers apps use (reference/peers.md C6):
 *
 *   fromFetch(handler)  a fetch handler as a TSGI application, so a `.tsgi` file can be
 *                       `export const application = fromFetch(app.fetch)`;
 *   toFetch(app)        a TSGI application as a fetch handler, run through the gateway
 *                       core (this is a transport: it enforces every spec rule).
 *
 * Both stream in both directions and propagate aborts: the Request's signal is
 * `tsgi.signal`, and a client that goes away cancels the Response body.
 */
import { runRequest, fixedApp, type ResponseSink, type ServerContext } from '../gateway/run';
import { HOP_BY_HOP } from '../gateway/headers';
import { RequestAborted } from '../gateway/errors';
import { decodePath } from '../gateway/environ';
import type { ErrorLog } from '../gateway/log';
import type { Application, Environ, Header } from '../tsgi';

/** What a fetch handler gets besides the Request (a subset of Workers' / Deno's context). */
export interface FetchContext {
  /** The TSGI environ of the request, for anything the Request does not carry (REMOTE_ADDR, SetEnv values). */
  environ: Environ;
  /** Keeps work going after the response: the promise is awaited before the body is closed. */
  waitUntil(promise: Promise<unknown>): void;
}

export type FetchHandler = (request: Request, context: FetchContext) => Response | Promise<Response>;

const NO_BODY_METHODS = new Set(['GET', 'HEAD']);

/** The request URL a TSGI environ describes (scheme, host, the raw request target). */
export function requestUrl(environ: Environ): string {
  const scheme = environ['tsgi.url_scheme'];
  const defaultPort = scheme === 'https' ? '443' : '80';
  let host = typeof environ.HTTP_HOST === 'string' && environ.HTTP_HOST ? environ.HTTP_HOST : environ.SERVER_NAME;
  if (host === environ.SERVER_NAME && environ.SERVER_PORT && environ.SERVER_PORT !== defaultPort) host += `:${environ.SERVER_PORT}`;
  const target = environ.REQUEST_URI || encodeURI(environ.SCRIPT_NAME + environ.PATH_INFO) + (environ.QUERY_STRING ? `?${environ.QUERY_STRING}` : '');
  // An absolute-form REQUEST_URI already is a URL.
  return /^https?:\/\//i.test(target) ? target : `${scheme}://${host}${target}`;
}

/** The request headers an environ carries, back in HTTP form. */
export function requestHeaders(environ: Environ): Headers {
  const headers = new Headers();
  for (const [key, value] of Object.entries(environ)) {
    if (typeof value !== 'string') continue;
    if (key.startsWith('HTTP_')) headers.append(key.slice(5).toLowerCase().replace(/_/g, '-'), value);
    else if (key === 'CONTENT_TYPE' && value) headers.set('content-type', value);
    else if (key === 'CONTENT_LENGTH' && value) headers.set('content-length', value);
  }
  return headers;
}

/** A fetch handler as a TSGI application. */
export function fromFetch(handler: FetchHandler): Application {
  return async function fetchApplication(environ, startResponse) {
    const method = environ.REQUEST_METHOD;
    const input = environ['tsgi.input'];
    const body = NO_BODY_METHODS.has(method)
      ? null
      : new ReadableStream<Uint8Array>({
          async pull(controller) {
            const chunk = await input.read(65536);
            if (chunk.byteLength === 0) controller.close();
            else controller.enqueue(chunk);
          },
        });
    const request = new Request(requestUrl(environ), {
      method,
      headers: requestHeaders(environ),
      body,
      signal: environ['tsgi.signal'],
      // Node's Request needs this for a streamed body.
      ...(body ? { duplex: 'half' } : {}),
    } as RequestInit);
    const pending: Promise<unknown>[] = [];
    const response = await handler(request, { environ, waitUntil: (p) => void pending.push(p) });
    if (!(response instanceof Response)) {
      throw new TypeError(`fromFetch: the handler must return a Response, got ${response === null ? 'null' : typeof response}`);
    }
    startResponse(`${response.status} ${response.statusText || reasonPhrase(response.status)}`, responseHeaders(response.headers));
    const reader = response.body?.getReader() ?? null;
    let done = reader === null;
    const finish = async () => {
      await Promise.allSettled(pending);
    };
    return {
      // Held until the response ends: undici's Request follows tsgi.signal only through a
      // weak reference, so a collected Request would never see the client leave.
      request,
      async *[Symbol.asyncIterator]() {
        while (reader && !done) {
          const r = await reader.read();
          if (r.done) break;
          yield r.value;
        }
        done = true;
      },
      async close() {
        // A body cut short (client gone, an error) cancels the handler's stream.
        if (reader && !done) await reader.cancel().catch(() => undefined);
        await finish();
      },
    };
  };
}

/** Response headers as TSGI pairs: Set-Cookie kept separate; connection-level ones dropped. */
function responseHeaders(headers: Headers): Header[] {
  const out: Header[] = [];
  const getSetCookie = (headers as Headers & { getSetCookie?: () => string[] }).getSetCookie;
  for (const [name, value] of headers) {
    if (HOP_BY_HOP.has(name)) continue;
    if (name === 'set-cookie' && typeof getSetCookie === 'function') continue;
    out.push([name, value]);
  }
  if (typeof getSetCookie === 'function') for (const c of getSetCookie.call(headers)) out.push(['set-cookie', c]);
  return out;
}

const REASONS: Record<number, string> = {
  200: 'OK', 201: 'Created', 202: 'Accepted', 204: 'No Content', 206: 'Partial Content',
  301: 'Moved Permanently', 302: 'Found', 303: 'See Other', 304: 'Not Modified', 307: 'Temporary Redirect', 308: 'Permanent Redirect',
  400: 'Bad Request', 401: 'Unauthorized', 403: 'Forbidden', 404: 'Not Found', 405: 'Method Not Allowed', 409: 'Conflict',
  410: 'Gone', 413: 'Content Too Large', 415: 'Unsupported Media Type', 422: 'Unprocessable Content', 429: 'Too Many Requests',
  500: 'Internal Server Error', 501: 'Not Implemented', 502: 'Bad Gateway', 503: 'Service Unavailable', 504: 'Gateway Timeout',
};

function reasonPhrase(status: number): string {
  return REASONS[status] ?? 'Unknown';
}

export interface ToFetchOptions {
  /** Where the gateway's log entries go (default: stderr). */
  log?: ErrorLog;
  /** Extra environ entries for every request (like SetEnv). */
  environ?: Record<string, string>;
}

/**
 * A TSGI application as a fetch handler. The gateway core runs it, so a spec violation
 * is a 500 Response and an error after the headers errors the Response body.
 */
export function toFetch(app: Application, options: ToFetchOptions = {}): (request: Request) => Promise<Response> {
  const provider = fixedApp(app);
  const server: ServerContext = {
    log: options.log ?? { log: (level, message) => process.stderr.write(`[tsgi:${level}] ${message}\n`) },
    multithread: true,
    multiprocess: false,
    runOnce: false,
  };
  return (request) =>
    new Promise<Response>((resolve, reject) => {
      const url = new URL(request.url);
      const pathInfo = decodePath(url.pathname);
      if (pathInfo === null) return resolve(new Response('400 Bad Request\n', { status: 400, statusText: 'Bad Request' }));
      const environ: Record<string, unknown> = {
        ...options.environ,
        REQUEST_METHOD: request.method,
        SCRIPT_NAME: '',
        PATH_INFO: pathInfo,
        QUERY_STRING: url.search.slice(1),
        REQUEST_URI: url.pathname + url.search,
        SERVER_NAME: url.hostname,
        SERVER_PORT: url.port || (url.protocol === 'https:' ? '443' : '80'),
        SERVER_PROTOCOL: 'HTTP/1.1',
      };
      for (const [name, value] of request.headers) {
        if (!/^[A-Za-z0-9-]+$/.test(name) || name === 'proxy' || name === 'authorization') continue;
        if (name === 'content-type') environ.CONTENT_TYPE = value;
        else if (name === 'content-length') environ.CONTENT_LENGTH = value;
        else environ['HTTP_' + name.toUpperCase().replace(/-/g, '_')] = value;
      }
      if (!environ.HTTP_HOST) environ.HTTP_HOST = url.host;
      let controller!: ReadableStreamDefaultController<Uint8Array>;
      let wake: (() => void) | null = null;
      const gone = new AbortController();
      request.signal.addEventListener('abort', () => gone.abort(new RequestAborted('the fetch request was aborted')), { once: true });
      const stream = new ReadableStream<Uint8Array>(
        {
          start: (c) => void (controller = c),
          pull: () => {
            wake?.();
            wake = null;
          },
          cancel: () => gone.abort(new RequestAborted('the Response body was cancelled')),
        },
        { highWaterMark: 4 },
      );
      const sink: ResponseSink = {
        head(head) {
          const headers = new Headers();
          for (const [n, v] of head.headers) headers.append(n, v);
          resolve(new Response(head.bodyless ? null : stream, { status: head.code, statusText: head.reason, headers }));
        },
        body(chunk) {
          controller.enqueue(chunk);
          if ((controller.desiredSize ?? 1) > 0) return;
          return new Promise<void>((r) => (wake = r));
        },
        end() {
          controller.close();
        },
        abort(error) {
          controller.error(error);
        },
      };
      runRequest(provider, { environ, body: request.body as AsyncIterable<Uint8Array> | null, urlScheme: url.protocol === 'https:' ? 'https' : 'http', signal: gone.signal }, sink, server).then(
        (outcome) => {
          if (outcome.code === 0) reject(new RequestAborted('the request was aborted before a response'));
        },
        reject,
      );
    });
}
