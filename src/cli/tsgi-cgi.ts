/**
 * `tsgi-cgi [SCRIPT.tsgi]`: the CGI interpreter for .tsgi files (see transports/cgi.ts).
 * The process exits when the response is done, even if the app left timers or sockets
 * open: a CGI process that lingers holds the web server's request open.
 */
import { runCgi } from '../transports/cgi';
import { validateEnabled, withValidation } from './validation';

export function main(argv: string[] = process.argv.slice(2)): void {
  if (argv[0] === '--help' || argv[0] === '-h') {
    process.stdout.write('usage: tsgi-cgi [SCRIPT.tsgi]\n  Runs a TSGI application as a CGI program (RFC 3875).\n  Use it in a #!/usr/bin/env tsgi-cgi line, as lighttpd\'s cgi.assign interpreter, or as an Apache Action.\n');
    return;
  }
  runCgi({ argvScript: argv[0], wrapProvider: validateEnabled(process.env) ? withValidation : undefined }).then(
    (code) => process.exit(code),
    (err) => {
      process.stderr.write(`[tsgi-cgi:error] ${(err as Error)?.stack ?? String(err)}\n`);
      process.exit(1);
    },
  );
}
