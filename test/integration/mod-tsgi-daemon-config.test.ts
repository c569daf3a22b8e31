/**
 * The daemon-mode directives (TSGIDaemonProcess, TSGIProcessGroup, TSGIRestrictEmbedded,
 * TSGISocketPrefix, process-group=) under a real `apache2 -t`: each mistake fails with
 * the file, the line and a reason naming the directive, the option and the value; a
 * reference to an undefined group fails the configuration check with file:line; valid
 * configurations pass. Nothing is started: `-t` never spawns daemons.
 */
import { describe, it, expect, beforeAll } from 'vitest';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { configtest } from '../harness/apache';
import { ensureModTsgi, MOD_TSGI } from '../helpers/mod-tsgi';
import { ROOT } from '../helpers/serve';

const APP = join(ROOT, 'examples', 'hello.tsgi');
let dir = '';

beforeAll(() => {
  ensureModTsgi();
  dir = mkdtempSync(join(tmpdir(), 'tsgi-daemon-config-'));
  writeFileSync(join(dir, 'good.env'), '# the app\nAPP_MODE=prod\n\n  GREETING=hello world\nEMPTY=\n');
  writeFileSync(join(dir, 'bad.env'), 'A=1\n# fine\nnot an assignment\n');
  writeFileSync(join(dir, 'badname.env'), 'A=1\n1X=2\n');
  return () => rmSync(dir, { recursive: true, force: true });
}, 600_000);

const check = (config: string) => configtest({ modules: [MOD_TSGI], config });

interface BadCase {
  name: string;
  config: string | (() => string);
  /** 0-based line of `config` Apache must blame. */
  line?: number;
  reason: string | RegExp | (() => string);
}

const D = 'TSGIDaemonProcess app';
const NUMBERS: [string, string, string][] = [
  ['processes', '0', 'from 1 to 256'],
  ['processes', 'two', 'from 1 to 256'],
  ['threads', '-1', 'from 1 to 10000'],
  ['maximum-requests', '5x', 'from 0 to'],
  ['inactivity-timeout', '1.5', 'from 0 to'],
  ['request-timeout', 'abc', 'from 0 to'],
  ['graceful-timeout', '', ''],
  ['startup-timeout', '0', 'from 1 to 86400'],
  ['queue-timeout', '-3', 'from 0 to 86400'],
  ['connect-timeout', '0', 'from 1 to 86400'],
  ['socket-timeout', 'x', 'from 1 to 86400'],
  ['listen-backlog', '70000', 'from 1 to 65535'],
];

