/**
 * The runtime (dist/, built from src/) on Node 18: Debian bookworm's nodejs 18.20 on
 * libnode108, the Node the embedded Apache mode will run. scripts/node18.sh provides it
 * in build/node18 (downloaded on the first run, a no-op afterwards); these tests run
 * `tsgi serve` and `tsgi-cgi` under it and check the loader behaviour most likely to
 * differ from Node 20.
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { spawnSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { gunzipSync } from 'node:zlib';
import { request, requestAndDisconnect } from '../harness/http';
import { startServe, ROOT, TSGI_BIN, type ServeInstance } from '../helpers/serve';

const example = (name: string) => join(ROOT, 'examples', name);
const fixture = (name: string) => join(ROOT, 'test', 'fixtures', name);
const CGI_BIN = join(ROOT, 'bin', 'tsgi-cgi.js');

let node18 = '';

beforeAll(() => {
  // The first run downloads ~11 MB of .debs; later runs return at once.
  const r = spawnSync('bash', [join(ROOT, 'scripts', 'node18.sh')], { cwd: ROOT, encoding: 'utf8', timeout: 600_000 });
  if (r.status !== 0) {
    throw new Error(`scripts/node18.sh failed (${r.error?.message ?? r.signal ?? `exit ${r.status}`}):\n${r.stderr}\n${r.stdout}`);
  }
  node18 = r.stdout.trim().split('\n').pop() ?? '';
}, 600_000);

/** Runs node18 with `args`; returns its output. */
function run18(args: string[], options: { env?: NodeJS.ProcessEnv; input?: string | Buffer; cwd?: string } = {}) {
  const r = spawnSync(node18, args, { cwd: options.cwd ?? ROOT, env: { ...process.env, ...options.env }, input: options.input, timeout: 20_000 });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr.toString() };
}

/** A scratch directory with the given files. */
function scratch(files: Record<string, string>): string {
  const dir = mkdtempSync(join(tmpdir(), 'tsgi-node18-'));
  for (const [name, text] of Object.entries(files)) writeFileSync(join(dir, name), text);
  return dir;
}

/** 1-based line of the first line of `file` containing `text`. */
function lineOf(file: string, text: string): number {
  const i = readFileSync(file, 'utf8').split('\n').findIndex((l) => l.includes(text));
  if (i < 0) throw new Error(`${text} not in ${file}`);
  return i + 1;
}

it('scripts/node18.sh provides Debian’s Node 18 beside this Node, and a second run is a no-op', () => {
  expect(node18).toBe(join(ROOT, 'build', 'node18', 'bin', 'node18'));
  expect(run18(['--version']).stdout.toString()).toMatch(/^v18\./);
  expect(process.version).not.toMatch(/^v18\./); // the tests themselves run on the other Node
  const again = spawnSync('bash', [join(ROOT, 'scripts', 'node18.sh')], { encoding: 'utf8' });
  expect(again.status).toBe(0);
  expect(again.stdout).toBe(`${node18}\n`);
  expect(again.stderr).toBe('');
});

