/**
 * tsgi-cgi under real, private Apache (mod_cgid, event MPM; mod_cgi, prefork) and
 * lighttpd (mod_cgi), the three ways the issue names: a `#!/usr/bin/env tsgi-cgi` line
 * with `AddHandler cgi-script`, Apache `Action`, and lighttpd's `cgi.assign`. Every app
 * runs under the validate middleware (TSGI_VALIDATE=1).
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { chmodSync, mkdtempSync, readFileSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createHash, randomBytes } from 'node:crypto';
import { gunzipSync } from 'node:zlib';
import { startApache, type ApacheInstance } from '../harness/apache';
import { startLighttpd, type LighttpdInstance } from '../harness/lighttpd';
import { request } from '../harness/http';
import { ROOT } from '../helpers/serve';

const EXAMPLES = join(ROOT, 'examples');
const FIXTURES = join(ROOT, 'test', 'fixtures');
const CGI_BIN = join(ROOT, 'bin', 'tsgi-cgi.js');

/** A directory with `tsgi-cgi` in it, as `npm install -g tsgi` or node_modules/.bin would provide. */
function binDir(): string {
  const dir = mkdtempSync(join(tmpdir(), 'tsgi-bin-'));
  chmodSync(dir, 0o755);
  symlinkSync(CGI_BIN, join(dir, 'tsgi-cgi'));
  return dir;
}

/** A copy of rest.tsgi with a #! line, executable, for `ScriptAlias /rest file`. */
function restScript(): string {
  const dir = mkdtempSync(join(tmpdir(), 'tsgi-rest-'));
  chmodSync(dir, 0o755);
  const file = join(dir, 'rest.tsgi');
  writeFileSync(file, '#!/usr/bin/env tsgi-cgi\n' + readFileSync(join(EXAMPLES, 'rest.tsgi'), 'utf8'), { mode: 0o755 });
  return file;
}

