/**
 * Runs `tsgi serve` as a user would (the real bin, a real port) and collects its
 * stdout (access log) and stderr (error log).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { join } from 'node:path';

export const ROOT = join(__dirname, '..', '..');
export const TSGI_BIN = join(ROOT, 'bin', 'tsgi.js');

export interface ServeInstance {
  port: number;
  url(path: string): string;
  stdout(): string;
  stderr(): string;
  waitFor(stream: 'stdout' | 'stderr', re: RegExp, timeoutMs?: number): Promise<string>;
  stop(): Promise<number | null>;
  child: ChildProcess;
}

/**
 * `nodeBinary` runs the server under another Node (the Node 18 of scripts/node18.sh, say);
 * by default, the Node running the tests.
 */
export async function startServe(script: string, args: string[] = [], env: NodeJS.ProcessEnv = {}, nodeBinary: string = process.execPath): Promise<ServeInstance> {
  const child = spawn(nodeBinary, [TSGI_BIN, 'serve', script, '--port', '0', '--validate', ...args], {
    cwd: ROOT,
    env: { ...process.env, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  let err = '';
  child.stdout!.setEncoding('utf8').on('data', (d: string) => (out += d));
  child.stderr!.setEncoding('utf8').on('data', (d: string) => (err += d));
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
  const waitFor = async (stream: 'stdout' | 'stderr', re: RegExp, timeoutMs = 10_000) => {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const text = stream === 'stdout' ? out : err;
      const m = re.exec(text);
      if (m) return m[0];
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${re} on ${stream}; stderr:\n${err}\nstdout:\n${out}`);
      if (child.exitCode !== null) throw new Error(`tsgi serve exited with ${child.exitCode} before ${re}; stderr:\n${err}`);
      await new Promise((r) => setTimeout(r, 20));
    }
  };
  const banner = await waitFor('stderr', /on http:\/\/127\.0\.0\.1:(\d+)\//);
  const port = Number(/:(\d+)\//.exec(banner)![1]);
  return {
    port,
    url: (path) => `http://127.0.0.1:${port}${path}`,
    stdout: () => out,
    stderr: () => err,
    waitFor,
    child,
    async stop() {
      if (child.exitCode === null) child.kill('SIGTERM');
      return exited;
    },
  };
}

/** Runs `tsgi serve` expecting it to fail at start; resolves with exit code and stderr. */
export function serveFailure(script: string, args: string[] = []): Promise<{ code: number | null; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [TSGI_BIN, 'serve', script, '--port', '0', ...args], { cwd: ROOT, stdio: ['ignore', 'ignore', 'pipe'] });
    let err = '';
    child.stderr.setEncoding('utf8').on('data', (d: string) => (err += d));
    child.on('exit', (code) => resolve({ code, stderr: err }));
  });
}
