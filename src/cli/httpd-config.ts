/**
 * The httpd.conf of `tsgi express`: one app, one private Apache, everything in its own
 * server root and nothing read from /etc/apache2 (mod_wsgi-express's approach,
 * reference/mod_wsgi.md §6). `ExpressSettings` holds every value the config is made
 * from; `expressSettings()` fills in the defaults, `renderHttpdConf()` turns settings
 * into text, and `writeServerRoot()` puts the files on disk. The banner is made from
 * the same settings, so what it says is what the config does.
 */
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

export const APACHE_BIN = '/usr/sbin/apache2';
export const APACHE_MODULES_DIR = '/usr/lib/apache2/modules';

/**
 * embedded: a Node runtime inside each Apache child. daemon: the app runs in a
 * TSGIDaemonProcess group, Node processes the Apache parent starts and supervises, and
 * Apache's children only forward requests to them (docs/protocol.md).
 */
export type ExpressMode = 'embedded' | 'daemon';

export interface ExpressTimeouts {
  /** Apache's Timeout: I/O to the client, and mod_tsgi's limit on a request that makes no progress. */
  request: number;
  keepAlive: number;
  /** mod_reqtimeout: the request line and headers, first byte within `header`, all within `headerMax`. */
  header: number;
  headerMax: number;
  /** mod_reqtimeout: the body, extended by MinRate. */
  body: number;
  /** GracefulShutdownTimeout: how long a graceful stop waits for in-flight requests (and daemon graceful-timeout=). */
  graceful: number;
  /** Daemon mode: queue-timeout= (a request waiting this long for a free thread gets 503). */
  queue: number;
  /** Daemon mode: startup-timeout= (how long a daemon process may take to load the app). */
  startup: number;
}

export interface ExpressSettings {
  /** Absolute path of the .tsgi file. */
  app: string;
  host: string;
  port: number;
  mode: ExpressMode;
  serverRoot: string;
  /** LogLevel value: 'info', 'warn', 'warn tsgi:debug', ... */
  logLevel: string;
  /** Absolute path of mod_tsgi.so. */
  modulePath: string;
  processes: number;
  threads: number;
  timeouts: ExpressTimeouts;
  /** Apache's worker user and group; null to keep the invoking user (only root can switch). */
  user: string | null;
  group: string | null;
  /** URL path the app is mounted at ('/' or '/a/b', no trailing slash). */
  mountPoint: string;
  /** `Alias URL PATH` for static files (a directory or a single file), in order. */
  urlAliases: { url: string; path: string }[];
  /** TSGIScriptReloading On (pick up edits of the .tsgi file) instead of Off. */
  reloadOnChanges: boolean;
  /**
   * Where the logs go. 'relay': FIFOs that `start-server` relays to its stderr/stdout.
   * 'files': error_log (and access_log) in the server root, or, when Apache is started
   * with -DTSGI_LOG_TO_TERMINAL (the generated apachectl on a terminal, with
   * --log-to-terminal), /dev/stderr and /dev/stdout.
   */
  logs: 'relay' | 'files';
  /** setup-server --log-to-terminal: the apachectl script runs Apache in the foreground on a terminal. */
  logToTerminal: boolean;
  /** Whether requests are logged (start-server always logs them, on stdout). */
  accessLog: boolean;
  /** Files of raw Apache directives, Included at the end (absolute paths). */
  includeFiles: string[];
  /** mod_status at /server-status, for local clients. */
  serverStatus: boolean;
  /** Per-request `SetEnv NAME VALUE`: they reach the app's environ. */
  setenv: [string, string][];
  /** Daemon mode: the node executable of the group (node=), by default the one running tsgi. */
  node: string;
  /**
   * Daemon mode: user=/group= of the daemon group, only when asked (--user/--group as
   * root); otherwise the daemons run as Apache's User, which is the same account anyway.
   */
  daemonUser: string | null;
  daemonGroup: string | null;
}