describe('tsgi serve on Node 18', () => {
  const servers: ServeInstance[] = [];
  const serve = async (script: string, args: string[] = []) => {
    const s = await startServe(script, args, {}, node18);
    servers.push(s);
    return s;
  };
  afterAll(async () => {
    await Promise.all(servers.map((s) => s.stop()));
  });

  it('hello world', async () => {
    const s = await serve(example('hello.tsgi'));
    const r = await request(s.url('/'));
    expect(r.status).toBe(200);
    expect(r.headers['content-type']).toBe('text/plain; charset=utf-8');
    expect(r.body.toString()).toBe('Hello World!\n');
  });

  it('the dispatcher, which imports a sibling .ts', async () => {
    const s = await serve(example('dispatch.tsgi'));
    expect((await request(s.url('/'))).body.toString()).toContain('href="hello/"');
    expect((await request(s.url('/hello/%3Cb%3E'))).body.toString()).toContain('Hello &lt;b&gt;!');
    const nf = await request(s.url('/missing'));
    expect(nf.status).toBe(404);
    expect(nf.body.toString()).toBe('Not Found');
  });

  it('the middleware chain: session counter, gzip, error page', async () => {
    const s = await serve(example('middleware-chain.tsgi'));
    const first = await request(s.url('/'), { headers: { 'Accept-Encoding': 'gzip' } });
    expect(first.status).toBe(200);
    expect(first.headers['content-encoding']).toBe('gzip');
    expect(gunzipSync(first.body).toString()).toBe('You have been here 1 times!\n');
    const cookie = String(first.headers['set-cookie']?.[0]).split(';')[0];
    const second = await request(s.url('/'), { headers: { Cookie: cookie, 'Accept-Encoding': 'gzip' } });
    expect(gunzipSync(second.body).toString()).toBe('You have been here 2 times!\n');
    const error = await request(s.url('/Errors_500'));
    expect(error.status).toBe(500);
    expect(error.body.toString()).toMatch(/Detect (&quot;|&#34;)error(&quot;|&#34;) in URL path/);
  });

  it('bad apps: a throw is a 500 whose logged stack shows the .tsgi line; a client disconnect aborts the request', async () => {
    const file = fixture('bad-apps.tsgi');
    const s = await serve(file);
    const r = await request(s.url('/throws'));
    expect(r.status).toBe(500);
    await s.waitFor('stderr', /the app threw before starting/);
    expect(s.stderr()).toContain(`${file}:${lineOf(file, "throw new Error('the app threw before starting')")}:`);
    const d = await requestAndDisconnect(s.url('/never-finishes'), 5);
    expect(d.status).toBe(200);
    await s.waitFor('stderr', /never-finishes: closed by the server/);
    await s.waitFor('stderr', /request aborted: GET \/never-finishes/);
    const ok = await request(s.url('/ok'));
    expect(ok.body.toString()).toBe('ok\n');
  });

  it('a script with top-level await is refused at start with file:line', () => {
    const dir = scratch({ 'tla.tsgi': `const x: number = 1;\nawait Promise.resolve(x);\nexport const application = () => [];\n` });
    const r = run18([TSGI_BIN, 'serve', join(dir, 'tla.tsgi'), '--port', '0']);
    expect(r.status).not.toBe(0);
    expect(r.stderr).toContain(`${join(dir, 'tla.tsgi')}:2:1: syntax error: await is only valid`);
  });
});

describe('tsgi-cgi on Node 18', () => {
  const cgiEnv = (extra: NodeJS.ProcessEnv = {}): NodeJS.ProcessEnv => ({
    GATEWAY_INTERFACE: 'CGI/1.1',
    REQUEST_METHOD: 'GET',
    SCRIPT_NAME: '/app.tsgi',
    PATH_INFO: '',
    QUERY_STRING: '',
    SERVER_NAME: 'localhost',
    SERVER_PORT: '80',
    SERVER_PROTOCOL: 'HTTP/1.1',
    TSGI_VALIDATE: '1',
    ...extra,
  });

  it('runs hello.tsgi', () => {
    const r = run18([CGI_BIN, example('hello.tsgi')], { env: cgiEnv() });
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
    const out = r.stdout.toString('latin1');
    expect(out.startsWith('Status: 200 OK\r\n')).toBe(true);
    expect(out.endsWith('Hello World!\n')).toBe(true);
  });

  it('the dispatcher on PATH_INFO', () => {
    const r = run18([CGI_BIN, example('dispatch.tsgi')], { env: cgiEnv({ PATH_INFO: '/hello/Carol' }) });
    expect(r.status).toBe(0);
    expect(r.stdout.toString()).toMatch(/^Status: 200 OK\r\n[\s\S]*\r\n\r\n<html><body>Hello Carol!<\/body><\/html>\n$/);
  });

  it('a POST body arrives intact on stdin', () => {
    const data = randomBytes(300_000);
    const r = run18([CGI_BIN, fixture('echo.tsgi')], { env: cgiEnv({ REQUEST_METHOD: 'POST', CONTENT_LENGTH: String(data.byteLength), CONTENT_TYPE: 'application/octet-stream' }), input: data });
    expect(r.status).toBe(0);
    expect(r.stdout.toString()).toMatch(new RegExp(`\\r\\n\\r\\n${data.byteLength} ${createHash('sha256').update(data).digest('hex')} ${data.byteLength}\\n$`));
  });
});

describe('the loader on Node 18', () => {
  // dist/loader.js directly, as the embedded mode will use it: one JSON line out.
  const loaderJs = join(ROOT, 'dist', 'loader.js');
  const probe = (body: string) => {
    const r = run18(['-e', `const { ScriptLoader } = require(${JSON.stringify(loaderJs)});\n${body}`]);
    if (r.status !== 0) throw new Error(`node18 -e failed (${r.status}):\n${r.stderr}`);
    return JSON.parse(r.stdout.toString()) as Record<string, unknown>;
  };

  it('top-level await: a SYNTAX LoadError naming file:line:col', () => {
    const dir = scratch({ 'tla.tsgi': `import type { Application } from 'tsgi';\nconst x: number = 1;\nawait Promise.resolve(x);\nexport const application: Application = () => [];\n` });
    const file = join(dir, 'tla.tsgi');
    const out = probe(`try { new ScriptLoader(${JSON.stringify(file)}, { cacheDir: false }).load(); console.log('{}'); } catch (e) { console.log(JSON.stringify({ name: e.name, code: e.code, path: e.path, message: e.message })); }`);
    expect(out).toEqual({
      name: 'TsgiLoadError',
      code: 'SYNTAX',
      path: file,
      message: `${file}:3:1: syntax error: await is only valid in async functions and the top level bodies of modules`,
    });
  });

  it('a plain syntax error: file:line:col from sucrase', () => {
    const dir = scratch({ 'syntax.tsgi': `const greeting: string = 'hi';\nconst x = ;\nexport function application() { return [greeting, x]; }\n` });
    const file = join(dir, 'syntax.tsgi');
    const out = probe(`try { new ScriptLoader(${JSON.stringify(file)}, { cacheDir: false }).load(); console.log('{}'); } catch (e) { console.log(JSON.stringify({ code: e.code, message: e.message })); }`);
    expect(out).toEqual({ code: 'SYNTAX', message: `${file}:2:11: syntax error: Unexpected token` });
  });

  it('stacks are source-mapped: a throw shows the .tsgi line and column, past stripped types', () => {
    const src = [
      "import type { Application } from 'tsgi';", // 1
      'interface Shape {', // 2
      '  radius: number;', // 3
      '}', // 4
      'type Alias = Shape | null;', // 5
      'export const application: Application = () => {', // 6
      "  const s: Alias = null; throw new Error('thrown on line 7 ' + String(s));", // 7: `new Error` at column 32, 25 in the transpiled code
      '};', // 8
      '',
    ].join('\n');
    const dir = scratch({ 'throws.tsgi': src });
    const file = join(dir, 'throws.tsgi');
    // With the transpile cache on (the default), as servers run; a fresh directory so this run compiles.
    const out = probe(
      `const app = new ScriptLoader(${JSON.stringify(file)}, { cacheDir: ${JSON.stringify(join(dir, 'cache'))} }).load();\n` +
        `try { app({}, () => {}); } catch (e) { console.log(JSON.stringify({ stack: e.stack })); }`,
    );
    expect(String(out.stack)).toContain(`Error: thrown on line 7 null\n    at application (${file}:7:32)`);
  });

  it('tsgi.signal is an AbortSignal with throwIfAborted, under tsgi serve', async () => {
    const dir = scratch({
      'signal.tsgi': `import type { Application } from 'tsgi';
export const application: Application = (environ, startResponse) => {
  const signal = environ['tsgi.signal'];
  signal.throwIfAborted();
  startResponse('200 OK', [['Content-Type', 'text/plain']]);
  return [[process.version, signal instanceof AbortSignal, typeof signal.throwIfAborted, signal.aborted, typeof AbortSignal.timeout].join(' ') + '\\n'];
};
`,
    });
    const s = await startServe(join(dir, 'signal.tsgi'), [], {}, node18);
    try {
      const r = await request(s.url('/'));
      expect(r.status).toBe(200);
      expect(r.body.toString()).toMatch(/^v18\.\d+\.\d+ true function false function\n$/);
    } finally {
      await s.stop();
    }
  });
});
