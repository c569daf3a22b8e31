/**
 * The TSGI script loader: turns a `.tsgi` file into the application callable.
 *
 * - A `.tsgi` (and any `.ts`/`.mts`/`.cts` it imports) is TypeScript with ESM or CJS
 *   syntax. It is transpiled with sucrase to CommonJS and compiled by Node's own CJS
 *   loader under its real filename, so `require`, relative imports and the app's own
 *   `node_modules` resolve exactly as for a `.js` file beside it. Why sucrase and why
 *   CommonJS: docs/loader.md.
 * - Stack traces show `.tsgi` lines: sucrase keeps line numbers, and an inline source
 *   map (with source maps enabled) fixes the columns.
 * - Transpiled output is cached on disk, keyed by path, mtime, size and content hash,
 *   so the many processes of one server (Apache children, daemon workers) compile a
 *   script once between them.
 * - The script (and the local modules it loaded) are re-checked by mtime on each
 *   resolve(); a change reloads them, as mod_wsgi's script reloading does.
 * - Errors name the file and what is wrong: missing, unreadable, syntax error with
 *   file:line:col, an exception while loading, no such export, export not callable.
 */
import { createHash, randomBytes } from 'node:crypto';
import { closeSync, fstatSync, lstatSync, mkdirSync, openSync, readFileSync, readSync, renameSync, statSync, unlinkSync, writeFileSync } from 'node:fs';
import Module from 'node:module';
import { tmpdir } from 'node:os';
import { compileFunction } from 'node:vm';
import { join, resolve as resolvePath, sep } from 'node:path';
import type { AppProvider } from './gateway/run';
import type { ErrorLog } from './gateway/log';
import type { Application } from './tsgi';

export type LoadErrorCode = 'ENOENT' | 'EACCES' | 'EISDIR' | 'EREAD' | 'SYNTAX' | 'EVALUATION' | 'NO_EXPORT' | 'NOT_CALLABLE';

