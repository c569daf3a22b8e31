/**
 * CGI variables → a TSGI environ base: the rules shared by every transport that gets its
 * request as CGI variables from a web server (CGI through the process environment;
 * SCGI, uwsgi and FastCGI through the wire). docs/spec.md §4, §12.
 */
import { decodePath, mapMount, splitTarget } from '../../gateway/environ';

export interface CgiPathOptions {
  /**
   * Fill in SCRIPT_NAME / PATH_INFO from the request path when the web server sent
   * neither or only SCRIPT_NAME (nginx's scgi_params sends neither; `scgi_param
   * SCRIPT_NAME /app;` alone is enough then), and take SCRIPT_NAME off a PATH_INFO that
   * is the whole request path (nginx's uwsgi_params plus `uwsgi_param SCRIPT_NAME /app;`).
   * Off for CGI, where the web server always sends a consistent pair. Default false.
   */
  derivePath?: boolean;
  /**
   * The application's mount point (like uWSGI's --mount with manage-script-name): when
   * set, SCRIPT_NAME and PATH_INFO are recomputed from the request path whatever the web
   * server sent, SCRIPT_NAME = the mount point, PATH_INFO = the rest. A path outside the
   * mount point keeps SCRIPT_NAME '' and the whole path as PATH_INFO.
   */
  mountPoint?: string;
}

/**
 * Normalizes CGI variables in place and returns them: SCRIPT_NAME / PATH_INFO (and the
 * other required variables) defaulted, SCRIPT_NAME "/" folded into PATH_INFO, REQUEST_URI
 * made up when absent, and the variables that must not reach an application dropped.
 */
export function normalizeCgiEnviron(environ: Record<string, unknown>, options: CgiPathOptions = {}): Record<string, unknown> {
  if (options.mountPoint !== undefined || options.derivePath) derivePathVars(environ, options);
  environ.REQUEST_METHOD ??= 'GET';
  environ.SCRIPT_NAME ??= '';
  environ.PATH_INFO ??= '';
  environ.QUERY_STRING ??= '';
  environ.SERVER_NAME ??= 'localhost';
  environ.SERVER_PORT ??= '80';
  environ.SERVER_PROTOCOL ??= 'HTTP/1.0';
  if (environ.SCRIPT_NAME === '/') {
    environ.SCRIPT_NAME = '';
    environ.PATH_INFO = '/' + String(environ.PATH_INFO).replace(/^\//, '');
  }
  if (environ.REQUEST_URI === undefined) {
    const q = environ.QUERY_STRING ? `?${environ.QUERY_STRING}` : '';
    environ.REQUEST_URI = encodeURI(`${environ.SCRIPT_NAME}${environ.PATH_INFO}`) + q;
  }
  // httpoxy: a client-sent "Proxy:" header must never become an HTTP_PROXY setting.
  delete environ.HTTP_PROXY;
  // lighttpd and nginx also pass the body headers as HTTP_CONTENT_*; TSGI has them only
  // as CONTENT_TYPE / CONTENT_LENGTH (spec §4).
  delete environ.HTTP_CONTENT_LENGTH;
  delete environ.HTTP_CONTENT_TYPE;
  return environ;
}

/** The decoded request path: nginx's DOCUMENT_URI when sent, else REQUEST_URI's path %-decoded. */
function requestPath(environ: Record<string, unknown>): string | null {
  if (typeof environ.DOCUMENT_URI === 'string' && environ.DOCUMENT_URI.startsWith('/')) return environ.DOCUMENT_URI;
  if (typeof environ.REQUEST_URI === 'string') {
    const { path } = splitTarget(environ.REQUEST_URI);
    if (path.startsWith('/')) return decodePath(path) ?? path;
  }
  return null;
}

function derivePathVars(environ: Record<string, unknown>, options: CgiPathOptions): void {
  const hasScript = typeof environ.SCRIPT_NAME === 'string';
  const hasPath = typeof environ.PATH_INFO === 'string';
  if (options.mountPoint !== undefined) {
    const path = requestPath(environ) ?? `${hasScript ? environ.SCRIPT_NAME : ''}${hasPath ? environ.PATH_INFO : ''}`;
    const mapped = mapMount(path, options.mountPoint);
    environ.SCRIPT_NAME = mapped ? mapped.scriptName : '';
    environ.PATH_INFO = mapped ? mapped.pathInfo : path;
    return;
  }
  const path = requestPath(environ);
  if (path === null) return;
  const script = hasScript ? String(environ.SCRIPT_NAME).replace(/\/+$/, '') : '';
  if (hasPath) {
    // nginx's uwsgi_params sends the whole path as PATH_INFO; with `uwsgi_param
    // SCRIPT_NAME /app;` the script part is then in both. Only that exact case (PATH_INFO
    // is the whole request path, under SCRIPT_NAME) is rewritten, as uWSGI's
    // manage-script-name does; a consistent pair (lighttpd, Apache) is never touched.
    if (script !== '' && environ.PATH_INFO === path) {
      const mapped = mapMount(path, script);
      if (mapped) environ.PATH_INFO = mapped.pathInfo;
    }
    return;
  }
  const mapped = mapMount(path, script);
  if (mapped) environ.PATH_INFO = mapped.pathInfo;
}

/** 'https' when the web server says the request came over TLS (HTTPS=on|1, or REQUEST_SCHEME=https). */
export function urlSchemeOf(vars: { readonly [name: string]: unknown }): 'http' | 'https' {
  const https = typeof vars.HTTPS === 'string' ? vars.HTTPS.toLowerCase() : '';
  return https === 'on' || https === '1' || vars.REQUEST_SCHEME === 'https' ? 'https' : 'http';
}

export interface ProtocolEnvironOptions extends CgiPathOptions {
  /** Extra per-request variables (like Apache's SetEnv); the web server's variables win. */
  setEnv?: Record<string, string>;
}

/**
 * The environ base for a request whose variables came over SCGI, uwsgi or FastCGI.
 * SCRIPT_NAME / PATH_INFO are derived from the request path when the web server sent
 * no PATH_INFO (see CgiPathOptions), and an empty CONTENT_LENGTH (nginx's uwsgi_params
 * for a request without a body) is dropped.
 */
export function protocolEnviron(vars: Record<string, string>, options: ProtocolEnvironOptions = {}): Record<string, unknown> {
  const environ: Record<string, unknown> = { ...options.setEnv };
  for (const k of Object.keys(vars)) environ[k] = vars[k];
  if (environ.CONTENT_LENGTH === '') delete environ.CONTENT_LENGTH;
  if (environ.CONTENT_TYPE === '') delete environ.CONTENT_TYPE;
  return normalizeCgiEnviron(environ, { derivePath: true, mountPoint: options.mountPoint });
}
