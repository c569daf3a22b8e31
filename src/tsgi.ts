/**
 * TSGI 1.0 — the TypeScript Server Gateway Interface.
 *
 * These are the types of the contract between a server (mod_tsgi, `tsgi serve`,
 * `tsgi-cgi`, `tsgi daemon`) and an application. docs/spec.md is the normative
 * text; this file is its machine-checkable half. Keep the two in step.
 *
 * An application is a function `application(environ, startResponse)` that returns
 * the response body as an Iterable or AsyncIterable of chunks, or a Promise of one.
 */

/** A body chunk: bytes, or a string that the server encodes as UTF-8. */
export type Chunk = Uint8Array | string;

/** The response body an application returns. */
export type Body = Iterable<Chunk> | AsyncIterable<Chunk>;

/** A response header: `[name, value]`. Names are RFC 9110 tokens; values are Latin-1 without control characters. */
export type Header = [name: string, value: string];

/** The legacy imperative write callable returned by `startResponse`. */
export type Write = (chunk: Chunk) => void;

/**
 * Starts the response. `status` is `"NNN Reason"`. `excInfo` is the error being
 * handled when an application changes its mind after an error: if the headers have
 * not been sent yet they are replaced, otherwise `excInfo` is re-thrown.
 */
export type StartResponse = (status: string, headers: Header[], excInfo?: unknown) => Write;

/** The request body stream, `environ['tsgi.input']`. */
export interface InputStream extends AsyncIterable<Uint8Array> {
  /**
   * Reads up to `size` bytes (all remaining bytes when `size` is omitted or negative).
   * Resolves to an empty Uint8Array at the end of the body. Rejects when the body could
   * not be read completely (client gone, body shorter than CONTENT_LENGTH): a failed
   * read is never reported as end-of-body.
   */
  read(size?: number): Promise<Uint8Array>;
}

/** The error stream, `environ['tsgi.errors']`: text written here goes to the server's error log. */
export interface ErrorStream {
  write(s: string): void;
  flush(): void;
}

/**
 * `environ['tsgi.file_wrapper']`: wraps an open file (or a path) as a body the server
 * may send with sendfile(2). Iterating it yields blocks of `blockSize` bytes.
 */
export type FileWrapper = (file: string | number, blockSize?: number) => FileBody;

/** The body a file wrapper returns. Servers recognise it by `filePath`/`fd`. */
export interface FileBody extends AsyncIterable<Uint8Array> {
  readonly filePath?: string;
  readonly fd?: number;
  close(): void;
}

/** CGI variables a server always provides. Values are strings decoded as UTF-8. */
export interface CgiVariables {
  REQUEST_METHOD: string;
  /** The mount point: `''` at the root, otherwise starts with `/` and never ends with `/`. */
  SCRIPT_NAME: string;
  /** The rest of the path, %-decoded: `''` or starting with `/`. */
  PATH_INFO: string;
  /** Without the leading `?`; `''` when absent. */
  QUERY_STRING: string;
  SERVER_NAME: string;
  SERVER_PORT: string;
  SERVER_PROTOCOL: string;
  /** The request target exactly as the client sent it, not decoded. */
  REQUEST_URI: string;
  CONTENT_TYPE?: string;
  CONTENT_LENGTH?: string;
  REMOTE_ADDR?: string;
  REMOTE_PORT?: string;
  SERVER_SOFTWARE?: string;
  HTTPS?: string;
}

/** The keys every TSGI server sets, beyond the CGI variables. */
export interface TsgiVariables {
  'tsgi.version': readonly [1, 0];
  'tsgi.url_scheme': 'http' | 'https';
  'tsgi.input': InputStream;
  'tsgi.errors': ErrorStream;
  'tsgi.multithread': boolean;
  'tsgi.multiprocess': boolean;
  'tsgi.run_once': boolean;
  /** Aborted when the client goes away or the server gives up on the request. */
  'tsgi.signal': AbortSignal;
  'tsgi.file_wrapper'?: FileWrapper;
  /** mod_tsgi only: the daemon process group, `''` when embedded. */
  'mod_tsgi.process_group'?: string;
  /** mod_tsgi only: the application group (the isolation unit). */
  'mod_tsgi.application_group'?: string;
}

/**
 * The request environment. Besides the keys above it holds `HTTP_*` request headers,
 * server-provided configuration (`SetEnv`), and extension keys, which are namespaced
 * with a dotted lower-case prefix (`tsgi.` and `tsgix.` are reserved).
 */
export type Environ = CgiVariables & TsgiVariables & { [key: string]: unknown };

/** What an application returns: a body, or a Promise of one. */
export type ApplicationResult = Body | Promise<Body>;

/** A TSGI application. A class whose constructor takes `(environ, startResponse)` and whose instances are iterable is also an application. */
export type Application = (environ: Environ, startResponse: StartResponse) => ApplicationResult;

/** A middleware: takes an application, returns an application. */
export type Middleware = (app: Application) => Application;

/** The TSGI version this package implements. */
export const TSGI_VERSION: readonly [1, 0] = Object.freeze([1, 0] as const);

/** A class-style application: `new App(environ, startResponse)` is the body (seed 004's AppClass). */
export type ApplicationClass = new (environ: Environ, startResponse: StartResponse) => Body;
