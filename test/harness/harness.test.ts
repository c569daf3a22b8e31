/**
 * Proves the real-server harness itself: private Apache (event, prefork) and lighttpd
 * instances serve a shell CGI, expose their logs, and leave no process behind.
 */
import { once } from 'node:events';
import * as fs from 'node:fs';
import * as net from 'node:net';
import { afterAll, describe, expect, it } from 'vitest';
import { configtest, startApache, type ApacheInstance, type Mpm } from './apache';
import { chunks, decodeChunked, parseRawResponse, rawRequest, request, requestAndDisconnect } from './http';
import { startLighttpd, type LighttpdInstance } from './lighttpd';
import { freePort } from './ports';
import { pidAlive } from './proc';

const ENV_CGI = [
  '#!/bin/sh',
  'printf "Content-Type: text/plain\\r\\n\\r\\n"',
  'echo "SCRIPT_NAME=$SCRIPT_NAME"',
  'echo "PATH_INFO=$PATH_INFO"',
  'echo "USER=$(id -un)"',
  'echo "cgi-stderr-marker $PATH_INFO" >&2',
  '',
].join('\n');

// Echoes the request body; CONTENT_LENGTH is absent for chunked uploads under lighttpd
// (which de-chunks to a length) and Apache (which streams), so read to EOF.
const ECHO_CGI = ['#!/bin/sh', 'printf "Content-Type: application/octet-stream\\r\\n\\r\\n"', 'cat', ''].join('\n');

// A response large enough to still be streaming when the client hangs up.
const BIG_CGI = ['#!/bin/sh', 'printf "Content-Type: text/plain\\r\\n\\r\\n"', 'head -c 2000000 /dev/zero | tr "\\0" x', ''].join('\n');

const cgiFiles = {
  'cgi/env.sh': { content: ENV_CGI, mode: 0o755 },
  'cgi/echo.sh': { content: ECHO_CGI, mode: 0o755 },
  'cgi/big.sh': { content: BIG_CGI, mode: 0o755 },
};

const started: { stop(): Promise<unknown> }[] = [];
afterAll(async () => {
  await Promise.all(started.map((s) => s.stop()));
});

function expectGone(pids: number[]) {
  expect(pids.length).toBeGreaterThan(0);
  for (const pid of pids) {
    expect(pidAlive(pid), `pid ${pid} still alive`).toBe(false);
  }
}

describe('freePort', () => {
  it('returns a bindable port', async () => {
    const p = await freePort();
    expect(p).toBeGreaterThan(1023);
    expect(p).toBeLessThan(65536);
  });
});

describe.each<Mpm>(['event', 'prefork'])('Apache %s', (mpm) => {
  let apache: ApacheInstance;

  it('starts and serves a ScriptAlias CGI', async () => {
    apache = await startApache({
      mpm,
      files: cgiFiles,
      config: ({ root }) => `ScriptAlias /cgi/ "${root}/cgi/"\n`,
    });
    started.push(apache);
    expect(fs.existsSync(apache.confPath)).toBe(true);
    const r = await request(apache.url('/cgi/env.sh/a/b'));
    expect(r.status).toBe(200);
    expect(r.complete).toBe(true);
    expect(r.headers['content-type']).toBe('text/plain');
    expect(r.text).toContain('SCRIPT_NAME=/cgi/env.sh\n');
    expect(r.text).toContain('PATH_INFO=/a/b\n');
    if (process.getuid?.() === 0) expect(r.text).toContain('USER=www-data');
    // CGI stderr reaches the error log (AH01215).
    await apache.waitForLog(/cgi-stderr-marker \/a\/b/);
    expect(apache.errorLog()).toMatch(new RegExp(`mpm_${mpm}:notice.*resuming normal operations`));
  });

  it('streams a chunked upload through and reports truncated responses', async () => {
    const up = await request(apache.url('/cgi/echo.sh'), { method: 'POST', body: chunks(['hello ', 'chunked ', 'world'], 5) });
    expect(up.status).toBe(200);
    expect(up.text).toBe('hello chunked world');

    const cut = await requestAndDisconnect(apache.url('/cgi/big.sh'), 1000);
    expect(cut.status).toBe(200);
    expect(cut.ended).toBe(false);
    expect(cut.received.length).toBeGreaterThanOrEqual(1000);

    const raw = await rawRequest(apache.port, 'GET /cgi/env.sh HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n');
    const parsed = parseRawResponse(raw);
    expect(parsed.status).toBe(200);
    const body = parsed.header('transfer-encoding') === 'chunked' ? decodeChunked(parsed.body).data : parsed.body;
    expect(body.toString()).toContain('SCRIPT_NAME=/cgi/env.sh');

    const bad = parseRawResponse(await rawRequest(apache.port, 'GARBAGE\r\n\r\n', { endAfterWrite: true }));
    expect(bad.status).toBe(400);
  });

  if (mpm === 'event') {
    it('restarts gracefully', async () => {
      await apache.graceful();
      expect(apache.errorLog()).toMatch(/SIGUSR1 received\.\s+Doing graceful restart/);
      expect((await request(apache.url('/cgi/env.sh'))).status).toBe(200);
    });
  }

  it('stops without leaving a process', async () => {
    const pids = apache.processes();
    expect(pids).toContain(apache.pid);
    // prefork exercises graceful-stop (SIGWINCH), event plain stop (SIGTERM).
    const graceful = mpm === 'prefork';
    const res = await apache.stop({ graceful });
    expect(res.killed).toEqual([]);
    expect(await apache.stop()).toBe(res); // idempotent
    expectGone([apache.pid, ...pids]);
    expect(fs.existsSync(apache.root)).toBe(false);
    expect(apache.errorLog()).toMatch(graceful ? /caught SIGWINCH, shutting down gracefully/ : /caught SIGTERM, shutting down/);
    await expect(request(apache.url('/'), { timeoutMs: 1000 })).rejects.toThrow();
  });
});