export class LoadError extends Error {
  override name = 'TsgiLoadError';
  constructor(
    readonly code: LoadErrorCode,
    readonly path: string,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}

export interface LoaderOptions {
  /** The export to call (TSGICallableObject). Default `application`. */
  callable?: string;
  /** Reload when the script or a local module it loaded changes (TSGIScriptReloading). Default true. */
  reload?: boolean;
  /** Where transpiled output is cached; false disables the cache. Default: $TSGI_CACHE_DIR or <tmpdir>/tsgi-cache-<uid>. */
  cacheDir?: string | false;
  /** Where warnings go (an unusable cache directory, say). */
  log?: ErrorLog;
}

/** File extensions the loader compiles as TypeScript. */
export const TYPESCRIPT_EXTENSIONS = ['.tsgi', '.ts', '.mts', '.cts'] as const;

/** Bump when the transform options change, so old cache entries are not reused. */
const TRANSFORM_REVISION = 1;

interface NodeModuleInternals {
  _extensions: Record<string, (module: CompilableModule, filename: string) => void>;
  _resolveFilename: (request: string, parent: unknown, isMain: boolean, options?: unknown) => string;
  _cache: Record<string, unknown>;
}
interface CompilableModule {
  _compile(code: string, filename: string): unknown;
}

let hooksInstalled = false;
/** The cache for files compiled outside a load() (a lazy require at request time, say). */
let defaultCache: TranspileCache | null = null;
/** The cache of the loader whose load() is running; load() is synchronous, so one at a time. */
let activeCache: TranspileCache | null = null;

/**
 * Installs the `.tsgi`/`.ts` compile hook and lets app code resolve `tsgi` (types,
 * middleware) even when the app's own node_modules does not have it. Idempotent.
 */
export function installHooks(options: Pick<LoaderOptions, 'log'> = {}): void {
  if (!defaultCache) defaultCache = new TranspileCache(undefined, options.log);
  if (hooksInstalled) return;
  hooksInstalled = true;
  process.setSourceMapsEnabled(true);
  const M = Module as unknown as NodeModuleInternals;
  for (const ext of TYPESCRIPT_EXTENSIONS) {
    M._extensions[ext] = (module, filename) => {
      module._compile(compiledSource(filename), filename);
    };
  }
  const resolveFilename = M._resolveFilename;
  M._resolveFilename = function (request, parent, isMain, opts) {
    try {
      return resolveFilename.call(this, request, parent, isMain, opts);
    } catch (err) {
      if (request === 'tsgi' || request.startsWith('tsgi/')) {
        // This package resolves its own name through its "exports" map.
        return require.resolve(request);
      }
      throw err;
    }
  };
}

/** Reads a TypeScript file and returns CommonJS code with an inline source map, via the cache. */
function compiledSource(filename: string): string {
  let source: string;
  let mtimeMs: number;
  let size: number;
  try {
    const fd = openSync(filename, 'r');
    try {
      const st = fstatSync(fd);
      mtimeMs = st.mtimeMs;
      size = st.size;
      const buf = Buffer.allocUnsafe(st.size);
      let off = 0;
      while (off < st.size) {
        const n = readSync(fd, buf, off, st.size - off, off);
        if (n === 0) break;
        off += n;
      }
      source = buf.toString('utf8', 0, off);
    } finally {
      closeSync(fd);
    }
  } catch (err) {
    throw fileError(filename, err);
  }
  const c = (activeCache ?? defaultCache) as TranspileCache;
  const key = c.key(filename, mtimeMs, size, source);
  const hit = c.get(key);
  if (hit !== null) return hit;
  const code = transpile(source, filename);
  c.put(key, code);
  return code;
}

/**
 * Transpiles TypeScript (ESM or CJS syntax) to CommonJS with an inline source map.
 * Line numbers are preserved. A `#!` line is kept as a comment; `import.meta` maps to
 * the CommonJS equivalents (url, filename, dirname).
 */
export function transpile(source: string, filename: string): string {
  let text = source.startsWith('#!') ? '//' + source.slice(2) : source;
  const usesImportMeta = /\bimport\.meta\b/.test(text);
  if (usesImportMeta) text = text.replace(/\bimport\.meta\b/g, '__tsgi_import_meta');
  let result;
  try {
    // Loaded on first use: a process that only hits the cache never pays for sucrase.
    const { transform } = require('sucrase') as typeof import('sucrase');
    result = transform(text, {
      transforms: filename.endsWith('x') ? ['typescript', 'imports', 'jsx'] : ['typescript', 'imports'],
      filePath: filename,
      sourceMapOptions: { compiledFilename: filename },
      production: true,
      preserveDynamicImport: true,
      disableESTransforms: true,
    });
  } catch (err) {
    const loc = (err as { loc?: { line: number; column: number } }).loc;
    const detail = (err as Error).message.replace(/^Error transforming [^:]*: /, '').replace(/ \(\d+:\d+\)$/, '');
    if (loc) {
      // sucrase's column is already 1-based; after a failed arrow-function parse it points
      // at the start of the construct it gave up on.
      throw new LoadError('SYNTAX', filename, `${filename}:${loc.line}:${loc.column}: syntax error: ${detail}`, { cause: err });
    }
    throw new LoadError('SYNTAX', filename, `${filename}: syntax error: ${detail}`, { cause: err });
  }
  let code = result.code;
  if (usesImportMeta) {
    // Same line, so line numbers stay right.
    code = `var __tsgi_import_meta = { url: require("url").pathToFileURL(__filename).href, filename: __filename, dirname: __dirname };${code}`;
  }
  const map = Buffer.from(JSON.stringify(result.sourceMap)).toString('base64');
  return `${code}\n//# sourceMappingURL=data:application/json;charset=utf-8;base64,${map}\n`;
}

/**
 * Loads one script and hands out its callable. Implements the gateway's AppProvider,
 * so a load failure becomes that request's 500 with the LoadError in the log.
 */
export class ScriptLoader implements AppProvider {
  readonly path: string;
  readonly callable: string;
  readonly reload: boolean;
  private app: Application | null = null;
  /** Files this script's load brought in (the script, local modules) and their mtimes. */
  private watched = new Map<string, number>();
  /** The last failure and the script mtime it happened at: not retried until the file changes. */
  private failure: { error: LoadError; mtimeMs: number } | null = null;
  private readonly cache: TranspileCache;

  constructor(scriptPath: string, options: LoaderOptions = {}) {
    this.path = resolvePath(scriptPath);
    this.callable = options.callable ?? 'application';
    this.reload = options.reload ?? true;
    if (!/^[A-Za-z_$][A-Za-z0-9_$]*$/.test(this.callable)) {
      throw new LoadError('NO_EXPORT', this.path, `invalid callable name ${JSON.stringify(this.callable)}: it must be an identifier`);
    }
    installHooks(options);
    this.cache = caches(options);
  }

  get label(): string {
    return this.path;
  }

  /** The application, loading or reloading it as needed. Throws LoadError. */
  resolve(): Application {
    if (this.app) {
      if (!this.reload || !this.changed()) return this.app;
      this.unload();
    }
    if (this.failure) {
      const m = mtimeOf(this.path);
      if (m === this.failure.mtimeMs) throw this.failure.error;
      this.failure = null;
    }
    return this.load();
  }

