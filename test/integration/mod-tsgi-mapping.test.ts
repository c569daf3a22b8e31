/**
 * mod_tsgi's URL mapping against a real, private Apache (event MPM): the golden table
 * of shared/reference/mod_wsgi.md §3.2 (SCRIPT_NAME / PATH_INFO exactly as mod_wsgi
 * computes them), the application group and per-directory settings, and the CGI environ
 * the handler builds.
 *
 * Each mapped URL runs a real .tsgi app in the embedded runtime that reports its environ
 * as JSON. The module also publishes the mapping in r->subprocess_env (mod_tsgi.*, the
 * same keys the app's environ carries) from its fixups hook, which mod_headers copies
 * into response headers; the tests check that both agree, and use the headers where no
 * app runs (404s).
 *
 * All of it runs in embedded and in daemon mode (TSGIDaemonProcess tsgi-test
 * processes=2, TSGIProcessGroup tsgi-test at server level, inherited by every virtual
 * host): the mapping is the Apache child's either way; what differs is
 * mod_tsgi.process_group (the group's name in daemon mode).
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { join } from 'node:path';
import { startApache, type ApacheInstance } from '../harness/apache';
import { request, type HttpResponse } from '../harness/http';
import { ensureMode, expectedProcessGroup, MOD_TSGI, modeConfig, TSGI_MODES, type TsgiMode } from '../helpers/mod-tsgi';
import { ROOT } from '../helpers/serve';

// Reports its environ as JSON (strings, booleans and arrays as they are, other values by
// type), plus what process.env says about a SetEnv variable and the request body.
const ENV_APP = `
export const application = async (environ: any, startResponse: any) => {
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(environ)) out[k] = typeof v === 'string' || typeof v === 'boolean' || Array.isArray(v) ? v : '<' + typeof v + '>';
  out['process.env.MY_VAR'] = process.env.MY_VAR ?? null;
  out['body'] = Buffer.from(await environ['tsgi.input'].read()).toString('utf8');
  startResponse('200 OK', [['Content-Type', 'application/json']]);
  return [JSON.stringify(out)];
};
`;
const REST = ENV_APP;

describe.each(TSGI_MODES)('%s mode', (mode: TsgiMode) => {
  let apache: ApacheInstance;

  beforeAll(async () => {
    ensureMode(mode);
    apache = await startApache({
      modules: [MOD_TSGI],
      files: {
        'apps/rest.tsgi': REST,
        'apps/app.tsgi': REST,
        'apps/handler.tsgi': REST,
        // TSGICallableObject handler in <Directory apps/scripts>
        'apps/scripts/foo.tsgi': REST.replace('export const application', 'export const handler'),
        'apps/scripts/sub/index.tsgi': REST.replace('export const application', 'export const handler'),
        'apps/opts.tsgi': REST.replace('export const application', 'export const app2'),
        'static/file.txt': 'static file\n',
      },
      config: ({ root, port }) => `
  Header always set X-Tsgi-Script-Name "%{mod_tsgi.script_name}e" env=mod_tsgi.script_name
  Header always set X-Tsgi-Path-Info "%{mod_tsgi.path_info}e" env=mod_tsgi.script_name
  Header always set X-Tsgi-Application-Group "%{mod_tsgi.application_group}e" env=mod_tsgi.script_name
  Header always set X-Tsgi-Callable-Object "%{mod_tsgi.callable_object}e" env=mod_tsgi.script_name
  Header always set X-Tsgi-Script-Reloading "%{mod_tsgi.script_reloading}e" env=mod_tsgi.script_name
  Header always set X-Tsgi-Process-Group "%{mod_tsgi.process_group}e" env=mod_tsgi.script_name

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
  </VirtualHost>
  <VirtualHost 127.0.0.1:${port}>
    ServerName noslash.test
    MergeSlashes Off
  </VirtualHost>
  ${modeConfig(mode)}`,
    });
  }, 600_000);

  afterAll(async () => {
    await apache?.stop();
  });

  /** A header as the bytes Apache sent, read as UTF-8 (PATH_INFO is %-decoded bytes). */
  function header(r: HttpResponse, name: string): string | undefined {
    const v = r.headers[name.toLowerCase()];
    if (v === undefined) return undefined;
    return Buffer.from(String(v), 'latin1').toString('utf8');
  }

  function get(path: string, host?: string, headers: Record<string, string> = {}): Promise<HttpResponse> {
    return request(apache.url(path), { headers: host ? { Host: host, ...headers } : headers });
  }

  interface Row {
    host?: string;
    path: string;
    /** undefined: the request is not mapped to a script at all */
    scriptName?: string;
    pathInfo?: string;
    status: number;
  }

  // The golden table (shared/reference/mod_wsgi.md §3.2 and DESIGN.md §4).
  const GOLDEN: Row[] = [
    // TSGIScriptAlias /rest .../rest.tsgi (a file)
    { path: '/rest', scriptName: '/rest', pathInfo: '', status: 200 },
    { path: '/rest/', scriptName: '/rest', pathInfo: '/', status: 200 },
    { path: '/rest/a/b?x=1', scriptName: '/rest', pathInfo: '/a/b', status: 200 },
    { path: '/rest//a///b', scriptName: '/rest', pathInfo: '/a/b', status: 200 },
    { path: '//rest/a', scriptName: '/rest', pathInfo: '/a', status: 200 },
    { path: '/restful', status: 404 },
    { path: '/rest/caf%C3%A9', scriptName: '/rest', pathInfo: '/café', status: 200 },
    { path: '/rest/a%20b/c%3Fd', scriptName: '/rest', pathInfo: '/a b/c?d', status: 200 },
    { path: '/rest/./x/../y', scriptName: '/rest', pathInfo: '/y', status: 200 },
    // %2F is refused by Apache before any mapping (AllowEncodedSlashes Off).
    { path: '/rest/a%2Fb', status: 404 },
    // MergeSlashes Off: the walk and ap_find_path_info still give mod_wsgi's split, then
    // the duplicate slashes collapse.
    { host: 'noslash.test', path: '/rest//a///b', scriptName: '/rest', pathInfo: '/a/b', status: 200 },
    { host: 'noslash.test', path: '//rest/a', scriptName: '/rest', pathInfo: '/a', status: 200 },
    { host: 'noslash.test', path: '/rest/', scriptName: '/rest', pathInfo: '/', status: 200 },
    // The root mount: SCRIPT_NAME is never "/".
    { host: 'root.test', path: '/', scriptName: '', pathInfo: '/', status: 200 },
    { host: 'root.test', path: '/x/y', scriptName: '', pathInfo: '/x/y', status: 200 },
    { host: 'root.test', path: '/rest/a', scriptName: '', pathInfo: '/rest/a', status: 200 },
    // Directory form: the next path segment names the script; the file system decides the split.
    { path: '/wsgi/foo.tsgi/bar', scriptName: '/wsgi/foo.tsgi', pathInfo: '/bar', status: 200 },
    { path: '/wsgi/foo.tsgi', scriptName: '/wsgi/foo.tsgi', pathInfo: '', status: 200 },
    { path: '/wsgi/sub/index.tsgi/p', scriptName: '/wsgi/sub/index.tsgi', pathInfo: '/p', status: 200 },
    // A name that does not exist: the walk stops there (Apache's split), then 404.
    { path: '/wsgi/nothere/x', scriptName: '/wsgi/nothere', pathInfo: '/x', status: 404 },
    { path: '/dir-no-slash/foo.tsgi/bar', scriptName: '/dir-no-slash/foo.tsgi', pathInfo: '/bar', status: 200 },
    // TSGIScriptAliasMatch: the match's end offset ends SCRIPT_NAME.
    { path: '/wsgi-scripts/foo/bar', scriptName: '/wsgi-scripts/foo', pathInfo: '/bar', status: 200 },
    { path: '/wsgi-scripts/foo', scriptName: '/wsgi-scripts/foo', pathInfo: '', status: 200 },
    // ... and a target behind the script keeps the prefix in PATH_INFO (mod_wsgi PR #797).
    { path: '/admin/x', scriptName: '', pathInfo: '/admin/x', status: 200 },
    { path: '/files', scriptName: '', pathInfo: '/files', status: 200 },
    // A script that does not exist: mapped, then 404.
    { path: '/missing/x', scriptName: '/missing', pathInfo: '/x', status: 404 },
  ];

  describe('SCRIPT_NAME / PATH_INFO golden table', () => {
    for (const row of GOLDEN) {
      const label = `${row.host ?? '127.0.0.1'} ${row.path} -> ${row.scriptName === undefined ? 'not mapped' : `(${JSON.stringify(row.scriptName)}, ${JSON.stringify(row.pathInfo)})`}`;
      it(label, async () => {
        const r = await get(row.path, row.host);
        expect(r.status).toBe(row.status);
        expect(header(r, 'X-Tsgi-Script-Name')).toBe(row.scriptName);
        expect(header(r, 'X-Tsgi-Path-Info')).toBe(row.pathInfo);
        if (row.status === 200) {
          // What the application itself was given.
          const env = JSON.parse(r.text) as Record<string, string>;
          expect(env.SCRIPT_NAME).toBe(row.scriptName);
          expect(env.PATH_INFO).toBe(row.pathInfo);
          expect(env['mod_tsgi.script_name']).toBe(row.scriptName);
        }
      });
    }
  });

  describe('mapping around other modules', () => {
    it('mod_alias runs first: Alias /static beats TSGIScriptAlias /', async () => {
      const r = await get('/static/file.txt', 'root.test');
      expect(r.status).toBe(200);
      expect(r.text).toBe('static file\n');
      expect(r.headers['x-tsgi-script-name']).toBeUndefined();
    });

    it('a directory as the script: 403 and a log line', async () => {
      const mark = apache.logMark();
      const r = await get('/wsgi/sub/');
      expect(r.status).toBe(403);
      await apache.waitForLog(/TSGI0005: Attempt to invoke directory as TSGI application: .*apps\/scripts\/sub\//, 5000, mark);
    });

    it('a missing script: 404 and a log line', async () => {
      const mark = apache.logMark();
      expect((await get('/missing')).status).toBe(404);
      await apache.waitForLog(/TSGI0004: Target TSGI script not found or unable to stat: .*apps\/missing\.tsgi/, 5000, mark);
    });
  });

  describe('application group, callable object, reloading', () => {
    const port = () => apache.port;
    const cases: { name: string; host?: string; path: string; group: () => string; callable?: string; reloading?: string }[] = [
      { name: 'default: one group per (virtual host, mount)', path: '/rest/x', group: () => `127.0.0.1:${port()}|/rest` },
      // The port is the request's (UseCanonicalName Off), left out when 80 or 443, as mod_wsgi.
      { name: 'default in another virtual host', host: 'root.test:PORT', path: '/rest/x', group: () => `root.test:${port()}|` },
      { name: 'default in another virtual host, port 80 in Host', host: 'root.test', path: '/rest/x', group: () => 'root.test|' },
      { name: 'default for an AliasMatch mount', path: '/admin/x', group: () => `127.0.0.1:${port()}|` },
      { name: 'alias options', path: '/opts/x', group: () => 'shared', callable: 'app2' },
      { name: '%{GLOBAL}', path: '/global', group: () => '' },
      { name: '%{SERVER}', path: '/server', group: () => `127.0.0.1:${port()}` },
      { name: '%{ENV:APP_GROUP} from SetEnv', path: '/envgroup', group: () => 'from-env' },
      { name: '<Directory> settings', path: '/wsgi/foo.tsgi/bar', group: () => 'scripts-group', callable: 'handler', reloading: '0' },
    ];
    for (const c of cases) {
      it(c.name, async () => {
        const r = await get(c.path, c.host?.replace('PORT', String(port())));
        expect(r.status).toBe(200);
        const env = JSON.parse(r.text) as Record<string, string>;
        expect(env['mod_tsgi.application_group']).toBe(c.group());
        expect(env['mod_tsgi.process_group']).toBe(expectedProcessGroup(mode));
        expect(header(r, 'X-Tsgi-Application-Group')).toBe(c.group());
        expect(header(r, 'X-Tsgi-Callable-Object')).toBe(c.callable ?? 'application');
        expect(header(r, 'X-Tsgi-Script-Reloading')).toBe(c.reloading ?? '1');
        expect(header(r, 'X-Tsgi-Process-Group')).toBe(expectedProcessGroup(mode));
      });
    }
  });

  /** The environ the application was given, as it reported it. */
  async function environOf(path: string, opts: Parameters<typeof request>[1] = {}): Promise<Map<string, unknown>> {
    // node:http adds no Host to a flat header list; HTTP/1.1 without one is a 400.
    if (Array.isArray(opts.headers)) opts = { ...opts, headers: ['Host', `127.0.0.1:${apache.port}`, ...opts.headers] };
    const r = await request(apache.url(path), opts);
    expect(r.status, r.text).toBe(200);
    return new Map(Object.entries(JSON.parse(r.text) as Record<string, unknown>));
  }

  describe('the CGI environ', () => {
    it('request variables, SetEnv, raw REQUEST_URI, decoded PATH_INFO', async () => {
      const env = await environOf('/rest/caf%C3%A9?x=1&y=%20', {
        method: 'POST',
        body: 'hi',
        headers: { 'Content-Type': 'text/plain', 'X-Foo': 'a', Accept: 'x/y' },
      });
      expect(env.get('REQUEST_METHOD')).toBe('POST');
      expect(env.get('SCRIPT_NAME')).toBe('/rest');
      expect(env.get('PATH_INFO')).toBe('/café');
      expect(env.get('REQUEST_URI')).toBe('/rest/caf%C3%A9?x=1&y=%20');
      expect(env.get('QUERY_STRING')).toBe('x=1&y=%20');
      expect(env.get('CONTENT_TYPE')).toBe('text/plain');
      expect(env.get('CONTENT_LENGTH')).toBe('2');
      expect(env.has('HTTP_CONTENT_TYPE')).toBe(false);
      expect(env.has('HTTP_CONTENT_LENGTH')).toBe(false);
      expect(env.get('HTTP_X_FOO')).toBe('a');
      expect(env.get('HTTP_ACCEPT')).toBe('x/y');
      expect(env.get('HTTP_HOST')).toBe(`127.0.0.1:${apache.port}`);
      expect(env.get('SERVER_NAME')).toBe('127.0.0.1');
      expect(env.get('SERVER_PORT')).toBe(String(apache.port));
      expect(env.get('SERVER_PROTOCOL')).toBe('HTTP/1.1');
      expect(env.get('REMOTE_ADDR')).toBe('127.0.0.1');
      expect(env.get('REMOTE_PORT')).toMatch(/^\d+$/);
      expect(env.get('REQUEST_SCHEME')).toBe('http');
      expect(env.get('SCRIPT_FILENAME')).toBe(join(apache.root, 'apps', 'rest.tsgi'));
      expect(env.get('MY_VAR')).toBe('hello');
      expect(env.get('process.env.MY_VAR')).toBe(null); // SetEnv never reaches process.env
      expect(env.get('body')).toBe('hi');
      expect(env.get('tsgi.url_scheme')).toBe('http');
      expect(env.get('tsgi.version')).toEqual([1, 0]);
      expect(env.get('tsgi.multithread')).toBe(true);
      // embedded: Apache runs several children; daemon: processes= was given (mod_wsgi's rule).
      expect(env.get('tsgi.multiprocess')).toBe(true);
      expect(env.get('tsgi.run_once')).toBe(false);
      expect(env.get('tsgi.input')).toBe('<object>');
      expect(env.get('tsgi.errors')).toBe('<object>');
      expect(env.get('mod_tsgi.process_group')).toBe(expectedProcessGroup(mode));
      expect(env.get('mod_tsgi.application_group')).toBe(`127.0.0.1:${apache.port}|/rest`);
      expect(env.get('mod_tsgi.script_name')).toBe('/rest');
      for (const k of ['PATH', 'HTTPS', 'GATEWAY_INTERFACE', 'PATH_TRANSLATED', 'SERVER_SIGNATURE', 'REMOTE_HOST', 'REMOTE_IDENT']) {
        expect(env.has(k), k).toBe(false);
      }
    });

    it('an empty query string is present; no PATH_INFO is ""', async () => {
      const env = await environOf('/rest');
      expect(env.get('QUERY_STRING')).toBe('');
      expect(env.get('PATH_INFO')).toBe('');
      expect(env.get('REQUEST_URI')).toBe('/rest');
    });

    it('header names with characters other than alphanumerics and "-" are dropped (no X_Foo posing as X-Foo)', async () => {
      const env = await environOf('/rest', { headers: ['X-Foo', 'real', 'X_Foo', 'spoof', 'X.Bar', 'dot'] });
      expect(env.get('HTTP_X_FOO')).toBe('real');
      expect([...env.keys()].filter((k) => k.startsWith('HTTP_X'))).toEqual(['HTTP_X_FOO']);
    });

    it('Proxy (httpoxy) is never passed', async () => {
      const env = await environOf('/rest', { headers: { Proxy: 'http://evil.example/' } });
      expect(env.has('HTTP_PROXY')).toBe(false);
    });

    it('Authorization is dropped by default', async () => {
      const env = await environOf('/rest', { headers: { Authorization: 'Basic dTpw' } });
      expect(env.has('HTTP_AUTHORIZATION')).toBe(false);
    });

    it('Authorization is passed with pass-authorization=On', async () => {
      const env = await environOf('/auth', { headers: { Authorization: 'Basic dTpw' } });
      expect(env.get('HTTP_AUTHORIZATION')).toBe('Basic dTpw');
    });

    it('HTTPS becomes tsgi.url_scheme and is removed', async () => {
      const env = await environOf('/secure/x');
      expect(env.get('tsgi.url_scheme')).toBe('https');
      expect(env.has('HTTPS')).toBe(false);
    });

    it('duplicate request headers are joined with ", "', async () => {
      const env = await environOf('/rest', { headers: ['X-Dup', 'a', 'X-Dup', 'b'] });
      expect(env.get('HTTP_X_DUP')).toBe('a, b');
    });
  });
});
