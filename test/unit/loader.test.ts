/**
 * The loader (src/loader.ts): TypeScript in ESM and CJS syntax, sibling and
 * node_modules resolution, source-mapped stacks, the on-disk cache, reloading, and
 * the exact error for each way a script can be broken.
 */
import { describe, it, expect, beforeEach } from 'vitest';
import { chmodSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, utimesSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { spawnSync } from 'node:child_process';
import { ScriptLoader, LoadError } from '../../src/loader';
import { runApp } from '../helpers/memory-sink';
import { runRequest } from '../../src/gateway/run';

let dir: string;
let cacheDir: string;
beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'tsgi-loader-'));
  cacheDir = join(dir, '.cache');
});

function write(name: string, text: string, mtime?: number): string {
  const p = join(dir, name);
  mkdirSync(join(p, '..'), { recursive: true });
  writeFileSync(p, text);
  if (mtime !== undefined) utimesSync(p, mtime, mtime);
  return p;
}

function loadError(fn: () => unknown): LoadError {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(LoadError);
    return err as LoadError;
  }
  throw new Error('expected a LoadError');
}

const HELLO = `import type { Application } from 'tsgi';
export const application: Application = (environ, startResponse) => {
  startResponse('200 OK', [['Content-Type', 'text/plain']]);
  return ['hello from ' + environ.PATH_INFO];
};
`;

describe('loading', () => {
  it('loads TypeScript with import/export and runs it', async () => {
    const loader = new ScriptLoader(write('app.tsgi', HELLO), { cacheDir });
    const r = await runApp(loader.resolve(), { path: '/x' });
    expect(r.text).toBe('hello from /x');
  });

  it('loads TypeScript with CommonJS syntax', async () => {
    const p = write(
      'cjs.tsgi',
      `const greeting: string = require('./greet.ts').greeting;
module.exports.application = (environ: any, startResponse: any) => {
  startResponse('200 OK', [['Content-Type', 'text/plain']]);
  return [greeting];
};
`,
    );
    write('greet.ts', `export const greeting: string = 'cjs works';\n`);
    const r = await runApp(new ScriptLoader(p, { cacheDir }).resolve());
    expect(r.text).toBe('cjs works');
  });

  it('resolves .ts siblings (with enums) and the app\'s own node_modules', async () => {
    write('node_modules/shout/package.json', JSON.stringify({ name: 'shout', main: 'index.js' }));
    write('node_modules/shout/index.js', `module.exports = (s) => s.toUpperCase() + '!';\n`);
    write('lib/colors.ts', `export enum Color { Red = 'red', Green = 'green' }\nexport abstract class Base<T> { abstract get(): T }\n`);
    const p = write(
      'deps.tsgi',
      `import shout from 'shout';
import { Color } from './lib/colors';
export function application(environ: Record<string, unknown>, startResponse: (s: string, h: [string, string][]) => unknown) {
  startResponse('200 OK', [['Content-Type', 'text/plain']]);
  return [shout(Color.Green)];
}
`,
    );
    const r = await runApp(new ScriptLoader(p, { cacheDir }).resolve());
    expect(r.text).toBe('GREEN!');
  });

  it('keeps a #! line harmless and supports import.meta', async () => {
    const p = write(
      'meta.tsgi',
      `#!/usr/bin/env tsgi-cgi
export const application = (e: any, sr: any) => {
  sr('200 OK', [['Content-Type', 'text/plain']]);
  return [import.meta.url + ' ' + import.meta.filename];
};
`,
    );
    const r = await runApp(new ScriptLoader(p, { cacheDir }).resolve());
    expect(r.text).toBe(`file://${p} ${p}`);
  });

  it('lets a script outside this package import tsgi and tsgi/middleware', async () => {
    const p = write(
      'uses-tsgi.tsgi',
      `import { TSGI_VERSION } from 'tsgi';
export const application = (e: any, sr: any) => {
  sr('200 OK', [['Content-Type', 'text/plain']]);
  return [TSGI_VERSION.join('.')];
};
`,
    );
    const r = await runApp(new ScriptLoader(p, { cacheDir }).resolve());
    expect(r.text).toBe('1.0');
  });

  it('finds the callable by a configured name', async () => {
    const p = write('named.tsgi', `export const app = (e: any, sr: any) => (sr('200 OK', [['Content-Type', 'text/plain']]), ['named']);\n`);
    const r = await runApp(new ScriptLoader(p, { cacheDir, callable: 'app' }).resolve());
    expect(r.text).toBe('named');
  });
});

describe('stack traces', () => {
  it('show the .tsgi line of a throw, past type-only lines', async () => {
    const p = write(
      'throws.tsgi',
      `import type { Application } from 'tsgi';
interface Shape {
  kind: 'circle';
  radius: number;
}
type Alias = Shape | null;
export const application: Application = () => {
  const s: Alias = null;
  throw new Error('thrown on line 9' + String(s));
};
`,
    );
    const r = await runApp(new ScriptLoader(p, { cacheDir }).resolve());
    expect(r.head?.code).toBe(500);
    expect(r.logs[0].message).toContain(`${p}:9:9`);
  });
});

