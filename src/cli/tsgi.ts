/**
 * The `tsgi` command. Subcommands:
 *   serve APP.tsgi [--host H] [--port N] [--reload]   the development server
 *   module-config                                      httpd.conf lines loading mod_tsgi
 *   express start-server|setup-server APP.tsgi [...]   a private Apache with mod_tsgi
 *   express module-config|install-module               mod_tsgi for the system Apache
 *   daemon APP.tsgi --listen ... --protocol ...        the daemon pool for lighttpd/nginx/mod_proxy
 *   status [--socket-prefix PREFIX] [--json]           Apache daemon-mode groups: processes, requests, RSS
 */
import { daemonCommand } from './daemon';
import { expressCommand } from './express';
import { moduleConfigCommand } from './module-config';
import { serveCommand } from './serve';
import { statusCommand } from './status';

const USAGE = `usage: tsgi <command> [options]

commands:
  serve APP.tsgi [--host H] [--port N] [--reload] [--callable NAME]
                 [--mount-point /PATH] [--validate]
      Runs APP.tsgi on a development HTTP server (default http://127.0.0.1:8000/).
  module-config
      Prints the httpd.conf lines that load mod_tsgi (built by \`npm run build\`).
  express start-server APP.tsgi [--port N] [--host H] [--mode embedded|daemon]
                       [--processes N] [--threads N] [--user U] [--group G]
                       [--mount-point /PATH] [--url-alias URL PATH] [--reload-on-changes]
                       [--setenv NAME VALUE] [--request-timeout S] [--server-status]
                       [--include-file FILE] [--access-log] [--log-to-terminal]
                       [--server-root DIR] [--log-level L]
      Runs APP.tsgi under a private Apache with mod_tsgi in the foreground, logs on
      the terminal (default http://127.0.0.1:8000/); Ctrl-C stops it.
  express setup-server APP.tsgi [same options]
      Writes the same server root plus ROOT/apachectl start|stop|restart|graceful|configtest.
  express module-config | express install-module
      Prints the LoadModule line; (root) installs mod_tsgi into the system Apache
      with mods-available/tsgi.load and tsgi.conf, for \`a2enmod tsgi\`.
  daemon APP.tsgi --listen unix:PATH|tcp:HOST:PORT --protocol uwsgi|scgi|fastcgi|http
         [--processes N] [--threads N] [--maximum-requests N] [--user U] [--group G]
         [--socket-mode MODE] [--request-timeout S] [--graceful-timeout S]
         [--startup-timeout S] [--callable NAME] [--mount-point /PATH] [--reload]
      Runs APP.tsgi in a supervised pool of worker processes behind a socket, for
      lighttpd, nginx or Apache's mod_proxy_*; logs on stderr. SIGTERM stops
      gracefully, SIGHUP reloads gracefully. See docs/daemon.md.
  status [--socket-prefix PREFIX] [--json]
      Shows each mod_tsgi daemon-mode group (TSGIDaemonProcess): per process its pid,
      state, requests, in-flight requests, RSS and uptime. PREFIX is TSGISocketPrefix
      (default /var/run/apache2/tsgi) or a directory. Needs root or the daemon's user.
`;

export async function main(argv: string[] = process.argv.slice(2)): Promise<number> {
  const [command, ...rest] = argv;
  switch (command) {
    case 'serve':
      return serveCommand(rest);
    case 'module-config':
      return moduleConfigCommand(rest);
    case 'express':
      return expressCommand(rest);
    case 'daemon':
      return daemonCommand(rest);
    case 'status':
      return statusCommand(rest);
    case undefined:
    case '-h':
    case '--help':
    case 'help':
      process.stdout.write(USAGE);
      return command === undefined ? 2 : 0;
    default:
      process.stderr.write(`tsgi: unknown command ${JSON.stringify(command)}\n\n${USAGE}`);
      return 2;
  }
}
