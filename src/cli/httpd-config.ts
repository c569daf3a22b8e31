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

export type ExpressMode = 'embedded';

export interface ExpressTimeouts {
  /** Apache's Timeout: I/O to the client, and mod_tsgi's limit on a request that makes no progress. */
  request: number;
  keepAlive: number;
  /** mod_reqtimeout: the request line and headers, first byte within `header`, all within `headerMax`. */
  header: number;
  headerMax: number;
  /** mod_reqtimeout: the body, extended by MinRate. */
  body: number;
  /** GracefulShutdownTimeout: how long a graceful stop waits for in-flight requests. */
  graceful: number;
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
}

export const DEFAULT_TIMEOUTS: ExpressTimeouts = { request: 60, keepAlive: 2, header: 15, headerMax: 30, body: 15, graceful: 15 };

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
  };
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
    { name: 'tsgi_module', path: s.modulePath },
  ];
}

/** httpd.conf quoting. */
export function q(s: string): string {
  return `"${s.replace(/\\/g, '\\\\').replace(/"/g, '\\"')}"`;
}

/** Event MPM sizing for a fixed pool of `processes` × `threads`. */
function mpmLines(s: ExpressSettings): string[] {
  const total = s.processes * s.threads;
  return [
    `StartServers ${s.processes}`,
    // Room for the old generation's children to finish during a graceful restart.
    `ServerLimit ${Math.max(16, s.processes * 2)}`,
    `ThreadLimit ${Math.max(64, s.threads)}`,
    `ThreadsPerChild ${s.threads}`,
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
    `# Generated by \`tsgi express start-server\` for ${s.app}.`,
    '# Rewritten on every start: edits here are lost. Nothing is read from /etc/apache2.',
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
    `# Capacity: ${s.processes} process(es) x ${s.threads} threads, event MPM.`,
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
    '# Logs go to the terminal: these FIFOs are relayed by `tsgi express` to its stderr',
    '# (the error log, with the app\'s console output) and its stdout (the access log).',
    `ErrorLog ${q(f.errorLog)}`,
    `LogLevel ${s.logLevel}`,
    'LogFormat "%h %l %u %t \\"%r\\" %>s %b \\"%{Referer}i\\" \\"%{User-Agent}i\\" %D" tsgi_express',
    `CustomLog ${q(f.accessLog)} tsgi_express`,
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
    `# The app (${s.mode} mode: a Node runtime inside each Apache child).`,
    `<Directory ${q(appDir)}>`,
    '    AllowOverride None',
    '    Require all granted',
    '</Directory>',
    `TSGIScriptAlias / ${q(s.app)}`,
    '',
  );
  return lines.join('\n');
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

/** Writes httpd.conf (and the empty DocumentRoot) into the server root; returns the config's path. */
export function writeServerRoot(s: ExpressSettings, builtins?: Set<string>): string {
  prepareServerRoot(s.serverRoot);
  const conf = serverRootFiles(s.serverRoot).conf;
  fs.writeFileSync(conf, renderHttpdConf(s, builtins), { mode: 0o644 });
  return conf;
}