describe('errors name the file and the problem', () => {
  it('missing file', () => {
    const e = loadError(() => new ScriptLoader(join(dir, 'nope.tsgi'), { cacheDir }).load());
    expect(e.code).toBe('ENOENT');
    expect(e.message).toBe(`cannot load ${join(dir, 'nope.tsgi')}: no such file`);
  });

  it('a directory', () => {
    mkdirSync(join(dir, 'adir.tsgi'));
    const e = loadError(() => new ScriptLoader(join(dir, 'adir.tsgi'), { cacheDir }).load());
    expect(e.code).toBe('EISDIR');
    expect(e.message).toMatch(/is a directory, not a script/);
  });

  it('unreadable file (checked as an unprivileged user)', () => {
    const p = write('secret.tsgi', HELLO);
    chmodSync(p, 0o600);
    chmodSync(dir, 0o755);
    if (process.getuid?.() !== 0) {
      chmodSync(p, 0o000);
      const e = loadError(() => new ScriptLoader(p, { cacheDir: false }).load());
      expect(e.code).toBe('EACCES');
      return;
    }
    // Root reads everything: run the loader as nobody in a child process.
    const loaderPath = join(__dirname, '..', '..', 'dist', 'loader.js');
    const child = spawnSync(
      process.execPath,
      ['-e', `try { new (require(${JSON.stringify(loaderPath)}).ScriptLoader)(${JSON.stringify(p)}, {cacheDir:false}).load() } catch (e) { console.log(e.code + ' ' + e.message) }`],
      { uid: 65534, gid: 65534, encoding: 'utf8' },
    );
    expect(child.stdout.trim()).toBe(`EACCES cannot read ${p}: permission denied (the server runs as uid 65534)`);
  });

  it('syntax error with file:line:col', () => {
    const p = write('syntax.tsgi', `const greeting: string = 'hi';\nconst x = ;\nexport function application() { return [greeting, x]; }\n`);
    const e = loadError(() => new ScriptLoader(p, { cacheDir }).load());
    expect(e.code).toBe('SYNTAX');
    expect(e.message).toBe(`${p}:2:11: syntax error: Unexpected token`);
  });

  it('a syntax error only V8 sees (top-level await) still gets file:line', () => {
    const p = write('tla.tsgi', `const x = 1;\nawait Promise.resolve(x);\nexport const application = () => [];\n`);
    const e = loadError(() => new ScriptLoader(p, { cacheDir }).load());
    expect(e.code).toBe('SYNTAX');
    expect(e.message).toContain(`${p}:2:`);
    expect(e.message).toMatch(/await is only valid/);
  });

  it('a script that throws at import', () => {
    const p = write('boom.tsgi', `const n: number = 1;\nthrow new Error('import-time failure ' + n);\n`);
    const e = loadError(() => new ScriptLoader(p, { cacheDir }).load());
    expect(e.code).toBe('EVALUATION');
    expect(e.message).toContain(`${p} threw while loading:`);
    expect(e.message).toContain('import-time failure 1');
    expect(e.message).toContain(`${p}:2:`);
  });

  it('exports nothing', () => {
    const p = write('empty.tsgi', `const unused = 1;\n`);
    const e = loadError(() => new ScriptLoader(p, { cacheDir }).load());
    expect(e.code).toBe('NO_EXPORT');
    expect(e.message).toBe(
      `${p} has no export named "application" (it exports nothing); export a function called application, or name the callable with TSGICallableObject / --callable`,
    );
  });

  it('no such export, listing what there is', () => {
    const p = write('other.tsgi', `export const app = () => [];\nexport const version = 2;\n`);
    const e = loadError(() => new ScriptLoader(p, { cacheDir }).load());
    expect(e.message).toContain('(it exports: app, version)');
  });

  it('export is not a function', () => {
    const p = write('notfn.tsgi', `export const application = { hello: 'world' };\n`);
    const e = loadError(() => new ScriptLoader(p, { cacheDir }).load());
    expect(e.code).toBe('NOT_CALLABLE');
    expect(e.message).toBe(`${p}: export "application" is an object, not a function or class`);
  });

  it('a broken script makes each request a 500 with the load error logged', async () => {
    const p = write('broken.tsgi', `export const application = (;\n`);
    const logs: string[] = [];
    let status = 0;
    await runRequest(
      new ScriptLoader(p, { cacheDir }),
      { environ: { REQUEST_METHOD: 'GET', REQUEST_URI: '/' }, body: null, urlScheme: 'http', signal: new AbortController().signal },
      { head: (h) => void (status = h.code), body: () => undefined, end: () => undefined, abort: () => undefined },
      { log: { log: (_l, m) => logs.push(m) }, multithread: false, multiprocess: false, runOnce: false },
    );
    expect(status).toBe(500);
    expect(logs).toHaveLength(1);
    expect(logs[0]).toContain(`${p}:1:`);
  });
});

