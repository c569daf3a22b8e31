/**
 * `tsgi/middleware`: the middleware that ship with TSGI. Each takes an application
 * (and options) and returns an application, so they nest as in seed 004:
 *
 *   application = gzip(session(debugErrors(app)));
 *   application = compose(gzip, session, debugErrors)(app);   // the same
 */
import type { Application, Middleware } from '../tsgi';

export { debugErrors } from './debug-errors';
export type { DebugErrorsOptions } from './debug-errors';
export { session, fileStore, memoryStore, SESSION_KEY } from './session';
export type { SessionData, SessionOptions, SessionStore } from './session';
export { gzip, acceptsGzip, defaultCompressible } from './gzip';
export type { GzipOptions } from './gzip';
export { validate, ValidationError } from './validate';
export type { ValidateOptions } from './validate';

/**
 * Nests middleware, the first outermost: `compose(a, b, c)(app)` is `a(b(c(app)))`,
 * so the list reads in the order a request passes through it.
 */
export function compose(...middleware: Middleware[]): Middleware {
  return (app: Application) => middleware.reduceRight((inner, wrap) => wrap(inner), app);
}
