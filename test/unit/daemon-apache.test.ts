/**
 * Apache daemon mode, the pure parts: the error-log formatter and level filter, the launch
 * config parser (every field's error names the field), the pool options it maps to, the
 * shared Providers (preload, reload notice), and `tsgi status` formatting and discovery.
 */
process.env.TZ = 'UTC';

import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { apacheFormatLog, apacheTimestamp, formatApacheEntry, levelEnabled, parseLogLevel } from '../../src/gateway/apache-log';
import { Providers } from '../../src/gateway/providers';
import { apachePoolOptions, parseApacheConfig, type PoolStatusReport } from '../../src/daemon-mode';
import { findStatusSockets, formatBytes, formatDuration, formatStatusTable, statusCommand } from '../../src/cli/status';
import { memoryLog } from '../helpers/memory-sink';

const SECRET = Buffer.alloc(32, 7).toString('base64');
// 2026-11-21T21:30:00.123456Z, a Saturday
const MICROS = Date.UTC(2026, 10, 21, 21, 30, 0, 123) * 1000 + 456;

describe('Apache error-log format', () => {
  it('stamps like Apache: day, month, day of month, time with microseconds, year', () => {
    expect(apacheTimestamp(MICROS)).toBe('Sat Nov 21 21:30:00.123456 2026');
    expect(apacheTimestamp(Date.UTC(2027, 0, 3, 4, 5, 6, 7) * 1000)).toBe('Sun Jan 03 04:05:06.007000 2027');
  });

  it('formats one entry per line, the prefix on each line of a multi-line message', () => {
    expect(formatApacheEntry('error', 'boom', 1234, MICROS)).toBe('[Sat Nov 21 21:30:00.123456 2026] [tsgi:error] [pid 1234] boom\n');
    expect(formatApacheEntry('warn', 'a\nb\n', 9, MICROS)).toBe('[Sat Nov 21 21:30:00.123456 2026] [tsgi:warn] [pid 9] a\n[Sat Nov 21 21:30:00.123456 2026] [tsgi:warn] [pid 9] b\n');
  });

  it('drops entries below the level, as Apache LogLevel does', () => {
    expect(levelEnabled('error', 'warn')).toBe(true);
    expect(levelEnabled('warn', 'warn')).toBe(true);
    expect(levelEnabled('info', 'warn')).toBe(false);
    expect(levelEnabled('debug', 'info')).toBe(false);
    expect(levelEnabled('debug', 'debug')).toBe(true);
    const out: string[] = [];
    const log = apacheFormatLog({ level: 'info', tag: 'daemon app: ', write: (s) => out.push(s) });
    log.log('debug', 'hidden');
    log.log('info', 'shown');
    log.log('error', 'bad');
    expect(out).toHaveLength(2);
    expect(out[0]).toMatch(new RegExp(`^\\[\\w{3} \\w{3} \\d\\d \\d\\d:\\d\\d:\\d\\d\\.\\d{6} \\d{4}\\] \\[tsgi:info\\] \\[pid ${process.pid}\\] daemon app: shown\\n$`));
    expect(out[1]).toContain('[tsgi:error]');
  });

  it('parses log levels strictly', () => {
    expect(parseLogLevel('debug')).toBe('debug');
    expect(() => parseLogLevel('notice', 'LogLevel')).toThrow('LogLevel must be one of error, warn, info, debug, got "notice"');
  });
});

