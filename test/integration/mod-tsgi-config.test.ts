/**
 * mod_tsgi's directives under a real, private Apache: each mistake fails `apache2 -t`
 * with the file, the line and a reason naming the directive and the bad value; valid
 * configurations pass, and the module loads and serves a .tsgi app in embedded mode
 * under the event, worker and prefork MPMs.
 */
import { describe, it, expect, beforeAll } from 'vitest';
import { configtest, startApache, type Mpm } from '../harness/apache';
import { request } from '../harness/http';
import { ensureModTsgi, MOD_TSGI } from '../helpers/mod-tsgi';
import { ROOT } from '../helpers/serve';
import { join } from 'node:path';

const APP = join(ROOT, 'examples', 'hello.tsgi');

beforeAll(() => {
  ensureModTsgi();
}, 600_000);

/** `apache2 -t` on `config` (appended to the harness's httpd.conf). */
const check = (config: string) => configtest({ modules: [MOD_TSGI], config });

interface BadCase {
  name: string;
  config: string;
  /** 0-based line of `config` Apache must blame. */
  line?: number;
  reason: string | RegExp;
}

const BAD: BadCase[] = [
  { name: 'TSGIEventLoopTimeout 0', config: 'TSGIEventLoopTimeout 0', reason: "TSGIEventLoopTimeout: expected a number of seconds from 1 to 86400, or Off, got '0'" },
  { name: 'TSGIEventLoopTimeout not a number', config: 'TSGIEventLoopTimeout 3s', reason: "TSGIEventLoopTimeout: expected a number of seconds from 1 to 86400, or Off, got '3s'" },
  { name: 'TSGIEventLoopTimeout in a virtual host', config: '<VirtualHost 127.0.0.1:80>\nTSGIEventLoopTimeout 5\n</VirtualHost>', line: 1, reason: 'TSGIEventLoopTimeout cannot occur within <VirtualHost> section' },
  { name: 'TSGIScriptAlias without a leading slash', config: `TSGIScriptAlias rest ${APP}`, reason: "TSGIScriptAlias: URL-path must start with '/', got 'rest'" },
  { name: 'TSGIScriptAlias with one argument', config: 'TSGIScriptAlias /rest', reason: 'TSGIScriptAlias: expected a URL-path and a script path' },
  {
    name: "TSGIScriptAlias's trailing-slash trap (slash on the URL only)",
    config: `TSGIScriptAlias /rest/ ${APP}`,
    reason: `TSGIScriptAlias: URL-path '/rest/' ends with '/' but the script path '${APP}' does not`,
  },
  { name: 'TSGIScriptAlias with an unknown option', config: `TSGIScriptAlias /rest ${APP} bogus=1`, reason: "TSGIScriptAlias: unknown option 'bogus'" },
  { name: 'TSGIScriptAlias with a bare extra argument', config: `TSGIScriptAlias /rest ${APP} extra`, reason: "TSGIScriptAlias: unexpected argument 'extra'" },
  {
    name: 'TSGIScriptAlias application-group= with an unknown %{...}',
    config: `TSGIScriptAlias /rest ${APP} application-group=%{BOGUS}`,
    reason: "TSGIScriptAlias application-group=: invalid application group '%{BOGUS}'",
  },
  {
    name: 'TSGIScriptAlias callable-object= not an identifier',
    config: `TSGIScriptAlias /rest ${APP} callable-object=my-app`,
    reason: "TSGIScriptAlias callable-object=: 'my-app' is not a valid callable name",
  },
  {
    name: 'TSGIScriptAlias pass-authorization= not On/Off',
    config: `TSGIScriptAlias /rest ${APP} pass-authorization=maybe`,
    reason: "TSGIScriptAlias pass-authorization=: expected On or Off, got 'maybe'",
  },
  {
    name: 'TSGIScriptAlias inside <Directory>',
    config: `<Directory /tmp>\nTSGIScriptAlias /rest ${APP}\n</Directory>`,
    line: 1,
    reason: 'TSGIScriptAlias not allowed in <Directory> context',
  },
  {
    name: 'TSGIScriptAliasMatch with a bad regex',
    config: 'TSGIScriptAliasMatch ^/(a /srv/$1.tsgi',
    reason: "TSGIScriptAliasMatch: cannot compile regular expression '^/(a'",
  },
  {
    name: 'TSGIScriptAliasMatch using a group the regex lacks',
    config: 'TSGIScriptAliasMatch ^/a/([^/]+) /srv/$1/$2.tsgi',
    reason: "TSGIScriptAliasMatch: script path '/srv/$1/$2.tsgi' uses $2 but the regular expression '^/a/([^/]+)' has 1 group(s)",
  },
  { name: 'TSGIScriptAliasMatch with one argument', config: 'TSGIScriptAliasMatch ^/a', reason: 'TSGIScriptAliasMatch: expected a regular expression and a script path' },
  { name: 'TSGICallableObject not an identifier', config: 'TSGICallableObject 1app', reason: "TSGICallableObject: '1app' is not a valid callable name" },
  { name: 'TSGICallableObject with two arguments', config: 'TSGICallableObject a b', reason: 'TSGICallableObject takes one argument' },
  { name: 'TSGIScriptReloading not On/Off', config: 'TSGIScriptReloading maybe', reason: "TSGIScriptReloading: expected On or Off, got 'maybe'" },
  { name: 'TSGIPassAuthorization not On/Off', config: 'TSGIPassAuthorization yes', reason: "TSGIPassAuthorization: expected On or Off, got 'yes'" },
  {
    name: 'TSGIApplicationGroup with an unknown %{...}',
    config: 'TSGIApplicationGroup %{HOST}',
    reason: "TSGIApplicationGroup: invalid application group '%{HOST}' (expected a name, %{GLOBAL}, %{SERVER}, %{RESOURCE} or %{ENV:variable})",
  },
  { name: 'TSGIApplicationGroup %{ENV:} without a name', config: 'TSGIApplicationGroup %{ENV:}', reason: "TSGIApplicationGroup: invalid application group '%{ENV:}'" },
  // Apache itself refuses an empty argument to a one-argument directive.
  { name: 'TSGIApplicationGroup empty', config: 'TSGIApplicationGroup ""', reason: 'TSGIApplicationGroup takes one argument' },
  {
    name: 'TSGIScriptAliasMatch inside <Location>',
    config: '<Location /x>\n  TSGIApplicationGroup %{GLOBAL}\n  TSGIScriptAliasMatch ^/x /srv/x.tsgi\n</Location>',
    line: 2,
    reason: 'TSGIScriptAliasMatch not allowed in <Location> context',
  },
];