describe('Apache config errors', () => {
  it('configtest names the file and line of a bad directive', async () => {
    const r = await configtest({ config: 'ServerAdmin x@example.invalid\nNoSuchDirective on\n' });
    expect(r.code).not.toBe(0);
    expect(r.output).toContain(`line ${r.configFirstLine + 1} of ${r.confPath}`);
    expect(r.output).toMatch(/Invalid command 'NoSuchDirective'/);
  });

  it('configtest passes on a valid config', async () => {
    const r = await configtest({ mpm: 'worker' });
    expect(r.output).toMatch(/Syntax OK/);
    expect(r.code).toBe(0);
  });

  it('startApache throws with the reason when the server cannot start', async () => {
    await expect(startApache({ config: 'NoSuchDirective on\n' })).rejects.toThrow(/Invalid command 'NoSuchDirective'/);
    // Apache keeps running when the cgid daemon cannot start; the harness refuses it.
    await expect(startApache({ config: 'ScriptSock /nonexistent-dir/x.sock\n' })).rejects.toThrow(
      /cgid daemon failed to initialize/,
    );
    const blocker = net.createServer().listen(0, '127.0.0.1');
    await once(blocker, 'listening');
    const port = (blocker.address() as net.AddressInfo).port;
    try {
      await expect(startApache({ port })).rejects.toThrow(/Address already in use/);
    } finally {
      blocker.close();
    }
  });
});

describe('lighttpd', () => {
  let lt: LighttpdInstance;

  it('serves a .sh CGI via cgi.assign', async () => {
    lt = await startLighttpd({
      files: {
        'htdocs/env.sh': ENV_CGI,
        'htdocs/echo.sh': ECHO_CGI,
        'htdocs/index.html': 'static ok\n',
      },
      config: 'cgi.assign = (".sh" => "/bin/sh")\n',
    });
    started.push(lt);
    const r = await request(lt.url('/env.sh/x/y'));
    expect(r.status).toBe(200);
    expect(r.text).toContain('SCRIPT_NAME=/env.sh\n');
    expect(r.text).toContain('PATH_INFO=/x/y\n');
    if (process.getuid?.() === 0) expect(r.text).toContain('USER=www-data');
    const s = await request(lt.url('/'));
    expect(s.text).toBe('static ok\n');
    expect(s.headers['content-type']).toBe('text/html');
    const up = await request(lt.url('/echo.sh'), { body: chunks(['a', 'b', 'c']) });
    expect(up.text).toBe('abc');
    await lt.waitForCgiLog(/cgi-stderr-marker \/x\/y/);
    expect(lt.errorLog()).toMatch(/server started/);
  });

  it('stops without leaving a process', async () => {
    const pids = lt.processes();
    expect(pids).toContain(lt.pid);
    expect((await lt.stop()).killed).toEqual([]);
    await lt.stop();
    expectGone([lt.pid, ...pids]);
    expect(lt.errorLog()).toMatch(/server stopped/);
  });

  it('throws with the error log when the config is bad', async () => {
    await expect(startLighttpd({ config: 'no.such-option = "x"\nthis is not lighttpd syntax\n' })).rejects.toThrow(
      /failed to start[\s\S]*(source|parser|configfile)/,
    );
  });
});
