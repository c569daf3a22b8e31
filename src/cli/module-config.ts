/**
 * `tsgi module-config`: the httpd.conf lines that load the built mod_tsgi, as
 * `mod_wsgi-express module-config` prints mod_wsgi's. The module is built by
 * `npm run build` (native/, into build/native/mod_tsgi.so); libnode is found through the
 * module's own rpath, so LoadModule is all Apache needs.
 */
import { execFileSync } from 'node:child_process';
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

export function moduleConfigCommand(args: string[], name = 'tsgi module-config'): number {
  if (args.length > 0) {
    process.stderr.write(`${name}: takes no arguments, got ${JSON.stringify(args.join(' '))}\n`);
    return 2;
  }
  const so = modulePath();
  if (!fs.existsSync(so)) {
    process.stderr.write(`${name}: ${so} does not exist; build it with \`npm run build\` (or \`npm run build:native\`)\n`);
    return 1;
  }
  process.stdout.write(moduleConfig(so));
  return 0;
}

/** Where `install-module` puts things in Debian's Apache. */
export const SYSTEM_MODULES_DIR = '/usr/lib/apache2/modules';
export const SYSTEM_MODS_AVAILABLE = '/etc/apache2/mods-available';

export interface InstallPaths {
  modulesDir: string;
  modsAvailable: string;
}

export function installedFiles(p: InstallPaths = { modulesDir: SYSTEM_MODULES_DIR, modsAvailable: SYSTEM_MODS_AVAILABLE }) {
  return {
    module: path.join(p.modulesDir, 'mod_tsgi.so'),
    libDir: path.join(p.modulesDir, 'tsgi'),
    load: path.join(p.modsAvailable, 'tsgi.load'),
    conf: path.join(p.modsAvailable, 'tsgi.conf'),
  };
}

/**
 * The libnode mod_tsgi.so links against: its NEEDED libnode.so.N, looked up in its
 * RUNPATH/RPATH (as the loader would, $ORIGIN included).
 */
export function findLibnode(so: string): { soname: string; file: string } {
  const dyn = execFileSync('readelf', ['-d', so], { encoding: 'utf8' });
  const soname = /\(NEEDED\)\s+Shared library: \[(libnode\.so[^\]]*)\]/.exec(dyn)?.[1];
  if (!soname) throw new Error(`${so} does not link libnode (readelf -d)`);
  const runpath = /\((?:RUNPATH|RPATH)\)\s+Library r(?:un)?path: \[([^\]]*)\]/.exec(dyn)?.[1] ?? '';
  for (const dir of runpath.split(':').filter(Boolean)) {
    const file = path.join(dir.replace(/\$ORIGIN|\$\{ORIGIN\}/g, path.dirname(so)), soname);
    if (fs.existsSync(file)) return { soname, file: fs.realpathSync(file) };
  }
  throw new Error(`${soname}, which ${so} needs, is not in its runpath (${runpath || 'none'}); rebuild with \`npm run build\``);
}

/** Copies through a temporary name and a rename: a running Apache never maps a half-written file. */
function installFile(src: string, dest: string, mode: number): void {
  const tmp = `${dest}.tsgi-new-${process.pid}`;
  fs.copyFileSync(src, tmp);
  fs.chmodSync(tmp, mode);
  fs.renameSync(tmp, dest);
}

function writeText(dest: string, text: string): void {
  const tmp = `${dest}.tsgi-new-${process.pid}`;
  fs.writeFileSync(tmp, text, { mode: 0o644 });
  fs.chmodSync(tmp, 0o644);
  fs.renameSync(tmp, dest);
}

/**
 * Installs the built module into the system Apache:
 * - mod_tsgi.so into /usr/lib/apache2/modules/;
 * - the libnode it links against into /usr/lib/apache2/modules/tsgi/. The build's
 *   RUNPATH points into this checkout's build/libnode; tsgi.load loads the copy first
 *   with LoadFile, and the dynamic loader then satisfies mod_tsgi.so's NEEDED
 *   libnode.so.N by that soname, so the installed module does not depend on build/;
 * - mods-available/tsgi.load (LoadFile + LoadModule) and tsgi.conf, for `a2enmod tsgi`.
 * The JS side of mod_tsgi (dist/embedded/bootstrap.js, with dist/ and node_modules/)
 * is compiled into the module by path: the checkout must stay where it is.
 */
export function installModule(so: string = modulePath(), paths?: InstallPaths): { files: string[]; bootstrap: string } {
  const dest = installedFiles(paths);
  const lib = findLibnode(so);
  const bootstrap = path.join(PACKAGE_ROOT, 'dist', 'embedded', 'bootstrap.js');
  if (!fs.existsSync(bootstrap)) throw new Error(`${bootstrap} does not exist; build it with \`npm run build\``);
  if (!fs.existsSync(path.dirname(dest.load))) throw new Error(`${path.dirname(dest.load)} does not exist: is Debian's apache2 installed?`);
  fs.mkdirSync(dest.libDir, { recursive: true, mode: 0o755 });
  const libDest = path.join(dest.libDir, lib.soname);
  installFile(lib.file, libDest, 0o644);
  installFile(so, dest.module, 0o644);
  writeText(
    dest.load,
    `# mod_tsgi: TypeScript (.tsgi) apps in Apache. Installed by \`tsgi express install-module\`
# from ${PACKAGE_ROOT}; its JavaScript side runs from there (${bootstrap}).
# libnode first: mod_tsgi.so then finds it by its soname.
LoadFile ${quote(libDest)}
LoadModule tsgi_module ${quote(dest.module)}
`,
  );
  writeText(
    dest.conf,
    `# mod_tsgi settings for the whole server (a2enmod tsgi enables this file with tsgi.load).
# Apps are mapped in a site's config, e.g. in /etc/apache2/sites-available/000-default.conf:
#     TSGIScriptAlias /app /var/www/app/app.tsgi
#     <Directory /var/www/app>
#         Require all granted
#     </Directory>
# See docs/embedded.md in ${PACKAGE_ROOT}.
<IfModule tsgi_module>
    # Seconds a Node event loop may stay blocked before its requests get 504 (default 30).
    #TSGIEventLoopTimeout 30
</IfModule>
`,
  );
  return { files: [dest.module, libDest, dest.load, dest.conf], bootstrap };
}

export function installModuleCommand(args: string[]): number {
  const name = 'tsgi express install-module';
  if (args.length > 0) {
    process.stderr.write(`${name}: takes no arguments, got ${JSON.stringify(args.join(' '))}\n`);
    return 2;
  }
  if (typeof process.getuid === 'function' && process.getuid() !== 0) {
    process.stderr.write(`${name}: needs root (it writes ${SYSTEM_MODULES_DIR} and ${SYSTEM_MODS_AVAILABLE})\n`);
    return 1;
  }
  const so = modulePath();
  if (!fs.existsSync(so)) {
    process.stderr.write(`${name}: ${so} does not exist; build it with \`npm run build\`\n`);
    return 1;
  }
  let r;
  try {
    r = installModule(so);
  } catch (err) {
    process.stderr.write(`${name}: ${(err as Error).message}\n`);
    return 1;
  }
  process.stdout.write(
    `installed:\n${r.files.map((f) => `  ${f}\n`).join('')}` +
      `The module runs its JavaScript from ${r.bootstrap}: keep this checkout (and its dist/ and node_modules/) in place.\n` +
      'Enable it with `a2enmod tsgi`, then restart Apache (`apache2ctl configtest && apache2ctl graceful`).\n',
  );
  return 0;
}
