/**
 * docs/directives.md against the module it documents: every directive in mod_tsgi's
 * command table (native/mod_tsgi.c) has its section with the context its flags give,
 * every `apache` example passes `apache2 -t` with mod_tsgi loaded, and every
 * TSGIDaemonProcess option the parser knows is documented.
 */
import { describe, it, expect, beforeAll } from 'vitest';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { configtest } from '../harness/apache';
import { ensureModTsgi, MOD_TSGI } from '../helpers/mod-tsgi';
import { ROOT } from '../helpers/serve';

const DOC = fs.readFileSync(path.join(ROOT, 'docs', 'directives.md'), 'utf8');
const SOURCE = fs.readFileSync(path.join(ROOT, 'native', 'mod_tsgi.c'), 'utf8');

/** The command table: name and the flags argument of each AP_INIT_* entry. */
function commandTable(): { name: string; flags: string }[] {
  const table = /static const command_rec tsgi_commands\[\] = \{([\s\S]*?)\n\};/.exec(SOURCE);
  expect(table, 'tsgi_commands in native/mod_tsgi.c').not.toBeNull();
  return [...table![1].matchAll(/AP_INIT_\w+\(\s*"(\w+)",\s*\w+,\s*\w+,\s*([\w |]+?),/g)].map((m) => ({ name: m[1], flags: m[2].replace(/\s+/g, ' ').trim() }));
}

/** The body of the `## name` section. */
function section(name: string): string {
  const start = DOC.indexOf(`\n## ${name}\n`);
  expect(start, `docs/directives.md has no "## ${name}" section`).toBeGreaterThan(-1);
  const end = DOC.indexOf('\n## ', start + 1);
  return DOC.slice(start, end < 0 ? undefined : end);
}

const CONTEXTS: Record<string, string> = {
  RSRC_CONF: 'server config, virtual host',
  OR_FILEINFO: 'server config, virtual host, directory, .htaccess',
  'ACCESS_CONF | RSRC_CONF': 'server config, virtual host, directory',
};

describe('docs/directives.md', () => {
  beforeAll(() => {
    ensureModTsgi();
  }, 600_000);

  it('documents every directive of the command table, with its syntax, default and context', () => {
    const table = commandTable();
    expect(table.map((c) => c.name).sort()).toEqual(
      [
        'TSGIApplicationGroup',
        'TSGICallableObject',
        'TSGIDaemonProcess',
        'TSGIEventLoopTimeout',
        'TSGIPassAuthorization',
        'TSGIProcessGroup',
        'TSGIRestrictEmbedded',
        'TSGIScriptAlias',
        'TSGIScriptAliasMatch',
        'TSGIScriptReloading',
        'TSGISocketPrefix',
      ].sort(),
    );
    for (const { name, flags } of table) {
      const s = section(name);
      expect(s, `${name}: Syntax row`).toMatch(new RegExp(`\\| Syntax \\| \`${name} `));
      expect(s, `${name}: Default row`).toMatch(/\| Default \| /);
      const context = /\| Context \| ([^|\n]+) \|/.exec(s)?.[1];
      // TSGIEventLoopTimeout is RSRC_CONF in the table but checks GLOBAL_ONLY itself.
      const globalOnly = new RegExp(`tsgi_cmd_${name.replace(/^TSGI/, '').replace(/[A-Z]/g, (c, i) => (i ? '_' : '') + c.toLowerCase())}\\([^)]*\\)\\s*\\{[^}]*GLOBAL_ONLY`).test(SOURCE);
      if (globalOnly) expect(context, name).toMatch(/^server config \(main server only/);
      else expect(context, `${name} (${flags})`).toBe(CONTEXTS[flags]);
      if (flags === 'OR_FILEINFO') expect(s, `${name}: Override row`).toMatch(/\| Override \| FileInfo \|/);
      expect(s, `${name}: an example`).toMatch(/```apache\n/);
    }
    expect(section('TSGIEventLoopTimeout')).toContain('`TSGIEventLoopTimeout 30`');
    expect(SOURCE).toMatch(/#define TSGI_DEFAULT_CALLABLE "application"/);
    expect(section('TSGICallableObject')).toContain('`TSGICallableObject application`');
    // Every alias option the parser knows.
    for (const opt of ['application-group', 'callable-object', 'pass-authorization', 'process-group']) {
      expect(SOURCE).toContain(`!strcasecmp(key, "${opt}")`);
      expect(section('Options of TSGIScriptAlias and TSGIScriptAliasMatch')).toContain(`\`${opt}=\``);
    }
  });

  it('every `apache` example passes apache2 -t with mod_tsgi', async () => {
    const blocks = [...DOC.matchAll(/```apache\n([\s\S]*?)```/g)].map((m) => m[1]);
    expect(blocks.length).toBeGreaterThanOrEqual(10);
    const results = await Promise.all(blocks.map((config) => configtest({ modules: [MOD_TSGI], config })));
    results.forEach((r, i) => expect(r.code, `example ${i + 1}:\n${blocks[i]}\n${r.output}`).toBe(0));
  });

  it('documents every TSGIDaemonProcess option the parser knows', () => {
    const parser = fs.readFileSync(path.join(ROOT, 'native', 'daemon_config.c'), 'utf8');
    const options = [...parser.matchAll(/!strcasecmp\(key, "([a-z][a-z-]+)"\)/g)].map((m) => m[1]);
    const expected = ['processes', 'threads', 'user', 'group', 'home', 'maximum-requests', 'inactivity-timeout', 'request-timeout', 'graceful-timeout', 'startup-timeout', 'queue-timeout', 'connect-timeout', 'socket-timeout', 'display-name', 'node', 'node-options', 'env', 'env-file', 'lang'];
    for (const opt of expected) expect(options, `daemon_config.c parses ${opt}=`).toContain(opt);
    const s = section('TSGIDaemonProcess');
    // An option whose value has spaces is documented quoted whole, as Apache needs it: `"node-options=…"`.
    for (const opt of new Set(options)) expect(s, `docs/directives.md documents ${opt}=`).toMatch(new RegExp(`\`"?${opt}=`));
  });
});