describe('the launch config (fd 4)', () => {
  const full = {
    group: 'app',
    secret: SECRET,
    processes: 2,
    processesGiven: true,
    threads: 15,
    maximumRequests: 0,
    inactivityTimeoutMs: 0,
    requestTimeoutMs: 60000,
    gracefulTimeoutMs: 15000,
    startupTimeoutMs: 30000,
    queueTimeoutMs: 30000,
    displayName: 'tsgi-daemon (app)',
    preload: ['/abs/path/app.tsgi'],
    logLevel: 'warn',
    replaces: 0,
    startDelayMs: 0,
    parentPid: 1234,
  };

  it('parses the contract example', () => {
    const { config, warnings } = parseApacheConfig(JSON.stringify(full));
    expect(warnings).toEqual([]);
    expect(config).toMatchObject({ ...full, secret: new Uint8Array(Buffer.alloc(32, 7)) });
  });

  it('defaults everything but group and secret', () => {
    const { config } = parseApacheConfig(JSON.stringify({ group: 'g', secret: SECRET }));
    expect(config).toMatchObject({
      processes: 1,
      processesGiven: false,
      threads: 15,
      requestTimeoutMs: 60000,
      gracefulTimeoutMs: 15000,
      startupTimeoutMs: 30000,
      queueTimeoutMs: 30000,
      displayName: 'tsgi-daemon (g)',
      preload: [],
      logLevel: 'warn',
      replaces: 0,
      startDelayMs: 0,
      parentPid: 0,
    });
  });

  it.each([
    [{ threads: 0 }, '"threads" must be an integer >= 1, got 0'],
    [{ processes: 1.5 }, '"processes" must be an integer >= 1, got 1.5'],
    [{ requestTimeoutMs: -1 }, '"requestTimeoutMs" must be an integer >= 0, got -1'],
    [{ group: '' }, '"group" must be a non-empty name, got ""'],
    [{ secret: 'not base64!' }, '"secret" must be base64 text'],
    [{ secret: Buffer.alloc(16).toString('base64') }, '"secret" must decode to 32 bytes, got 16'],
    [{ preload: ['relative.tsgi'] }, '"preload" must be an array of absolute paths'],
    [{ logLevel: 'notice' }, '"logLevel" must be one of error, warn, info, debug, got "notice"'],
    [{ processesGiven: 'yes' }, '"processesGiven" must be true or false'],
    [{ parentPid: '12' }, '"parentPid" must be an integer >= 0, got "12"'],
  ])('refuses %j naming the field', (patch, message) => {
    expect(() => parseApacheConfig(JSON.stringify({ ...full, ...patch }))).toThrow(`the launch config (fd 4): ${message}`);
  });

  it('refuses what is not a JSON object, and says when it is empty', () => {
    expect(() => parseApacheConfig('')).toThrow(/the launch config \(fd 4\): not JSON: .*\(it is empty\)/);
    expect(() => parseApacheConfig('[1]')).toThrow('the launch config (fd 4): must be a JSON object');
  });

  it('warns about keys it does not know instead of refusing them', () => {
    const { warnings } = parseApacheConfig(JSON.stringify({ ...full, home: '/srv' }));
    expect(warnings).toEqual(['the launch config (fd 4): unknown key "home" ignored']);
  });

  it('maps to pool options: fd 3, protocol tsgi, multiprocess as mod_wsgi', () => {
    const log = memoryLog();
    const one = apachePoolOptions(parseApacheConfig(JSON.stringify({ ...full, processes: 1, processesGiven: true })).config, log);
    expect(one).toMatchObject({ listen: { kind: 'fd', fd: 3 }, protocol: 'tsgi', script: '', processes: 1, multiprocess: true, processGroup: 'app', workerCloseFds: [5] });
    const dflt = apachePoolOptions(parseApacheConfig(JSON.stringify({ group: 'g', secret: SECRET })).config, log);
    expect(dflt.multiprocess).toBe(false);
    expect(dflt.workerLog).toEqual({ level: 'warn', tag: 'daemon g: ' });
    expect(dflt.workerTitle).toBe('tsgi-daemon (g) worker');
  });
});

