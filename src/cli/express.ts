/**
 * `tsgi express`: a .tsgi file to a running Apache in one command, after
 * mod_wsgi-express (reference/mod_wsgi.md §6). Today: `start-server`, embedded mode.
 *
 *   tsgi express start-server APP.tsgi [--port N] [--host H] [--mode embedded]
 *                                      [--server-root DIR] [--log-level L]
 *
 * It writes a complete httpd.conf into a server root (httpd-config.ts), runs
 * /usr/sbin/apache2 in the foreground with its logs on this terminal, prints a banner
 * once Apache accepts connections, and stops Apache on Ctrl-C or SIGTERM: graceful
 * stop first, bounded, with nothing left running (httpd-runner.ts).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { parseArgs } from 'node:util';
import {
  APACHE_BIN,
  connectHost,
  expressSettings,
  serverRootFiles,
  serverUrl,
  writeServerRoot,
  type ExpressSettings,
} from './httpd-config';
import { ForegroundHttpd, LogRelay, httpdProcesses, type StopStep } from './httpd-runner';
import { modulePath } from './module-config';

export const EXPRESS_USAGE = `usage: tsgi express start-server APP.tsgi [options]

Runs APP.tsgi under a private Apache httpd with mod_tsgi, in the foreground, with the
error log on stderr and the access log on stdout. Ctrl-C stops it.

options:
  --port N             port to listen on (default 8000)
  --host H             address to listen on (default 127.0.0.1)
  --mode embedded      embedded (the default: the app runs inside the Apache children);
                       daemon mode is not available yet
  --server-root DIR    where httpd.conf, the pid file and runtime files go
                       (default <tmpdir>/tsgi-express-<port>-<uid>)
  --log-level L        Apache LogLevel (default info; e.g. warn, debug, "warn tsgi:debug")
`;

/** How long Apache may take from start to accepting connections. */
const STARTUP_TIMEOUT_MS = 30_000;
/** Beyond GracefulShutdownTimeout, how long a graceful stop may take before SIGTERM. */
const GRACEFUL_MARGIN_MS = 5_000;
/** How long a SIGTERM stop may take before SIGKILL (Apache's own SIGKILL comes after ~10 s). */
const STOP_TIMEOUT_MS = 15_000;

const LOG_LEVEL = /^(?:[A-Za-z0-9_]+:)?(?:emerg|alert|crit|error|warn|notice|info|debug|trace[1-8])$/;

function fail(message: string, code = 2): number {
  process.stderr.write(`tsgi express: ${message}\n`);
  return code;
}

export async function expressCommand(args: string[]): Promise<number> {
  const [sub, ...rest] = args;
  switch (sub) {
    case 'start-server':
      return startServer(rest);
    case undefined:
    case '-h':
    case '--help':
    case 'help':
      process.stdout.write(EXPRESS_USAGE);
      return sub === undefined ? 2 : 0;
    default:
      return fail(`unknown subcommand ${JSON.stringify(sub)} (available: start-server)\n\n${EXPRESS_USAGE}`);
  }
}

