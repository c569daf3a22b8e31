/**
 * validate: a middleware that checks both sides of the TSGI contract (docs/spec.md
 * §11.2), TSGI's port of Python's wsgiref.validate and Ruby's Rack::Lint (peers.md C2, C3).
 *
 *     const app = validate(myApp);   // in tests; `tsgi serve --validate`, TSGI_VALIDATE=1
 *
 * Why a middleware when the gateway core already enforces the spec? The gateway is
 * forgiving where forgiveness is safe (it skips empty chunks, computes lengths, takes
 * any thrown value as excInfo) and it only sees the application through one server.
 * validate sits on the seam itself, so it also catches what the gateway cannot or need
 * not: a server that builds a bad environ, an input stream that reports end-of-body
 * early, a body that is closed twice or never, an app whose code only works because this
 * gateway is lenient. Every check names the rule and the offending value, and says which
 * side broke it, "[server]" or "[application]": the point of a validator is to tell you
 * whose bug it is.
 *
 * How violations surface: a MUST-level rule throws a ValidationError (a SpecViolation)
 * where it is broken — out of the app call (so the gateway answers 500), out of
 * startResponse()/write()/tsgi.input into the app (which normally lets it propagate),
 * or out of the body iterator (500 before the head went out, an aborted response after).
 * An app that catches and swallows one does not get away with it: the first violation
 * is remembered and re-thrown at the app's next step. Server-side cleanup mistakes
 * (close() twice, a misplaced return()) throw back at the server, which logs them.
 * SHOULD-level rules and suspicious-but-legal behaviour (an unusual method, a missing
 * Content-Type, body bytes for HEAD, a body nobody closed) are warnings: one
 * `tsgi.validate: warning: …` line to `options.warn`, else to the server's tsgi.errors.
 *
 * Transparency matters as much as strictness: a linter that changes the response hides
 * bugs instead of finding them. So chunks pass through as the same objects, one for one,
 * as they arrive (no buffering: §6.6, §11.1 rule 3); a sync body stays sync and an async
 * one async; an Array body stays an Array so the server still computes its
 * Content-Length, and a file body keeps its filePath/fd so a server can still send it
 * natively (§11.1 rule 7); close() and the iterator's return() are forwarded, so the
 * app's cleanup runs when the server asks for it and not before.
 *
 * Where the ancestors disagree with TSGI, TSGI wins: PATH_INFO is %-decoded here, so
 * Rack's "no '#' in PATH_INFO" is checked on the raw REQUEST_URI instead; header names
 * may be any RFC 9110 token (validate.py's stricter regex is a CGI-ism), keeping only its
 * "no trailing '-' or '_'" rule; Content-Type is a SHOULD (§5.2), so its absence warns;
 * tsgi.input.read(negative) and a non-Error excInfo are legal, so they only warn. Status
 * and header syntax come from the gateway's own parseStatus() and checkHeaders(), so the
 * validator and the gateway can never disagree about them.
 */
import { callApplication, isThenable } from '../gateway/invoke';
import { statSync } from 'node:fs';
import { SpecViolation } from '../gateway/errors';
import { TOKEN, checkHeaders, describe, hasHeader, parseStatus, statusForbidsBody } from '../gateway/headers';
import type { Application, ApplicationClass, Chunk, Environ, Header, InputStream, StartResponse, Write } from '../tsgi';

/** Which side of the interface broke the rule. */
export type ViolationSide = 'server' | 'application';

/**
 * A broken TSGI rule. The message starts with `[server]` or `[application]`. It is a
 * SpecViolation (`name` 'TsgiSpecViolation', docs/spec.md §11.2), so code that handles
 * the gateway's own violations handles these too.
 */
export class ValidationError extends SpecViolation {
  constructor(
    readonly side: ViolationSide,
    detail: string,
    options?: ErrorOptions,
  ) {
    super(`[${side}] ${detail}`, options);
  }
}

export interface ValidateOptions {
  /** Receives warnings (legal but suspicious behaviour). Default: environ['tsgi.errors']. */
  warn?: (msg: string) => void;
  /**
   * How long after the body ended the server may take to call close() before a warning
   * says it did not. Default 5000 ms; 0 disables the timer (the garbage-collection check
   * stays). Generous because a server may still be flushing write() data to a slow client.
   */
  closeTimeoutMs?: number;
}

const REQUIRED_KEYS = [
  'REQUEST_METHOD',
  'SCRIPT_NAME',
  'PATH_INFO',
  'QUERY_STRING',
  'SERVER_NAME',
  'SERVER_PORT',
  'SERVER_PROTOCOL',
  'REQUEST_URI',
  'tsgi.version',
  'tsgi.url_scheme',
  'tsgi.input',
  'tsgi.errors',
  'tsgi.multithread',
  'tsgi.multiprocess',
  'tsgi.run_once',
  'tsgi.signal',
] as const;

