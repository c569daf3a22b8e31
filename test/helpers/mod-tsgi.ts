/**
 * mod_tsgi for integration tests: makes sure build/native/mod_tsgi.so is built and
 * current (the same steps as `npm run build:native`, under a lock so parallel test files
 * build it once), and gives the harness its module spec. Likewise for the copy built
 * with sanitizers (build/native-asan/, mod-tsgi-sanitize.test.ts).
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

/** The newest build input under dir (lsan.supp is read at run time, not built). */
function newest(dir: string): number {
  let n = -1;
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    if (e.name.endsWith('.supp')) continue;
    const p = join(dir, e.name);
    n = Math.max(n, e.isDirectory() ? newest(p) : mtime(p));
  }
  return n;
}

/** Runs `cmake` for `buildDir` under the build lock when `so` is missing or older than native/. */
function build(so: string, buildDir: string, cmakeArgs: string): string {
  if (mtime(so) >= newest(join(ROOT, 'native'))) return so;
  mkdirSync(join(ROOT, 'build'), { recursive: true });
  const script =
    'bash scripts/setup-native.sh && ' +
    `cmake -S native -B ${buildDir} -DCMAKE_BUILD_TYPE=RelWithDebInfo ${cmakeArgs} >/dev/null && ` +
    `cmake --build ${buildDir}`;
  const r = spawnSync('flock', [join(ROOT, 'build', '.native-build.lock'), 'bash', '-c', script], {
    cwd: ROOT,
    encoding: 'utf8',
    timeout: 600_000,
  });
  if (r.status !== 0) {
    throw new Error(`building ${so} failed (${r.error?.message ?? r.signal ?? `exit ${r.status}`}):\n${r.stdout}\n${r.stderr}`);
  }
  return so;
}

/** Builds the module when it is missing or older than native/; throws with the build output on failure. */
export function ensureModTsgi(): string {
  return build(MOD_TSGI_SO, 'build/native', '');
}

/**
 * The instrumented module: our sources with AddressSanitizer, LeakSanitizer and UBSan
 * (`-DTSGI_SANITIZE=address,undefined`, in its own build dir). apache2 must run with
 * sanitizerEnv(); docs/embedded.md "Sanitizers".
 */
export const MOD_TSGI_ASAN_SO = join(ROOT, 'build', 'native-asan', 'mod_tsgi.so');
export const MOD_TSGI_ASAN = { name: 'tsgi_module', path: MOD_TSGI_ASAN_SO };
export const LSAN_SUPPRESSIONS = join(ROOT, 'native', 'lsan.supp');

/** Builds the instrumented module when it is missing or older than native/ (same lock as ensureModTsgi). */
export function ensureModTsgiAsan(): string {
  return build(MOD_TSGI_ASAN_SO, 'build/native-asan', '-DTSGI_SANITIZE=address,undefined');
}

/**
 * The environment for apache2 (and `apache2 -t`) with the instrumented module: libasan
 * preloaded (it must come before every other library), ASan and LSan reports written to
 * `<logDir>/asan.<pid>`, leaks checked at each process's exit with native/lsan.supp.
 * UBSan's go to stderr (Apache's error log): its runtime, once it initializes at a first
 * finding, sends that process's later ASan output there too. `logDir` must be writable
 * by the Apache user.
 */
export function sanitizerEnv(logDir: string): NodeJS.ProcessEnv {
  const libasan = spawnSync('gcc', ['-print-file-name=libasan.so'], { encoding: 'utf8' }).stdout.trim();
  if (!libasan.startsWith('/')) throw new Error(`gcc -print-file-name=libasan.so: ${libasan || 'no answer'}`);
  return {
    ...process.env,
    LD_PRELOAD: libasan,
    ASAN_OPTIONS: [`log_path=${join(logDir, 'asan')}`, 'detect_leaks=1', 'malloc_context_size=30'].join(':'),
    // print_suppressions: a process whose leak check ran and matched a suppression says
    // so in its log; the test uses that to know the check ran at all.
    LSAN_OPTIONS: [`suppressions=${LSAN_SUPPRESSIONS}`, 'print_suppressions=1'].join(':'),
    UBSAN_OPTIONS: ['print_stacktrace=1', 'halt_on_error=0'].join(':'),
  };
}
