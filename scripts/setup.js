#!/usr/bin/env node
// Idempotent bootstrap, run before `npm test` and `npm start` (pretest/prestart), so
// both work as the first command on a fresh clone:
//   1. npm dependencies, when node_modules is missing or older than package.json;
//   2. the Debian packages the tests drive (real Apache and lighttpd), when missing
//      and we are root (`--for test`; for `npm start`, step 4's setup installs apache2);
//   3. the TypeScript build (dist/), when any source is newer than the last build;
//   4. for tests, mod_tsgi (`npm run build:native`: libnode in a private prefix, CMake);
//      for `npm start` (`--for start`, which runs it under Apache), the same when
//      build/native/mod_tsgi.so is missing or older than native/.
// Plain JavaScript with no dependencies: it runs before anything is installed.
'use strict';
const { execFileSync } = require('node:child_process');
const fs = require('node:fs');
const path = require('node:path');

const root = path.resolve(__dirname, '..');
const forWhat = process.argv.includes('--for') ? process.argv[process.argv.indexOf('--for') + 1] : undefined;
const forTest = forWhat === 'test';
const forStart = forWhat === 'start';

function run(cmd, args, opts = {}) {
  process.stderr.write(`setup: ${cmd} ${args.join(' ')}\n`);
  execFileSync(cmd, args, { stdio: 'inherit', cwd: root, ...opts });
}

function mtime(p) {
  try {
    return fs.statSync(p).mtimeMs;
  } catch {
    return -1;
  }
}

function newestIn(dir) {
  let newest = -1;
  for (const entry of fs.readdirSync(dir, { withFileTypes: true })) {
    const p = path.join(dir, entry.name);
    newest = Math.max(newest, entry.isDirectory() ? newestIn(p) : mtime(p));
  }
  return newest;
}

// 1. npm dependencies
const stamp = path.join(root, 'node_modules', '.package-lock.json');
if (mtime(stamp) < Math.max(mtime(path.join(root, 'package.json')), mtime(path.join(root, 'package-lock.json')))) {
  run('npm', fs.existsSync(path.join(root, 'package-lock.json')) ? ['ci', '--no-audit', '--no-fund'] : ['install', '--no-audit', '--no-fund']);
}

// 2. Debian packages for the integration tests
const SYSTEM_PACKAGES = [
  { pkg: 'apache2', file: '/usr/sbin/apache2' },
  { pkg: 'lighttpd', file: '/usr/sbin/lighttpd' },
  { pkg: 'nginx-light', file: '/usr/sbin/nginx' },
];
if (forTest) {
  const missing = SYSTEM_PACKAGES.filter((p) => !fs.existsSync(p.file)).map((p) => p.pkg);
  if (missing.length > 0) {
    if (process.getuid && process.getuid() === 0) {
      const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
      run('apt-get', ['update'], { env });
      run('apt-get', ['install', '-y', '--no-install-recommends', ...missing], { env });
      // Installing apache2 and lighttpd starts their system services; the tests run
      // private instances and want port 80 and the services out of the way.
      for (const svc of missing.map((p) => p.replace(/-light$/, ''))) {
        try {
          execFileSync('service', [svc, 'stop'], { stdio: 'ignore' });
        } catch {
          /* not running, or no service manager: fine */
        }
      }
    } else {
      process.stderr.write(`setup: the integration tests need these Debian packages: ${missing.join(' ')}\n` + `setup: install them as root (apt-get install ${missing.join(' ')}) and run again\n`);
      process.exit(1);
    }
  }
}

// 3. TypeScript build
const buildStamp = path.join(root, 'dist', '.build-stamp');
const sourcesNewest = Math.max(newestIn(path.join(root, 'src')), mtime(path.join(root, 'tsconfig.json')), mtime(path.join(root, 'tsconfig.build.json')));
if (mtime(buildStamp) < sourcesNewest) {
  fs.rmSync(path.join(root, 'dist'), { recursive: true, force: true });
  run(process.execPath, [path.join(root, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', 'tsconfig.build.json']);
  fs.writeFileSync(buildStamp, new Date().toISOString() + '\n');
}

// 4. The native module (build/native/mod_tsgi.so), for the mod_tsgi tests: built here so
// a build failure shows before the tests start. Needs dist/embedded/bootstrap.js first.
if (forTest) run('npm', ['run', 'build:native']);
else if (forStart && mtime(path.join(root, 'build', 'native', 'mod_tsgi.so')) < newestIn(path.join(root, 'native'))) run('npm', ['run', 'build:native']);
