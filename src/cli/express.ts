/**
 * `tsgi express`: a .tsgi file to a running Apache in one command, after
 * mod_wsgi-express (reference/mod_wsgi.md §6), in embedded mode (the default) or
 * daemon mode (a TSGIDaemonProcess group the Apache parent starts and supervises).
 *
 *   tsgi express start-server APP.tsgi [options]   foreground, logs on the terminal
 *   tsgi express setup-server APP.tsgi [options]   the same server root + ROOT/apachectl
 *   tsgi express module-config                     the LoadModule line
 *   tsgi express install-module                    into Debian's Apache, for a2enmod tsgi
 *
 * It writes a complete httpd.conf into a server root (httpd-config.ts), runs
 * /usr/sbin/apache2 in the foreground with its logs on this terminal, prints a banner
 * once Apache accepts connections, and stops Apache on Ctrl-C or SIGTERM: graceful
 * stop first, bounded, with nothing left running (httpd-runner.ts).
 */
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import {
  APACHE_BIN,
  DEFAULT_TIMEOUTS,
  MAX_SOCKET_PREFIX,
  apachePool,
  connectHost,
  daemonEnvMarker,
  defaultServerRoot,
  expressSettings,
  processGroupName,
  isRoot,
  serverRootFiles,
  serverUrl,
  shQuote,
  writeServerRoot,
  type ExpressSettings,
} from './httpd-config';
import { ForegroundHttpd, LogRelay, httpdProcesses, type StopStep } from './httpd-runner';
import { installModuleCommand, moduleConfigCommand, modulePath } from './module-config';

