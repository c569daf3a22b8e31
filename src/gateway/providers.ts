/**
 * The applications of one process that serves many scripts: embedded mod_tsgi (one per
 * Node environment) and the Apache daemon-mode workers, which run whatever script the
 * request names. One provider (a ScriptLoader) per (application group, script, callable,
 * reload), made on first use.
 */
import { resolve as resolvePath } from 'node:path';
import { ScriptLoader } from '../loader';
import type { Application } from '../tsgi';
import type { ErrorLog } from './log';
import type { AppProvider } from './run';

export interface ProvidersOptions {
  log: ErrorLog;
  /**
   * Called after a request's resolve() found the script changed on disk and loaded it
   * afresh (that request runs the new code). Daemon mode recycles the pool on it, so the
   * other workers stop serving the old code.
   */
  onReload?: (script: string) => void;
}

const PRELOAD_CALLABLE = 'application';
const PRELOAD_RELOAD = true;

export class Providers {
  private readonly byKey = new Map<string, AppProvider>();
  /** Loaded at start for no group yet: the first group to ask for the script takes it. */
  private readonly preloaded = new Map<string, AppProvider>();
  private readonly log: ErrorLog;
  private readonly onReload: ((script: string) => void) | undefined;

  constructor(options: ProvidersOptions) {
    this.log = options.log;
    this.onReload = options.onReload;
  }

  get(group: string, script: string, callable: string, reload: boolean): AppProvider {
    const key = `${group}\0${script}\0${callable}\0${reload ? 1 : 0}`;
    let p = this.byKey.get(key);
    if (!p) {
      const pre = callable === PRELOAD_CALLABLE && reload === PRELOAD_RELOAD ? this.preloaded.get(resolvePath(script)) : undefined;
      if (pre) this.preloaded.delete(resolvePath(script));
      p = pre ?? this.make(script, callable, reload);
      this.byKey.set(key, p);
    }
    return p;
  }

  /**
   * Loads `script` now (daemon workers at start), as the default callable with reloading
   * on (mod_tsgi's defaults), for the first application group that asks for it. Throws the
   * LoadError; the failure is kept, so that group's requests get it as their 500 without
   * loading again until the file changes.
   */
  preload(script: string): void {
    const p = this.make(script, PRELOAD_CALLABLE, PRELOAD_RELOAD);
    this.preloaded.set(resolvePath(script), p);
    p.resolve();
  }

  private make(script: string, callable: string, reload: boolean): AppProvider {
    let loader: ScriptLoader;
    try {
      loader = new ScriptLoader(script, { callable, reload, log: this.log });
    } catch (err) {
      const e = err as Error;
      return {
        label: script,
        resolve: () => {
          throw e;
        },
      };
    }
    const onReload = this.onReload;
    if (!onReload || !reload) return loader;
    // The loader swaps the application object exactly when it reloaded successfully.
    let last: Application | null = null;
    return {
      label: loader.label,
      resolve: () => {
        const app = loader.resolve();
        const reloaded = last !== null && app !== last;
        last = app;
        if (reloaded) onReload(loader.path);
        return app;
      },
    };
  }
}