/** Parses and checks the command line; a string is the error message ('help' for --help). */
function parseStartServer(args: string[]): ExpressSettings | string {
  let parsed;
  try {
    parsed = parseArgs({
      args,
      allowPositionals: true,
      strict: true,
      options: {
        port: { type: 'string', default: '8000' },
        host: { type: 'string', default: '127.0.0.1' },
        mode: { type: 'string', default: 'embedded' },
        'server-root': { type: 'string' },
        'log-level': { type: 'string', default: 'info' },
        help: { type: 'boolean', short: 'h', default: false },
      },
    });
  } catch (err) {
    return (err as Error).message;
  }
  const { values, positionals } = parsed;
  if (values.help) return 'help';
  if (values.mode === 'daemon') {
    return '--mode daemon is not available yet: daemon mode comes in a later release. Use --mode embedded (the default).';
  }
  if (values.mode !== 'embedded') return `--mode must be embedded or daemon, got ${JSON.stringify(values.mode)}`;
  if (positionals.length !== 1) return 'expected exactly one APP.tsgi argument';
  const port = Number(values.port);
  if (!/^\d+$/.test(values.port) || port < 1 || port > 65535) {
    return `--port must be a port number (1-65535), got ${JSON.stringify(values.port)}`;
  }
  if (!/^[A-Za-z0-9.:\-_[\]*]+$/.test(values.host)) return `--host must be a host name or an IP address, got ${JSON.stringify(values.host)}`;
  const logLevel = values['log-level'].trim();
  if (logLevel === '' || !logLevel.split(/\s+/).every((w) => LOG_LEVEL.test(w))) {
    return `--log-level must be an Apache LogLevel (emerg ... info, debug, trace1-8, optionally per module as "tsgi:debug"), got ${JSON.stringify(values['log-level'])}`;
  }
  const app = path.resolve(positionals[0]!);
  let st: fs.Stats;
  try {
    st = fs.statSync(app);
  } catch {
    return `${app}: no such file`;
  }
  if (!st.isFile()) return `${app}: not a file`;
  return expressSettings({
    app,
    port,
    host: values.host,
    mode: 'embedded',
    logLevel,
    modulePath: modulePath(),
    serverRoot: values['server-root'] === undefined ? undefined : path.resolve(values['server-root']),
  });
}

/** Whether `user` (Apache's workers, when we are root) can plainly read `file`: o+r on it, o+x on its directories. */
function othersCanRead(file: string): boolean {
  try {
    if ((fs.statSync(file).mode & 0o004) === 0) return false;
    for (let dir = path.dirname(file); ; dir = path.dirname(dir)) {
      if ((fs.statSync(dir).mode & 0o001) === 0) return false;
      if (dir === path.dirname(dir)) return true;
    }
  } catch {
    return false;
  }
}

function banner(s: ExpressSettings, httpd: ForegroundHttpd, conf: string): string {
  const t = s.timeouts;
  const row = (k: string, v: string) => `  ${(k + ':').padEnd(13)}${v}\n`;
  return (
    `tsgi express: serving ${s.app}\n` +
    row('URL', serverUrl(s)) +
    row('Mode', `${s.mode} (a Node runtime inside each Apache child), event MPM`) +
    row('Capacity', `${s.processes} process${s.processes === 1 ? '' : 'es'} x ${s.threads} threads (MaxRequestWorkers ${s.processes * s.threads})`) +
    row('Timeouts', `request ${t.request} s, keep-alive ${t.keepAlive} s, request headers ${t.header}-${t.headerMax} s, body ${t.body} s, graceful stop ${t.graceful} s`) +
    row('Error log', `this terminal (stderr), LogLevel ${s.logLevel}`) +
    row('Access log', 'this terminal (stdout)') +
    row('Server root', `${s.serverRoot} (config ${conf})`) +
    row('Apache', `${APACHE_BIN} pid ${httpd.pid}${s.user ? `, workers run as ${s.user}` : ''}`) +
    row('Module', s.modulePath) +
    'Press Ctrl-C to stop.\n'
  );
}