export const DEFAULT_TIMEOUTS: ExpressTimeouts = { request: 60, keepAlive: 2, header: 15, headerMax: 30, body: 15, graceful: 15, queue: 30, startup: 30 };

/** `<tmpdir>/tsgi-express-<port>-<uid>`, as mod_wsgi-express's `/tmp/mod_wsgi-localhost:8000:<uid>`. */
export function defaultServerRoot(port: number): string {
  const uid = typeof process.getuid === 'function' ? process.getuid() : 0;
  return path.join(os.tmpdir(), `tsgi-express-${port}-${uid}`);
}

export const isRoot = () => typeof process.getuid === 'function' && process.getuid() === 0;

export function expressSettings(o: Pick<ExpressSettings, 'app' | 'modulePath'> & Partial<ExpressSettings>): ExpressSettings {
  const port = o.port ?? 8000;
  const user = o.user === undefined ? (isRoot() ? 'www-data' : null) : o.user;
  return {
    host: '127.0.0.1',
    mode: 'embedded',
    logLevel: 'info',
    processes: 1,
    threads: 5,
    mountPoint: '/',
    urlAliases: [],
    reloadOnChanges: false,
    logs: 'relay',
    logToTerminal: false,
    accessLog: true,
    includeFiles: [],
    serverStatus: false,
    setenv: [],
    node: process.execPath,
    daemonUser: null,
    daemonGroup: null,
    ...o,
    port,
    serverRoot: o.serverRoot ?? defaultServerRoot(port),
    timeouts: { ...DEFAULT_TIMEOUTS, ...o.timeouts },
    user,
    group: o.group === undefined ? user : o.group,
  };
}

/** The files of a server root. */
export function serverRootFiles(root: string) {
  return {
    conf: path.join(root, 'httpd.conf'),
    pid: path.join(root, 'httpd.pid'),
    documentRoot: path.join(root, 'htdocs'),
    /** FIFOs `tsgi express` relays to its stderr and stdout (httpd-runner.ts LogRelay). */
    errorLog: path.join(root, 'error_log.fifo'),
    accessLog: path.join(root, 'access_log.fifo'),
    /** setup-server's log files, and its apachectl script. */
    errorLogFile: path.join(root, 'error_log'),
    accessLogFile: path.join(root, 'access_log'),
    apachectl: path.join(root, 'apachectl'),
    /**
     * Daemon mode: TSGISocketPrefix. Apache makes each group's sockets from it as
     * PREFIX.<parent pid>.<n>.sock (and .status); inside the server root, so several
     * instances never collide and the system Apache's runtime dir is never touched.
     */
    socketPrefix: path.join(root, 'tsgi'),
  };
}

/**
 * The longest socket prefix that still leaves room for ".<pid>.<n>.status" (pid up to
 * 7 digits, n up to 3) within sun_path's 108 bytes, NUL included.
 */
export const MAX_SOCKET_PREFIX = 107 - '.1234567.123.status'.length;

/** Daemon mode: the TSGIDaemonProcess name, made from the app's file name ("hello" for hello.tsgi). */
export function processGroupName(app: string): string {
  const base = path.basename(app).replace(/\.[^.]*$/, '').replace(/[^A-Za-z0-9_-]+/g, '-').replace(/^-+|-+$/g, '');
  return /^[A-Za-z0-9_]/.test(base) ? base.slice(0, 40) : 'app';
}

/**
 * The Apache processes and threads of a config. Embedded: the pool runs the app, so it
 * is exactly --processes x --threads. Daemon: Apache's threads only forward requests,
 * so there are more of them than the daemons have threads (as mod_wsgi-express sizes
 * its front end): requests beyond the daemons' capacity then wait in the daemons'
 * queue, under queue-timeout, rather than unseen in Apache's listen backlog, and static
 * files (--url-alias) are still served while the daemons are busy.
 */