  /** Loads the script now (servers call this at start-up to fail fast). Throws LoadError. */
  load(): Application {
    this.unload();
    const M = Module as unknown as NodeModuleInternals;
    const before = new Set(Object.keys(M._cache));
    const mtimeAtLoad = mtimeOf(this.path);
    activeCache = this.cache;
    try {
      const exportsObj = this.requireScript();
      this.app = this.findCallable(exportsObj);
      return this.app;
    } catch (err) {
      const error = err instanceof LoadError ? err : new LoadError('EVALUATION', this.path, String(err), { cause: err });
      this.failure = { error, mtimeMs: mtimeAtLoad };
      throw error;
    } finally {
      activeCache = null;
      for (const id of Object.keys(M._cache)) {
        if (before.has(id) || id.includes(`${sep}node_modules${sep}`)) continue;
        this.watched.set(id, mtimeOf(id));
      }
      this.watched.set(this.path, mtimeAtLoad);
      if (!this.app) this.purge();
    }
  }

  private requireScript(): Record<string, unknown> {
    let st;
    try {
      st = statSync(this.path);
    } catch (err) {
      throw fileError(this.path, err);
    }
    if (st.isDirectory()) throw new LoadError('EISDIR', this.path, `cannot load ${this.path}: it is a directory, not a script`);
    try {
      return require(this.path) as Record<string, unknown>;
    } catch (err) {
      if (err instanceof LoadError) throw err;
      // By name, not instanceof: the error may come from another realm's SyntaxError.
      if ((err as Error)?.name === 'SyntaxError') throw syntaxError(this.path, err as SyntaxError);
      if ((err as NodeJS.ErrnoException)?.code === 'ERR_REQUIRE_ASYNC_MODULE') throw topLevelAwait(this.path, err);
      throw new LoadError('EVALUATION', this.path, `${this.path} threw while loading:\n${(err as Error)?.stack ?? String(err)}`, { cause: err });
    }
  }

  private findCallable(exportsObj: Record<string, unknown>): Application {
    const value = exportsObj?.[this.callable];
    if (value === undefined) {
      const names = Object.keys(exportsObj ?? {}).filter((n) => n !== '__esModule');
      const has = names.length ? `it exports: ${names.join(', ')}` : 'it exports nothing';
      throw new LoadError(
        'NO_EXPORT',
        this.path,
        `${this.path} has no export named "${this.callable}" (${has}); export a function called ${this.callable}, or name the callable with TSGICallableObject / --callable`,
      );
    }
    if (typeof value !== 'function') {
      throw new LoadError('NOT_CALLABLE', this.path, `${this.path}: export "${this.callable}" is ${describeValue(value)}, not a function or class`);
    }
    return value as Application;
  }

  private changed(): boolean {
    for (const [file, mtime] of this.watched) {
      if (mtimeOf(file) !== mtime) return true;
    }
    return false;
  }

  private unload(): void {
    this.app = null;
    this.purge();
  }

