/**
 * The httpd.conf `tsgi express` generates (src/cli/httpd-config.ts), as text: the
 * integration test (test/integration/express.test.ts) runs it under a real Apache.
 */
import { describe, it, expect } from 'vitest';
import * as os from 'node:os';
import { join } from 'node:path';
import {
  MAX_SOCKET_PREFIX,
  apachePool,
  daemonEnvMarker,
  defaultServerRoot,
  expressSettings,
  processGroupName,
  renderApachectl,
  renderHttpdConf,
  serverRootFiles,
  serverUrl,
  shQuote,
} from '../../src/cli/httpd-config';
import { parseOptions, parseServerOptions } from '../../src/cli/express';

const BUILTINS = new Set(['log_config_module', 'unixd_module', 'so_module']);

const render = (o: Partial<Parameters<typeof expressSettings>[0]> = {}) =>
  renderHttpdConf(expressSettings({ app: '/srv/my app/hello.tsgi', modulePath: '/opt/tsgi/mod_tsgi.so', serverRoot: '/tmp/x root', user: null, ...o }), BUILTINS);

describe('tsgi express httpd.conf', () => {
  it('defaults: port 8000 on 127.0.0.1, embedded, 1 process x 5 threads, a server root per port and user', () => {
    const s = expressSettings({ app: '/a.tsgi', modulePath: '/m.so' });
    expect(s).toMatchObject({ host: '127.0.0.1', port: 8000, mode: 'embedded', processes: 1, threads: 5, logLevel: 'info' });
    expect(s.serverRoot).toBe(join(os.tmpdir(), `tsgi-express-8000-${process.getuid!()}`));
    expect(defaultServerRoot(8123)).toBe(join(os.tmpdir(), `tsgi-express-8123-${process.getuid!()}`));
    expect(serverUrl(s)).toBe('http://127.0.0.1:8000/');
  });

  it('loads the MPM, mod_tsgi and what the config uses, but never a module compiled into apache2', () => {
    const conf = render();
    expect(conf).toContain('LoadModule mpm_event_module "/usr/lib/apache2/modules/mod_mpm_event.so"');
    expect(conf).toContain('LoadModule tsgi_module "/opt/tsgi/mod_tsgi.so"');
    expect(conf).toContain('LoadModule reqtimeout_module');
    expect(conf).not.toMatch(/LoadModule (log_config|unixd)_module/);
  });

  it('keeps everything in the server root, quoted (spaces included)', () => {
    const conf = render();
    expect(conf).toContain('ServerRoot "/tmp/x root"');
    expect(conf).toContain('DefaultRuntimeDir "/tmp/x root"');
    expect(conf).toContain('PidFile "/tmp/x root/httpd.pid"');
    expect(conf).toContain('Mutex "file:/tmp/x root" default');
    expect(conf).toContain('ErrorLog "/tmp/x root/error_log.fifo"');
    expect(conf).toContain('CustomLog "/tmp/x root/access_log.fifo" tsgi_express');
    expect(conf).toContain('TSGIScriptAlias / "/srv/my app/hello.tsgi"');
    expect(conf).toContain('<Directory "/srv/my app">\n    AllowOverride None\n    Require all granted\n</Directory>');
  });

  it('sizes the event MPM to a fixed pool', () => {
    const conf = render({ processes: 2, threads: 8 });
    for (const line of ['StartServers 2', 'ThreadsPerChild 8', 'MinSpareThreads 16', 'MaxSpareThreads 16', 'MaxRequestWorkers 16']) {
      expect(conf).toContain(`\n${line}\n`);
    }
  });

  it('IPv6 and wildcard hosts', () => {
    expect(render({ host: '::1', port: 8080 })).toContain('Listen [::1]:8080\nServerName [::1]:8080');
    expect(render({ host: '0.0.0.0' })).toContain('Listen 0.0.0.0:8000\nServerName 127.0.0.1:8000');
    expect(serverUrl({ host: '::', port: 81 })).toBe('http://[::1]:81/');
  });

  it('User/Group only when asked (root defaults to www-data)', () => {
    expect(render()).not.toMatch(/^(User|Group) /m);
    expect(render({ user: 'www-data', group: 'www-data' })).toContain('User www-data\nGroup www-data\n');
  });
});

