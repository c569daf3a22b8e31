/**
 * debugErrors: the development error page, TSGI's twin of Paste's EvalException
 * (seed 004) without the in-browser eval console.
 *
 * When the wrapped application throws — while being called, in the Promise it returns,
 * or while its body is iterated — and no header has reached the client yet, the
 * response is replaced by a 500 page that shows the error's name, message, stack
 * trace and cause chain, and the request's method and path.
 *
 * NEVER ENABLE THIS IN PRODUCTION: the page shows source paths, stack frames and
 * error messages, which help an attacker as much as a developer. Without it the
 * gateway already answers a generic 500 and logs the stack.
 *
 * The replacement goes through the TSGI excInfo rule: the page is started with
 * `startResponse('500 …', headers, error)`. If the headers were already sent, the
 * server re-throws `error` out of that call, and the response is aborted as it would
 * have been without this middleware — a half-sent response must never be completed
 * with an error page glued to its end.
 */
import { callApplication, isThenable } from '../gateway/invoke';
import type { Application, Body, Chunk, Environ, StartResponse } from '../tsgi';

export interface DebugErrorsOptions {
  /**
   * Also list the request's string-valued environ entries (CGI variables and HTTP_*
   * headers, cookies included) on the page. Default false.
   */
  showEnviron?: boolean;
}

/** Wraps `app` so that its errors become a development error page. */
export function debugErrors(app: Application, options: DebugErrorsOptions = {}): Application {
  const showEnviron = options.showEnviron ?? false;
  const call = (environ: Environ, startResponse: StartResponse) => callApplication(app, environ, startResponse);

  return function debugErrorsApp(environ, startResponse) {
    const fail = (error: unknown): Chunk[] => errorResponse(environ, startResponse, error, showEnviron);
    let result: unknown;
    try {
      result = call(environ, startResponse);
    } catch (error) {
      return fail(error);
    }
    if (isThenable(result)) {
      return result.then((body) => guardBody(body as Body, fail), fail);
    }
    return guardBody(result as Body, fail);
  };
}

/** Starts the 500 response (or lets the server re-throw) and returns the page. */
function errorResponse(environ: Environ, startResponse: StartResponse, error: unknown, showEnviron: boolean): Chunk[] {
  const page = Buffer.from(renderPage(environ, error, showEnviron), 'utf8');
  startResponse(
    '500 Internal Server Error',
    [
      ['Content-Type', 'text/html; charset=utf-8'],
      ['Content-Length', String(page.byteLength)],
      ['Cache-Control', 'no-store'],
    ],
    // A non-Error throw still has to reach the server as a defined excInfo.
    error === undefined || error === null ? new Error(`non-Error thrown: ${String(error)}`) : error,
  );
  // Logged only once the page is certain: when the headers were already out, the
  // server re-threw above and logs the error itself; logging here too would double it.
  const errors = environ['tsgi.errors'];
  if (errors && typeof errors.write === 'function') {
    errors.write(`debugErrors: ${environ.REQUEST_METHOD} ${requestPath(environ)}: error page sent\n${stackText(error)}\n`);
    errors.flush();
  }
  return [page];
}

/**
 * Guards the body's iteration. Arrays are returned as they are: iterating one cannot
 * throw, and the server only computes a Content-Length for a genuine Array.
 */
function guardBody(body: Body, fail: (error: unknown) => Chunk[]): Body {
  if (body === null || body === undefined || typeof body !== 'object' || Array.isArray(body)) return body;
  const inner = body as Body & { close?: () => unknown; filePath?: unknown; fd?: unknown };
  const close = () => (typeof inner.close === 'function' ? inner.close() : undefined);
  if (typeof (inner as Partial<AsyncIterable<Chunk>>)[Symbol.asyncIterator] === 'function') {
    const source = inner as AsyncIterable<Chunk>;
    const guarded = {
      async *[Symbol.asyncIterator]() {
        try {
          for await (const chunk of source) yield chunk;
        } catch (error) {
          yield* fail(error);
        }
      },
      close,
    };
    if ('filePath' in inner || 'fd' in inner) {
      // Still a file body to the server, which may send it natively (spec §9); the
      // guard only matters when the server iterates it.
      Object.defineProperties(guarded, {
        filePath: { get: () => inner.filePath, enumerable: true },
        fd: { get: () => inner.fd, enumerable: true },
      });
    }
    return guarded as AsyncIterable<Chunk>;
  }
  if (typeof (inner as Partial<Iterable<Chunk>>)[Symbol.iterator] === 'function') {
    const source = inner as Iterable<Chunk>;
    return {
      *[Symbol.iterator]() {
        try {
          for (const chunk of source) yield chunk;
        } catch (error) {
          yield* fail(error);
        }
      },
      close,
    } as Iterable<Chunk>;
  }
  // Not a body at all: the server reports that better than a page would.
  return body;
}

function renderPage(environ: Environ, error: unknown, showEnviron: boolean): string {
  const name = error instanceof Error ? error.name : 'non-Error thrown';
  const message = error instanceof Error ? error.message : describeValue(error);
  const method = String(environ.REQUEST_METHOD ?? '');
  const path = requestPath(environ);
  let html =
    '<!DOCTYPE html>\n<html><head><meta charset="utf-8">\n' +
    `<title>500 ${escapeHtml(name)}: ${escapeHtml(message.split('\n')[0].slice(0, 200))}</title>\n` +
    '<style>body{font-family:sans-serif;margin:2em}pre{background:#f4f4f4;padding:1em;overflow:auto}' +
    '.warn{color:#a00}th{text-align:left;padding-right:1em;vertical-align:top}td{font-family:monospace}</style>\n' +
    '</head><body>\n' +
    `<h1>${escapeHtml(name)}</h1>\n` +
    `<p class="message"><strong>${escapeHtml(message)}</strong></p>\n` +
    `<p class="request">${escapeHtml(method)} ${escapeHtml(path)}</p>\n` +
    `<h2>Traceback</h2>\n<pre class="stack">${escapeHtml(stackText(error))}</pre>\n`;
  if (showEnviron) {
    html += '<h2>Environ</h2>\n<table>\n';
    for (const key of Object.keys(environ).sort()) {
      const value = environ[key];
      if (typeof value === 'string') html += `<tr><th>${escapeHtml(key)}</th><td>${escapeHtml(value)}</td></tr>\n`;
    }
    html += '</table>\n';
  }
  html += '<p class="warn">This page comes from the debugErrors middleware, a development tool: never enable it in production.</p>\n';
  return html + '</body></html>\n';
}

function requestPath(environ: Environ): string {
  const path = `${environ.SCRIPT_NAME ?? ''}${environ.PATH_INFO ?? ''}` || '/';
  return environ.QUERY_STRING ? `${path}?${environ.QUERY_STRING}` : path;
}

/** The stack with the cause chain, which is often where the real failure is. */
function stackText(error: unknown, depth = 0): string {
  if (!(error instanceof Error)) return `non-Error thrown: ${describeValue(error)}`;
  let text = error.stack ?? `${error.name}: ${error.message}`;
  // A cyclic cause chain must not hang the error page.
  if (error.cause !== undefined && depth < 10) text += `\nCaused by: ${stackText(error.cause, depth + 1)}`;
  return text;
}

function describeValue(value: unknown): string {
  try {
    return typeof value === 'string' ? JSON.stringify(value) : String(value);
  } catch {
    return Object.prototype.toString.call(value);
  }
}

function escapeHtml(s: string): string {
  return s.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

