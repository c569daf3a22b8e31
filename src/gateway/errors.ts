/**
 * The errors the gateway core raises. Each says which rule was broken, so the one
 * error-log entry a failed request produces is enough to fix the app.
 */

/** The application broke a TSGI rule (bad status, bad header, bad body chunk …). */
export class SpecViolation extends Error {
  override name = 'TsgiSpecViolation';
}

/** The request body could not be read completely. Never reported as end-of-body. */
export class BodyReadError extends Error {
  override name = 'TsgiBodyReadError';
}

/** The request itself is malformed (a bad CONTENT_LENGTH, say): answered with 400, not 500. */
export class BadRequest extends Error {
  override name = 'TsgiBadRequest';
}

/** The client went away (or the server gave up) before the response was complete. */
export class RequestAborted extends Error {
  override name = 'TsgiRequestAborted';
}