describe('reloading', () => {
  it('reloads when the script\'s mtime changes', async () => {
    const p = write('r.tsgi', `export const application = (e: any, sr: any) => (sr('200 OK', [['Content-Type', 'text/plain']]), ['v1']);\n`, 1_000_000);
    const loader = new ScriptLoader(p, { cacheDir });
    expect((await runApp(loader.resolve())).text).toBe('v1');
    write('r.tsgi', `export const application = (e: any, sr: any) => (sr('200 OK', [['Content-Type', 'text/plain']]), ['v2']);\n`, 2_000_000);
    expect((await runApp(loader.resolve())).text).toBe('v2');
  });

  it('reloads when a local module it imported changes, with fresh module state', async () => {
    write('counter.ts', `let n = 0;\nexport const next = () => ++n;\nexport const label = 'a';\n`, 1_000_000);
    const p = write('c.tsgi', `import { next, label } from './counter';\nexport const application = (e: any, sr: any) => (sr('200 OK', [['Content-Type', 'text/plain']]), [label + next()]);\n`);
    const loader = new ScriptLoader(p, { cacheDir });
    expect((await runApp(loader.resolve())).text).toBe('a1');
    expect((await runApp(loader.resolve())).text).toBe('a2');
    write('counter.ts', `let n = 0;\nexport const next = () => ++n;\nexport const label = 'b';\n`, 2_000_000);
    expect((await runApp(loader.resolve())).text).toBe('b1');
  });

  it('does not reload when reloading is off', async () => {
    const p = write('off.tsgi', `export const application = (e: any, sr: any) => (sr('200 OK', [['Content-Type', 'text/plain']]), ['v1']);\n`, 1_000_000);
    const loader = new ScriptLoader(p, { cacheDir, reload: false });
    loader.resolve();
    write('off.tsgi', `export const application = (e: any, sr: any) => (sr('200 OK', [['Content-Type', 'text/plain']]), ['v2']);\n`, 2_000_000);
    expect((await runApp(loader.resolve())).text).toBe('v1');
  });

  it('recovers when a broken script is fixed', async () => {
    const p = write('fix.tsgi', `export const application = (;\n`, 1_000_000);
    const loader = new ScriptLoader(p, { cacheDir });
    expect(() => loader.resolve()).toThrow(LoadError);
    write('fix.tsgi', `export const application = (e: any, sr: any) => (sr('200 OK', [['Content-Type', 'text/plain']]), ['fixed']);\n`, 2_000_000);
    expect((await runApp(loader.resolve())).text).toBe('fixed');
  });
});

describe('the transpile cache', () => {
  it('is shared between processes: a second process uses the cached output', () => {
    const p = write('cached.tsgi', HELLO, 1_500_000);
    new ScriptLoader(p, { cacheDir }).load();
    const entries = readdirSync(cacheDir).filter((f) => f.endsWith('.js'));
    expect(entries).toHaveLength(1);
    // Mark the cached code; a process that uses the cache runs the marked code.
    const entry = join(cacheDir, entries[0]);
    writeFileSync(entry, readFileSync(entry, 'utf8').replace("'hello from '", "'cached hello from '"));
    const loaderPath = join(__dirname, '..', '..', 'dist', 'loader.js');
    const out = spawnSync(
      process.execPath,
      [
        '-e',
        `const app = new (require(${JSON.stringify(loaderPath)}).ScriptLoader)(${JSON.stringify(p)}, {cacheDir: ${JSON.stringify(cacheDir)}}).load();
         let s; const body = app({PATH_INFO: '/p'}, (st) => { s = st; }); console.log(s + '|' + body.join(''));`,
      ],
      { encoding: 'utf8' },
    );
    expect(out.stderr).toBe('');
    expect(out.stdout.trim()).toBe('200 OK|cached hello from /p');
  });

  it('is keyed by content and mtime: an edit is never served stale', async () => {
    const p = write('edit.tsgi', HELLO, 1_500_000);
    new ScriptLoader(p, { cacheDir }).load();
    write('edit.tsgi', HELLO.replace('hello from', 'edited'), 1_500_000); // same mtime, new content
    const r = await runApp(new ScriptLoader(p, { cacheDir }).load(), { path: '/' });
    expect(r.text).toBe('edited /');
    expect(readdirSync(cacheDir).filter((f) => f.endsWith('.js'))).toHaveLength(2);
  });

  it('refuses a cache directory others can write, and says so', () => {
    const unsafe = join(dir, 'unsafe');
    mkdirSync(unsafe);
    chmodSync(unsafe, 0o777);
    const p = write('u.tsgi', HELLO);
    const loaderPath = join(__dirname, '..', '..', 'dist', 'loader.js');
    const out = spawnSync(process.execPath, ['-e', `new (require(${JSON.stringify(loaderPath)}).ScriptLoader)(${JSON.stringify(p)}, {cacheDir: ${JSON.stringify(unsafe)}}).load()`], {
      encoding: 'utf8',
    });
    expect(out.stderr).toContain(`transpile cache disabled: ${unsafe}: writable by group or others (mode 777)`);
    expect(readdirSync(unsafe)).toEqual([]);
  });
});
