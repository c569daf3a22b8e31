/**
 * The CGI transport (RFC 3875): `tsgi-cgi`, the twin of the seeds' run_with_cgi and of
 * wsgiref's CGIHandler. One process per request: the web server passes the request in
 * environment variables and stdin; we answer on stdout with a `Status:` line, the
 * headers, a blank line and the body. Errors go to stderr, which Apache and lighttpd
 * file in their error logs.
 *
 * How the script is found:
 *   - `tsgi-cgi SCRIPT` — from a `#!/usr/bin/env tsgi-cgi` line (Apache
 *     `AddHandler cgi-script .tsgi`) or lighttpd's `cgi.assign = (".tsgi" => tsgi-cgi)`;
 *   - no argument — Apache `Action`: the script is the longest existing file prefix of
 *     PATH_TRANSLATED, and the rest of the path becomes PATH_INFO (as php-cgi does).
 *
 * CGI has no in-band way to say "this response is incomplete": if the app fails after
 * its headers went out we stop writing and exit non-zero, and the web server ends the
 * response where we stopped (docs/spec.md §12).
 */
import { statSync } from 'node:fs';
import { RequestAborted } from '../gateway/errors';
import { runRequest, type AppProvider, type RequestOutcome, type ResponseSink } from '../gateway/run';
import { streamLog, type ErrorLog } from '../gateway/log';
import { ScriptLoader } from '../loader';
import { normalizeCgiEnviron, urlSchemeOf } from './protocols/cgi-vars';

export interface CgiLocation {
  scriptPath: string;
  /** Overrides for SCRIPT_NAME / PATH_INFO when the script was found through PATH_TRANSLATED. */
  scriptName?: string;
  pathInfo?: string;
}

/**
 * Finds the script. `argvScript` wins; otherwise the longest prefix of PATH_TRANSLATED
 * that is a regular file (Apache Action).
 */
export function locateScript(argvScript: string | undefined, env: NodeJS.ProcessEnv): CgiLocation | null {
  if (argvScript) return { scriptPath: argvScript };
  const translated = env.PATH_TRANSLATED;
  if (!translated) return null;
  const pathInfo = env.PATH_INFO ?? '';
  let file = translated;
  let rest = '';
  while (file.length > 1) {
    if (isFile(file)) {
      // PATH_INFO as the web server gave it (the URL path after the action handler) ends
      // with the same `rest`; what precedes it is the script's URL.
      const scriptName = rest && pathInfo.endsWith(rest) ? pathInfo.slice(0, pathInfo.length - rest.length) : pathInfo;
      return { scriptPath: file, scriptName, pathInfo: rest };
    }
    const slash = file.lastIndexOf('/');
    if (slash <= 0) break;
    rest = file.slice(slash) + rest;
    file = file.slice(0, slash);
  }
  return null;
}

function isFile(p: string): boolean {
  try {
    return statSync(p).isFile();
  } catch {
    return false;
  }
}

/** The CGI meta-variables as a TSGI environ base (docs/spec.md §4, §12). */
export function cgiEnviron(env: NodeJS.ProcessEnv, location: CgiLocation): Record<string, unknown> {
  const environ: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(env)) if (typeof v === 'string') environ[k] = v;
  if (location.scriptName !== undefined) environ.SCRIPT_NAME = location.scriptName;
  if (location.pathInfo !== undefined) environ.PATH_INFO = location.pathInfo;
  return normalizeCgiEnviron(environ);
}

export { urlSchemeOf };

/** Writes to stdout, waiting when the pipe is full; rejects when the web server hung up. */
class StdoutSink implements ResponseSink {
  private broken: Error | null = null;

  constructor(
    private readonly out: NodeJS.WriteStream,
    private readonly onBroken: (e: Error) => void,
  ) {
    out.on('error', (e) => {
      this.broken = e;
      onBroken(e);
    });
  }

  head(head: Parameters<ResponseSink['head']>[0]): void {
    let text = `Status: ${head.status}\r\n`;
    for (const [n, v] of head.headers) text += `${n}: ${v}\r\n`;
    this.send(Buffer.from(text + '\r\n', 'latin1'));
  }

  body(chunk: Uint8Array): void | Promise<void> {
    return this.send(chunk);
  }

  end(): Promise<void> {
    return new Promise((resolve) => {
      if (this.broken) return resolve();
      this.out.write('', () => resolve());
    });
  }

  abort(): void {
    // Nothing can be said in-band; the caller exits non-zero.
  }

  private send(bytes: Uint8Array): void | Promise<void> {
    if (this.broken) throw this.broken;
    if (this.out.write(bytes)) return;
    return new Promise((resolve, reject) => {
      const onDrain = () => {
        this.out.off('error', onError);
        resolve();
      };
      const onError = (e: Error) => {
        this.out.off('drain', onDrain);
        reject(e);
      };
      this.out.once('drain', onDrain);
      this.out.once('error', onError);
    });
  }
}

export interface CgiRunOptions {
  argvScript?: string;
  env?: NodeJS.ProcessEnv;
  stdin?: NodeJS.ReadStream;
  stdout?: NodeJS.WriteStream;
  log?: ErrorLog;
  callable?: string;
  /** Wraps the script's provider (the validate middleware, say). */
  wrapProvider?: (p: AppProvider) => AppProvider;
}

/** Runs one CGI request; resolves to the process exit code. */
export async function runCgi(options: CgiRunOptions = {}): Promise<number> {
  const env = options.env ?? process.env;
  const stdout = options.stdout ?? process.stdout;
  const log = options.log ?? streamLog(process.stderr, 'tsgi-cgi');
  const location = locateScript(options.argvScript, env);
  if (!location) {
    log.log('error', 'no script: run as `tsgi-cgi SCRIPT.tsgi` (a #! line or cgi.assign), or through Apache Action with PATH_TRANSLATED set');
    stdout.write('Status: 500 Internal Server Error\r\nContent-Type: text/plain\r\n\r\ntsgi-cgi: no script to run\n');
    return 1;
  }
  const environ = cgiEnviron(env, location);
  const controller = new AbortController();
  const abort = () => controller.abort(new RequestAborted('the web server closed the CGI connection'));
  // Apache and lighttpd send SIGTERM when the client goes away or a timeout hits.
  process.once('SIGTERM', abort);
  process.once('SIGPIPE', abort);
  const sink = new StdoutSink(stdout, abort);
  const contentLength = environ.CONTENT_LENGTH;
  const method = String(environ.REQUEST_METHOD);
  // A chunked request body reaches a CGI without CONTENT_LENGTH; read it to EOF.
  const hasBody = contentLength !== undefined && contentLength !== '' ? contentLength !== '0' : !['GET', 'HEAD', 'OPTIONS', 'DELETE', 'TRACE'].includes(method);
  const loader = new ScriptLoader(location.scriptPath, { callable: options.callable ?? env.TSGI_CALLABLE_OBJECT, reload: false, log });
  const outcome: RequestOutcome = await runRequest(
    options.wrapProvider ? options.wrapProvider(loader) : loader,
    {
      environ,
      body: hasBody ? (options.stdin ?? process.stdin) : null,
      urlScheme: urlSchemeOf(env),
      signal: controller.signal,
    },
    sink,
    { log, multithread: false, multiprocess: true, runOnce: true },
  );
  process.off('SIGTERM', abort);
  process.off('SIGPIPE', abort);
  return outcome.state === 'complete' || outcome.state === 'error' ? 0 : 1;
}
