/**
 * mod_tsgi built with AddressSanitizer, LeakSanitizer and UBSan (our sources only:
 * build/native-asan/, `-DTSGI_SANITIZE=address,undefined`) in a private Apache with
 * libasan preloaded, embedded runtime included. One server runs a representative load:
 * every directive form, the golden mapping table's URLs, apps that stream, read a POST
 * body, throw, log and call process.exit() (the Environment is torn down and re-created),
 * and one that blocks its event loop until the watchdog stops it.
 * Then Apache stops, every child runs its leak check at exit, and `apache2 -t` runs on
 * broken configs (the directive error paths). Any sanitizer report fails the test.
 * docs/embedded.md "Sanitizers" says what is suppressed (native/lsan.supp) and why.
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { createHash, randomBytes } from 'node:crypto';
import { chmodSync, mkdtempSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { configtest, startApache, type ApacheInstance } from '../harness/apache';
import { request } from '../harness/http';
import { ensureModTsgiAsan, MOD_TSGI_ASAN, sanitizerEnv } from '../helpers/mod-tsgi';
import { ROOT } from '../helpers/serve';

const ENV_APP = `
export const application = async (environ: any, startResponse: any) => {
  const body = Buffer.from(await environ['tsgi.input'].read());
  startResponse('200 OK', [['Content-Type', 'application/json'], ['X-Sha256', require('node:crypto').createHash('sha256').update(body).digest('hex')]]);
  return [JSON.stringify({ SCRIPT_NAME: environ.SCRIPT_NAME, PATH_INFO: environ.PATH_INFO, length: body.length })];
};
`;

const APPS: Record<string, string> = {
  'apps/rest.tsgi': ENV_APP,
  'apps/app.tsgi': ENV_APP,
  'apps/handler.tsgi': ENV_APP,
  'apps/opts.tsgi': ENV_APP.replace('export const application', 'export const app2'),
  'apps/scripts/foo.tsgi': ENV_APP.replace('export const application', 'export const handler'),
  'apps/scripts/sub/index.tsgi': ENV_APP.replace('export const application', 'export const handler'),
  'apps/scripts/streaming.tsgi': `
export async function* body() { yield 'one\\n'; await new Promise((r) => setTimeout(r, 10)); yield 'two\\n'; yield ''; yield 'three\\n'; }
export function handler(environ: any, startResponse: any) {
  startResponse('200 OK', [['Content-Type', 'text/plain'], ['X-Many', 'a'], ['X-Many', 'b']]);
  return body();
}`,
  'apps/scripts/throws.tsgi': `
export function handler(environ: any, startResponse: any) { throw new Error('boom'); }`,
  'apps/scripts/late.tsgi': `
export async function* body() { yield 'partial'; await new Promise((r) => setTimeout(r, 20)); throw new Error('late boom'); }
export function handler(environ: any, startResponse: any) {
  startResponse('200 OK', [['Content-Type', 'text/plain']]);
  return body();
}`,
  'apps/scripts/console.tsgi': `
export function handler(environ: any, startResponse: any) {
  console.log('to the error log');
  console.error('x'.repeat(10000));
  startResponse('200 OK', [['Content-Type', 'text/plain']]);
  return ['logged'];
}`,
  'apps/scripts/exit.tsgi': `
export function handler(environ: any, startResponse: any) {
  setTimeout(() => process.exit(3), 10);
  startResponse('200 OK', [['Content-Type', 'text/plain']]);
  return ['exiting'];
}`,
  // process.exit() while its own response is still streaming: the Environment ends
  // with a request in flight.
  'apps/scripts/hangexit.tsgi': `
export async function* body() { yield 'x'; setTimeout(() => process.exit(1), 50); await new Promise(() => {}); }
export function handler(environ: any, startResponse: any) {
  startResponse('200 OK', [['Content-Type', 'text/plain']]);
  return body();
}`,
  // The watchdog (TSGIEventLoopTimeout) fails the request from its own thread and
  // stops the Environment while JS runs.
  'apps/scripts/spin.tsgi': `
export function handler(environ: any, startResponse: any) { for (;;) { /* blocked */ } }`,
  'static/file.txt': 'static file\n',
};

// The golden table's requests (mod-tsgi-mapping.test.ts checks their values; here
// only that they run clean). [host, path, status]
const GOLDEN: [string | undefined, string, number][] = [
  [undefined, '/rest', 200],
  [undefined, '/rest/', 200],
  [undefined, '/rest/a/b?x=1', 200],
  [undefined, '/rest//a///b', 200],
  [undefined, '//rest/a', 200],
  [undefined, '/restful', 404],
  [undefined, '/rest/caf%C3%A9', 200],
  [undefined, '/rest/a%20b/c%3Fd', 200],
  [undefined, '/rest/./x/../y', 200],
  [undefined, '/rest/a%2Fb', 404],
  ['noslash.test', '/rest//a///b', 200],
  ['noslash.test', '//rest/a', 200],
  ['noslash.test', '/rest/', 200],
  ['root.test', '/', 200],
  ['root.test', '/x/y', 200],
  ['root.test', '/rest/a', 200],
  [undefined, '/wsgi/foo.tsgi/bar', 200],
  [undefined, '/wsgi/foo.tsgi', 200],
  [undefined, '/wsgi/sub/index.tsgi/p', 200],
  [undefined, '/wsgi/nothere/x', 404],
  [undefined, '/dir-no-slash/foo.tsgi/bar', 200],
  [undefined, '/wsgi-scripts/foo/bar', 200],
  [undefined, '/wsgi-scripts/foo', 200],
  [undefined, '/admin/x', 200],
  [undefined, '/files', 200],
  [undefined, '/missing/x', 404],
  // and around them
  ['root.test', '/static/file.txt', 200],
  [undefined, '/wsgi/sub/', 403],
  [undefined, '/opts/x', 200],
  [undefined, '/global', 200],
  [undefined, '/server', 200],
  [undefined, '/envgroup', 200],
];

/** Sanitizer output that is a finding (anything else in the logs is the suppression summary). */
const REPORT = /ERROR: (AddressSanitizer|LeakSanitizer)|WARNING: (AddressSanitizer|LeakSanitizer)|runtime error:|Sanitizer has encountered a fatal error|Sanitizer CHECK failed/;

let logDir: string;
let env: NodeJS.ProcessEnv;
let apache: ApacheInstance;
/**
 * Other places a report can land: once UBSan's runtime initializes in a process (at its
 * first finding), it points that process's sanitizer output at stderr, which is Apache's
 * error log (or the output of `apache2 -t`).
 */
const outputs: { name: string; text: string }[] = [];

function sanitizerLogs(): { name: string; text: string }[] {
  const files = readdirSync(logDir)
    .sort()
    .map((f) => ({ name: f, text: readFileSync(join(logDir, f), 'utf8') }));
  return [...files, ...outputs];
}

function findings(): string {
  return sanitizerLogs()
    .filter((l) => REPORT.test(l.text))
    .map((l) => `--- ${l.name} ---\n${l.text}`)
    .join('\n');
}

beforeAll(async () => {
  ensureModTsgiAsan();
  logDir = mkdtempSync(join(tmpdir(), 'tsgi-asan-'));
  chmodSync(logDir, 0o777); // the children write here as the Apache user
  env = sanitizerEnv(logDir);
  apache = await startApache({
    modules: [MOD_TSGI_ASAN],
    env,
    files: APPS,
    startTimeoutMs: 60_000,
    config: ({ root, port }) => `
