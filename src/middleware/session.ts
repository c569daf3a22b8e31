/**
 * session: a cookie session, TSGI's twin of Paste's SessionMiddleware (seed 004).
 *
 * `environ['tsgix.session']` is a plain object the application reads and mutates; it is
 * stored as JSON, so keep to JSON values. The cookie holds only a random session id
 * (32 bytes from node:crypto, hex); the data stays on the server.
 *
 * The session is saved when the response body is closed. The gateway awaits a Promise
 * returned by close() before it completes the response, so the next request of the
 * same client — possibly in another process — sees the saved data. An application
 * that throws before returning a body has no body to close, and its session changes
 * are dropped.
 *
 * Stores: `'file'` (the default) keeps one JSON file per session in a private
 * directory, so a session survives across processes — the CGI transport runs one
 * process per request, the daemon runs several. `'memory'` keeps sessions in this
 * middleware instance only. Concurrent requests of one session are last-write-wins.
 * Neither store expires sessions: clear old files from the directory (by mtime) with a
 * cron job or systemd-tmpfiles.
 */
import { callApplication, isThenable } from '../gateway/invoke';
import { randomBytes } from 'node:crypto';
import { promises as fs } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Application, Body, Chunk, Environ, Header, StartResponse } from '../tsgi';

/** The environ key the session object is published under. */
export const SESSION_KEY = 'tsgix.session';

export type SessionData = Record<string, unknown>;

/** Where sessions live. Ids reaching a store have already been validated. */
export interface SessionStore {
  /** The session's JSON text, or null when there is no such session. */
  read(id: string): Promise<string | null> | string | null;
  write(id: string, json: string): Promise<void> | void;
}

export interface SessionOptions {
  /** The cookie name. Default `tsgi_sid`. */
  cookieName?: string;
  /** `'file'` (default), `'memory'`, or a store of your own. */
  store?: 'file' | 'memory' | SessionStore;
  /** The file store's directory. Default `<os.tmpdir()>/tsgi-sessions-<uid>`. */
  directory?: string;
  /** Mark the cookie `Secure`. Default: when `tsgi.url_scheme` is `https`. */
  secure?: boolean;
}

const ID_PATTERN = /^[0-9a-f]{64}$/;
const COOKIE_NAME = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;

/** Wraps `app` so that `environ['tsgix.session']` persists across requests of one client. */
export function session(app: Application, options: SessionOptions = {}): Application {
  const cookieName = options.cookieName ?? 'tsgi_sid';
  if (!COOKIE_NAME.test(cookieName)) throw new TypeError(`session: invalid cookie name ${JSON.stringify(cookieName)}`);
  const store: SessionStore =
    typeof options.store === 'object' ? options.store : options.store === 'memory' ? memoryStore() : fileStore(options.directory);
  const call = (environ: Environ, startResponse: StartResponse) => callApplication(app, environ, startResponse);

  return async function sessionApp(environ, startResponse) {
    const errors = environ['tsgi.errors'];
    let id = cookieValues(environ.HTTP_COOKIE, cookieName).find((v) => ID_PATTERN.test(v)) ?? null;
    let loaded: string | null = null;
    let data: SessionData | null = null;
    if (id !== null) {
      loaded = await store.read(id);
      if (loaded !== null) {
        data = parseSession(loaded);
        if (data === null) {
          errors.write(`session: the stored session ${id.slice(0, 8)}… is corrupt; starting a new session\n`);
          errors.flush();
        }
      }
    }
    const isNew = data === null;
    if (isNew) {
      // A fresh id even when the client offered one: accepting an unknown id would let
      // an attacker plant (fixate) a session id on a victim.
      id = randomBytes(32).toString('hex');
      loaded = null;
      data = {};
    }
    const sid = id as string;
    environ[SESSION_KEY] = data;

    let wrappedStart: StartResponse = startResponse;
    if (isNew) {
      const cookie = setCookie(cookieName, sid, environ, options.secure);
      // Every call, excInfo ones included: a replacement response needs the cookie too.
      wrappedStart = (status, headers, excInfo) => startResponse(status, [...headers, ['Set-Cookie', cookie] as Header], excInfo);
    }

    let saving: Promise<void> | null = null;
    const save = (): Promise<void> =>
      (saving ??= (async () => {
        const current = environ[SESSION_KEY];
        if (current === null || typeof current !== 'object' || Array.isArray(current)) {
          throw new TypeError(`session: environ['${SESSION_KEY}'] must stay a plain object, got ${describe(current)}`);
        }
        const json = JSON.stringify(current);
        if (json === loaded) return;
        // An empty new session is not worth a file; the client just gets another id next time.
        if (isNew && json === '{}') return;
        await store.write(sid, json);
      })());

    let body = call(environ, wrappedStart);
    if (isThenable(body)) body = await body;
    // Saved before the server sees the last byte: once a client has a whole response
    // (Content-Length reached) it may send its next request, which must see this one's
    // session. An Array body is complete now; an iterable is saved when it ends.
    if (Array.isArray(body)) await save();
    return withClose(body as Body, save);
  };
}

