/**
 * mod_tsgi for integration tests: makes sure build/native/mod_tsgi.so is built and
 * current (the same steps as `npm run build:native`, under a lock so parallel test files
 * build it once), and gives the harness its module spec.
 */
import { spawnSync } from 'node:child_process';
import { mkdirSync, readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { ROOT } from './serve';

export const MOD_TSGI_SO = join(ROOT, 'build', 'native', 'mod_tsgi.so');
export const MOD_TSGI = { name: 'tsgi_module', path: MOD_TSGI_SO };

function mtime(p: string): number {
  try {
    return statSync(p).mtimeMs;
  } catch {
    return -1;
  }
}

function newest(dir: string): number {
  let n = -1;
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    n = Math.max(n, e.isDirectory() ? newest(p) : mtime(p));
  }
  return n;
}

/** Builds the module when it is missing or older than native/; throws with the build output on failure. */
export function ensureModTsgi(): string {
  if (mtime(MOD_TSGI_SO) >= newest(join(ROOT, 'native'))) return MOD_TSGI_SO;
  mkdirSync(join(ROOT, 'build'), { recursive: true });
  const script =
    'bash scripts/setup-native.sh && ' +
    'cmake -S native -B build/native -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null && ' +
    'cmake --build build/native';
  const r = spawnSync('flock', [join(ROOT, 'build', '.native-build.lock'), 'bash', '-c', script], {
    cwd: ROOT,
    encoding: 'utf8',
    timeout: 600_000,
  });
  if (r.status !== 0) {
    throw new Error(`building mod_tsgi failed (${r.error?.message ?? r.signal ?? `exit ${r.status}`}):\n${r.stdout}\n${r.stderr}`);
  }
  return MOD_TSGI_SO;
}
