/**
 * The checks every web-server ↔ TSGI-listener pairing runs (mounts, environ keys, a
 * large upload), shared by the protocol integration tests so each pairing asserts the
 * same things. Apps: rest.tsgi under /rest, environ.tsgi under /env, echo.tsgi under /echo.
 */
import { expect } from 'vitest';
import { createHash, randomBytes } from 'node:crypto';
import { request } from '../harness/http';

export interface WebServer {
  port: number;
  url(path: string): string;
}

export async function expectMounts(server: WebServer): Promise<void> {
  const r = await request(server.url('/rest/custompath'));
  expect(r.status).toBe(200);
  expect(r.text).toBe('Hello World!\nPATH_INFO = /custompath\nSCRIPT_NAME = /rest\n');
  expect((await request(server.url('/rest/'))).text).toBe('Hello World!\nPATH_INFO = /\nSCRIPT_NAME = /rest\n');
  expect((await request(server.url('/rest/a%20b/c'))).text).toBe('Hello World!\nPATH_INFO = /a b/c\nSCRIPT_NAME = /rest\n');
  expect((await request(server.url('/rest/rest'))).text).toBe('Hello World!\nPATH_INFO = /rest\nSCRIPT_NAME = /rest\n');
}

export async function expectEnvironKeys(server: WebServer): Promise<void> {
  const r = await request(server.url('/env/some/path?a=1&b=%20'), { headers: { 'X-Custom': 'v1', Proxy: 'http://evil', Cookie: 'c=1' } });
  expect(r.status).toBe(200);
  const env = JSON.parse(r.text) as Record<string, unknown>;
  expect(env).toMatchObject({
    REQUEST_METHOD: 'GET',
    SCRIPT_NAME: '/env',
    PATH_INFO: '/some/path',
    QUERY_STRING: 'a=1&b=%20',
    REQUEST_URI: '/env/some/path?a=1&b=%20',
    SERVER_PROTOCOL: 'HTTP/1.1',
    SERVER_PORT: String(server.port),
    REMOTE_ADDR: '127.0.0.1',
    HTTP_X_CUSTOM: 'v1',
    HTTP_COOKIE: 'c=1',
    'tsgi.url_scheme': 'http',
    'tsgi.multithread': true,
    'tsgi.run_once': false,
    'tsgi.input': '<object>',
    'tsgi.errors': '<object>',
  });
  expect(env.HTTP_HOST).toMatch(/^127\.0\.0\.1/);
  expect(typeof env.SERVER_NAME).toBe('string');
  expect(env.HTTP_PROXY).toBeUndefined();
  expect(env.HTTP_CONTENT_LENGTH).toBeUndefined();
  expect(env.HTTP_CONTENT_TYPE).toBeUndefined();
  // A POST's body headers arrive as CONTENT_TYPE / CONTENT_LENGTH.
  const p = JSON.parse((await request(server.url('/env/'), { method: 'POST', body: 'abc', headers: { 'Content-Type': 'text/x-test' } })).text) as Record<string, unknown>;
  expect(p).toMatchObject({ REQUEST_METHOD: 'POST', CONTENT_LENGTH: '3', CONTENT_TYPE: 'text/x-test' });
}

/** Uploads `size` random bytes to /echo/ and checks the app saw every byte; `diagnose` adds context on failure. */
export async function expectUploadIntact(server: WebServer, size: number, diagnose: () => string = () => ''): Promise<void> {
  const data = randomBytes(size);
  const r = await request(server.url('/echo/'), { method: 'POST', body: data, timeoutMs: 120_000 });
  expect(r.status, diagnose()).toBe(200);
  expect(r.text).toBe(`${size} ${createHash('sha256').update(data).digest('hex')} ${size}\n`);
}