async function startServer(args: string[]): Promise<number> {
  const settings = parseStartServer(args);
  if (settings === 'help') {
    process.stdout.write(EXPRESS_USAGE);
    return 0;
  }
  if (typeof settings === 'string') return fail(settings);
  if (!fs.existsSync(settings.modulePath)) {
    return fail(`${settings.modulePath} does not exist; build mod_tsgi with \`npm run build\``, 1);
  }
  if (!fs.existsSync(APACHE_BIN)) {
    return fail(`${APACHE_BIN} not found; install Apache (\`apt-get install apache2\`; \`npm run build\` does it as root)`, 1);
  }
  if (settings.user && !othersCanRead(settings.app)) {
    process.stderr.write(`tsgi express: warning: Apache's workers run as ${settings.user} and may not be able to read ${settings.app} (it needs o+r, and o+x on its directories)\n`);
  }

  const files = serverRootFiles(settings.serverRoot);
  let conf: string;
  let relays: LogRelay[];
  try {
    const running = readRunningPid(files.pid, files.conf);
    if (running !== null) {
      return fail(`an Apache (pid ${running}) already runs from ${settings.serverRoot}; stop it, or use another --port or --server-root`, 1);
    }
    fs.rmSync(files.pid, { force: true });
    conf = writeServerRoot(settings);
    relays = [new LogRelay(files.errorLog, process.stderr), new LogRelay(files.accessLog, process.stdout)];
  } catch (err) {
    return fail((err as Error).message, 1);
  }

  let httpd: ForegroundHttpd;
  try {
    httpd = new ForegroundHttpd({ apacheBin: APACHE_BIN, serverRoot: settings.serverRoot, confPath: conf, pidFile: files.pid });
  } catch (err) {
    await Promise.all(relays.map((r) => r.close(0)));
    return fail((err as Error).message, 1);
  }

  // Ctrl-C (or SIGTERM, or the terminal closing): graceful stop; a second signal stops
  // at once; a third kills. Each step also has a deadline of its own.
  let step = 0;
  const steps: StopStep[] = ['graceful', 'stop', 'kill'];
  const timers: NodeJS.Timeout[] = [];
  const advance = (why: string) => {
    if (httpd.hasExited || step >= steps.length) return;
    const s = steps[step++]!;
    const what = {
      graceful: `graceful stop (in-flight requests get up to ${settings.timeouts.graceful} s; Ctrl-C again to stop now)`,
      stop: 'stopping now',
      kill: 'killing Apache',
    }[s];
    process.stderr.write(`tsgi express: ${why}: ${what}\n`);
    httpd.send(s);
    if (s === 'graceful') timers.push(setTimeout(() => advance(`still running ${settings.timeouts.graceful} s after a graceful stop`), settings.timeouts.graceful * 1000 + GRACEFUL_MARGIN_MS));
    if (s === 'stop') timers.push(setTimeout(() => advance(`still running ${STOP_TIMEOUT_MS / 1000} s after stop`), STOP_TIMEOUT_MS));
  };
  const onSignal = (sig: NodeJS.Signals) => advance(sig);
  const signals: NodeJS.Signals[] = ['SIGINT', 'SIGTERM', 'SIGHUP'];
  for (const sig of signals) process.on(sig, onSignal);

  try {
    const state = await httpd.waitReady(connectHost(settings.host), settings.port, STARTUP_TIMEOUT_MS);
    if (state === 'timeout') {
      advance(`not accepting connections on ${settings.host}:${settings.port} after ${STARTUP_TIMEOUT_MS / 1000} s`);
      advance('giving up');
    } else if (state === 'ready' && step === 0) {
      process.stderr.write(banner(settings, httpd, conf));
    }
    const exit = await httpd.exited;
    const killed = await httpd.reap();
    await Promise.all(relays.map((r) => r.close()));
    if (killed.length > 0) process.stderr.write(`tsgi express: killed leftover Apache processes: ${killed.join(' ')}\n`);
    if (step > 0 && state !== 'timeout') {
      process.stderr.write('tsgi express: Apache stopped\n');
      return 0;
    }
    const how = exit.signal ? `signal ${exit.signal}` : `code ${exit.code}`;
    if (state === 'exited') {
      process.stderr.write(`tsgi express: ${APACHE_BIN} exited (${how}) before it was ready; its messages are above (config: ${conf})\n`);
    } else if (state === 'ready') {
      process.stderr.write(`tsgi express: ${APACHE_BIN} exited (${how})\n`);
    }
    return exit.code === 0 && state === 'ready' ? 0 : 1;
  } finally {
    for (const t of timers) clearTimeout(t);
    for (const sig of signals) process.removeListener(sig, onSignal);
  }
}

/** The pid of an Apache still running from this server root's config, or null. */
function readRunningPid(pidFile: string, conf: string): number | null {
  let pid: number;
  try {
    pid = Number.parseInt(fs.readFileSync(pidFile, 'utf8').trim(), 10);
  } catch {
    return null;
  }
  if (!Number.isFinite(pid) || pid <= 0) return null;
  return httpdProcesses(-1, conf).includes(pid) ? pid : null;
}