export function apachePool(s: Pick<ExpressSettings, 'mode' | 'processes' | 'threads'>): { processes: number; threads: number } {
  if (s.mode === 'embedded') return { processes: s.processes, threads: s.threads };
  const total = Math.max(10, Math.ceil(s.processes * s.threads * 1.5));
  const processes = Math.ceil(total / 64);
  return { processes, threads: Math.ceil(total / processes) };
}

/** `host:port` for Listen and URLs; IPv6 literals in brackets. */
export function hostPort(host: string, port: number): string {
  return `${host.includes(':') ? `[${host}]` : host}:${port}`;
}

/** Where a client on this machine reaches the server (a wildcard address means loopback). */
export function connectHost(host: string): string {
  if (host === '0.0.0.0' || host === '*') return '127.0.0.1';
  if (host === '::' || host === '[::]') return '::1';
  return host;
}

export function serverUrl(s: Pick<ExpressSettings, 'host' | 'port'>): string {
  return `http://${hostPort(connectHost(s.host), s.port)}/`;
}

let builtinCache: Set<string> | null = null;

/** Modules compiled into the apache2 binary (Debian: log_config, logio, unixd, ...): LoadModule on them is an error. */
export function compiledInModules(apacheBin: string = APACHE_BIN): Set<string> {
  if (builtinCache) return builtinCache;
  const out = execFileSync(apacheBin, ['-l'], { encoding: 'utf8' });
  builtinCache = new Set([...out.matchAll(/^\s+mod_(\w+)\.c$/gm)].map((m) => `${m[1]}_module`));
  return builtinCache;
}

/** The modules a config loads, by identifier; the ones compiled in are skipped at render time. */
export function moduleList(s: ExpressSettings): { name: string; path: string }[] {
  const std = (base: string) => ({ name: `${base}_module`, path: path.join(APACHE_MODULES_DIR, `mod_${base}.so`) });
  return [
    std('mpm_event'),
    std('unixd'),
    std('log_config'),
    std('authz_core'),
    std('mime'),
    std('reqtimeout'),
    ...(s.urlAliases.length > 0 ? [std('alias')] : []),
    ...(s.setenv.length > 0 ? [std('env')] : []),
    ...(s.serverStatus ? [std('status'), std('authz_host')] : []),
    { name: 'tsgi_module', path: s.modulePath },
  ];
}

/** httpd.conf quoting. */
export function q(s: string): string {
  return `"${s.replace(/\\/g, '\\\\').replace(/"/g, '\\"')}"`;
}

/** Event MPM sizing for a fixed pool of `processes` × `threads` (apachePool). */
function mpmLines(s: ExpressSettings): string[] {
  const pool = apachePool(s);
  const total = pool.processes * pool.threads;
  return [
    `StartServers ${pool.processes}`,
    // Room for the old generation's children to finish during a graceful restart.
    `ServerLimit ${Math.max(16, pool.processes * 2)}`,
    `ThreadLimit ${Math.max(64, pool.threads)}`,
    `ThreadsPerChild ${pool.threads}`,
    // Spare thresholds equal to the whole pool: Apache neither grows nor shrinks it.
    `MinSpareThreads ${total}`,
    `MaxSpareThreads ${total}`,
    `MaxRequestWorkers ${total}`,
    'MaxConnectionsPerChild 0',
  ];
}