const BAD: BadCase[] = [
  ...NUMBERS.map(([key, value, range]): BadCase => ({
    name: `${key}=${value || '(empty)'}`,
    config: `${D} ${key}=${value}`,
    reason: value === '' ? `TSGIDaemonProcess app: ${key}= needs a value` : `TSGIDaemonProcess app: ${key}=${value}: expected a whole number ${range}`,
  })),
  { name: 'unknown option', config: `${D} procs=2`, reason: "TSGIDaemonProcess app: unknown option 'procs' (options are processes=, threads=" },
  { name: 'a bare argument', config: `${D} processes=2 fast`, reason: "TSGIDaemonProcess app: unexpected argument 'fast'" },
  { name: 'no name', config: 'TSGIDaemonProcess', reason: 'TSGIDaemonProcess: expected a group name' },
  { name: 'a bad name', config: 'TSGIDaemonProcess a/b', reason: "TSGIDaemonProcess: invalid group name 'a/b'" },
  {
    name: 'a duplicate group names both places',
    config: `${D} processes=1\n<VirtualHost 127.0.0.1:*>\n  ${D} processes=2\n</VirtualHost>`,
    line: 2,
    reason: /TSGIDaemonProcess app: the name is already used by the group defined at \/.*httpd\.conf:\d+/,
  },
  { name: 'user=root', config: `${D} user=root`, reason: 'TSGIDaemonProcess app: user=root: daemons must not run as root (uid 0)' },
  { name: 'user=#0', config: `${D} user=#0`, reason: 'TSGIDaemonProcess app: user=#0: daemons must not run as root (uid 0)' },
  { name: 'unknown user', config: `${D} user=no-such-user-tsgi`, reason: 'TSGIDaemonProcess app: user=no-such-user-tsgi: no such user' },
  { name: 'unknown group', config: `${D} group=no-such-group-tsgi`, reason: 'TSGIDaemonProcess app: group=no-such-group-tsgi: no such group' },
  { name: 'home= relative', config: `${D} home=srv`, reason: 'TSGIDaemonProcess app: home=srv: expected an absolute path' },
  { name: 'home= missing', config: `${D} home=/nonexistent-tsgi`, reason: 'TSGIDaemonProcess app: home=/nonexistent-tsgi: not a directory' },
  { name: 'display-name= other substitution', config: `${D} display-name=%{HOST}`, reason: 'TSGIDaemonProcess app: display-name=%{HOST}: the only substitution is %{GROUP}' },
  { name: 'node= relative path', config: `${D} node=bin/node`, reason: 'TSGIDaemonProcess app: node=bin/node: expected an absolute path or a name to find on PATH' },
  { name: 'node-options= not an option', config: `${D} "node-options=--max-old-space-size=64 app.js"`, reason: "TSGIDaemonProcess app: node-options=--max-old-space-size=64 app.js: 'app.js' is not an option" },
  { name: 'env= without =', config: `${D} env=FOO`, reason: "TSGIDaemonProcess app: env=: expected NAME=VALUE with NAME made of letters, digits and '_' (not starting with a digit), got 'FOO'" },
  { name: 'env= bad name', config: `${D} env=A-B=1`, reason: "TSGIDaemonProcess app: env=: expected NAME=VALUE with NAME made of letters, digits and '_' (not starting with a digit), got 'A-B=1'" },
  { name: 'env-file= missing', config: () => `${D} env-file=${dir}/none.env`, reason: () => `TSGIDaemonProcess app: env-file=${dir}/none.env: cannot open: No such file or directory` },
  { name: "env-file= bad line names the file's line", config: () => `${D} env-file=${dir}/bad.env`, reason: () => `TSGIDaemonProcess app: env-file ${dir}/bad.env:3: expected NAME=VALUE` },
  { name: 'env-file= bad name', config: () => `${D} env-file=${dir}/badname.env`, reason: () => `TSGIDaemonProcess app: env-file ${dir}/badname.env:2: expected NAME=VALUE with NAME made of letters, digits and '_' (not starting with a digit), got '1X=2'` },
  { name: 'TSGIDaemonProcess in <Directory>', config: `<Directory /tmp>\n${D}\n</Directory>`, line: 1, reason: 'TSGIDaemonProcess not allowed in <Directory> context' },
  { name: 'TSGIProcessGroup bad name', config: 'TSGIProcessGroup a:b', reason: "TSGIProcessGroup: invalid process group 'a:b' (expected the name of a TSGIDaemonProcess, or %{GLOBAL} for embedded mode)" },
  { name: 'process-group= bad name', config: `TSGIScriptAlias /a ${APP} process-group=%{ENV:X}`, reason: "TSGIScriptAlias process-group=: invalid process group '%{ENV:X}'" },
  { name: 'TSGIRestrictEmbedded not On/Off', config: 'TSGIRestrictEmbedded yes', reason: "TSGIRestrictEmbedded: expected On or Off, got 'yes'" },
  { name: 'TSGIRestrictEmbedded in a virtual host', config: '<VirtualHost 127.0.0.1:*>\nTSGIRestrictEmbedded On\n</VirtualHost>', line: 1, reason: 'TSGIRestrictEmbedded cannot occur within <VirtualHost> section' },
  { name: 'TSGISocketPrefix in a virtual host', config: '<VirtualHost 127.0.0.1:*>\nTSGISocketPrefix /tmp/x\n</VirtualHost>', line: 1, reason: 'TSGISocketPrefix cannot occur within <VirtualHost> section' },
  { name: 'TSGISocketPrefix ending in /', config: 'TSGISocketPrefix /var/run/', reason: "TSGISocketPrefix: '/var/run/' ends with '/'" },
  { name: 'TSGISocketPrefix too long', config: `TSGISocketPrefix /${'x'.repeat(100)}`, reason: /TSGISocketPrefix: socket prefix '\/x+' is too long: the socket paths made from it \('\/x+\.<pid>\.<n>\.status'\) must fit in 107 bytes/ },
];

