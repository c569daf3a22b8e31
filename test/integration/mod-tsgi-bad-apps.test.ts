/**
 * Every bad-app case of the TSGI core issue, embedded in a real private Apache: each
 * gets a defined status (or a visibly aborted response) plus one error-log line, and
 * the child keeps serving (same pid before and after).
 *
 * The same in daemon mode (processes=2, routed with the `process-group=` option of each
 * TSGIScriptAlias): same statuses and log lines, and no daemon worker is lost (the
 * worker pids are the same before and after).
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { join } from 'node:path';
import { startApache, type ApacheInstance } from '../harness/apache';
import { request, requestAndDisconnect } from '../harness/http';
import { aliasOption, daemonWorkers, ensureMode, MOD_TSGI, modeConfig, TSGI_MODES, type TsgiMode } from '../helpers/mod-tsgi';
import { ROOT } from '../helpers/serve';

const FIXTURES = join(ROOT, 'test', 'fixtures');

describe.each(TSGI_MODES)('%s mode', (mode: TsgiMode) => {
  let apache: ApacheInstance;

  beforeAll(async () => {
    ensureMode(mode);
    const po = aliasOption(mode);
    apache = await startApache({
      modules: [MOD_TSGI],
      files: {
        'apps/pid.tsgi': `export function application(e: any, sr: any) { sr('200 OK', [['Content-Type', 'text/plain']]); return [String(process.pid)]; }\n`,
      },
      config: ({ root }) =>
        [
          `TSGIScriptAlias /bad ${join(FIXTURES, 'bad-apps.tsgi')}${po}`,
          `TSGIScriptAlias /import-throws ${join(FIXTURES, 'throws-at-import.tsgi')}${po}`,
          `TSGIScriptAlias /exports-nothing ${join(FIXTURES, 'exports-nothing.tsgi')}${po}`,
          `TSGIScriptAlias /pid ${root}/apps/pid.tsgi${po}`,
          // One child, so "the server keeps serving" is checked on the same process.
          'StartServers 1',
          'MinSpareThreads 1',
          'MaxSpareThreads 64',
          'ThreadsPerChild 16',
          'ServerLimit 1',
          'MaxRequestWorkers 16',
          modeConfig(mode, { route: 'alias' }),
        ].join('\n'),
    });
  }, 600_000);

  afterAll(async () => {
    await apache?.stop();
  });

  /**
   * Who serves: embedded, the pid of the one child; daemon, the group's worker pids
   * (either may answer a request), after checking one of them does.
   */
  async function pid(): Promise<string> {
    const r = await request(apache.url('/pid'));
    expect(r.status).toBe(200);
    if (mode === 'embedded') return r.body.toString();
    const workers = daemonWorkers(apache.pid);
    expect(workers).toHaveLength(2);
    expect(workers).toContain(Number(r.body.toString()));
    return workers.join(' ');
  }

  async function logged(re: RegExp, since: number): Promise<void> {
    await apache.waitForLog(re, 10_000, since);
  }

  describe(`bad applications, ${mode}`, () => {
    it.each([
      ['/import-throws', /throws-at-import\.tsgi threw while loading:[\s\S]*configuration is broken at import time/],
      ['/exports-nothing', /exports-nothing\.tsgi has no export named "application"/],
      ['/bad/non-iterable', /non-iterable number 42/],
      ['/bad/numbers', /must be a Uint8Array or a string, got number 1/],
      ['/bad/start-twice', /second time without excInfo/],
      ['/bad/content-length-mismatch', /declared Content-Length: 5 but sent more/],
      ['/bad/crlf-header', /X-Injected contains CR or LF/],
      ['/bad/returns-undefined', /returned undefined/],
    ])('%s → 500, one log entry naming the problem, the child keeps serving', async (path, message) => {
      const before = await pid();
      const mark = apache.logMark();
      const r = await request(apache.url(path));
      expect(r.status).toBe(500);
      expect(r.complete).toBe(true);
      expect(r.headers['x-injected']).toBeUndefined();
      await logged(message, mark);
      const entries = apache.errorLog().slice(mark).match(/500 sent/g) ?? [];
      expect(entries).toHaveLength(1);
      expect(await pid()).toBe(before);
    });

    it('fewer bytes than its Content-Length: the client sees an incomplete response', async () => {
      const mark = apache.logMark();
      const r = await request(apache.url('/bad/content-length-short'));
      if (mode === 'embedded') {
        expect(r.status).toBe(200);
        expect(r.complete).toBe(false);
      } else {
        // The daemon writes small output at the next turn of its event loop, and a
        // failure found before then replaces the unsent head (wire-server.ts, by design):
        // the short body, found at the end of a synchronous body, is a clean 500 instead
        // of a truncated 200. Never a complete 200 either way.
        expect(r.status).toBe(500);
        expect(r.complete).toBe(true);
      }
      await logged(/declared Content-Length: 10 but sent only 5 bytes/, mark);
    });

    it('an exception mid-stream: the response is aborted, never completed', async () => {
      const mark = apache.logMark();
      const r = await request(apache.url('/bad/throws-mid-stream'));
      expect(r.status).toBe(200);
      expect(r.body.toString()).toBe('partial');
      expect(r.complete).toBe(false);
      await logged(/the app threw mid-stream/, mark);
    });

    it('never finishes, and the client disconnects: the app is closed, one line logged, the child keeps serving', async () => {
      const before = await pid();
      const mark = apache.logMark();
      const r = await requestAndDisconnect(apache.url('/bad/never-finishes'), 5);
      expect(r.status).toBe(200);
      expect(r.ended).toBe(false);
      await logged(/never-finishes: closed by the server/, mark);
      expect(await pid()).toBe(before);
    });
  });
});
