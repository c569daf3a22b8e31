/**
 * `tsgi serve APP.tsgi`: the wsgiref.simple_server twin. One process, node:http,
 * access log (Apache common log format) on stdout, errors on stderr.
 */
import { ScriptLoader, LoadError } from '../loader';
import { streamLog } from '../gateway/log';
import { createHttpServer, listen } from '../transports/http-server';
import { parseArgs } from 'node:util';
import { validateEnabled, withValidation } from './validation';

export async function serveCommand(args: string[]): Promise<number> {
  let parsed;
  try {
    parsed = parseArgs({
      args,
      allowPositionals: true,
      strict: true,
      options: {
      host: { type: 'string', default: '127.0.0.1' },
      port: { type: 'string', default: '8000' },
      reload: { type: 'boolean', default: false },
      callable: { type: 'string', default: 'application' },
      'mount-point': { type: 'string', default: '' },
      validate: { type: 'boolean', default: false },
      },
    });
  } catch (err) {
    process.stderr.write(`tsgi serve: ${(err as Error).message}\n`);
    return 2;
  }
  const { values, positionals } = parsed;
  if (positionals.length !== 1) {
    process.stderr.write('tsgi serve: expected exactly one APP.tsgi argument\n');
    return 2;
  }
  const port = Number(values.port);
  if (!/^\d+$/.test(values.port) || port > 65535) {
    process.stderr.write(`tsgi serve: --port must be a port number (0-65535), got ${JSON.stringify(values.port)}\n`);
    return 2;
  }
  const mountPoint = values['mount-point'];
  if (mountPoint !== '' && !mountPoint.startsWith('/')) {
    process.stderr.write(`tsgi serve: --mount-point must start with "/", got ${JSON.stringify(mountPoint)}\n`);
    return 2;
  }
  const log = streamLog(process.stderr, 'tsgi');
  let loader: ScriptLoader;
  try {
    loader = new ScriptLoader(positionals[0], { callable: values.callable, reload: values.reload, log });
    loader.load();
  } catch (err) {
    process.stderr.write(`tsgi serve: ${(err as Error).message}\n`);
    // With --reload the server keeps going and answers 500 until the script is fixed.
    if (!(err instanceof LoadError) || !values.reload) return 1;
    loader = new ScriptLoader(positionals[0], { callable: values.callable, reload: true, log });
  }
  const provider = values.validate || validateEnabled(process.env) ? withValidation(loader) : loader;
  const server = createHttpServer({ provider, log, accessLog: process.stdout, mountPoint });
  let address;
  try {
    address = await listen(server, values.host, port);
  } catch (err) {
    process.stderr.write(`tsgi serve: cannot listen on ${values.host}:${port}: ${(err as Error).message}\n`);
    return 1;
  }
  const shownHost = address.family === 'IPv6' ? `[${address.address}]` : address.address;
  process.stderr.write(`Serving ${loader.path} on http://${shownHost}:${address.port}${mountPoint || '/'}${values.reload ? ' (reloading on change)' : ''}\n`);
  return new Promise<number>((resolve) => {
    const stop = (signal: string) => {
      process.stderr.write(`tsgi serve: ${signal}: finishing in-flight requests\n`);
      server.close(() => resolve(0));
      server.closeIdleConnections?.();
      // Bounded: a request that never finishes does not keep the server alive.
      setTimeout(() => {
        server.closeAllConnections?.();
        resolve(0);
      }, 10_000).unref();
    };
    process.once('SIGINT', () => stop('SIGINT'));
    process.once('SIGTERM', () => stop('SIGTERM'));
  });
}
