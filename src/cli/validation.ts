/**
 * Runs an app under the validate middleware (docs/spec.md §11): `tsgi serve --validate`,
 * or TSGI_VALIDATE=1 in the environment of any TSGI server. The test suite runs every
 * example this way, so a server or an example that breaks a spec rule fails loudly.
 */
import type { AppProvider } from '../gateway/run';
import { validate } from '../middleware/validate';
import type { Application } from '../tsgi';

export function validateEnabled(env: NodeJS.ProcessEnv): boolean {
  return env.TSGI_VALIDATE === '1' || env.TSGI_VALIDATE === 'true';
}

export function withValidation(provider: AppProvider): AppProvider {
  const wrapped = new WeakMap<Application, Application>();
  return {
    label: provider.label,
    resolve() {
      const app = provider.resolve();
      let v = wrapped.get(app);
      if (!v) {
        v = validate(app);
        wrapped.set(app, v);
      }
      return v;
    },
  };
}