describe('configtest: a broken daemon directive fails with file, line and reason', () => {
  for (const c of BAD) {
    it(c.name, async () => {
      const config = typeof c.config === 'function' ? c.config() : c.config;
      const r = await check(`TSGIScriptReloading On\n${config}`);
      expect(r.code, r.output).not.toBe(0);
      const line = r.configFirstLine + 1 + (c.line ?? 0);
      expect(r.output).toContain(`Syntax error on line ${line} of ${r.confPath}:`);
      const reason = typeof c.reason === 'function' ? c.reason() : c.reason;
      if (typeof reason === 'string') expect(r.output).toContain(reason);
      else expect(r.output).toMatch(reason);
    });
  }
});

describe('configtest: a reference to an undefined group fails the configuration check with file:line', () => {
  const cases: { name: string; config: string; line: number; directive: string }[] = [
    { name: 'TSGIProcessGroup at server level', config: 'TSGIProcessGroup nosuch', line: 1, directive: 'TSGIProcessGroup' },
    { name: 'process-group= on TSGIScriptAlias', config: `TSGIScriptAlias /a ${APP} process-group=nosuch`, line: 1, directive: 'TSGIScriptAlias process-group=' },
    { name: 'process-group= on TSGIScriptAliasMatch', config: `TSGIScriptAliasMatch ^/m/(.*) ${ROOT}/examples/$1.tsgi process-group=nosuch`, line: 1, directive: 'TSGIScriptAliasMatch process-group=' },
    { name: 'TSGIProcessGroup inside <Location>', config: '<Location /x>\n  TSGIProcessGroup nosuch\n</Location>', line: 2, directive: 'TSGIProcessGroup' },
  ];
  for (const c of cases) {
    it(c.name, async () => {
      const r = await check(`TSGIDaemonProcess other\n${c.config}`);
      expect(r.code, r.output).not.toBe(0);
      expect(r.output).toContain(`TSGI0010: ${r.confPath}:${r.configFirstLine + c.line}: ${c.directive}: no TSGIDaemonProcess named 'nosuch' is defined`);
    });
  }
});

describe('configtest: valid daemon configurations', () => {
  it('every option, groups defined after their use, in server and virtual host', async () => {
    const r = await check(
      [
        `TSGIScriptAlias /early ${APP} process-group=later`,
        'TSGIRestrictEmbedded On',
        `TSGISocketPrefix ${dir}/sock`,
        [
          'TSGIDaemonProcess app processes=3 threads=5 user=nobody group=nogroup home=/tmp',
          'maximum-requests=100 inactivity-timeout=0 request-timeout=30 graceful-timeout=5',
          'startup-timeout=10 queue-timeout=0 connect-timeout=3 socket-timeout=20 listen-backlog=50',
          'display-name=%{GROUP} node=node "node-options=--max-old-space-size=64 --no-warnings"',
          `env=A=1 "env=B=two words" env=C= env-file=${dir}/good.env lang=C.UTF-8`,
        ].join(' '),
        'TSGIDaemonProcess later user=#65534 group=#65534 node=/usr/bin/node',
        'TSGIProcessGroup app',
        '<VirtualHost 127.0.0.1:*>',
        '  ServerName v.test',
        '  TSGIDaemonProcess vhost-group display-name=custom',
        `  TSGIScriptAlias /v ${APP} process-group=vhost-group`,
        `  TSGIScriptAlias /e ${APP} process-group=%{GLOBAL}`,
        '</VirtualHost>',
        '<Location /x>',
        '  TSGIProcessGroup %{GLOBAL}',
        '</Location>',
        `<Directory ${join(ROOT, 'examples')}>`,
        '  TSGIProcessGroup later',
        '</Directory>',
      ].join('\n'),
    );
    expect(r.output).toContain('Syntax OK');
    expect(r.code).toBe(0);
  });

  it('a group defined but not used, and node= that does not exist yet, pass (checked at start)', async () => {
    const r = await check('TSGIDaemonProcess idle node=/nonexistent/node');
    expect(r.code, r.output).toBe(0);
  });
});