# One child, so the Environment process.exit() re-creates is the one the next request uses.
StartServers 1
ServerLimit 1
MinSpareThreads 1
MaxSpareThreads 16
ThreadsPerChild 16
MaxRequestWorkers 16
TSGIEventLoopTimeout 3

Header always set X-Tsgi-Script-Name "%{mod_tsgi.script_name}e" env=mod_tsgi.script_name
Header always set X-Tsgi-Application-Group "%{mod_tsgi.application_group}e" env=mod_tsgi.script_name

Alias /static ${root}/static
TSGIScriptAlias /rest ${root}/apps/rest.tsgi
TSGIScriptAlias /wsgi/ ${root}/apps/scripts/
TSGIScriptAlias /dir-no-slash ${root}/apps/scripts/
TSGIScriptAliasMatch ^/wsgi-scripts/([^/]+) ${root}/apps/scripts/$1.tsgi
TSGIScriptAliasMatch "^/(admin|files)" ${root}/apps/handler.tsgi/$1
TSGIScriptAlias /missing ${root}/apps/missing.tsgi
TSGIScriptAlias /opts ${root}/apps/opts.tsgi application-group=shared callable-object=app2
TSGIScriptAlias /auth ${root}/apps/rest.tsgi pass-authorization=On
TSGIScriptAlias /secure ${root}/apps/rest.tsgi
TSGIScriptAlias /global ${root}/apps/rest.tsgi application-group=%{GLOBAL}
TSGIScriptAlias /server ${root}/apps/rest.tsgi application-group=%{SERVER}
TSGIScriptAlias /envgroup ${root}/apps/rest.tsgi application-group=%{ENV:APP_GROUP}
TSGIPassAuthorization Off
TSGIScriptReloading On

