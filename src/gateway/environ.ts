/**
 * Building CGI variables from an HTTP request, for the transports that receive raw
 * HTTP (the dev server, the daemon's HTTP listener). Transports that receive CGI
 * variables from a web server (CGI, SCGI, uwsgi, FastCGI) pass those through instead.
 *
 * The rules are mod_wsgi's (reference/mod_wsgi.md §3): SCRIPT_NAME is the mount point,
 * PATH_INFO the rest with repeated slashes merged, both %-decoded and UTF-8 decoded;
 * REQUEST_URI stays exactly as the client sent it.
 */

export interface HeaderPolicy {
  /** Pass `Authorization` as HTTP_AUTHORIZATION (TSGIPassAuthorization On). Default false. */
  passAuthorization?: boolean;
  /**
   * The values are octets decoded as Latin-1 (node:http does that); re-decode them as
   * UTF-8, as the spec wants environ values (§4).
   */
  latin1Values?: boolean;
}

/**
 * Adds HTTP_* (and CONTENT_TYPE / CONTENT_LENGTH) variables from a raw header list
 * (`[name, value, name, value, …]`, as node:http's rawHeaders). Header names with any
 * character besides letters, digits and `-` are dropped, as mod_wsgi and Apache 2.4 drop
 * them: `X_Forwarded_For` would otherwise spoof `X-Forwarded-For`. `Proxy` is dropped (httpoxy). Repeated headers are joined with
 * ", " (Cookie with "; ").
 */
const HEADER_NAME = /^[A-Za-z0-9-]+$/;

export function addHeaderVariables(env: Record<string, unknown>, rawHeaders: readonly string[], policy: HeaderPolicy = {}): void {
  for (let i = 0; i + 1 < rawHeaders.length; i += 2) {
    const name = rawHeaders[i];
    let value = rawHeaders[i + 1];
    if (policy.latin1Values && /[\x80-\xff]/.test(value)) value = Buffer.from(value, 'latin1').toString('utf8');
    if (!HEADER_NAME.test(name)) continue;
    const lower = name.toLowerCase();
    let key: string;
    if (lower === 'content-type') key = 'CONTENT_TYPE';
    else if (lower === 'content-length') key = 'CONTENT_LENGTH';
    else if (lower === 'proxy') continue;
    else if (lower === 'authorization' && !policy.passAuthorization) continue;
    else key = 'HTTP_' + lower.toUpperCase().replace(/-/g, '_');
    const prev = env[key];
    env[key] = typeof prev === 'string' ? prev + (lower === 'cookie' ? '; ' : ', ') + value : value;
  }
}

/** Splits a request target into its path and query (without the `?`). */
export function splitTarget(target: string): { path: string; query: string } {
  const q = target.indexOf('?');
  return q < 0 ? { path: target, query: '' } : { path: target.slice(0, q), query: target.slice(q + 1) };
}

const utf8 = new TextDecoder('utf-8');

/**
 * %-decodes a URL path and decodes the bytes as UTF-8 (invalid sequences become
 * U+FFFD). Returns null for a malformed escape, which the caller answers with 400.
 */
export function decodePath(path: string): string | null {
  if (!path.includes('%')) return path;
  const bytes: number[] = [];
  for (let i = 0; i < path.length; i++) {
    const c = path.charCodeAt(i);
    if (c === 0x25) {
      const h = path.slice(i + 1, i + 3);
      if (!/^[0-9A-Fa-f]{2}$/.test(h)) return null;
      bytes.push(parseInt(h, 16));
      i += 2;
    } else if (c < 0x80) {
      bytes.push(c);
    } else {
      for (const b of Buffer.from(path[i], 'utf8')) bytes.push(b);
    }
  }
  return utf8.decode(Uint8Array.from(bytes));
}

/**
 * Removes `.` and `..` segments (RFC 3986 §5.2.4), as Apache does before mapping a URL;
 * `..` never climbs above the root.
 */
export function removeDotSegments(path: string): string {
  if (!path.includes('.')) return path;
  const out: string[] = [];
  const segs = path.split('/');
  for (let i = 0; i < segs.length; i++) {
    const s = segs[i];
    const last = i === segs.length - 1;
    if (s === '.') {
      if (last) out.push('');
    } else if (s === '..') {
      if (out.length > 1) out.pop();
      if (last) out.push('');
    } else {
      out.push(s);
    }
  }
  return out.join('/');
}

/** Merges runs of `/` into one, as Apache's MergeSlashes On (the default) does. */
export function mergeSlashes(path: string): string {
  return path.replace(/\/{2,}/g, '/');
}

/**
 * Maps a decoded path onto a mount point, mod_wsgi's way. `mountPoint` is `''` or `/`
 * for the root, otherwise `/name` (a trailing slash is ignored). Returns null when the
 * path is not under the mount point: `/restful` is not under `/rest`.
 */
export function mapMount(decodedPath: string, mountPoint: string): { scriptName: string; pathInfo: string } | null {
  const path = mergeSlashes(removeDotSegments(decodedPath));
  const mount = mergeSlashes(mountPoint).replace(/\/+$/, '');
  if (mount === '') return { scriptName: '', pathInfo: path };
  if (path === mount) return { scriptName: mount, pathInfo: '' };
  if (path.startsWith(mount) && path.charCodeAt(mount.length) === 0x2f) {
    return { scriptName: mount, pathInfo: path.slice(mount.length) };
  }
  return null;
}