describe('Providers', () => {
  let dir: string;
  beforeAll(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tsgi-providers-'));
  });
  afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

  const write = (file: string, text: string, ageS = 0) => {
    fs.writeFileSync(file, `export function application() { return ['${text}']; }\n`);
    const t = new Date(Date.now() + ageS * 1000);
    fs.utimesSync(file, t, t);
  };

  it('one provider per (group, script, callable, reload); a preloaded script goes to the first group asking for it', () => {
    const script = path.join(dir, 'a.tsgi');
    write(script, 'a');
    const p = new Providers({ log: memoryLog() });
    p.preload(script);
    const first = p.get('g1', script, 'application', true);
    expect(p.get('g1', script, 'application', true)).toBe(first);
    expect(p.get('g2', script, 'application', true)).not.toBe(first);
    expect(p.get('g1', script, 'application', false)).not.toBe(first);
  });

  it('onReload fires once when a request finds the script changed, and that request gets the new code', () => {
    const script = path.join(dir, 'b.tsgi');
    write(script, 'old');
    const reloaded: string[] = [];
    const p = new Providers({ log: memoryLog(), onReload: (s) => reloaded.push(s) });
    const provider = p.get('g', script, 'application', true);
    expect((provider.resolve() as () => string[])()).toEqual(['old']);
    expect(reloaded).toEqual([]);
    write(script, 'new', 5);
    expect((provider.resolve() as () => string[])()).toEqual(['new']);
    expect(reloaded).toEqual([script]);
    provider.resolve();
    expect(reloaded).toEqual([script]);
  });

  it('a script that fails to load throws its LoadError on preload and on each resolve', () => {
    const script = path.join(dir, 'c.tsgi');
    fs.writeFileSync(script, "throw new Error('nope');\n");
    const p = new Providers({ log: memoryLog() });
    expect(() => p.preload(script)).toThrow(/c\.tsgi threw while loading:\nError: nope/);
    expect(() => p.get('g', script, 'application', true).resolve()).toThrow(/nope/);
  });
});

describe('tsgi status', () => {
  const report: PoolStatusReport = {
    group: 'app',
    pid: 1201,
    startedAt: new Date(Date.UTC(2026, 10, 21, 21, 30)).toISOString(),
    threads: 15,
    processes: [
      { pid: 1210, state: 'ready', requests: 52, inflight: 1, rssBytes: 48123904, uptimeMs: 81234, running: [{ what: 'GET /app/slow', ageMs: 1200 }] },
      { pid: 1211, state: 'draining', requests: 7, inflight: 0, rssBytes: 0, uptimeMs: 3_700_000, running: [] },
    ],
  };

  it('formats a group as a table', () => {
    const text = formatStatusTable(report, '/run/tsgi.1.0.status', Date.UTC(2026, 10, 21, 21, 31, 21));
    expect(text).toBe(
      [
        'group app (supervisor pid 1201, up 1m21s, 15 thread(s) per process) /run/tsgi.1.0.status',
        '  PID   STATE     REQUESTS  IN-FLIGHT  RSS       UPTIME',
        '  1210  ready     52        1          45.9 MiB  1m21s',
        '  1211  draining  7         0          -         1h01m',
        '  1210: GET /app/slow (1s)',
        '',
      ].join('\n'),
    );
    expect(formatDuration(200_000_000)).toBe('2d07h');
    expect(formatBytes(2048)).toBe('2 KiB');
  });

  it('finds <prefix>.*.status sockets, or *.status in a directory, and reports a stale one', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tsgi-status-'));
    try {
      const live = path.join(dir, 'tsgi.100.0.status');
      const server = net.createServer((s) => s.end(JSON.stringify(report)));
      await new Promise<void>((r) => server.listen(live, r));
      fs.writeFileSync(path.join(dir, 'tsgi.100.1.status'), 'not a socket');
      fs.writeFileSync(path.join(dir, 'other.sock'), '');
      expect(findStatusSockets(path.join(dir, 'tsgi'))).toEqual([live]);
      expect(findStatusSockets(dir)).toEqual([live]);
      expect(findStatusSockets(path.join(dir, 'nope'))).toEqual([]);
      const out: string[] = [];
      const err: string[] = [];
      expect(await statusCommand(['--socket-prefix', path.join(dir, 'tsgi'), '--json'], (s) => out.push(s), (s) => err.push(s))).toBe(0);
      expect(JSON.parse(out.join(''))).toEqual([report]);
      await new Promise<void>((r) => server.close(() => r()));
      // A socket file nobody serves (libuv removed ours on close; make a stale one).
      const stale = net.createServer();
      const stalePath = path.join(dir, 'tsgi.99.0.status');
      await new Promise<void>((r) => stale.listen(`${stalePath}.tmp`, r));
      fs.renameSync(`${stalePath}.tmp`, stalePath);
      await new Promise<void>((r) => stale.close(() => r()));
      err.length = 0;
      expect(await statusCommand(['--socket-prefix', path.join(dir, 'tsgi')], () => undefined, (s) => err.push(s))).toBe(1);
      expect(err.join('')).toContain(`${stalePath}: stale (no daemon behind it)`);
      expect(await statusCommand(['--bogus'], () => undefined, (s) => err.push(s))).toBe(2);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
