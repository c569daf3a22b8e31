/**
 * The httpd.conf `tsgi express` generates (src/cli/httpd-config.ts), as text: the
 * integration test (test/integration/express.test.ts) runs it under a real Apache.
 */
import { describe, it, expect } from 'vitest';
import * as os from 'node:os';
import { join } from 'node:path';
import { defaultServerRoot, expressSettings, renderHttpdConf, serverUrl } from '../../src/cli/httpd-config';

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