/** The checks every CGI setup must pass, over real HTTP. `base` is where the examples are mounted. */
function exampleChecks(server: () => { url(p: string): string; errorLog(): string }, base: string) {
  const get = (p: string, headers: Record<string, string> = {}) => request(server().url(base + p), { headers });

  it('hello world', async () => {
    const r = await get('/hello.tsgi');
    expect(r.status).toBe(200);
    expect(r.headers['content-type']).toBe('text/plain; charset=utf-8');
    expect(r.body.toString()).toBe('Hello World!\n');
  });

  it('hello with ?subject=, HTML-escaped', async () => {
    const r = await get('/hello-subject.tsgi?subject=%3Ci%3EEve%3C%2Fi%3E');
    expect(r.body.toString()).toContain('Hello &lt;i&gt;Eve&lt;/i&gt;!');
  });

  it('the regex dispatcher on PATH_INFO', async () => {
    expect((await get('/dispatch.tsgi')).body.toString()).toContain('href="hello/"');
    expect((await get('/dispatch.tsgi/hello/')).body.toString()).toContain('Hello World!');
    expect((await get('/dispatch.tsgi/hello/Carol')).body.toString()).toContain('Hello Carol!');
    const nf = await get('/dispatch.tsgi/missing');
    expect(nf.status).toBe(404);
    expect(nf.body.toString()).toBe('Not Found');
  });

  it('the rest app sees the script as SCRIPT_NAME and the rest as PATH_INFO', async () => {
    expect((await get('/rest.tsgi/custompath')).body.toString()).toBe(`Hello World!\nPATH_INFO = /custompath\nSCRIPT_NAME = ${base}/rest.tsgi\n`);
  });

  it('importing a sibling module', async () => {
    expect((await get('/import-sibling.tsgi/p')).body.toString()).toBe('just saying i did it (GET /p)\n');
  });

  it('the class-style app', async () => {
    expect((await get('/class-app.tsgi')).body.toString()).toBe('Hello world!\n');
  });

  it('a fetch-style handler through the fromFetch adapter', async () => {
    const r = await get('/fetch-handler.tsgi/greet?name=Ada');
    expect(r.body.toString()).toBe(`Hello Ada from ${base}/fetch-handler.tsgi/greet\n`);
  });

  it('the middleware chain: the session survives across CGI processes, gzip, error page', async () => {
    const first = await get('/middleware-chain.tsgi', { 'Accept-Encoding': 'gzip' });
    expect(first.headers['content-encoding']).toBe('gzip');
    expect(gunzipSync(first.body).toString()).toBe('You have been here 1 times!\n');
    const cookie = String(first.headers['set-cookie']?.[0]).split(';')[0];
    expect((await get('/middleware-chain.tsgi', { Cookie: cookie })).body.toString()).toBe('You have been here 2 times!\n');
    expect((await get('/middleware-chain.tsgi', { Cookie: cookie })).body.toString()).toBe('You have been here 3 times!\n');
    const err = await get('/middleware-chain.tsgi/error');
    expect(err.status).toBe(500);
    expect(err.body.toString()).toMatch(/Detect (&quot;|&#34;)error(&quot;|&#34;) in URL path/);
  });
}

function badAppChecks(server: () => { url(p: string): string; errorLog(): string; waitForLog?: unknown }, base: string, errorLog: () => string) {
  const get = (p: string) => request(server().url(base + p));

  it.each([
    ['/throws', /the app threw before starting/],
    ['/crlf-header', /X-Injected contains CR or LF/],
    ['/numbers', /must be a Uint8Array or a string, got number 1/],
    ['/start-twice', /second time without excInfo/],
    ['/returns-undefined', /returned undefined/],
    ['/content-length-mismatch', /declared Content-Length: 5 but (sent|the application produced) more/],
  ])('bad app %s → 500, and the error log says why', async (path, message) => {
    const r = await get(`/bad-apps.tsgi${path}`);
    expect(r.status).toBe(500);
    expect(r.headers['x-injected']).toBeUndefined();
    for (let i = 0; i < 100 && !message.test(errorLog()); i++) await new Promise((res) => setTimeout(res, 50));
    expect(errorLog()).toMatch(message);
    expect((await get('/bad-apps.tsgi/ok')).body.toString()).toBe('ok\n');
  });

  it('a script that throws at import → 500 with the file and line in the error log', async () => {
    const r = await get('/throws-at-import.tsgi');
    expect(r.status).toBe(500);
    for (let i = 0; i < 100 && !/throws-at-import\.tsgi:3:/.test(errorLog()); i++) await new Promise((res) => setTimeout(res, 50));
    expect(errorLog()).toMatch(/throws-at-import\.tsgi threw while loading:[\s\S]*configuration is broken[\s\S]*throws-at-import\.tsgi:3:/);
  });

  it('an upload reaches the app intact (SHA-256)', async () => {
    const data = randomBytes(3 * 1024 * 1024);
    const r = await request(server().url(`${base}/echo.tsgi`), { method: 'POST', body: data });
    expect(r.body.toString()).toBe(`${data.byteLength} ${createHash('sha256').update(data).digest('hex')} ${data.byteLength}\n`);
  });
}

describe('Apache mod_cgid (event MPM)', () => {
  let apache: ApacheInstance;
  beforeAll(async () => {
    const bin = binDir();
    const rest = restScript();
    apache = await startApache({
      mpm: 'event',
      env: { PATH: `${bin}:/usr/local/bin:/usr/bin:/bin` },
      config: ({ root }) => `
SetEnv TSGI_VALIDATE 1
SetEnv TSGI_CACHE_DIR ${root}/tsgi-cache
# 1. A #! line plus AddHandler cgi-script, the classic CGI setup (seed 002's .htaccess).
Alias /shebang/ "${EXAMPLES}/"
<Directory "${EXAMPLES}">
  Options +ExecCGI
  AddHandler cgi-script .tsgi
  Require all granted
</Directory>
# 2. Action: every .tsgi goes through tsgi-cgi, no #! line needed.
ScriptAlias /cgi-bin/ "${bin}/"
<Directory "${bin}">
  Require all granted
</Directory>
Alias /ex/ "${EXAMPLES}/"
Alias /fx/ "${FIXTURES}/"
<Location /ex/>
  SetHandler tsgi-script
  Action tsgi-script /cgi-bin/tsgi-cgi
</Location>
<Location /fx/>
  SetHandler tsgi-script
  Action tsgi-script /cgi-bin/tsgi-cgi
</Location>
<Directory "${FIXTURES}">
  Require all granted
</Directory>
# 3. The seed's /rest mount, as a CGI script alias.
ScriptAlias /rest "${rest}"
<Directory "${join(rest, '..')}">
  Require all granted
</Directory>
`,
    });
    // The cache directory belongs to the CGI user and is private to it.
    const { mkdirSync, chownSync } = await import('node:fs');
    mkdirSync(join(apache.root, 'tsgi-cache'), { mode: 0o700 });
    if (process.getuid?.() === 0) chownSync(join(apache.root, 'tsgi-cache'), 33, 33);
  });
  afterAll(async () => {
    await apache?.stop();
  });

  it('runs a #!/usr/bin/env tsgi-cgi script with AddHandler cgi-script', async () => {
    const r = await request(apache.url('/shebang/cgi-hello.tsgi'));
    expect(r.status).toBe(200);
    expect(r.body.toString()).toBe('Hello World!\n');
  });

  it('the seed\'s /rest mount: SCRIPT_NAME=/rest, PATH_INFO=/custompath', async () => {
    const r = await request(apache.url('/rest/custompath'));
    expect(r.body.toString()).toBe('Hello World!\nPATH_INFO = /custompath\nSCRIPT_NAME = /rest\n');
  });

  it('runs as the Apache CGI user and caches transpiled code for it', async () => {
    await request(apache.url('/ex/hello.tsgi'));
    const { readdirSync, statSync } = await import('node:fs');
    const cache = join(apache.root, 'tsgi-cache');
    expect(readdirSync(cache).some((f) => f.endsWith('.js'))).toBe(true);
    if (process.getuid?.() === 0) expect(statSync(cache).uid).toBe(33);
  });

  describe('examples through Action', () => exampleChecks(() => apache, '/ex'));
  describe('bad apps through Action', () => badAppChecks(() => apache, '/fx', () => apache.errorLog()));
});

describe('Apache mod_cgi (prefork MPM), smoke', () => {
  let apache: ApacheInstance;
  beforeAll(async () => {
    const bin = binDir();
    apache = await startApache({
      mpm: 'prefork',
      env: { PATH: `${bin}:/usr/local/bin:/usr/bin:/bin` },
      config: `
SetEnv TSGI_VALIDATE 1
Alias /shebang/ "${EXAMPLES}/"
<Directory "${EXAMPLES}">
  Options +ExecCGI
  AddHandler cgi-script .tsgi
  Require all granted
</Directory>
`,
    });
  });
  afterAll(async () => {
    await apache?.stop();
  });

  it('serves the #! example', async () => {
    const r = await request(apache.url('/shebang/cgi-hello.tsgi/x'));
    expect(r.status).toBe(200);
    expect(r.body.toString()).toBe('Hello World!\n');
  });
});

describe('lighttpd mod_cgi with cgi.assign', () => {
  let lighttpd: LighttpdInstance;
  beforeAll(async () => {
    lighttpd = await startLighttpd({
      config: `
setenv.add-environment = ( "TSGI_VALIDATE" => "1" )
alias.url = ( "/ex/" => "${EXAMPLES}/", "/fx/" => "${FIXTURES}/" )
cgi.assign = ( ".tsgi" => "${CGI_BIN}" )
`,
    });
  });
  afterAll(async () => {
    await lighttpd?.stop();
  });

  describe('examples', () => exampleChecks(() => lighttpd, '/ex'));
  describe('bad apps', () => badAppChecks(() => lighttpd, '/fx', () => lighttpd.cgiLog() + lighttpd.errorLog()));
});