SetEnv MY_VAR hello
<Location /secure>
  SetEnv HTTPS on
</Location>
<Location /envgroup>
  SetEnv APP_GROUP from-env
</Location>
<Directory ${root}/apps/scripts>
  TSGICallableObject handler
  TSGIScriptReloading Off
  TSGIApplicationGroup scripts-group
</Directory>

<VirtualHost 127.0.0.1:${port}>
  ServerName 127.0.0.1
</VirtualHost>
<VirtualHost 127.0.0.1:${port}>
  ServerName root.test
  TSGIScriptAlias / ${root}/apps/app.tsgi
  TSGIApplicationGroup %{SERVER}
</VirtualHost>
<VirtualHost 127.0.0.1:${port}>
  ServerName noslash.test
  MergeSlashes Off
</VirtualHost>
`,
  });
}, 600_000);

afterAll(async () => {
  await apache?.stop();
  if (logDir && !findings()) rmSync(logDir, { recursive: true, force: true });
});

const get = (path: string, host?: string, headers: Record<string, string> = {}) =>
  request(apache.url(path), { headers: host ? { Host: host, ...headers } : headers });

describe('mod_tsgi under ASan + LSan + UBSan', () => {
  it('the golden table and the other mounts', async () => {
    for (const [host, path, status] of GOLDEN) {
      const r = await get(path, host);
      expect(r.status, `${host ?? ''} ${path}: ${r.text}`).toBe(status);
    }
    // Concurrently, on the child's threads.
    const rs = await Promise.all(GOLDEN.map(([host, path]) => get(path, host)));
    expect(rs.map((r) => r.status)).toEqual(GOLDEN.map(([, , s]) => s));
  });

  it('request headers into the environ: auth, HTTPS, odd and duplicate names', async () => {
    for (const path of ['/auth/x', '/secure/x', '/rest/x']) {
      const r = await request(apache.url(path), {
        headers: ['Host', `127.0.0.1:${apache.port}`, 'Authorization', 'Basic dTpw', 'X_Foo', 'spoof', 'X-Dup', 'a', 'X-Dup', 'b', 'Proxy', 'http://evil/', 'X-Long', 'v'.repeat(6000)],
      });
      expect(r.status, r.text).toBe(200);
    }
  });

  it('POST bodies (Content-Length and chunked) reach the app intact', async () => {
    const body = randomBytes(256 * 1024);
    const sha = createHash('sha256').update(body).digest('hex');
    const r = await request(apache.url('/rest/post'), { method: 'POST', body, headers: { 'Content-Type': 'application/octet-stream' } });
    expect(r.status).toBe(200);
    expect(r.headers['x-sha256']).toBe(sha);
    async function* chunks() {
      for (let i = 0; i < body.length; i += 50_000) yield body.subarray(i, i + 50_000);
    }
    const c = await request(apache.url('/rest/chunked'), { method: 'POST', body: chunks() });
    expect(c.status).toBe(200);
    expect(c.headers['x-sha256']).toBe(sha);
  });

  it('streaming, errors before and after the headers, console', async () => {
    const s = await get('/wsgi/streaming.tsgi');
    expect(s.text).toBe('one\ntwo\nthree\n');
    expect((await get('/wsgi/throws.tsgi')).status).toBe(500);
    const late = await get('/wsgi/late.tsgi');
    expect(late.complete).toBe(false);
    expect((await get('/wsgi/console.tsgi')).text).toBe('logged');
  });

  it('process.exit(): the Environment is torn down and re-created, also with a request in flight', async () => {
    const cases: [string, string][] = [
      ['/wsgi/exit.tsgi', 'exiting'],
      ['/wsgi/hangexit.tsgi', 'x'],
    ];
    for (const [path, text] of cases) {
      const mark = apache.logMark();
      expect((await get(path)).text).toBe(text);
      await apache.waitForLog(/TSGI0120: embedded runtime ready/, 30_000, mark);
      const r = await get('/rest/after-exit');
      expect(r.status).toBe(200);
    }
  });

  it('the watchdog: a blocked event loop gets 504, the Environment is stopped and re-created', async () => {
    const mark = apache.logMark();
    expect((await get('/wsgi/spin.tsgi')).status).toBe(504);
    await apache.waitForLog(/TSGI0130: watchdog/, 30_000, mark);
    await apache.waitForLog(/TSGI0120: embedded runtime ready/, 30_000, mark);
    expect((await get('/rest/after-spin')).status).toBe(200);
  });

  it('graceful restart: the config is read again, the old child exits (and checks for leaks)', async () => {
    const mark = apache.logMark();
    await apache.graceful(30_000);
    await apache.waitForLog(/TSGI0120: embedded runtime ready/, 30_000, mark);
    const r = await get('/wsgi-scripts/foo/bar');
    expect(r.status).toBe(200);
  });

  it('Apache stops cleanly; no sanitizer report from any process', async () => {
    const { killed } = await apache.stop();
    outputs.push({ name: 'error.log', text: apache.errorLog() });
    expect(findings()).toBe('');
    // A SIGKILLed child never runs its leak check.
    expect(killed).toEqual([]);
    expect(apache.errorLog()).not.toMatch(/Segmentation|TSGI0123/);
    // The leak check did run at the children's exit: each one matches a suppression
    // (native/lsan.supp: at least Apache's own allocator) and print_suppressions says so.
    expect(sanitizerLogs().some((l) => /Suppressions used:/.test(l.text)), 'no leak check ran').toBe(true);
  });

  it('apache2 -t: the directive error paths', async () => {
    const app = join(ROOT, 'examples', 'hello.tsgi');
    const bad = [
      `TSGIScriptAlias rest ${app}`,
      'TSGIScriptAlias /rest',
      `TSGIScriptAlias /rest/ ${app}`,
      `TSGIScriptAlias /rest ${app} bogus=1 extra`,
      `TSGIScriptAlias /rest ${app} process-group=%{ENV:X}`,
      'TSGIDaemonProcess pool threads=abc',
      'TSGIDaemonProcess pool bogus=1',
      'TSGIDaemonProcess pool env-file=/nonexistent/env',
      'TSGIDaemonProcess pool user=root',
      `TSGIScriptAlias /rest ${app} application-group=%{BOGUS}`,
      `TSGIScriptAlias /rest ${app} callable-object=my-app`,
      `TSGIScriptAlias /rest ${app} pass-authorization=maybe`,
      'TSGIScriptAliasMatch ^/(a /srv/$1.tsgi',
      'TSGIScriptAliasMatch ^/a/([^/]+) /srv/$1/$2.tsgi',
      'TSGICallableObject 1app',
      'TSGIScriptReloading maybe',
      'TSGIApplicationGroup %{ENV:}',
      '<Location /x>\n  TSGIScriptAliasMatch ^/x /srv/x.tsgi\n</Location>',
    ];
    for (const config of bad) {
      const r = await configtest({ modules: [MOD_TSGI_ASAN], env, config: `TSGIScriptReloading On\n${config}` });
      outputs.push({ name: `apache2 -t: ${config}`, text: r.output });
      expect(r.code, r.output).not.toBe(0);
      expect(r.output).toContain('Syntax error on line');
    }
    // A reference to an undefined group is found after the whole configuration is read.
    const undefinedGroup = await configtest({ modules: [MOD_TSGI_ASAN], env, config: `TSGIScriptAlias /rest ${app} process-group=pool` });
    outputs.push({ name: 'apache2 -t: undefined process group', text: undefinedGroup.output });
    expect(undefinedGroup.code).not.toBe(0);
    expect(undefinedGroup.output).toMatch(/TSGI0010: .*httpd\.conf:\d+: TSGIScriptAlias process-group=: no TSGIDaemonProcess named 'pool' is defined/);
    const ok = await configtest({
      modules: [MOD_TSGI_ASAN],
      env,
      config: `TSGIScriptAlias /scripts ${join(ROOT, 'examples')}/\nTSGIScriptAlias / ${app} application-group=%{ENV:G}\nTSGIApplicationGroup %{RESOURCE}`,
    });
    outputs.push({ name: 'apache2 -t (valid)', text: ok.output });
    expect(ok.output).toContain('Syntax OK');
    expect(findings()).toBe('');
  });
});
