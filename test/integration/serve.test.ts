/**
 * `tsgi serve` over real HTTP: every seed example, the bad-app outcomes, streaming,
 * uploads, client disconnects and the access log. Every app runs under the validate
 * middleware (startServe passes --validate).
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtempSync, utimesSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { gunzipSync } from 'node:zlib';
import { parseRawResponse, rawRequest, request, requestAndDisconnect } from '../harness/http';
import { startServe, serveFailure, ROOT, type ServeInstance } from '../helpers/serve';

const example = (name: string) => join(ROOT, 'examples', name);
const fixture = (name: string) => join(ROOT, 'test', 'fixtures', name);

describe('the seed examples through tsgi serve', () => {
  const servers: ServeInstance[] = [];
  const serve = async (script: string, args: string[] = []) => {
    const s = await startServe(script, args);
    servers.push(s);
    return s;
  };
  afterAll(async () => {
    await Promise.all(servers.map((s) => s.stop()));
  });

  it('hello world', async () => {
    const s = await serve(example('hello.tsgi'));
    const r = await request(s.url('/'));
    expect(r.status).toBe(200);
    expect(r.headers['content-type']).toBe('text/plain; charset=utf-8');
    expect(r.body.toString()).toBe('Hello World!\n');
    expect(r.headers['content-length']).toBe('13');
  });

  it('hello with ?subject=, HTML-escaped', async () => {
    const s = await serve(example('hello-subject.tsgi'));
    expect((await request(s.url('/'))).body.toString()).toContain('Hello World!');
    const r = await request(s.url('/?subject=' + encodeURIComponent('<b>"Bob" & co</b>')));
    expect(r.body.toString()).toContain('Hello &lt;b&gt;&quot;Bob&quot; &amp; co&lt;/b&gt;!');
    expect(r.body.toString()).not.toContain('<b>');
  });

  it('the regex PATH_INFO dispatcher', async () => {
    const s = await serve(example('dispatch.tsgi'));
    const index = await request(s.url('/'));
    expect(index.status).toBe(200);
    expect(index.body.toString()).toContain('<a href="hello/">continue</a>');
    expect((await request(s.url('/hello'))).body.toString()).toContain('Hello World!');
    expect((await request(s.url('/hello/'))).body.toString()).toContain('Hello World!');
    expect((await request(s.url('/hello/Alice'))).body.toString()).toContain('Hello Alice!');
    expect((await request(s.url('/hello/%3Cscript%3E'))).body.toString()).toContain('Hello &lt;script&gt;!');
    const missing = await request(s.url('/nope'));
    expect(missing.status).toBe(404);
    expect(missing.body.toString()).toBe('Not Found');
  });

  it('the /rest app prints PATH_INFO and SCRIPT_NAME (mounted at /rest)', async () => {
    const s = await serve(example('rest.tsgi'), ['--mount-point', '/rest']);
    expect((await request(s.url('/rest/custompath'))).body.toString()).toBe('Hello World!\nPATH_INFO = /custompath\nSCRIPT_NAME = /rest\n');
    expect((await request(s.url('/rest'))).body.toString()).toBe('Hello World!\nPATH_INFO = empty\nSCRIPT_NAME = /rest\n');
    expect((await request(s.url('/rest//a///b?x=1'))).body.toString()).toContain('PATH_INFO = /a/b\n');
    expect((await request(s.url('/rest/caf%C3%A9'))).body.toString()).toContain('PATH_INFO = /café\n');
    expect((await request(s.url('/restful'))).status).toBe(404);
  });

  it('importing a sibling module', async () => {
    const s = await serve(example('import-sibling.tsgi'));
    expect((await request(s.url('/x'))).body.toString()).toBe('just saying i did it (GET /x)\n');
  });

  it('the class-style app', async () => {
    const s = await serve(example('class-app.tsgi'));
    expect((await request(s.url('/'))).body.toString()).toBe('Hello world!\n');
  });

  it('a fetch-style handler through the fromFetch adapter', async () => {
    const s = await serve(example('fetch-handler.tsgi'));
    const r = await request(s.url('/greet?name=Ada'));
    expect(r.status).toBe(200);
    expect(r.body.toString()).toBe('Hello Ada from /greet\n');
    const post = await request(s.url('/'), { method: 'POST', body: Buffer.from('some posted text') });
    expect(JSON.parse(post.body.toString())).toEqual({ received: 16, echo: 'some posted text' });
  });

  it("seed 004's middleware chain: session counter, gzip, error page", async () => {
    const s = await serve(example('middleware-chain.tsgi'));
    const first = await request(s.url('/'), { headers: { 'Accept-Encoding': 'gzip' } });
    expect(first.status).toBe(200);
    expect(first.headers['content-encoding']).toBe('gzip');
    expect(gunzipSync(first.body).toString()).toBe('You have been here 1 times!\n');
    const cookie = String(first.headers['set-cookie']?.[0]).split(';')[0];
    const second = await request(s.url('/'), { headers: { Cookie: cookie } });
    expect(second.headers['content-encoding']).toBeUndefined();
    expect(second.body.toString()).toBe('You have been here 2 times!\n');
    const error = await request(s.url('/Errors_500'));
    expect(error.status).toBe(500);
    expect(error.body.toString()).toMatch(/Detect (&quot;|&#34;)error(&quot;|&#34;) in URL path/);
  });
});

describe('bad applications get defined outcomes and the server keeps serving', () => {
  let s: ServeInstance;
  beforeAll(async () => {
    s = await startServe(fixture('bad-apps.tsgi'));
  });
  afterAll(async () => {
    await s.stop();
  });

  const stillServing = async () => {
    const r = await request(s.url('/ok'));
    expect(r.status).toBe(200);
    expect(r.body.toString()).toBe('ok\n');
  };

  it.each([
    ['/returns-undefined', /returned undefined/],
    ['/non-iterable', /non-iterable number 42/],
    ['/numbers', /must be a Uint8Array or a string, got number 1/],
    ['/start-twice', /second time without excInfo/],
    ['/content-length-mismatch', /declared Content-Length: 5 but (sent|the application produced) more/],
    ['/crlf-header', /X-Injected contains CR or LF/],
    ['/throws', /the app threw before starting/],
  ])('%s → 500 and one log entry naming the problem', async (path, message) => {
    const before = s.stderr().length;
    const r = await request(s.url(path));
    expect(r.status).toBe(500);
    expect(r.complete).toBe(true);
    expect(r.headers['x-injected']).toBeUndefined();
    await s.waitFor('stderr', message);
    const entries = s.stderr().slice(before).split('\n').filter((l) => l.startsWith('[tsgi:error]'));
    expect(entries).toHaveLength(1);
    await stillServing();
  });

  it('an exception mid-stream aborts the response: the client sees it incomplete', async () => {
    const r = await request(s.url('/throws-mid-stream'));
    expect(r.status).toBe(200);
    expect(r.body.toString()).toBe('partial');
    expect(r.complete).toBe(false);
    await s.waitFor('stderr', /after the response started[\s\S]*the app threw mid-stream/);
    await stillServing();
  });

  it('fewer bytes than Content-Length: the client sees it incomplete', async () => {
    const r = await request(s.url('/content-length-short'));
    expect(r.status).toBe(200);
    expect(r.complete).toBe(false);
    await s.waitFor('stderr', /declared Content-Length: 10 but (sent only|the application produced) 5 bytes/);
    await stillServing();
  });

  it('an app that never finishes, with a client that disconnects: closed, logged once, still serving', async () => {
    const r = await requestAndDisconnect(s.url('/never-finishes'), 5);
    expect(r.status).toBe(200);
    expect(r.ended).toBe(false);
    await s.waitFor('stderr', /never-finishes: closed by the server/);
    await s.waitFor('stderr', /request aborted: GET \/never-finishes/);
    expect(s.stderr().match(/request aborted: GET \/never-finishes/g)).toHaveLength(1);
    await stillServing();
  });

  it('streams: the first chunk reaches the client before the app finishes', async () => {
    const flag = join(mkdtempSync(join(tmpdir(), 'tsgi-flag-')), 'got-first');
    const http = await import('node:http');
    const text = await new Promise<string>((resolve, reject) => {
      http.get(s.url(`/stream?flag=${encodeURIComponent(flag)}`), (res) => {
        let body = '';
        res.setEncoding('utf8');
        res.on('data', (d: string) => {
          body += d;
          if (body.includes('first\n')) writeFileSync(flag, '1');
        });
        res.on('end', () => resolve(body));
      }).on('error', reject);
    });
    expect(text).toBe('first\nsecond\n');
  });

  it('logs each request in Apache common log format on stdout', async () => {
    await request(s.url('/ok?x=1'));
    await s.waitFor('stdout', /127\.0\.0\.1 - - \[\d{2}\/\w{3}\/\d{4}:\d{2}:\d{2}:\d{2} [+-]\d{4}\] "GET \/ok\?x=1 HTTP\/1\.1" 200 3\n/);
  });

  it('HEAD gets the headers and no body', async () => {
    const r = await request(s.url('/ok'), { method: 'HEAD' });
    expect(r.status).toBe(200);
    expect(r.headers['content-length']).toBe('3');
    expect(r.body.byteLength).toBe(0);
  });
});

describe('request targets and header values', () => {
  let s: ServeInstance;
  beforeAll(async () => {
    s = await startServe(fixture('environ.tsgi'));
  });
  afterAll(async () => {
    await s.stop();
  });
  const environOf = async (raw: string) => {
    return parseRawResponse(await rawRequest(s.port, raw));
  };

  it('an encoded slash is refused with 404, as Apache does by default', async () => {
    expect((await request(s.url('/a%2Fb'))).status).toBe(404);
  });

  it('an absolute-form target is accepted (RFC 9112 §3.2.2)', async () => {
    const r = await environOf('GET http://example.test/abs/path?q=1 HTTP/1.1\r\nHost: example.test\r\nConnection: close\r\n\r\n');
    expect(r.status).toBe(200);
    const env = JSON.parse(r.body.toString());
    expect(env.PATH_INFO).toBe('/abs/path');
    expect(env.QUERY_STRING).toBe('q=1');
    expect(env.REQUEST_URI).toBe('http://example.test/abs/path?q=1');
  });

  it('header values are UTF-8 strings; REQUEST_URI stays raw; PATH_INFO is decoded', async () => {
    const r = await request(s.url('/caf%C3%A9?x=%20'), { headers: ['Host', '127.0.0.1', 'X-Name', Buffer.from('Zoë', 'utf8').toString('latin1'), 'X_Spoofed', 'evil'] });
    const env = JSON.parse(r.body.toString());
    expect(env.HTTP_X_NAME).toBe('Zoë');
    expect(env.HTTP_X_SPOOFED).toBeUndefined();
    expect(env.PATH_INFO).toBe('/café');
    expect(env.REQUEST_URI).toBe('/caf%C3%A9?x=%20');
    expect(env['tsgi.version']).toEqual([1, 0]);
    expect(env['tsgi.multithread']).toBe(true);
  });

  it('a malformed percent escape is a 400', async () => {
    expect((await request(s.url('/bad%zz'))).status).toBe(400);
  });
});

describe('load failures', () => {
  it('a script that throws at import: tsgi serve refuses to start and says why', async () => {
    const r = await serveFailure(fixture('throws-at-import.tsgi'));
    expect(r.code).toBe(1);
    expect(r.stderr).toContain(`${fixture('throws-at-import.tsgi')} threw while loading:`);
    expect(r.stderr).toContain('configuration is broken');
  });

  it('a script that exports nothing: refused with the export named', async () => {
    const r = await serveFailure(fixture('exports-nothing.tsgi'));
    expect(r.code).toBe(1);
    expect(r.stderr).toContain('has no export named "application"');
  });

  it('with --reload, a broken script gives 500s (one log entry each) and the server stays up', async () => {
    const s = await startServe(fixture('throws-at-import.tsgi'), ['--reload']);
    try {
      const r = await request(s.url('/'));
      expect(r.status).toBe(500);
      const again = await request(s.url('/'));
      expect(again.status).toBe(500);
    } finally {
      await s.stop();
    }
  });

  it('bad options are refused with the option named', async () => {
    const r = await serveFailure(example('hello.tsgi'), ['--bogus']);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/Unknown option '--bogus'/);
  });
});

describe('request bodies and reloading', () => {
  let s: ServeInstance;
  beforeAll(async () => {
    s = await startServe(fixture('echo.tsgi'));
  });
  afterAll(async () => {
    await s.stop();
  });

  it('an 8 MiB upload arrives intact (SHA-256)', async () => {
    const data = randomBytes(8 * 1024 * 1024);
    const r = await request(s.url('/'), { method: 'POST', body: data });
    expect(r.body.toString()).toBe(`${data.byteLength} ${createHash('sha256').update(data).digest('hex')} ${data.byteLength}\n`);
  });

  it('a chunked upload (no Content-Length) arrives intact', async () => {
    const parts = [randomBytes(1000), randomBytes(70_000), randomBytes(5)];
    const r = await request(s.url('/'), {
      method: 'POST',
      body: (async function* () {
        yield* parts;
      })(),
    });
    const all = Buffer.concat(parts);
    expect(r.body.toString()).toBe(`${all.byteLength} ${createHash('sha256').update(all).digest('hex')} -\n`);
  });

  it('Expect: 100-continue is answered when the app reads the body', async () => {
    const data = Buffer.from('continue me');
    const r = await request(s.url('/'), { method: 'POST', body: data, headers: { Expect: '100-continue', 'Content-Length': String(data.byteLength) } });
    expect(r.status).toBe(200);
    expect(r.body.toString()).toMatch(/^11 /);
  });

  it('a 16 MiB download arrives intact with its declared length', async () => {
    const r = await request(s.url('/?download=16777216'));
    expect(r.complete).toBe(true);
    expect(r.body.byteLength).toBe(16777216);
  });

  it('--reload picks up an edit', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'tsgi-reload-'));
    const script = join(dir, 'app.tsgi');
    const version = (v: string) => `export const application = (e: any, sr: any) => (sr('200 OK', [['Content-Type', 'text/plain']]), ['${v}']);\n`;
    writeFileSync(script, version('v1'));
    const r1 = await startServe(script, ['--reload']);
    try {
      expect((await request(r1.url('/'))).body.toString()).toBe('v1');
      writeFileSync(script, version('v2 edited'));
      const later = new Date(Date.now() + 10_000);
      utimesSync(script, later, later);
      expect((await request(r1.url('/'))).body.toString()).toBe('v2 edited');
    } finally {
      await r1.stop();
    }
  });
});