  /** Drops this script's modules from the require cache, so the next load runs fresh code. */
  private purge(): void {
    const M = Module as unknown as NodeModuleInternals;
    for (const file of this.watched.keys()) delete M._cache[file];
    delete M._cache[this.path];
    this.watched.clear();
  }
}

const cachesByDir = new Map<string, TranspileCache>();

/** One TranspileCache per directory, so its safety check and warning happen once. */
function caches(options: LoaderOptions): TranspileCache {
  const key = options.cacheDir === false ? '' : (options.cacheDir ?? '\0default');
  let c = cachesByDir.get(key);
  if (!c) {
    c = key === '\0default' && defaultCache ? defaultCache : new TranspileCache(options.cacheDir, options.log);
    cachesByDir.set(key, c);
  }
  return c;
}

function mtimeOf(file: string): number {
  try {
    return statSync(file).mtimeMs;
  } catch {
    return -1;
  }
}

function fileError(path: string, err: unknown): LoadError {
  const code = (err as NodeJS.ErrnoException)?.code;
  if (code === 'ENOENT' || code === 'ENOTDIR') return new LoadError('ENOENT', path, `cannot load ${path}: no such file`, { cause: err });
  if (code === 'EACCES' || code === 'EPERM') {
    return new LoadError('EACCES', path, `cannot read ${path}: permission denied (the server runs as uid ${process.getuid?.()})`, { cause: err });
  }
  if (code === 'EISDIR') return new LoadError('EISDIR', path, `cannot load ${path}: it is a directory, not a script`, { cause: err });
  return new LoadError('EREAD', path, `cannot read ${path}: ${(err as Error)?.message ?? String(err)}`, { cause: err });
}

/** A V8 SyntaxError (what sucrase let through: top-level await, say) with its file:line:col. */
function syntaxError(scriptPath: string, err: SyntaxError): LoadError {
  // V8 puts "file:line\n<source line>\n<caret>\n\nSyntaxError: …" at the top of the stack.
  const m = /^(.+):(\d+)\n(.*)\n( *)\^/.exec(err.stack ?? '');
  const where = m ? `${m[1]}:${m[2]}:${m[4].length + 1}` : scriptPath;
  const file = m ? m[1] : scriptPath;
  return new LoadError('SYNTAX', file, `${where}: syntax error: ${err.message}`, { cause: err });
}

/**
 * Node 20 sees top-level await, re-parses the file as ESM and refuses to require() it.
 * Scripts are CommonJS (so they can be reloaded); compiling the transpiled code as a
 * CommonJS body gets V8's own SyntaxError with the line and column.
 */
function topLevelAwait(scriptPath: string, err: unknown): LoadError {
  try {
    compileFunction(compiledSource(scriptPath), ['exports', 'require', 'module', '__filename', '__dirname'], { filename: scriptPath });
  } catch (compileErr) {
    if ((compileErr as Error)?.name === 'SyntaxError') return syntaxError(scriptPath, compileErr as SyntaxError);
  }
  return new LoadError('SYNTAX', scriptPath, `${scriptPath}: top-level await is not supported in a .tsgi script or a module it imports; await inside the application instead`, {
    cause: err,
  });
}

function describeValue(v: unknown): string {
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'an array';
  if (typeof v === 'object') return 'an object';
  return `a ${typeof v}`;
}

/**
 * The on-disk transpile cache. Entries are immutable (the key covers the inputs), so
 * concurrent writers are harmless: each writes a temp file and renames it into place.
 * The directory must belong to this user and not be writable by others, or it is not
 * used: cached code is executed, and a shared writable cache would be a code-injection hole.
 */
class TranspileCache {
  private readonly dir: string | null;
  private readonly prefix = `sucrase-${(require('sucrase/package.json') as { version: string }).version}-r${TRANSFORM_REVISION}`;
  private warned = false;

  constructor(
    dir: string | false | undefined,
    private readonly log?: ErrorLog,
  ) {
    if (dir === false || process.env.TSGI_CACHE_DIR === '') {
      this.dir = null;
      return;
    }
    const uid = process.getuid?.() ?? 0;
    this.dir = this.prepare(dir ?? process.env.TSGI_CACHE_DIR ?? join(tmpdir(), `tsgi-cache-${uid}`), uid);
  }

  key(filename: string, mtimeMs: number, size: number, source: string): string {
    const content = createHash('sha256').update(source).digest('hex');
    return createHash('sha256').update(`${this.prefix}\0${filename}\0${mtimeMs}\0${size}\0${content}`).digest('hex');
  }

  get(key: string): string | null {
    if (!this.dir) return null;
    try {
      return readFileSync(join(this.dir, `${key}.js`), 'utf8');
    } catch {
      return null;
    }
  }

  put(key: string, code: string): void {
    if (!this.dir) return;
    const final = join(this.dir, `${key}.js`);
    const tmp = `${final}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`;
    try {
      writeFileSync(tmp, code, { mode: 0o600 });
      renameSync(tmp, final);
    } catch (err) {
      try {
        unlinkSync(tmp);
      } catch {
        /* nothing was written */
      }
      this.warn(`transpile cache: cannot write ${final}: ${(err as Error).message}; continuing without caching`);
    }
  }

  private prepare(dir: string, uid: number): string | null {
    try {
      mkdirSync(dir, { recursive: true, mode: 0o700 });
      const st = lstatSync(dir);
      if (!st.isDirectory()) throw new Error('not a directory');
      if (st.uid !== uid) throw new Error(`owned by uid ${st.uid}, not ${uid}`);
      if (st.mode & 0o022) throw new Error(`writable by group or others (mode ${(st.mode & 0o777).toString(8)})`);
      return dir;
    } catch (err) {
      this.warn(`transpile cache disabled: ${dir}: ${(err as Error).message}`);
      return null;
    }
  }

  private warn(message: string): void {
    if (this.warned) return;
    this.warned = true;
    (this.log ?? { log: (_l: string, m: string) => process.stderr.write(`[tsgi:warn] ${m}\n`) }).log('warn', message);
  }
}