/** The file store: one JSON file per session id, in a directory only this user can read. */
export function fileStore(directory?: string): SessionStore {
  const dir = directory ?? join(tmpdir(), `tsgi-sessions-${process.getuid?.() ?? 'user'}`);
  let ready: Promise<void> | null = null;
  const ensureDir = (): Promise<void> => {
    if (ready === null) {
      ready = prepareDirectory(dir);
      // A failed check is retried on the next request rather than cached forever.
      ready.catch(() => {
        ready = null;
      });
    }
    return ready;
  };
  const fileOf = (id: string): string => {
    // Ids are checked again here because a store can be used on its own.
    if (!ID_PATTERN.test(id)) throw new TypeError('session: invalid session id');
    return join(dir, `${id}.json`);
  };
  return {
    async read(id) {
      const file = fileOf(id);
      await ensureDir();
      try {
        return await fs.readFile(file, 'utf8');
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
        throw err;
      }
    },
    async write(id, json) {
      const file = fileOf(id);
      await ensureDir();
      // Written aside and renamed into place, so a reader in another process sees the
      // old session or the new one, never half a file.
      const temp = join(dir, `.${id}.${process.pid}.${randomBytes(6).toString('hex')}.tmp`);
      try {
        await fs.writeFile(temp, json, { mode: 0o600, flag: 'wx' });
        await fs.rename(temp, file);
      } catch (err) {
        await fs.unlink(temp).catch(() => undefined);
        throw err;
      }
    },
  };
}

/**
 * Creates the directory (mode 0700) or checks the existing one. The default lives in a
 * shared temp directory, where another user could have created it first to read the
 * session ids (the file names): such a directory is refused.
 */
async function prepareDirectory(dir: string): Promise<void> {
  await fs.mkdir(dir, { recursive: true, mode: 0o700 });
  const st = await fs.lstat(dir);
  if (!st.isDirectory()) throw new Error(`session: ${dir} is not a directory (a symlink?); refusing to store sessions there`);
  const uid = process.getuid?.();
  if (uid !== undefined && st.uid !== uid) {
    throw new Error(`session: ${dir} belongs to uid ${st.uid}, not to this process (uid ${uid}); refusing to store sessions there`);
  }
  if ((st.mode & 0o077) !== 0) await fs.chmod(dir, 0o700);
}

/** The memory store: sessions live as long as this middleware instance, in this process only. */
export function memoryStore(): SessionStore {
  const sessions = new Map<string, string>();
  return {
    read: (id) => sessions.get(id) ?? null,
    write: (id, json) => {
      sessions.set(id, json);
    },
  };
}

/**
 * Returns a body that runs `save` when its iteration ends (before the end is reported to
 * the server) and again, as a no-op or as the only save on error paths, on close().
 */
function withClose(body: Body, save: () => Promise<void>): Body {
  if (body === null || typeof body !== 'object') return body;
  const inner = body as Body & { close?: () => unknown };
  const close = async (): Promise<void> => {
    try {
      if (typeof inner.close === 'function') await inner.close();
    } finally {
      await save();
    }
  };
  if (Array.isArray(body)) {
    // A copy, because the application may return the same array to every request;
    // still an Array, so the server still computes its Content-Length.
    return Object.assign(body.slice() as Chunk[], { close });
  }
  const wrapper: Record<PropertyKey, unknown> = { close };
  // A file body stays recognisable, so the server can still send it natively (spec §9).
  if ('filePath' in inner || 'fd' in inner) {
    const file = inner as { filePath?: unknown; fd?: unknown };
    Object.defineProperties(wrapper, {
      filePath: { get: () => file.filePath, enumerable: true },
      fd: { get: () => file.fd, enumerable: true },
    });
  }
  const isAsync = typeof (inner as Partial<AsyncIterable<Chunk>>)[Symbol.asyncIterator] === 'function';
  if (isAsync || typeof (inner as Partial<Iterable<Chunk>>)[Symbol.iterator] === 'function') {
    // Always async: the save at the end of a sync body has to be awaited too.
    wrapper[Symbol.asyncIterator] = (): AsyncIterator<Chunk> => {
      const it: Iterator<Chunk> | AsyncIterator<Chunk> = isAsync
        ? (inner as AsyncIterable<Chunk>)[Symbol.asyncIterator]()
        : (inner as Iterable<Chunk>)[Symbol.iterator]();
      return {
        async next() {
          const r = await it.next();
          if (r.done) await save();
          return r;
        },
        async return(value?: unknown) {
          if (typeof it.return === 'function') await it.return(value as Chunk);
          return { done: true, value: undefined };
        },
      };
    };
  } else {
    // Not a body: let the server report it as it is.
    return body;
  }
  return wrapper as unknown as Body;
}

/** The values of every cookie called `name` in a Cookie header, in order. */
function cookieValues(header: unknown, name: string): string[] {
  if (typeof header !== 'string') return [];
  const values: string[] = [];
  for (const part of header.split(';')) {
    const eq = part.indexOf('=');
    if (eq < 0 || part.slice(0, eq).trim() !== name) continue;
    let value = part.slice(eq + 1).trim();
    if (value.length >= 2 && value.startsWith('"') && value.endsWith('"')) value = value.slice(1, -1);
    values.push(value);
  }
  return values;
}

function setCookie(name: string, id: string, environ: Environ, secure: boolean | undefined): string {
  // SCRIPT_NAME is decoded; the cookie path is matched against the raw request path.
  const path = environ.SCRIPT_NAME ? encodeURI(environ.SCRIPT_NAME).replace(/[;,]/g, encodeURIComponent) : '/';
  const isSecure = secure ?? environ['tsgi.url_scheme'] === 'https';
  return `${name}=${id}; Path=${path}; HttpOnly; SameSite=Lax${isSecure ? '; Secure' : ''}`;
}

function parseSession(json: string): SessionData | null {
  try {
    const value: unknown = JSON.parse(json);
    return value !== null && typeof value === 'object' && !Array.isArray(value) ? (value as SessionData) : null;
  } catch {
    return null;
  }
}

function describe(v: unknown): string {
  return v === null ? 'null' : Array.isArray(v) ? 'an array' : typeof v;
}