export function renderHttpdConf(s: ExpressSettings, builtins: Set<string> = compiledInModules()): string {
  const f = serverRootFiles(s.serverRoot);
  const t = s.timeouts;
  const appDir = path.dirname(s.app);
  const lines: string[] = [
    ...(s.logs === 'relay'
      ? [`# Generated by \`tsgi express start-server\` for ${s.app}.`, '# Rewritten on every start: edits here are lost. Nothing is read from /etc/apache2.']
      : [
          `# Generated by \`tsgi express setup-server\` for ${s.app}; run it with ./apachectl.`,
          '# Rewritten by every setup-server: edits here are lost (use --include-file). Nothing is read from /etc/apache2.',
        ]),
    '',
    `ServerRoot ${q(s.serverRoot)}`,
    // Sockets, shared memory and mutex files stay in the server root, so several
    // instances (and the system Apache) never collide in /var/run/apache2.
    `DefaultRuntimeDir ${q(s.serverRoot)}`,
    `PidFile ${q(f.pid)}`,
    `Mutex ${q(`file:${s.serverRoot}`)} default`,
    '',
    ...moduleList(s)
      .filter((m) => !builtins.has(m.name))
      .map((m) => `LoadModule ${m.name} ${q(m.path)}`),
    '',
  ];
  if (s.user) lines.push(`User ${s.user}`);
  if (s.group) lines.push(`Group ${s.group}`);
  lines.push(
    `Listen ${hostPort(s.host, s.port)}`,
    `ServerName ${hostPort(connectHost(s.host), s.port)}`,
    '',
    s.mode === 'embedded'
      ? `# Capacity: ${s.processes} process(es) x ${s.threads} threads, event MPM.`
      : `# Apache's children only forward requests to the daemon group (below); event MPM.`,
    ...mpmLines(s),
    '',
    '# Timeouts (seconds).',
    `Timeout ${t.request}`,
    'KeepAlive On',
    `KeepAliveTimeout ${t.keepAlive}`,
    'MaxKeepAliveRequests 100',
    `RequestReadTimeout header=${t.header}-${t.headerMax},MinRate=500 body=${t.body},MinRate=500`,
    `GracefulShutdownTimeout ${t.graceful}`,
    '',
    ...logLines(s),
    '',
    'TypesConfig /etc/mime.types',
    '',
    '# Nothing on the filesystem is served unless granted below.',
    '<Directory />',
    '    AllowOverride None',
    '    Require all denied',
    '</Directory>',
    `DocumentRoot ${q(f.documentRoot)}`,
    '',
    ...aliasLines(s),
    ...(s.mode === 'embedded' ? [`# The app (embedded mode: a Node runtime inside each Apache child).`] : []),
    ...(s.mode === 'daemon' ? daemonLines(s) : []),
    `<Directory ${q(appDir)}>`,
    '    AllowOverride None',
    '    Require all granted',
    '</Directory>',
    ...(s.mode === 'embedded'
      ? ['# On with --reload-on-changes: an edited .tsgi is loaded afresh by the next request.']
      : ['# On with --reload-on-changes: the request that notices an edited .tsgi runs the new code,', '# and the daemon group is then recycled (fresh processes load it).']),
    `TSGIScriptReloading ${s.reloadOnChanges ? 'On' : 'Off'}`,
    // --request-timeout: a Node event loop blocked this long fails its requests with 504.
    // (Daemon mode: request-timeout= above; Node does not run inside Apache at all.)
    ...(s.mode === 'embedded' ? [`TSGIEventLoopTimeout ${t.request}`] : []),
    ...s.setenv.map(([k, v]) => `SetEnv ${k} ${q(v)}`),
    `TSGIScriptAlias ${s.mountPoint} ${q(s.app)}`,
    '',
  );
  if (s.serverStatus) {
    lines.push(
      '# --server-status: mod_status, for clients on this machine.',
      'ExtendedStatus On',
      '<Location /server-status>',
      '    SetHandler server-status',
      '    Require local',
      '</Location>',
      ...(s.mode === 'daemon'
        ? [
            "# The daemon group's processes: pid, requests, in flight, RSS, uptime (?json for JSON).",
            '<Location /tsgi-status>',
            '    SetHandler tsgi-status',
            '    Require local',
            '</Location>',
          ]
        : []),
      '',
    );
  }
  if (s.includeFiles.length > 0) {
    lines.push('# --include-file: raw Apache directives.', ...s.includeFiles.map((f) => `Include ${q(f)}`), '');
  }
  return lines.join('\n');
}

