/**
 * The `tsgi` package: the TSGI 1.0 types (`import type { Application } from 'tsgi'`),
 * the gateway core every server runs requests through, and the loader.
 */
export * from './tsgi';
export { runRequest, buildEnviron, fixedApp } from './gateway/run';
export type { AppProvider, GatewayRequest, ResponseHead, ResponseSink, RequestOutcome, OutcomeState, ServerContext } from './gateway/run';
export { SpecViolation, BodyReadError, RequestAborted, BadRequest } from './gateway/errors';
export { callApplication, isThenable } from './gateway/invoke';
export { ScriptLoader, LoadError, transpile } from './loader';
export type { LoaderOptions, LoadErrorCode } from './loader';
export type { ErrorLog, LogLevel } from './gateway/log';