/** validate.py's list; anything else is legal but worth a second look. */
const COMMON_METHODS = new Set(['GET', 'HEAD', 'POST', 'OPTIONS', 'PATCH', 'PUT', 'DELETE', 'TRACE']);
const DIGITS = /^[0-9]+$/;
/** A host as it may appear in SERVER_NAME or Host: reg-name/IPv4, a bracketed IPv6 literal, or a bare IPv6 address. */
const HOST = /^(?:[A-Za-z0-9\-._~!$&'()*+,;=%]+|\[[0-9A-Fa-f:.]+\]|[0-9A-Fa-f.]*:[0-9A-Fa-f:.]*)$/;
const AUTHORITY = /^(?:[A-Za-z0-9\-._~!$&'()*+,;=%]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]*)?$/;
const ABSOLUTE_FORM = /^[A-Za-z][A-Za-z0-9+.-]*:\/\//;

/** §4.4: the only tsgi.* keys; servers must not invent more. */
const TSGI_KEYS = new Set([
  'tsgi.version',
  'tsgi.url_scheme',
  'tsgi.input',
  'tsgi.errors',
  'tsgi.multithread',
  'tsgi.multiprocess',
  'tsgi.run_once',
  'tsgi.signal',
  'tsgi.file_wrapper',
]);


/**
 * Wraps `app` so every request through it is checked on both sides. `app` may also be a
 * class whose instances are the body; it is constructed with `new`, as the gateway does.
 */
export function validate(app: Application | ApplicationClass, options: ValidateOptions = {}): Application {
  // Rack::Lint checks this when it is built, so a bad app fails at startup, not per request.
  if (typeof app !== 'function') {
    throw new ValidationError('application', `the application must be a function or a class, got ${describe(app)}`);
  }
  const closeTimeoutMs = options.closeTimeoutMs ?? 5000;

  const validated = function (...args: unknown[]) {
    // validate.py: the server calls the app with exactly (environ, start_response).
    if (args.length !== 2) {
      throw new ValidationError('server', `the application must be called with exactly 2 arguments (environ, startResponse), got ${args.length}`);
    }
    const [environ, startResponse] = args;
    const warn = makeWarn(options.warn, environ);
    checkEnviron(environ, warn);
    if (typeof startResponse !== 'function') {
      throw new ValidationError('server', `startResponse must be a function, got ${describe(startResponse)}`);
    }
    const m = new Monitor(environ, startResponse as StartResponse, warn, closeTimeoutMs);
    // validate.py swaps the streams too: it is the only way to see how the app uses them.
    environ['tsgi.input'] = new CheckedInput(environ['tsgi.input'], m, environ.CONTENT_LENGTH ? Number(environ.CONTENT_LENGTH) : null);
    environ['tsgi.errors'] = new CheckedErrors(environ['tsgi.errors'], m);

    const result = invoke(app, environ, m.startResponse);
    if (isThenable(result)) return Promise.resolve(result).then((body) => m.wrapBody(body, true));
    return m.wrapBody(result, false);
  } as Application;
  // Servers label log entries with the app's name; validating it should not rename it.
  Object.defineProperty(validated, 'name', { value: app.name || 'validated', configurable: true });
  return validated;
}

function invoke(app: Function, environ: Environ, sr: StartResponse): unknown {
  return callApplication(app as Application, environ, sr);
}

function makeWarn(custom: ((msg: string) => void) | undefined, environ: unknown): (msg: string) => void {
  // The server's own stream, taken now: the environ's key is about to be replaced by a
  // checked one. Only the stream is captured, not the environ, because the unclosed-body
  // finalizer holds this function and must not keep the request alive.
  const errors = typeof environ === 'object' && environ !== null ? (environ as { 'tsgi.errors'?: { write?: unknown } })['tsgi.errors'] : undefined;
  return (msg) => {
    const text = `tsgi.validate: warning: ${msg}`;
    if (custom) return custom(text);
    try {
      if (typeof errors === 'object' && errors !== null && typeof errors.write === 'function') return void errors.write(text + '\n');
    } catch {
      // fall through: a broken error stream must not hide the warning
    }
    process.stderr.write(text + '\n');
  };
}

// ---------------------------------------------------------------------------------------
// The server side: the environ.

function checkEnviron(env: unknown, warn: (msg: string) => void): asserts env is Environ {
  const bad = (msg: string): never => {
    throw new ValidationError('server', msg);
  };
  if (typeof env !== 'object' || env === null || Array.isArray(env)) bad(`environ must be a plain object, got ${describe(env)}`);
  const proto: unknown = Object.getPrototypeOf(env);
  if (proto !== Object.prototype) bad(`environ must be a plain object (prototype Object.prototype), got ${describe(env)}`);
  // Rack: env must not be frozen. Middleware stores its results in the environ.
  if (!Object.isExtensible(env)) bad('environ must be extensible (not frozen, sealed or preventExtensions()ed): middleware adds keys to it');
  const e = env as Record<string, unknown>;
  for (const k of REQUIRED_KEYS) if (!Object.hasOwn(e, k)) bad(`environ is missing the required key ${k}`);

  // PEP 3333 "native strings": every CGI-style key (no dot) holds a string.
  for (const k of Object.keys(e)) {
    if (!k.includes('.') && typeof e[k] !== 'string') bad(`environ[${JSON.stringify(k)}] must be a string (keys without a '.' are CGI variables), got ${describe(e[k])}`);
  }
  for (const k of ['HTTP_CONTENT_TYPE', 'HTTP_CONTENT_LENGTH']) {
    if (Object.hasOwn(e, k)) bad(`environ must not contain ${k}; the request's ${k.slice(5)} goes in ${k.slice(5)}`);
  }
  // httpoxy: a client's "Proxy:" header must never look like the HTTP_PROXY setting.
  if (Object.hasOwn(e, 'HTTP_PROXY')) bad('environ must not contain HTTP_PROXY (the Proxy request header is dropped: httpoxy)');
  for (const k of Object.keys(e)) {
    const dot = k.indexOf('.');
    if (dot < 0) continue;
    // Namespaces keep servers, frameworks and middleware from trampling each other's keys.
    if (!/^[a-z0-9_]+$/.test(k.slice(0, dot))) bad(`environ key ${JSON.stringify(k)}: an extension key's namespace (before the first '.') must be lower-case letters, digits and '_'`);
    if (k.startsWith('tsgi.') && !TSGI_KEYS.has(k)) bad(`environ key ${JSON.stringify(k)} is not defined by TSGI 1.0; tsgi.* is reserved for the specification`);
  }
  for (const k of Object.keys(e)) {
    if (k.startsWith('HTTP_') && /[\r\n\0]/.test(e[k] as string)) bad(`environ ${k} contains CR, LF or NUL: ${JSON.stringify(e[k])}`);
  }
  const s = e as Record<string, string>;

  const method = s.REQUEST_METHOD;
  if (!TOKEN.test(method)) bad(`REQUEST_METHOD must be an HTTP token, got ${JSON.stringify(method)}`);
  if (!COMMON_METHODS.has(method)) warn(`unusual REQUEST_METHOD ${JSON.stringify(method)}`);

  const scriptName = s.SCRIPT_NAME;
  const pathInfo = s.PATH_INFO;
  if (scriptName !== '' && !scriptName.startsWith('/')) bad(`SCRIPT_NAME must be '' or start with '/', got ${JSON.stringify(scriptName)}`);
  if (scriptName === '/') bad(`SCRIPT_NAME must not be '/': the root mount point is '' (and PATH_INFO then starts with '/')`);
  if (scriptName.endsWith('/')) bad(`SCRIPT_NAME must not end with '/', got ${JSON.stringify(scriptName)}: the slash belongs to PATH_INFO`);
  if (pathInfo !== '' && !pathInfo.startsWith('/')) bad(`PATH_INFO must be '' or start with '/', got ${JSON.stringify(pathInfo)}`);
  // Rack: PATH_INFO should be '/' when SCRIPT_NAME is empty; with both empty the app cannot build its own URL.
  if (scriptName === '' && pathInfo === '') warn(`SCRIPT_NAME and PATH_INFO are both empty; PATH_INFO should be '/' at the root`);

  checkRequestUri(s.REQUEST_URI, method, bad);
  if (s.QUERY_STRING.includes('#')) bad(`QUERY_STRING must not contain a '#' fragment (the client never sends one): ${JSON.stringify(s.QUERY_STRING)}`);

  if (!HOST.test(s.SERVER_NAME)) bad(`SERVER_NAME must be a host name or address, got ${JSON.stringify(s.SERVER_NAME)}`);
  if (!DIGITS.test(s.SERVER_PORT)) bad(`SERVER_PORT must be digits, got ${JSON.stringify(s.SERVER_PORT)}`);
  if (!/^HTTP\/\d(\.\d)?$/.test(s.SERVER_PROTOCOL)) bad(`SERVER_PROTOCOL must match HTTP/<digit>[.<digit>], got ${JSON.stringify(s.SERVER_PROTOCOL)}`);
  if (Object.hasOwn(e, 'CONTENT_LENGTH') && s.CONTENT_LENGTH !== '' && !/^[0-9]{1,15}$/.test(s.CONTENT_LENGTH)) {
    bad(`CONTENT_LENGTH must be absent, '' or 1-15 digits, got ${JSON.stringify(s.CONTENT_LENGTH)}`);
  }
  // RFC 9112 §3.2: a server answers an invalid Host with 400; it must not reach the app.
  if (Object.hasOwn(e, 'HTTP_HOST') && !AUTHORITY.test(s.HTTP_HOST)) bad(`HTTP_HOST must be host[:port], got ${JSON.stringify(s.HTTP_HOST)}`);

  const version = e['tsgi.version'];
  if (!Array.isArray(version) || version.length !== 2 || version[0] !== 1 || version[1] !== 0) {
    bad(`tsgi.version must be [1, 0], got ${Array.isArray(version) ? JSON.stringify(version) : describe(version)}`);
  }
  // One array serves every request; an app that could change it would change it for all.
  if (!Object.isFrozen(version)) bad('tsgi.version must be a frozen array');
  const scheme = e['tsgi.url_scheme'];
  if (scheme !== 'http' && scheme !== 'https') bad(`tsgi.url_scheme must be 'http' or 'https', got ${describe(scheme)}`);
  const input = e['tsgi.input'] as Record<PropertyKey, unknown> | null;
  if (typeof input !== 'object' || input === null) bad(`tsgi.input must be an InputStream object, got ${describe(input)}`);
  else {
    if (typeof input.read !== 'function') bad('tsgi.input must have a read() method');
    if (typeof input[Symbol.asyncIterator] !== 'function') bad('tsgi.input must be async iterable (have [Symbol.asyncIterator]())');
  }
  const errors = e['tsgi.errors'] as Record<string, unknown> | null;
  if (typeof errors !== 'object' || errors === null) bad(`tsgi.errors must be an ErrorStream object, got ${describe(errors)}`);
  else {
    if (typeof errors.write !== 'function') bad('tsgi.errors must have a write() method');
    if (typeof errors.flush !== 'function') bad('tsgi.errors must have a flush() method');
  }
  for (const k of ['tsgi.multithread', 'tsgi.multiprocess', 'tsgi.run_once']) {
    if (typeof e[k] !== 'boolean') bad(`${k} must be a boolean, got ${describe(e[k])}`);
  }
  if (!(e['tsgi.signal'] instanceof AbortSignal)) bad(`tsgi.signal must be an AbortSignal, got ${describe(e['tsgi.signal'])}`);
  if (Object.hasOwn(e, 'tsgi.file_wrapper') && typeof e['tsgi.file_wrapper'] !== 'function') {
    bad(`tsgi.file_wrapper, when present, must be a function, got ${describe(e['tsgi.file_wrapper'])}`);
  }
  for (const k of ['mod_tsgi.process_group', 'mod_tsgi.application_group']) {
    if (Object.hasOwn(e, k) && typeof e[k] !== 'string') bad(`${k}, when present, must be a string, got ${describe(e[k])}`);
  }
}

/**
 * Rack::Lint's request-target rules, applied to REQUEST_URI: it is the raw target, where
 * Rack's PATH_INFO is; TSGI's PATH_INFO is decoded and may legitimately hold a '#' (%23).
 */
function checkRequestUri(uri: string, method: string, bad: (msg: string) => never): void {
  if (uri === '') bad('REQUEST_URI must not be empty');
  if (/[\x00-\x20\x7f]/.test(uri)) bad(`REQUEST_URI must not contain spaces or control characters: ${JSON.stringify(uri)}`);
  if (uri.includes('#')) bad(`REQUEST_URI must not contain a '#' fragment (the client never sends one): ${JSON.stringify(uri)}`);
  if (uri === '*') {
    if (method !== 'OPTIONS') bad(`REQUEST_URI '*' (asterisk-form) is only valid for OPTIONS, not ${method}`);
    return;
  }
  if (uri.startsWith('/')) return; // origin-form
  if (ABSOLUTE_FORM.test(uri)) {
    if (method === 'CONNECT') bad(`a CONNECT request's REQUEST_URI must be authority-form (host:port), got ${JSON.stringify(uri)}`);
    return;
  }
  if (method === 'CONNECT' && AUTHORITY.test(uri)) return;
  if (AUTHORITY.test(uri) && /:[0-9]+$/.test(uri)) bad(`REQUEST_URI ${JSON.stringify(uri)} (authority-form) is only valid for CONNECT, not ${method}`);
  bad(`REQUEST_URI must start with '/' (origin-form), got ${JSON.stringify(uri)}`);
}

// ---------------------------------------------------------------------------------------
// The application side: startResponse, write, the body, and the per-request bookkeeping.

type AnyBody = { close?: unknown; filePath?: unknown; fd?: unknown } & Record<PropertyKey, unknown>;

/**
 * Close bookkeeping, apart from the Monitor: the finalizer holds it strongly, and the
 * Monitor reaches the server's startResponse and through it the body wrapper, which
 * would then never be collected.
 */
interface CloseWatch {
  closed: boolean;
  reported: boolean;
  readonly warn: (msg: string) => void;
  readonly where: string;
}

/** validate.py's "iterator garbage collected without being closed", for bodies nobody closed. */
const unclosed = new FinalizationRegistry<CloseWatch>((w) => {
  if (w.closed || w.reported) return;
  w.reported = true;
  w.warn(`the response body was garbage-collected without close() being called (${w.where}); the server must close every body`);
});

/** One per request: the rules depend on history (was startResponse called, how many bytes so far, closed yet?). */
class Monitor {
  private violation: ValidationError | null = null;
  private started = false;
  private code = 0;
  private declared: number | null = null;
  private innerWrite: Write | null = null;
  /** The error startResponse(…, excInfo) re-threw after the headers went out; the app must let it propagate. */
  private rethrown: unknown = undefined;
  private writeBytes = 0;
  private bodyBytes = 0;
  private warnedHead = false;
  private iterations = 0;
  private ended = false;
  private readonly watch: CloseWatch;
  private timer: NodeJS.Timeout | null = null;
  private readonly head: boolean;

  constructor(
    environ: Environ,
    private readonly innerStart: StartResponse,
    readonly warn: (msg: string) => void,
    private readonly closeTimeoutMs: number,
  ) {
    this.head = environ.REQUEST_METHOD === 'HEAD';
    this.watch = { closed: false, reported: false, warn, where: `${environ.REQUEST_METHOD} ${environ.REQUEST_URI}` };
  }

  /** The server has closed the body: the response is over. */
  get closed(): boolean {
    return this.watch.closed;
  }

  /** Creates the error and remembers the first one, so an app that swallows it is still caught. */
  fail(side: ViolationSide, detail: string, cause?: unknown): ValidationError {
    const err = new ValidationError(side, detail, cause === undefined ? undefined : { cause });
    this.violation ??= err;
    return err;
  }

  throwPending(): void {
    if (this.violation) throw this.violation;
  }

  private get bytes(): number {
    return this.writeBytes + this.bodyBytes;
  }

  /** The server sends the headers with the first non-empty chunk; after that excInfo cannot replace them. */
  private get headersSent(): boolean {
    return this.bytes > 0;
  }

  readonly startResponse = (...args: unknown[]): Write => {
    this.throwPending();
    if (args.length < 2 || args.length > 3) {
      throw this.fail('application', `startResponse() takes 2 or 3 arguments (status, headers, excInfo?), got ${args.length}`);
    }
    const [status, headers, excInfo] = args;
    if (this.closed || this.ended) throw this.fail('application', 'startResponse() called after the response body ended or was closed');
    const hasExc = excInfo !== undefined && excInfo !== null;
    // JavaScript can throw anything, so a non-Error may be exactly what was caught (§5.4).
    if (hasExc && !(excInfo instanceof Error)) this.warn(`startResponse() excInfo should be the error being handled, got ${describe(excInfo)}`);
    if (!hasExc && this.started) {
      throw this.fail('application', 'startResponse() called a second time without excInfo (only an error handler may replace the status, passing the error as excInfo)');
    }
    let code: number;
    let reason: string;
    try {
      ({ code, reason } = parseStatus(status));
    } catch (e) {
      throw this.fail('application', `startResponse() status: ${messageOf(e)}`, e);
    }
    if (reason === '') this.warn(`status ${JSON.stringify(status)} has no reason phrase; use e.g. "${code} ${code === 200 ? 'OK' : 'Reason'}"`);
    let declared: number | null;
    try {
      declared = checkHeaders(headers);
    } catch (e) {
      throw this.fail('application', `startResponse() headers: ${messageOf(e)}`, e);
    }
    const list = headers as Header[];
    for (const [name] of list) {
      // validate.py: a trailing '-' or '_' is a typo, and in CGI both map to the same HTTP_ name.
      if (/[-_]$/.test(name)) throw this.fail('application', `header name ${JSON.stringify(name)} must not end in '-' or '_'`);
    }
    const hasType = hasHeader(list, 'content-type');
    const hasLength = hasHeader(list, 'content-length');
    if (code === 204 || code === 304) {
      if (hasType) throw this.fail('application', `a ${code} response must not have a Content-Type header (it has no body)`);
      // RFC 9110 §8.6: MUST NOT for 204; a 304 may repeat the 200's length, which we cannot verify.
      if (hasLength && code === 204) throw this.fail('application', 'a 204 response must not have a Content-Length header (it has no body)');
      if (hasLength) this.warn(`a 304 response with Content-Length: it must equal the length of the 200 response, and is usually left out`);
    } else if (!hasType) {
      // §5.2 says SHOULD (validate.py insists): clients guess, and guess wrong, without one.
      this.warn(`no Content-Type header (status ${code}); every response except 204 and 304 should have one`);
    }

    if (hasExc && this.headersSent) {
      // PEP 3333: the server must re-throw excInfo, and the app must let it propagate.
      try {
        this.innerStart(status as string, list, excInfo);
      } catch (e) {
        if (e === excInfo) this.rethrown = e;
        throw e;
      }
      throw this.fail('server', 'startResponse(status, headers, excInfo) after the headers were sent must re-throw excInfo, but it returned');
    }
    const write: unknown = args.length === 3 ? this.innerStart(status as string, list, excInfo) : this.innerStart(status as string, list);
    if (typeof write !== 'function') throw this.fail('server', `startResponse() must return a write function, got ${describe(write)}`);
    this.started = true;
    this.code = code;
    this.declared = declared;
    this.innerWrite = write as Write;
    return this.write;
  };

  private readonly write: Write = (...args: unknown[]): void => {
    this.throwPending();
    if (args.length !== 1) throw this.fail('application', `write() takes exactly 1 argument, got ${args.length}`);
    const chunk = args[0];
    if (!isChunk(chunk)) throw this.fail('application', `write() argument must be a Uint8Array or a string, got ${describe(chunk)}`);
    if (this.closed || this.ended) throw this.fail('application', 'write() called after the response body ended or was closed');
    this.writeBytes += this.account(chunk, 'write()');
    (this.innerWrite as Write)(chunk);
  };

  /** Rules for bytes about to be sent; returns their count. Checked before the server sees them. */
  private account(chunk: Chunk, what: string): number {
    const n = typeof chunk === 'string' ? Buffer.byteLength(chunk, 'utf8') : chunk.byteLength;
    if (n === 0) return 0;
    if (!this.started) throw this.fail('application', `the application produced a ${what} (${describe(chunk)}) before calling startResponse()`);
    this.checkNotSwallowed();
    if (statusForbidsBody(this.code)) throw this.fail('application', `status ${this.code} must not have a body, but the application produced ${n} bytes`);
    if (this.declared !== null && this.bytes + n > this.declared) {
      throw this.fail('application', `declared Content-Length: ${this.declared} but the application produced more (${this.bytes + n} bytes so far)`);
    }
    if (this.head && !this.warnedHead) {
      this.warnedHead = true;
      this.warn(`the application produced body bytes for a HEAD request (${describe(chunk)}); the server discards them, so it should not make them`);
    }
    return n;
  }

  private checkNotSwallowed(): void {
    if (this.rethrown !== undefined) {
      throw this.fail('application', `the application caught the error startResponse(…, excInfo) re-threw and carried on; it must let it propagate (${messageOf(this.rethrown)})`);
    }
  }

  /** Called for each item the body yields. */
  chunk(value: unknown): Chunk {
    this.throwPending();
    if (!isChunk(value)) {
      const hint = isThenable(value) ? ' (a Promise: a synchronous body cannot wait; make the body async to produce chunks asynchronously)' : '';
      throw this.fail('application', `a body chunk must be a Uint8Array or a string, got ${describe(value)}${hint}`);
    }
    this.bodyBytes += this.account(value, 'body chunk');
    return value;
  }

  /** A body iterator is being obtained: once per body, never after close (Rack::Lint). */
  beginIteration(repeatable: boolean): void {
    if (this.closed) throw this.fail('server', 'the response body was iterated after close()');
    this.iterations++;
    if (this.iterations > 1) {
      if (!repeatable) throw this.fail('server', 'the response body was iterated a second time');
      this.bodyBytes = 0; // an Array is re-iterable; each pass is the whole body again
    }
  }

  beforeNext(): void {
    if (this.closed) throw this.fail('server', 'the response body was iterated after close()');
    this.throwPending();
  }

  /** The body ran out: the last moment a violation can still fail the request. */
  finish(): void {
    this.throwPending();
    if (!this.started) throw this.fail('application', 'the response body ended but the application never called startResponse()');
    this.checkNotSwallowed();
    // §6.7: bodyless responses may declare the length a GET (or the 200) would have had.
    if (this.declared !== null && !this.head && !statusForbidsBody(this.code) && this.bytes !== this.declared) {
      throw this.fail('application', `declared Content-Length: ${this.declared} but the application produced ${this.bytes} bytes`);
    }
    this.ended = true;
    this.armCloseTimer();
  }

  /** Iteration stopped without finishing (an error, or the server cut it short). */
  stopped(): void {
    this.ended = true;
    this.armCloseTimer();
  }

  private armCloseTimer(): void {
    const ms = this.closeTimeoutMs;
    if (this.closed || this.timer || !(ms > 0 && Number.isFinite(ms))) return;
    const w = this.watch;
    this.timer = setTimeout(() => {
      this.timer = null;
      if (w.closed || w.reported) return;
      w.reported = true;
      w.warn(`the server had not called close() on the response body ${ms} ms after iteration ended (${w.where}); it must, on every path`);
    }, ms);
    this.timer.unref();
  }

  close(inner: AnyBody): unknown {
    if (this.watch.closed) throw this.fail('server', 'close() called a second time on the response body; the server must call it exactly once');
    this.watch.closed = true;
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    unclosed.unregister(this.watch);
    // Returned as is: the server awaits a Promise from close() on the normal path.
    return typeof inner.close === 'function' ? (inner.close as () => unknown).call(inner) : undefined;
  }

  /** Checks what the application returned (or its Promise resolved to) and wraps it. */
  wrapBody(result: unknown, fromPromise: boolean): unknown {
    const what = fromPromise ? "the application's Promise resolved to" : 'the application returned';
    const reject = (detail: string): never => {
      closeQuietly(result); // the server never sees it, so it cannot close it
      throw this.fail('application', detail);
    };
    if (this.violation) {
      closeQuietly(result);
      throw this.violation;
    }
    if (result === null || result === undefined) reject(`${what} ${result}; it must be an iterable body such as [] or ['text']`);
    if (typeof result === 'string' || result instanceof Uint8Array) reject(`${what} a ${describe(result)} itself; return it inside an array: [body]`);
    if (typeof result !== 'object' && typeof result !== 'function') reject(`${what} a non-iterable ${describe(result)}`);
    const body = result as AnyBody;
    if (Array.isArray(body)) return this.track(wrapArray(body, this));
    const isAsync = typeof body[Symbol.asyncIterator] === 'function';
    if (!isAsync && typeof body[Symbol.iterator] !== 'function') {
      reject(`${what} a non-iterable ${describe(result)}; it must be an Iterable or AsyncIterable of chunks`);
    }
    // Rack::Lint's to_path rule: a server may send the named file instead of iterating.
    if (body.filePath !== undefined) {
      let isFile = false;
      try {
        isFile = typeof body.filePath === 'string' && statSync(body.filePath).isFile();
      } catch {
        // not a file
      }
      if (!isFile) reject(`the body's filePath must name an existing regular file, got ${describe(body.filePath)}`);
    }
    if (body.fd !== undefined && !(Number.isInteger(body.fd) && (body.fd as number) >= 0)) {
      reject(`the body's fd must be a non-negative integer file descriptor, got ${describe(body.fd)}`);
    }
    return this.track(isAsync ? new AsyncBodyWrapper(body, this) : new SyncBodyWrapper(body, this));
  }

  private track<T extends object>(wrapper: T): T {
    unclosed.register(wrapper, this.watch, this.watch);
    return wrapper;
  }
}

/**
 * An Array body stays an Array (Array.isArray is how the server knows it may compute the
 * Content-Length), with close() and a checking iterator as own properties. It iterates the
 * original array, so validate(validate(app)) runs both validators' checks.
 */
function wrapArray(inner: AnyBody & unknown[], m: Monitor): unknown[] {
  const out = inner.slice();
  Object.defineProperty(out, Symbol.iterator, {
    configurable: true,
    writable: true,
    value: function* (): Generator<Chunk, void, undefined> {
      m.beginIteration(true);
      let done = false;
      try {
        for (const item of inner as Iterable<unknown>) {
          m.beforeNext();
          yield m.chunk(item);
        }
        done = true;
        m.finish();
      } finally {
        if (!done) m.stopped();
      }
    },
  });
  Object.defineProperty(out, 'close', { configurable: true, writable: true, value: () => m.close(inner) });
  return out;
}

function isIteratorResult(r: unknown): r is IteratorResult<unknown> {
  return typeof r === 'object' && r !== null;
}

/** Getters, not copies: a file body opens its descriptor lazily. */
abstract class BodyWrapper {
  constructor(
    protected readonly inner: AnyBody,
    protected readonly m: Monitor,
  ) {}

  get filePath(): unknown {
    return this.inner.filePath;
  }

  get fd(): unknown {
    return this.inner.fd;
  }

  close(): unknown {
    return this.m.close(this.inner);
  }

  protected getIterator<I>(key: symbol): I {
    this.m.beginIteration(false);
    const it = (this.inner[key] as () => unknown).call(this.inner) as { next?: unknown } | null;
    if (typeof it !== 'object' || it === null || typeof it.next !== 'function') {
      throw this.m.fail('application', `the body's [${String(key)}]() must return an iterator (an object with next()), got ${describe(it)}`);
    }
    return it as I;
  }
}

/**
 * What the server has done with one body iterator, for §6.9: return() at most once,
 * never after done, and only after at least one next() (so a generator has started and
 * its finally blocks will run).
 */
class IteratorSteps {
  private nextCalls = 0;
  private innerFinished = false;
  private reportedDone = false;
  private returned = false;

  constructor(private readonly m: Monitor) {}

  /** Before each next(): the gateway-facing checks that do not depend on the result. */
  next(): void {
    this.nextCalls++;
    this.m.beforeNext();
  }

  /** The app's iterator said done; returns what the server gets, if the end-of-body rules pass. */
  done(): IteratorReturnResult<undefined> {
    this.innerFinished = true;
    this.m.finish();
    this.reportedDone = true;
    return { done: true, value: undefined };
  }

  /** Called on return(); says whether to forward it to the app's iterator. */
  beginReturn(): boolean {
    if (this.returned) throw this.m.fail('server', 'return() called a second time on the body iterator; the server calls it at most once');
    this.returned = true;
    if (this.reportedDone) throw this.m.fail('server', 'return() called on the body iterator after it reported done');
    this.m.stopped();
    // After the app's next() threw it is still forwarded: iterators must tolerate that (§6.9).
    return !this.innerFinished;
  }

  endReturn(): IteratorReturnResult<undefined> {
    if (this.nextCalls === 0) {
      throw this.m.fail('server', "return() called on the body iterator before any next(): a generator body's finally blocks never run");
    }
    return { done: true, value: undefined };
  }
}

class SyncBodyWrapper extends BodyWrapper implements Iterable<Chunk> {
  [Symbol.iterator](): Iterator<Chunk> {
    const m = this.m;
    const it = this.getIterator<Iterator<unknown>>(Symbol.iterator);
    const steps = new IteratorSteps(m);
    return {
      next: (): IteratorResult<Chunk> => {
        steps.next();
        let r: unknown;
        try {
          r = it.next();
        } catch (e) {
          m.stopped();
          throw e;
        }
        if (!isIteratorResult(r)) throw m.fail('application', `the body iterator's next() must return {done, value}, got ${describe(r)}`);
        if (r.done) return steps.done();
        return { done: false, value: m.chunk(r.value) };
      },
      return: (): IteratorResult<Chunk> => {
        if (steps.beginReturn() && typeof it.return === 'function') it.return();
        return steps.endReturn();
      },
    };
  }
}

class AsyncBodyWrapper extends BodyWrapper implements AsyncIterable<Chunk> {
  [Symbol.asyncIterator](): AsyncIterator<Chunk> {
    const m = this.m;
    const it = this.getIterator<AsyncIterator<unknown>>(Symbol.asyncIterator);
    const steps = new IteratorSteps(m);
    return {
      next: async (): Promise<IteratorResult<Chunk>> => {
        steps.next();
        let r: unknown;
        try {
          r = await it.next();
        } catch (e) {
          m.stopped();
          throw e;
        }
        if (!isIteratorResult(r)) throw m.fail('application', `the body iterator's next() must resolve to {done, value}, got ${describe(r)}`);
        if (r.done) return steps.done();
        return { done: false, value: m.chunk(r.value) };
      },
      // Not an async generator: its return() would queue behind a pending next(), and the
      // server calls return() precisely when a next() may never settle (client gone).
      return: async (): Promise<IteratorResult<Chunk>> => {
        if (steps.beginReturn() && typeof it.return === 'function') await it.return();
        return steps.endReturn();
      },
    };
  }
}

// ---------------------------------------------------------------------------------------
// tsgi.input and tsgi.errors, as the application sees them.

/**
 * Checks the app's calls (argument contract, no concurrent reads, no close()) and the
 * server's answers (Uint8Array, no more than asked for, end-of-body exactly at
 * CONTENT_LENGTH: a short body must make reads reject, never look like the end).
 */
class CheckedInput {
  private busy = false;
  private delivered = 0;
  private eof = false;

  constructor(
    private readonly inner: InputStream,
    private readonly m: Monitor,
    private readonly contentLength: number | null,
  ) {}

  async read(...args: unknown[]): Promise<Uint8Array> {
    const m = this.m;
    if (args.length > 1) throw m.fail('application', `tsgi.input.read() takes at most 1 argument (size), got ${args.length}`);
    const size = args[0];
    if (size !== undefined) {
      if (typeof size !== 'number' || !Number.isInteger(size)) {
        throw m.fail('application', `tsgi.input.read(size): size must be an integer or left out, got ${describe(size)}`);
      }
      // Both are legal (§7.1), and both are usually a mistake.
      if (size < 0) m.warn(`tsgi.input.read(${size}): a negative size reads the whole body; say read() instead`);
      if (size === 0) m.warn('tsgi.input.read(0) always resolves to an empty array, which elsewhere means end-of-body');
    }
    this.enter();
    let out: unknown;
    try {
      out = await (args.length === 0 ? this.inner.read() : this.inner.read(size as number));
    } finally {
      this.busy = false;
    }
    if (!(out instanceof Uint8Array)) throw m.fail('server', `tsgi.input.read() must resolve to a Uint8Array, got ${describe(out)}`);
    const all = size === undefined || (size as number) < 0;
    if (!all && out.byteLength > (size as number)) {
      throw m.fail('server', `tsgi.input.read(${size}) returned ${out.byteLength} bytes, more than asked for`);
    }
    this.count(out);
    if (all || ((size as number) > 0 && out.byteLength === 0)) this.atEnd();
    return out;
  }

  [Symbol.asyncIterator](): AsyncIterator<Uint8Array> {
    const it = this.inner[Symbol.asyncIterator]();
    return {
      next: async () => {
        this.enter();
        let r: IteratorResult<Uint8Array>;
        try {
          r = await it.next();
        } finally {
          this.busy = false;
        }
        if (!isIteratorResult(r)) throw this.m.fail('server', `tsgi.input's iterator must resolve to {done, value}, got ${describe(r)}`);
        if (r.done) {
          this.atEnd();
          return r;
        }
        if (!(r.value instanceof Uint8Array)) throw this.m.fail('server', `iterating tsgi.input must yield Uint8Array chunks, got ${describe(r.value)}`);
        // §7.2: an empty chunk would read as nothing, so iteration never yields one.
        if (r.value.byteLength === 0) throw this.m.fail('server', 'iterating tsgi.input yielded an empty chunk');
        this.count(r.value);
        return r;
      },
      return: async (value?: unknown) =>
        typeof it.return === 'function' ? it.return(value) : ({ done: true, value: undefined } as IteratorResult<Uint8Array>),
    };
  }

  /** PEP 3333 / validate.py: the server owns the request body stream. */
  close(): never {
    throw this.m.fail('application', 'tsgi.input.close() must not be called: the server owns the request body stream');
  }

  private enter(): void {
    // §3.3: the request is over; whatever the app does with the body now, nobody receives its answer.
    if (this.m.closed) throw this.m.fail('application', 'tsgi.input used after the response completed');
    if (this.busy) throw this.m.fail('application', 'tsgi.input: concurrent reads; await each read() or next() before starting another');
    this.busy = true;
  }

  private count(chunk: Uint8Array): void {
    if (this.eof && chunk.byteLength > 0) throw this.m.fail('server', `tsgi.input delivered ${chunk.byteLength} bytes after reporting end-of-body`);
    this.delivered += chunk.byteLength;
    if (this.contentLength !== null && this.delivered > this.contentLength) {
      throw this.m.fail('server', `tsgi.input delivered ${this.delivered} bytes, more than CONTENT_LENGTH (${this.contentLength})`);
    }
  }

  private atEnd(): void {
    this.eof = true;
    if (this.contentLength !== null && this.delivered !== this.contentLength) {
      throw this.m.fail(
        'server',
        `tsgi.input reported end-of-body after ${this.delivered} bytes, but CONTENT_LENGTH is ${this.contentLength}; a short body must make reads reject`,
      );
    }
  }
}

class CheckedErrors {
  constructor(
    private readonly inner: { write(s: string): void; flush(): void },
    private readonly m: Monitor,
  ) {}

  write(...args: unknown[]): void {
    if (args.length !== 1 || typeof args[0] !== 'string') {
      throw this.m.fail('application', `tsgi.errors.write() takes exactly one string, got (${args.map(describe).join(', ')})`);
    }
    this.inner.write(args[0]);
  }

  flush(...args: unknown[]): void {
    if (args.length !== 0) throw this.m.fail('application', `tsgi.errors.flush() takes no arguments, got ${args.length}`);
    this.inner.flush();
  }

  close(): never {
    throw this.m.fail('application', 'tsgi.errors.close() must not be called: the server owns the error stream');
  }
}

// ---------------------------------------------------------------------------------------

function isChunk(v: unknown): v is Chunk {
  return typeof v === 'string' || v instanceof Uint8Array;
}


function messageOf(e: unknown): string {
  return e instanceof Error ? e.message : describe(e);
}

function closeQuietly(body: unknown): void {
  try {
    const c = (body as { close?: unknown } | null | undefined)?.close;
    if (typeof c === 'function') {
      const r: unknown = c.call(body);
      if (isThenable(r)) r.then(undefined, () => undefined);
    }
  } catch {
    // the violation being reported matters more than a failing close()
  }
}