export const EXPRESS_USAGE = `usage: tsgi express start-server APP.tsgi [options]
       tsgi express setup-server APP.tsgi [options]
       tsgi express module-config
       tsgi express install-module

start-server  runs APP.tsgi under a private Apache httpd with mod_tsgi, in the
              foreground, the error log on stderr and the access log on stdout;
              Ctrl-C stops it.
setup-server  writes the same server root plus an apachectl script:
              ROOT/apachectl start|stop|restart|graceful|configtest (start runs it
              in the background, logs in ROOT/error_log).
module-config prints the httpd.conf lines that load the built mod_tsgi.
install-module
              (root) installs mod_tsgi into the system Apache: the module and its
              libnode under /usr/lib/apache2/modules, and mods-available/tsgi.load and
              tsgi.conf, so that \`a2enmod tsgi\` enables it.

options of start-server and setup-server:
  --port N             port to listen on (default 8000)
  --host H             address to listen on (default 127.0.0.1)
  --mode M             embedded (the default): the app runs inside the Apache
                       children; daemon: in a TSGIDaemonProcess group of Node
                       processes that Apache starts and supervises, its children
                       only forwarding requests (TSGIRestrictEmbedded On)
  --processes N        processes running the app (default 1): Apache children in
                       embedded mode, daemon processes in daemon mode
  --threads N          requests each of them runs at once (default 5)
  --user U, --group G  (root only) the user and group of Apache's children, and of
                       the daemon processes (default www-data when root)
  --mount-point /PATH  URL path of the app (default /)
  --url-alias URL PATH static files: PATH (a directory or a file) at URL; repeatable
  --reload-on-changes  reload APP.tsgi when it changes (TSGIScriptReloading On;
                       default Off)
  --setenv NAME VALUE  a variable in every request's environ (SetEnv); repeatable
  --request-timeout S  Apache's Timeout, and a request running this long answers
                       504: TSGIEventLoopTimeout (embedded), request-timeout= of the
                       daemon group (daemon) (default 60)
  --server-status      mod_status at /server-status, and in daemon mode the group's
                       processes at /tsgi-status, for clients on this machine
  --include-file FILE  Include FILE (raw Apache directives) at the end; repeatable
  --access-log         log requests (start-server always does, on stdout;
                       setup-server into ROOT/access_log)
  --log-to-terminal    start-server always logs to the terminal; setup-server: when
                       \`apachectl start\` runs on a terminal, in the foreground with
                       the logs on it
  --server-root DIR    where httpd.conf, the pid file and runtime files go, daemon
                       sockets included (default <tmpdir>/tsgi-express-<port>-<uid>)
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
    case 'setup-server':
      return setupServer(rest);
    case 'module-config':
      return moduleConfigCommand(rest, 'tsgi express module-config');
    case 'install-module':
      return installModuleCommand(rest);
    case undefined:
    case '-h':
    case '--help':
    case 'help':
      process.stdout.write(EXPRESS_USAGE);
      return sub === undefined ? 2 : 0;
    default:
      return fail(`unknown subcommand ${JSON.stringify(sub)} (available: start-server, setup-server, module-config, install-module)\n\n${EXPRESS_USAGE}`);
  }
}

/** Options: how many values each takes, and whether it may repeat. */
const OPTIONS: Record<string, { values: 0 | 1 | 2; repeat?: boolean }> = {
  port: { values: 1 },
  host: { values: 1 },
  mode: { values: 1 },
  processes: { values: 1 },
  threads: { values: 1 },
  user: { values: 1 },
  group: { values: 1 },
  'mount-point': { values: 1 },
  'url-alias': { values: 2, repeat: true },
  'reload-on-changes': { values: 0 },
  setenv: { values: 2, repeat: true },
  'request-timeout': { values: 1 },
  'server-status': { values: 0 },
  'include-file': { values: 1, repeat: true },
  'access-log': { values: 0 },
  'log-to-terminal': { values: 0 },
  'server-root': { values: 1 },
  'log-level': { values: 1 },
  help: { values: 0 },
};

interface RawOptions {
  positionals: string[];
  /** Each option's occurrences, each a list of its values. */
  options: Map<string, string[][]>;
}

/** Strict parsing: every error names the option. `--name=value` works for one-value options. */
export function parseOptions(args: string[]): RawOptions | string {
  const out: RawOptions = { positionals: [], options: new Map() };
  for (let i = 0; i < args.length; i++) {
    const arg = args[i]!;
    if (arg === '--') {
      out.positionals.push(...args.slice(i + 1));
      break;
    }
    if (!arg.startsWith('-') || arg === '-') {
      out.positionals.push(arg);
      continue;
    }
    if (arg === '-h') {
      out.options.set('help', [[]]);
      continue;
    }
    if (!arg.startsWith('--')) return `unknown option ${arg}`;
    const eq = arg.indexOf('=');
    const name = arg.slice(2, eq === -1 ? undefined : eq);
    const spec = OPTIONS[name];
    if (!spec) return `unknown option --${name}`;
    let values: string[];
    if (eq !== -1) {
      if (spec.values !== 1) return `--${name} ${spec.values === 0 ? 'takes no value' : `takes 2 values: --${name} ${name === 'setenv' ? 'NAME VALUE' : 'URL PATH'}`}`;
      values = [arg.slice(eq + 1)];
    } else {
      values = args.slice(i + 1, i + 1 + spec.values);
      if (values.length < spec.values || values.some((v) => v.startsWith('--'))) {
        return spec.values === 1 ? `--${name} needs a value` : `--${name} needs ${spec.values} values (--${name} ${name === 'setenv' ? 'NAME VALUE' : 'URL PATH'})`;
      }
      i += spec.values;
    }
    const seen = out.options.get(name);
    if (seen && !spec.repeat) return `--${name} given more than once`;
    out.options.set(name, [...(seen ?? []), values]);
  }
  return out;
}

function intOption(raw: RawOptions, name: string, dflt: number, min: number, max: number): number | string {
  const v = raw.options.get(name)?.[0]?.[0];
  if (v === undefined) return dflt;
  const n = Number(v);
  if (!/^\d+$/.test(v) || n < min || n > max) return `--${name} must be a whole number from ${min} to ${max}, got ${JSON.stringify(v)}`;
  return n;
}

function accountExists(kind: 'passwd' | 'group', name: string): boolean {
  try {
    execFileSync('getent', [kind, name], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

/** Parses and checks the command line; a string is the error message ('help' for --help). */
export function parseServerOptions(args: string[], command: 'start-server' | 'setup-server'): ExpressSettings | string {
  const raw = parseOptions(args);
  if (typeof raw === 'string') return raw;
  const one = (name: string): string | undefined => raw.options.get(name)?.[0]?.[0];
  const flag = (name: string): boolean => raw.options.has(name);
  if (flag('help')) return 'help';
  const mode = one('mode') ?? 'embedded';
  if (mode !== 'embedded' && mode !== 'daemon') return `--mode must be embedded or daemon, got ${JSON.stringify(mode)}`;
  if (raw.positionals.length !== 1) return 'expected exactly one APP.tsgi argument';
  const portText = one('port') ?? '8000';
  const port = Number(portText);
  if (!/^\d+$/.test(portText) || port < 1 || port > 65535) {
    return `--port must be a port number (1-65535), got ${JSON.stringify(portText)}`;
  }
  const host = one('host') ?? '127.0.0.1';
  if (!/^[A-Za-z0-9.:\-_[\]*]+$/.test(host)) return `--host must be a host name or an IP address, got ${JSON.stringify(host)}`;
  const logLevelText = one('log-level') ?? 'info';
  const logLevel = logLevelText.trim();
  if (logLevel === '' || !logLevel.split(/\s+/).every((w) => LOG_LEVEL.test(w))) {
    return `--log-level must be an Apache LogLevel (emerg ... info, debug, trace1-8, optionally per module as "tsgi:debug"), got ${JSON.stringify(logLevelText)}`;
  }
  const processes = intOption(raw, 'processes', 1, 1, 64);
  if (typeof processes === 'string') return processes;
  const threads = intOption(raw, 'threads', 5, 1, 1000);
  if (typeof threads === 'string') return threads;
  const requestTimeout = intOption(raw, 'request-timeout', DEFAULT_TIMEOUTS.request, 1, 86400);
  if (typeof requestTimeout === 'string') return requestTimeout;

  let user: string | undefined;
  let group: string | undefined;
  for (const [name, kind] of [['user', 'passwd'], ['group', 'group']] as const) {
    const v = one(name);
    if (v === undefined) continue;
    if (!isRoot()) return `--${name} needs root (Apache can only switch users when started as root)`;
    if (!/^[A-Za-z_][A-Za-z0-9_.-]*\$?$/.test(v) || !accountExists(kind, v)) return `--${name}: no such ${name} ${JSON.stringify(v)}`;
    if (name === 'user') user = v;
    else group = v;
  }
  if (user !== undefined && group === undefined) {
    try {
      group = execFileSync('id', ['-gn', user], { encoding: 'utf8' }).trim();
    } catch {
      group = user;
    }
  }

  const URL_PATH = /^\/[A-Za-z0-9._~!$&'()*+,;=:@%/-]*$/;
  let mountPoint = one('mount-point') ?? '/';
  if (!URL_PATH.test(mountPoint) || mountPoint.includes('//')) return `--mount-point must be a URL path such as /app, got ${JSON.stringify(mountPoint)}`;
  if (mountPoint.length > 1) mountPoint = mountPoint.replace(/\/+$/, '');

  const urlAliases: { url: string; path: string }[] = [];
  for (const [url, dir] of raw.options.get('url-alias') ?? []) {
    if (!URL_PATH.test(url!)) return `--url-alias: the URL must be a path such as /static, got ${JSON.stringify(url)}`;
    const p = path.resolve(dir!);
    if (!fs.existsSync(p)) return `--url-alias ${url}: ${p}: no such file or directory`;
    if (/["\n]/.test(p)) return `--url-alias ${url}: ${JSON.stringify(p)}: unusable path`;
    urlAliases.push({ url: url!.length > 1 ? url!.replace(/\/+$/, '') : url!, path: p });
  }

  const setenv: [string, string][] = [];
  for (const [name, value] of raw.options.get('setenv') ?? []) {
    if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(name!)) return `--setenv: the name must be letters, digits and _, got ${JSON.stringify(name)}`;
    if (/[\n\r\0]/.test(value!)) return `--setenv ${name}: the value may not contain a line break or NUL`;
    setenv.push([name!, value!]);
  }

  const includeFiles: string[] = [];
  for (const [file] of raw.options.get('include-file') ?? []) {
    const p = path.resolve(file!);
    if (!fs.existsSync(p) || !fs.statSync(p).isFile()) return `--include-file: ${p}: no such file`;
    includeFiles.push(p);
  }

  const app = path.resolve(raw.positionals[0]!);
  let st: fs.Stats;
  try {
    st = fs.statSync(app);
  } catch {
    return `${app}: no such file`;
  }
  if (!st.isFile()) return `${app}: not a file`;
  const serverRootText = one('server-root');
  const serverRoot = serverRootText === undefined ? undefined : path.resolve(serverRootText);
  if (mode === 'daemon') {
    const prefix = serverRootFiles(serverRoot ?? defaultServerRoot(port)).socketPrefix;
    if (Buffer.byteLength(prefix) > MAX_SOCKET_PREFIX) {
      return `--mode daemon: the daemon sockets would be ${prefix}.<pid>.<n>.sock, longer than a Unix socket path may be (${MAX_SOCKET_PREFIX} bytes for the prefix); use a shorter --server-root`;
    }
  }
  return expressSettings({
    app,
    port,
    host,
    mode,
    logLevel,
    modulePath: modulePath(),
    serverRoot,
    processes,
    threads,
    timeouts: { ...DEFAULT_TIMEOUTS, request: requestTimeout },
    ...(user !== undefined ? { user } : {}),
    ...(group !== undefined ? { group } : {}),
    mountPoint,
    urlAliases,
    reloadOnChanges: flag('reload-on-changes'),
    logs: command === 'start-server' ? 'relay' : 'files',
    logToTerminal: flag('log-to-terminal'),
    accessLog: command === 'start-server' ? true : flag('access-log'),
    includeFiles,
    serverStatus: flag('server-status'),
    setenv,
    node: process.execPath,
    // Only what was asked: otherwise the daemons run as Apache's User (the same account).
    daemonUser: one('user') !== undefined ? user! : null,
    daemonGroup: one('group') !== undefined ? group! : null,
  });
}

/** What both server commands need before writing anything. */
function preflight(settings: ExpressSettings): string | null {
  if (!fs.existsSync(settings.modulePath)) return `${settings.modulePath} does not exist; build mod_tsgi with \`npm run build\``;
  if (!fs.existsSync(APACHE_BIN)) return `${APACHE_BIN} not found; install Apache (\`apt-get install apache2\`; \`npm run build\` does it as root)`;
  if (settings.user && !othersCanRead(settings.app)) {
    process.stderr.write(`tsgi express: warning: Apache's workers run as ${settings.user} and may not be able to read ${settings.app} (it needs o+r, and o+x on its directories)\n`);
  }
  return null;
}

