/**
 * Calling an application, shared by the gateway and every middleware: a class-style
 * application (seed 004's AppClass) is constructed with `new`, anything else is called.
 * A middleware that called a class directly would throw "Class constructor cannot be
 * invoked without 'new'", so every layer must call through here.
 */
import type { Application, ApplicationClass, Environ, StartResponse } from '../tsgi';

const isClass = new WeakMap<Function, boolean>();

export function callApplication(app: Application | ApplicationClass, environ: Environ, startResponse: StartResponse): unknown {
  let cls = isClass.get(app);
  if (cls === undefined) {
    cls = /^class[\s{]/.test(Function.prototype.toString.call(app));
    isClass.set(app, cls);
  }
  return cls ? new (app as ApplicationClass)(environ, startResponse) : (app as Application)(environ, startResponse);
}

export function isThenable(v: unknown): v is Promise<unknown> {
  return v !== null && (typeof v === 'object' || typeof v === 'function') && typeof (v as { then?: unknown }).then === 'function';
}