describe('tsgi express options in httpd.conf', () => {
  it('--mount-point, --setenv (quoted), --reload-on-changes, --request-timeout', () => {
    const conf = render({ mountPoint: '/app', setenv: [['A', 'x "y" \\z'], ['B', '']], reloadOnChanges: true, timeouts: { request: 42 } as never });
    expect(conf).toContain('TSGIScriptAlias /app "/srv/my app/hello.tsgi"');
    expect(conf).toContain('SetEnv A "x \\"y\\" \\\\z"\nSetEnv B ""\n');
    expect(conf).toContain('LoadModule env_module');
    expect(conf).toMatch(/^TSGIScriptReloading On$/m);
    expect(conf).toMatch(/^Timeout 42$/m);
    expect(conf).toMatch(/^TSGIEventLoopTimeout 42$/m);
    expect(render()).toMatch(/^TSGIScriptReloading Off$/m);
    expect(render()).not.toMatch(/LoadModule (env|alias|status)_module/);
  });

  it('--url-alias, --server-status, --include-file', () => {
    const conf = render({ urlAliases: [{ url: '/static', path: '/nonexistent/static dir' }], serverStatus: true, includeFiles: ['/etc/x.conf'] });
    expect(conf).toContain('LoadModule alias_module');
    expect(conf).toContain('Alias /static "/nonexistent/static dir"\n<Directory "/nonexistent/static dir">');
    expect(conf).toContain('LoadModule status_module');
    expect(conf).toContain('<Location /server-status>\n    SetHandler server-status\n    Require local\n</Location>');
    expect(conf.trimEnd().endsWith('Include "/etc/x.conf"')).toBe(true);
  });

  it('logs: FIFOs for start-server; files, or the terminal under -DTSGI_LOG_TO_TERMINAL, for setup-server', () => {
    expect(render()).toContain('CustomLog "/tmp/x root/access_log.fifo" tsgi_express');
    const files = render({ logs: 'files', accessLog: false });
    expect(files).toContain('<IfDefine !TSGI_LOG_TO_TERMINAL>\n    ErrorLog "/tmp/x root/error_log"\n</IfDefine>');
    expect(files).not.toContain('CustomLog');
    expect(render({ logs: 'files', accessLog: true })).toContain('    CustomLog "/tmp/x root/access_log" tsgi_express\n');
  });

  it('apachectl drives /usr/sbin/apache2 -d ROOT -f ROOT/httpd.conf', () => {
    const s = expressSettings({ app: '/a.tsgi', modulePath: '/m.so', serverRoot: "/tmp/it's root", logs: 'files', logToTerminal: true });
    const sh = renderApachectl(s);
    expect(sh.startsWith('#!/bin/sh\n')).toBe(true);
    expect(sh).toContain(`ROOT='/tmp/it'\\''s root'\n`);
    expect(sh).toContain('exec "$HTTPD" -d "$ROOT" -f "$CONF" -k start');
    expect(sh).toContain('LOG_TO_TERMINAL=1');
    expect(shQuote("a'b")).toBe(`'a'\\''b'`);
  });
});

describe('tsgi express option parsing', () => {
  it('one- and two-value options, repeats, --name=value, strict errors', () => {
    const r = parseOptions(['app.tsgi', '--port=81', '--setenv', 'A', '1', '--setenv', 'B', '', '--url-alias', '/s', 'dir', '--server-status']);
    expect(r).not.toBeTypeOf('string');
    if (typeof r === 'string') return;
    expect(r.positionals).toEqual(['app.tsgi']);
    expect(r.options.get('port')).toEqual([['81']]);
    expect(r.options.get('setenv')).toEqual([['A', '1'], ['B', '']]);
    expect(r.options.get('server-status')).toEqual([[]]);
    expect(parseOptions(['--nope'])).toBe('unknown option --nope');
    expect(parseOptions(['-x'])).toBe('unknown option -x');
    expect(parseOptions(['--port'])).toBe('--port needs a value');
    expect(parseOptions(['--setenv', 'A'])).toBe('--setenv needs 2 values (--setenv NAME VALUE)');
    expect(parseOptions(['--setenv=A'])).toBe('--setenv takes 2 values: --setenv NAME VALUE');
    expect(parseOptions(['--host', 'a', '--host', 'b'])).toBe('--host given more than once');
  });
});

