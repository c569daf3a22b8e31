/**
 * `tsgi module-config`: the httpd.conf lines that load the built mod_tsgi, as
 * `mod_wsgi-express module-config` prints mod_wsgi's. The module is built by
 * `npm run build` (native/, into build/native/mod_tsgi.so); libnode is found through the
 * module's own rpath, so LoadModule is all Apache needs.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';

/** The package root: dist/cli/ (built) or src/cli/ (ts) are two levels below it. */
export const PACKAGE_ROOT = path.resolve(__dirname, '..', '..');

/** Where `npm run build:native` leaves the module. */
export function modulePath(root: string = PACKAGE_ROOT): string {
  return path.join(root, 'build', 'native', 'mod_tsgi.so');
}

export function moduleConfig(so: string = modulePath()): string {
  return `LoadModule tsgi_module ${quote(so)}\n`;
}

/** httpd.conf quoting, only when needed (a path with spaces). */
function quote(p: string): string {
  return /[\s"\\]/.test(p) ? `"${p.replace(/\\/g, '\\\\').replace(/"/g, '\\"')}"` : p;
}

export function moduleConfigCommand(args: string[]): number {
  if (args.length > 0) {
    process.stderr.write(`tsgi module-config: takes no arguments, got ${JSON.stringify(args.join(' '))}\n`);
    return 2;
  }
  const so = modulePath();
  if (!fs.existsSync(so)) {
    process.stderr.write(`tsgi module-config: ${so} does not exist; build it with \`npm run build\` (or \`npm run build:native\`)\n`);
    return 1;
  }
  process.stdout.write(moduleConfig(so));
  return 0;
}