/** The settings of start-server / setup-server, checked; or the exit code (after --help or a clear error). */
function checkedSettings(args: string[], command: 'start-server' | 'setup-server'): ExpressSettings | number {
  const settings = parseServerOptions(args, command);
  if (settings === 'help') {
    process.stdout.write(EXPRESS_USAGE);
    return 0;
  }
  if (typeof settings === 'string') return fail(settings);
  const problem = preflight(settings);
  if (problem) return fail(problem, 1);
  return settings;
}

async function setupServer(args: string[]): Promise<number> {
  const settings = checkedSettings(args, 'setup-server');
  if (typeof settings === 'number') return settings;
  const files = serverRootFiles(settings.serverRoot);
  try {
    writeServerRoot(settings);
  } catch (err) {
    return fail((err as Error).message, 1);
  }
  const daemon = settings.mode === 'daemon';
  process.stdout.write(
    `tsgi express: server root ${settings.serverRoot} is ready for ${settings.app}\n` +
      `  config:   ${files.conf}\n` +
      `  control:  ${files.apachectl} start|stop|restart|graceful|configtest\n` +
      `  URL:      ${serverUrl(settings)}${settings.mountPoint === '/' ? '' : settings.mountPoint.slice(1)}\n` +
      `  mode:     ${settings.mode}${daemon ? ` (process group ${processGroupName(settings.app)}, ${settings.processes} x ${settings.threads} threads)` : ''}\n` +
      (daemon ? `  status:   npx tsgi status --socket-prefix ${shellWord(files.socketPrefix)}\n` : '') +
      `  logs:     ${files.errorLogFile}${settings.accessLog ? `, ${files.accessLogFile}` : ''}` +
      `${settings.logToTerminal ? ' (on the terminal when apachectl start runs on one)' : ''}\n`,
  );
  return 0;
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

/** The rows of the banner that say how the app runs (shared by start-server and setup-server). */
function modeRows(s: ExpressSettings, row: (k: string, v: string) => string): string {
  const t = s.timeouts;
  const plural = (n: number, word: string) => `${n} ${word}${n === 1 ? '' : 'es'}`;
  if (s.mode === 'embedded') {
    return (
      row('Mode', `${s.mode} (a Node runtime inside each Apache child), event MPM`) +
      row('Capacity', `${plural(s.processes, 'process')} x ${s.threads} threads (MaxRequestWorkers ${s.processes * s.threads})`) +
      row('Timeouts', `request ${t.request} s, keep-alive ${t.keepAlive} s, request headers ${t.header}-${t.headerMax} s, body ${t.body} s, graceful stop ${t.graceful} s`)
    );
  }
  const front = apachePool(s);
  const prefix = serverRootFiles(s.serverRoot).socketPrefix;
  return (
    row('Mode', `daemon (process group ${processGroupName(s.app)}: Node processes started and supervised by Apache; no Node inside Apache's children)`) +
    row('Capacity', `${plural(s.processes, 'process')} x ${s.threads} threads (${s.processes * s.threads} requests at once); Apache in front: ${plural(front.processes, 'process')} x ${front.threads} threads, event MPM`) +
    row('Timeouts', `request ${t.request} s, queue ${t.queue} s, daemon start-up ${t.startup} s, keep-alive ${t.keepAlive} s, request headers ${t.header}-${t.headerMax} s, body ${t.body} s, graceful stop ${t.graceful} s`) +
    row('Daemon', `${s.node}${s.daemonUser ? `, runs as ${s.daemonUser}` : s.user ? `, runs as ${s.user}` : ''}`) +
    row('Sockets', `${prefix}.<pid>.<n>.sock (TSGISocketPrefix)`) +
    row('Pool status', `npx tsgi status --socket-prefix ${shellWord(prefix)}`)
  );
}

/** A word for a shell command line, quoted only when it needs it. */
function shellWord(w: string): string {
  return /^[A-Za-z0-9_@%+=:,./-]+$/.test(w) ? w : shQuote(w);
}

function banner(s: ExpressSettings, httpd: ForegroundHttpd, conf: string): string {
  const row = (k: string, v: string) => `  ${(k + ':').padEnd(13)}${v}\n`;
  return (
    `tsgi express: serving ${s.app}\n` +
    row('URL', serverUrl(s) + (s.mountPoint === '/' ? '' : s.mountPoint.slice(1))) +
    s.urlAliases.map((a) => row('Static', `${serverUrl(s).slice(0, -1)}${a.url} -> ${a.path}`)).join('') +
    (s.serverStatus ? row('Status', `${serverUrl(s)}server-status (local clients)`) : '') +
    (s.serverStatus && s.mode === 'daemon' ? row('Status', `${serverUrl(s)}tsgi-status (the daemon group; local clients)`) : '') +
    row('Reloading', reloadingText(s)) +
    (s.setenv.length > 0 ? row('SetEnv', s.setenv.map(([k]) => k).join(', ')) : '') +
    (s.includeFiles.length > 0 ? row('Include', s.includeFiles.join(', ')) : '') +
    modeRows(s, row) +
    row('Error log', `this terminal (stderr), LogLevel ${s.logLevel}${s.mode === 'daemon' ? " (Apache's and the daemon group's)" : ''}`) +
    row('Access log', 'this terminal (stdout)') +
    row('Server root', `${s.serverRoot} (config ${conf})`) +
    row('Apache', `${APACHE_BIN} pid ${httpd.pid}${s.user ? `, workers run as ${s.user}` : ''}`) +
    row('Module', s.modulePath) +
    'Press Ctrl-C to stop.\n'
  );
}

function reloadingText(s: ExpressSettings): string {
  if (!s.reloadOnChanges) return 'off (--reload-on-changes to pick up edits)';
  return s.mode === 'embedded'
    ? 'on: edits to the app are picked up on the next request'
    : 'on: the next request runs the edited app, and the daemon group is recycled (fresh processes load it)';
}

async function startServer(args: string[]): Promise<number> {
  const settings = checkedSettings(args, 'start-server');
  if (typeof settings === 'number') return settings;

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
    httpd = new ForegroundHttpd({
      apacheBin: APACHE_BIN,
      serverRoot: settings.serverRoot,
      confPath: conf,
      pidFile: files.pid,
      ...(settings.mode === 'daemon'
        ? { daemons: { envEntry: daemonEnvMarker(settings.serverRoot), stopMs: settings.timeouts.graceful * 1000 + GRACEFUL_MARGIN_MS } }
        : {}),
    });
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