/** `name=value` as one httpd.conf word, quoted when the value needs it. */
function option(name: string, value: string | number): string {
  const word = `${name}=${value}`;
  return /[\s"\\]/.test(word) ? q(word) : word;
}

/**
 * Daemon mode: the group, its sockets, and no Node inside Apache. The environment
 * variable TSGI_EXPRESS_ROOT marks the group's processes (they run in a session of
 * their own, outside Apache's process group): `tsgi express` finds any left over by it.
 */
function daemonLines(s: ExpressSettings): string[] {
  const f = serverRootFiles(s.serverRoot);
  const t = s.timeouts;
  const name = processGroupName(s.app);
  const opts = [
    option('processes', s.processes),
    option('threads', s.threads),
    ...(s.daemonUser ? [option('user', s.daemonUser)] : []),
    ...(s.daemonGroup ? [option('group', s.daemonGroup)] : []),
    option('request-timeout', t.request),
    option('graceful-timeout', t.graceful),
    option('queue-timeout', t.queue),
    option('startup-timeout', t.startup),
    option('display-name', '%{GROUP}'),
    option('node', s.node),
    option('env', daemonEnvMarker(s.serverRoot)),
  ];
  return [
    `# The app (daemon mode): ${s.processes} Node process(es) x ${s.threads} threads in the group`,
    `# "${name}", started and supervised by the Apache parent; Apache's children forward`,
    '# each request to them over a Unix socket (docs/protocol.md).',
    `TSGISocketPrefix ${q(f.socketPrefix)}`,
    `TSGIDaemonProcess ${name} ${opts.join(' ')}`,
    `TSGIProcessGroup ${name}`,
    '# Nothing runs embedded: no Node runtime starts inside the Apache children.',
    'TSGIRestrictEmbedded On',
  ];
}

/** The marker daemonLines() puts in the group's environment. */
export function daemonEnvMarker(serverRoot: string): string {
  return `TSGI_EXPRESS_ROOT=${serverRoot}`;
}

const LOG_FORMAT = 'LogFormat "%h %l %u %t \\"%r\\" %>s %b \\"%{Referer}i\\" \\"%{User-Agent}i\\" %D" tsgi_express';

function logLines(s: ExpressSettings): string[] {
  const f = serverRootFiles(s.serverRoot);
  if (s.logs === 'relay') {
    return [
      '# Logs go to the terminal: these FIFOs are relayed by `tsgi express` to its stderr',
      "# (the error log, with the app's console output) and its stdout (the access log).",
      `ErrorLog ${q(f.errorLog)}`,
      `LogLevel ${s.logLevel}`,
      LOG_FORMAT,
      ...(s.accessLog ? [`CustomLog ${q(f.accessLog)} tsgi_express`] : []),
    ];
  }
  return [
    '# Logs: files in the server root; on the terminal when started with',
    '# -DTSGI_LOG_TO_TERMINAL (the apachectl script does it for --log-to-terminal on a tty).',
    `LogLevel ${s.logLevel}`,
    LOG_FORMAT,
    '<IfDefine TSGI_LOG_TO_TERMINAL>',
    '    ErrorLog /dev/stderr',
    ...(s.accessLog ? ['    CustomLog /dev/stdout tsgi_express'] : []),
    '</IfDefine>',
    '<IfDefine !TSGI_LOG_TO_TERMINAL>',
    `    ErrorLog ${q(f.errorLogFile)}`,
    ...(s.accessLog ? [`    CustomLog ${q(f.accessLogFile)} tsgi_express`] : []),
    '</IfDefine>',
  ];
}

/** --url-alias: Alias plus access to exactly what it names (a directory, or one file). */
function aliasLines(s: ExpressSettings): string[] {
  const out: string[] = [];
  for (const a of s.urlAliases) {
    let isDir = true;
    try {
      isDir = fs.statSync(a.path).isDirectory();
    } catch {
      /* checked by the command line; a directory by default */
    }
    out.push(`# --url-alias ${a.url} ${a.path}`, `Alias ${a.url} ${q(a.path)}`);
    if (isDir) {
      out.push(`<Directory ${q(a.path)}>`, '    AllowOverride None', '    Options None', '    Require all granted', '</Directory>');
    } else {
      out.push(`<Directory ${q(path.dirname(a.path))}>`, `    <Files ${q(path.basename(a.path))}>`, '        Require all granted', '    </Files>', '</Directory>');
    }
  }
  if (out.length > 0) out.push('');
  return out;
}

/** A directory we may use as a server root: ours, not a symlink; created 0755 when missing. */
export function prepareServerRoot(root: string): void {
  let st: fs.Stats | null = null;
  try {
    st = fs.lstatSync(root);
  } catch {
    /* missing: created below */
  }
  if (st === null) {
    fs.mkdirSync(root, { recursive: true, mode: 0o755 });
    // The umask may have taken bits away; Apache's workers (www-data when we are root)
    // must traverse it to reach htdocs and the runtime files.
    fs.chmodSync(root, 0o755);
  } else {
    if (!st.isDirectory()) throw new Error(`server root ${root} exists and is not a directory`);
    const uid = typeof process.getuid === 'function' ? process.getuid() : st.uid;
    if (st.uid !== uid) throw new Error(`server root ${root} belongs to uid ${st.uid}, not to you (uid ${uid}); choose another with --server-root`);
  }
  const docs = serverRootFiles(root).documentRoot;
  fs.mkdirSync(docs, { recursive: true, mode: 0o755 });
}

/** Single-quoted for sh. */
export function shQuote(s: string): string {
  return `'${s.replace(/'/g, `'\\''`)}'`;
}

/**
 * setup-server's `apachectl`: init-style control of the server root's Apache.
 * `start` runs it in the background (logs in the server root), except with
 * --log-to-terminal on a terminal: then in the foreground, logs on the terminal.
 */
export function renderApachectl(s: ExpressSettings): string {
  const f = serverRootFiles(s.serverRoot);
  return `#!/bin/sh
# Generated by \`tsgi express setup-server\` for ${s.app}.
# usage: apachectl start|stop|restart|graceful|graceful-stop|configtest
ROOT=${shQuote(s.serverRoot)}
CONF=${shQuote(f.conf)}
HTTPD=${shQuote(APACHE_BIN)}
LOG_TO_TERMINAL=${s.logToTerminal ? 1 : 0}

usage() {
    echo "usage: $0 start|stop|restart|graceful|graceful-stop|configtest" >&2
    exit 2
}
[ $# -eq 1 ] || usage
cd "$ROOT" || exit 1
case "$1" in
start)
    if [ "$LOG_TO_TERMINAL" = 1 ] && [ -t 2 ]; then
        # --log-to-terminal on a terminal: in the foreground, logs here; Ctrl-C stops it.
        exec "$HTTPD" -d "$ROOT" -f "$CONF" -DTSGI_LOG_TO_TERMINAL -DFOREGROUND
    fi
    # In the background; logs: $ROOT/error_log${s.accessLog ? ' and $ROOT/access_log' : ''}.
    exec "$HTTPD" -d "$ROOT" -f "$CONF" -k start
    ;;
stop|restart|graceful|graceful-stop)
    exec "$HTTPD" -d "$ROOT" -f "$CONF" -k "$1"
    ;;
configtest)
    exec "$HTTPD" -d "$ROOT" -f "$CONF" -t
    ;;
*)
    usage
    ;;
esac
`;
}

/**
 * Writes httpd.conf (and the empty DocumentRoot) into the server root, and for
 * setup-server (logs: 'files') the apachectl script; returns the config's path.
 */
export function writeServerRoot(s: ExpressSettings, builtins?: Set<string>): string {
  prepareServerRoot(s.serverRoot);
  const files = serverRootFiles(s.serverRoot);
  fs.writeFileSync(files.conf, renderHttpdConf(s, builtins), { mode: 0o644 });
  if (s.logs === 'files') {
    fs.writeFileSync(files.apachectl, renderApachectl(s), { mode: 0o755 });
    fs.chmodSync(files.apachectl, 0o755);
  }
  return files.conf;
}