describe('configtest: a broken directive fails with file, line and reason', () => {
  for (const c of BAD) {
    it(c.name, async () => {
      // A valid line first, so the blamed line is not simply the first of the snippet.
      const r = await check(`TSGIScriptReloading On\n${c.config}`);
      expect(r.code, r.output).not.toBe(0);
      const line = r.configFirstLine + 1 + (c.line ?? 0);
      expect(r.output).toContain(`Syntax error on line ${line} of ${r.confPath}:`);
      if (typeof c.reason === 'string') expect(r.output).toContain(c.reason);
      else expect(r.output).toMatch(c.reason);
    });
  }
});

describe('configtest: valid configurations', () => {
  it('every directive, in every context mod_wsgi allows', async () => {
    const r = await check(
      [
        `TSGIScriptAlias /rest ${APP} application-group=%{GLOBAL} callable-object=application pass-authorization=Off`,
        `TSGIScriptAlias / ${APP}`,
        `TSGIScriptAlias /scripts/ ${join(ROOT, 'examples')}/`,
        `TSGIScriptAliasMatch "^/m/([^/]+)" "${join(ROOT, 'examples')}/$1.tsgi" application-group=%{RESOURCE}`,
        'TSGICallableObject application',
        'TSGIScriptReloading Off',
        'TSGIPassAuthorization on',
        'TSGIApplicationGroup %{SERVER}',
        'TSGIEventLoopTimeout 45',
        'TSGIEventLoopTimeout off',
        '<VirtualHost 127.0.0.1:*>',
        '  ServerName v.test',
        `  TSGIScriptAlias /v ${APP} application-group=%{ENV:APP_GROUP}`,
        '  TSGIApplicationGroup shared',
        '</VirtualHost>',
        `<Directory ${join(ROOT, 'examples')}>`,
        '  TSGICallableObject app2',
        '  TSGIScriptReloading On',
        '  TSGIPassAuthorization Off',
        '  TSGIApplicationGroup %{GLOBAL}',
        '  AllowOverride FileInfo',
        '</Directory>',
        '<Location /rest>',
        '  TSGIApplicationGroup %{ENV:GROUP}',
        '</Location>',
      ].join('\n'),
    );
    expect(r.output).toContain('Syntax OK');
    expect(r.code).toBe(0);
  });

  it('a script directory without the URL slash only warns, naming file and line', async () => {
    const r = await check(`TSGIScriptReloading On\nTSGIScriptAlias /scripts ${join(ROOT, 'examples')}/`);
    expect(r.code, r.output).toBe(0);
    expect(r.output).toContain(`TSGI0001: ${r.confPath}:${r.configFirstLine + 1}: TSGIScriptAlias /scripts`);
  });
});

describe('the module loads and serves hello.tsgi (embedded) under every MPM', () => {
  const mpms: Mpm[] = ['event', 'worker', 'prefork'];
  for (const mpm of mpms) {
    it(mpm, async () => {
      const apache = await startApache({
        mpm,
        modules: [MOD_TSGI],
        config: `TSGIScriptAlias /hello ${APP}\nHeader always set X-Tsgi-Script-Name "%{mod_tsgi.script_name}e" env=mod_tsgi.script_name`,
      });
      let stopped = false;
      try {
        const r = await request(apache.url('/hello/x'));
        expect(r.status).toBe(200);
        expect(r.text).toBe('Hello World!\n');
        expect(r.headers['content-type']).toBe('text/plain; charset=utf-8');
        expect(r.headers['x-tsgi-script-name']).toBe('/hello');
        expect(r.headers['server']).toMatch(/mod_tsgi\/\d+\.\d+\.\d+/);
        expect(apache.errorLog()).toMatch(/TSGI0120: embedded runtime ready \(Node 18\.\d+\.\d+/);
        // Node in every child, and a clean stop: nothing left for SIGKILL.
        const { killed } = await apache.stop();
        stopped = true;
        expect(killed).toEqual([]);
        expect(apache.errorLog()).not.toMatch(/:(emerg|alert|crit)\]|Segmentation|SIGKILL|TSGI0123/);
      } finally {
        if (!stopped) await apache.stop();
      }
    });
  }
});
