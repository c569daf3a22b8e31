/**
 * Drives the gateway core in-process: a request record built from a few fields, and a
 * sink that records what a transport would have sent. For unit tests of the spec rules.
 */
import { runRequest, fixedApp, type ResponseHead, type ResponseSink, type RequestOutcome } from '../../src/gateway/run';
import type { ErrorLog, LogLevel } from '../../src/gateway/log';
import type { Application } from '../../src/tsgi';

export interface Recorded {
  head: ResponseHead | null;
  chunks: Uint8Array[];
  ended: boolean;
  aborted: Error | null;
  outcome: RequestOutcome;
  logs: { level: LogLevel; message: string }[];
  text: string;
  /** Events in order: 'head', 'body', 'end', 'abort'. */
  events: string[];
}

export interface FakeRequest {
  method?: string;
  path?: string;
  query?: string;
  headers?: Record<string, string>;
  body?: AsyncIterable<Uint8Array> | Uint8Array[] | null;
  signal?: AbortSignal;
  environ?: Record<string, unknown>;
  onContinue?: () => void;
}

export function memoryLog(): ErrorLog & { entries: { level: LogLevel; message: string }[] } {
  const entries: { level: LogLevel; message: string }[] = [];
  return { entries, log: (level, message) => entries.push({ level, message }) };
}

export async function runApp(app: Application, req: FakeRequest = {}, sinkOptions: { slow?: boolean } = {}): Promise<Recorded> {
  const log = memoryLog();
  const rec: Omit<Recorded, 'outcome' | 'text'> = { head: null, chunks: [], ended: false, aborted: null, logs: log.entries, events: [] };
  const sink: ResponseSink = {
    head(h) {
      rec.events.push('head');
      rec.head = h;
    },
    body(c) {
      rec.events.push('body');
      rec.chunks.push(Uint8Array.from(c));
      if (sinkOptions.slow) return new Promise((r) => setTimeout(r, 1));
    },
    end() {
      rec.events.push('end');
      rec.ended = true;
    },
    abort(e) {
      rec.events.push('abort');
      rec.aborted = e;
    },
  };
  const body = req.body ?? null;
  const environ: Record<string, unknown> = {
    REQUEST_METHOD: req.method ?? 'GET',
    SCRIPT_NAME: '',
    PATH_INFO: req.path ?? '/',
    QUERY_STRING: req.query ?? '',
    SERVER_NAME: 'localhost',
    SERVER_PORT: '80',
    SERVER_PROTOCOL: 'HTTP/1.1',
    REQUEST_URI: (req.path ?? '/') + (req.query ? `?${req.query}` : ''),
    REMOTE_ADDR: '127.0.0.1',
    ...req.environ,
  };
  for (const [k, v] of Object.entries(req.headers ?? {})) {
    const key = k.toLowerCase() === 'content-type' ? 'CONTENT_TYPE' : k.toLowerCase() === 'content-length' ? 'CONTENT_LENGTH' : 'HTTP_' + k.toUpperCase().replace(/-/g, '_');
    environ[key] = v;
  }
  const outcome = await runRequest(
    fixedApp(app, 'test-app'),
    {
      environ,
      body: Array.isArray(body) ? (async function* () { yield* body; })() : body,
      urlScheme: 'http',
      signal: req.signal ?? new AbortController().signal,
      onContinue: req.onContinue,
    },
    sink,
    { log, multithread: false, multiprocess: false, runOnce: false },
  );
  const text = Buffer.concat(rec.chunks).toString('utf8');
  return { ...rec, outcome, text };
}