describe('tsgi express --mode daemon httpd.conf', () => {
  const daemon = (o: Partial<Parameters<typeof expressSettings>[0]> = {}) => render({ mode: 'daemon', node: '/opt/node 20/bin/node', ...o });
  const directive = (conf: string, name: string) => conf.split('\n').filter((l) => l.startsWith(`${name} `));

  it('a TSGIDaemonProcess group named after the app, with the pool, timeouts, node and the marker of its processes', () => {
    const conf = daemon({ processes: 3, threads: 7, timeouts: { request: 42 } as never });
    expect(directive(conf, 'TSGIDaemonProcess')).toEqual([
      'TSGIDaemonProcess hello processes=3 threads=7 request-timeout=42 graceful-timeout=15 queue-timeout=30 startup-timeout=30 ' +
        'display-name=%{GROUP} "node=/opt/node 20/bin/node" "env=TSGI_EXPRESS_ROOT=/tmp/x root"',
    ]);
    expect(directive(conf, 'TSGIProcessGroup')).toEqual(['TSGIProcessGroup hello']);
    expect(directive(conf, 'TSGIRestrictEmbedded')).toEqual(['TSGIRestrictEmbedded On']);
    expect(directive(conf, 'TSGISocketPrefix')).toEqual(['TSGISocketPrefix "/tmp/x root/tsgi"']);
    expect(directive(conf, 'TSGIScriptAlias')).toEqual(['TSGIScriptAlias / "/srv/my app/hello.tsgi"']);
    expect(conf).toMatch(/^Timeout 42$/m);
    // The event-loop watchdog is embedded mode's; no Node runs inside Apache here.
    expect(conf).not.toContain('TSGIEventLoopTimeout');
    expect(daemonEnvMarker('/tmp/x root')).toBe('TSGI_EXPRESS_ROOT=/tmp/x root');
  });

  it('the node running tsgi by default; user=/group= only when asked', () => {
    const s = expressSettings({ app: '/a/b.tsgi', modulePath: '/m.so', mode: 'daemon', user: 'www-data' });
    expect(s.node).toBe(process.execPath);
    const plain = renderHttpdConf(s, BUILTINS);
    expect(plain).toContain('User www-data\nGroup www-data\n');
    expect(directive(plain, 'TSGIDaemonProcess')[0]).not.toMatch(/ (user|group)=/);
    const asked = daemon({ user: 'nobody', group: 'nogroup', daemonUser: 'nobody', daemonGroup: 'nogroup' });
    expect(directive(asked, 'TSGIDaemonProcess')[0]).toContain(' processes=1 threads=5 user=nobody group=nogroup request-timeout=60 ');
  });

  it("sizes Apache's front end above the daemons' capacity (x1.5, at least 10, at most 64 threads a child)", () => {
    expect(apachePool({ mode: 'embedded', processes: 2, threads: 8 })).toEqual({ processes: 2, threads: 8 });
    expect(apachePool({ mode: 'daemon', processes: 1, threads: 5 })).toEqual({ processes: 1, threads: 10 });
    expect(apachePool({ mode: 'daemon', processes: 2, threads: 15 })).toEqual({ processes: 1, threads: 45 });
    expect(apachePool({ mode: 'daemon', processes: 4, threads: 30 })).toEqual({ processes: 3, threads: 60 });
    const conf = daemon({ processes: 2, threads: 15 });
    for (const line of ['StartServers 1', 'ThreadsPerChild 45', 'MinSpareThreads 45', 'MaxSpareThreads 45', 'MaxRequestWorkers 45']) {
      expect(conf).toContain(`\n${line}\n`);
    }
  });

  it('--server-status adds SetHandler tsgi-status at /tsgi-status (daemon mode only); --reload-on-changes is TSGIScriptReloading On', () => {
    const conf = daemon({ serverStatus: true, reloadOnChanges: true });
    expect(conf).toContain('<Location /tsgi-status>\n    SetHandler tsgi-status\n    Require local\n</Location>');
    expect(conf).toContain('<Location /server-status>');
    expect(conf).toMatch(/^TSGIScriptReloading On$/m);
    expect(render({ serverStatus: true })).not.toContain('tsgi-status');
    for (const d of ['TSGIDaemonProcess', 'TSGIProcessGroup', 'TSGIRestrictEmbedded', 'TSGISocketPrefix']) expect(render()).not.toContain(d);
  });

  it('group names come from the app file name, reduced to letters, digits, - and _', () => {
    expect(processGroupName('/srv/hello.tsgi')).toBe('hello');
    expect(processGroupName('/srv/my app.v2.tsgi')).toBe('my-app-v2');
    expect(processGroupName('/srv/.tsgi')).toBe('app');
    expect(processGroupName('/srv/_x.tsgi')).toBe('_x');
    expect(processGroupName('/srv/日本.tsgi')).toBe('app');
  });

  it('the socket prefix lies in the server root and leaves room for the socket names', () => {
    expect(serverRootFiles('/r').socketPrefix).toBe('/r/tsgi');
    expect(MAX_SOCKET_PREFIX + '.4194304.999.status'.length).toBeLessThanOrEqual(107);
  });
});

describe('tsgi express --mode option', () => {
  const hello = join(__dirname, '..', '..', 'examples', 'hello.tsgi');
  it('embedded by default; daemon accepted; anything else refused by name', () => {
    const e = parseServerOptions([hello], 'start-server');
    expect(typeof e !== 'string' && e.mode).toBe('embedded');
    const d = parseServerOptions([hello, '--mode', 'daemon', '--processes', '2', '--threads', '3'], 'start-server');
    expect(typeof d !== 'string' && [d.mode, d.processes, d.threads, d.node, d.daemonUser]).toEqual(['daemon', 2, 3, process.execPath, null]);
    expect(parseServerOptions([hello, '--mode', 'wsgi'], 'start-server')).toBe('--mode must be embedded or daemon, got "wsgi"');
  });

  it('refuses a server root too long for the daemon sockets, naming the option', () => {
    const long = `/tmp/${'x'.repeat(100)}`;
    expect(parseServerOptions([hello, '--mode', 'daemon', '--server-root', long], 'setup-server')).toBe(
      `--mode daemon: the daemon sockets would be ${long}/tsgi.<pid>.<n>.sock, longer than a Unix socket path may be (${MAX_SOCKET_PREFIX} bytes for the prefix); use a shorter --server-root`,
    );
    // Embedded mode has no sockets: the same root is fine.
    expect(typeof parseServerOptions([hello, '--server-root', long], 'setup-server')).toBe('object');
  });
});
