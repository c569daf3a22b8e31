/**
 * docker/: no Docker engine runs in our CI (DESIGN.md §5), so the image is never built
 * here. What can be checked is checked:
 *   - the Dockerfile's install step is scripts/install-system.sh, the very script .ci/run
 *     runs, and it succeeds (idempotent: on a CI machine it only checks);
 *   - every COPY source exists in the build context and is not excluded by .dockerignore,
 *     every script a RUN or the ENTRYPOINT runs exists and is executable (also in git's
 *     index: COPY takes the checkout's mode), `npm ci` and `npm run build` are run;
 *   - what the build leaves behind (mod_tsgi.so, bootstrap.js, `tsgi module-config`);
 *   - the VirtualHost generator (docker/tsgi-vhosts.sh) on the apps compose.yaml mounts:
 *     the result, with docker/tsgi-apps.conf, passes `apache2 -t` with mod_tsgi loaded,
 *     and a private Apache serving it answers each app by its ServerName on one port;
 *   - the entrypoint execs apache2 through apache2ctl (PID 1 stays apache2);
 *   - compose.yaml parses (a strict YAML subset parser here; cross-checked with
 *     python3's yaml when it is installed) and hosts two apps on one port.
 */
import { describe, it, expect, beforeAll } from 'vitest';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { configtest, startApache } from '../harness/apache';
import { request } from '../harness/http';
import { makeReadableTempDir } from '../harness/proc';
import { ensureModTsgi, MOD_TSGI, MOD_TSGI_SO } from '../helpers/mod-tsgi';
import { ROOT } from '../helpers/serve';

const DOCKER = path.join(ROOT, 'docker');
const read = (p: string) => fs.readFileSync(path.join(ROOT, p), 'utf8');
const PATH = `${process.env.PATH ?? ''}:/usr/local/sbin:/usr/sbin:/sbin`;

// ---- a strict YAML subset: block mappings, block lists of scalars, plain and quoted
// scalars, comments. Anything else (flow style, anchors, multi-line strings, tabs) is an
// error, so a file this accepts means what it says.
type Yaml = string | Yaml[] | { [key: string]: Yaml };

function parseYamlSubset(text: string): Yaml {
  const lines = text
    .split('\n')
    .map((raw, i) => ({ n: i + 1, raw: raw.replace(/\s+$/, '') }))
    .filter((l) => !/^\s*(#.*)?$/.test(l.raw));
  let i = 0;
  const fail = (n: number, why: string): never => {
    throw new Error(`compose.yaml:${n}: ${why}`);
  };
  const indentOf = (l: { n: number; raw: string }) => {
    if (/^\s*\t/.test(l.raw)) fail(l.n, 'tab in indentation');
    return /^ */.exec(l.raw)![0].length;
  };
  const scalar = (s: string, n: number): string => {
    s = s.trim();
    if (s.startsWith('"')) {
      const m = /^("(?:[^"\\]|\\.)*")\s*(#.*)?$/.exec(s) ?? fail(n, `bad double-quoted scalar ${s}`);
      return JSON.parse(m[1]) as string;
    }
    if (s.startsWith("'")) {
      const m = /^'((?:[^']|'')*)'\s*(#.*)?$/.exec(s) ?? fail(n, `bad single-quoted scalar ${s}`);
      return m[1].replace(/''/g, "'");
    }
    s = s.replace(/\s+#.*$/, '');
    if (/^[[\]{}&*!|>%@`]/.test(s) || /:\s/.test(s) || s.endsWith(':')) fail(n, `unsupported scalar ${s}`);
    return s;
  };
  const block = (indent: number): Yaml => (lines[i].raw.slice(indent).startsWith('- ') ? list(indent) : map(indent));
  const list = (indent: number): Yaml[] => {
    const out: Yaml[] = [];
    while (i < lines.length && indentOf(lines[i]) === indent) {
      const l = lines[i];
      if (!l.raw.slice(indent).startsWith('- ')) fail(l.n, 'expected "- item"');
      out.push(scalar(l.raw.slice(indent + 2), l.n));
      i++;
    }
    if (i < lines.length && indentOf(lines[i]) > indent) fail(lines[i].n, 'unexpected indentation');
    return out;
  };
  const map = (indent: number): { [key: string]: Yaml } => {
    const out: { [key: string]: Yaml } = {};
    while (i < lines.length) {
      const l = lines[i];
      const ind = indentOf(l);
      if (ind < indent) break;
      if (ind > indent) fail(l.n, 'unexpected indentation');
      const m = /^([A-Za-z0-9_.-]+):(?:\s+(.*))?$/.exec(l.raw.slice(ind)) ?? fail(l.n, `expected "key: value", got ${l.raw.trim()}`);
      if (Object.prototype.hasOwnProperty.call(out, m[1])) fail(l.n, `duplicate key ${m[1]}`);
      i++;
      if (m[2] !== undefined && !m[2].startsWith('#')) out[m[1]] = scalar(m[2], l.n);
      else if (i < lines.length && indentOf(lines[i]) > indent) out[m[1]] = block(indentOf(lines[i]));
      else fail(l.n, `key ${m[1]} has no value`);
    }
    return out;
  };
  if (lines.length === 0) fail(1, 'empty');
  if (indentOf(lines[0]) !== 0) fail(lines[0].n, 'the document must start at column 0');
  const doc = map(0);
  if (i < lines.length) fail(lines[i].n, 'trailing content');
  return doc;
}

const asMap = (y: Yaml | undefined, what: string): { [key: string]: Yaml } => {
  if (y === undefined || typeof y === 'string' || Array.isArray(y)) throw new Error(`${what}: expected a mapping`);
  return y;
};
const asList = (y: Yaml | undefined, what: string): Yaml[] => {
  if (!Array.isArray(y)) throw new Error(`${what}: expected a list`);
  return y;
};

// ---- the Dockerfile's instructions, continuation lines joined
interface Instruction {
  line: number;
  op: string;
  args: string;
}

function dockerInstructions(text: string): Instruction[] {
  const out: Instruction[] = [];
  const lines = text.split('\n');
  for (let n = 0; n < lines.length; n++) {
    if (/^\s*(#.*)?$/.test(lines[n])) continue;
    const start = n;
    let s = lines[n];
    while (s.endsWith('\\')) {
      s = s.slice(0, -1);
      n++;
      while (n < lines.length && /^\s*#/.test(lines[n])) n++; // comments inside a continuation
      s += ' ' + (lines[n] ?? '').trim();
    }
    const m = /^\s*([A-Za-z]+)\s+(.*)$/.exec(s);
    if (!m) throw new Error(`docker/Dockerfile:${start + 1}: cannot parse ${s}`);
    out.push({ line: start + 1, op: m[1].toUpperCase(), args: m[2].trim() });
  }
  return out;
}

const DOCKERFILE = dockerInstructions(read('docker/Dockerfile'));
const WORKDIR = DOCKERFILE.find((x) => x.op === 'WORKDIR')?.args ?? '';
const DOCKERIGNORE = read('.dockerignore')
  .split('\n')
  .map((s) => s.trim())
  .filter((s) => s && !s.startsWith('#'));

/** A path in the image under WORKDIR, as the repository path it was copied from. */
function repoPathOf(imagePath: string): string {
  const rel = path.posix.isAbsolute(imagePath) ? path.posix.relative(WORKDIR, imagePath) : imagePath.replace(/^\.\//, '');
  expect(rel.startsWith('..'), `${imagePath} is not under WORKDIR ${WORKDIR}`).toBe(false);
  return rel;
}

function expectExecutableScript(rel: string, where: string) {
  const abs = path.join(ROOT, rel);
  expect(fs.existsSync(abs), `${where}: ${rel} does not exist`).toBe(true);
  expect(fs.statSync(abs).mode & 0o111, `${where}: ${rel} is not executable`).not.toBe(0);
  // COPY takes the mode of the checkout it builds from: the index must say 100755 too.
  const staged = spawnSync('git', ['ls-files', '-s', '--', rel], { cwd: ROOT, encoding: 'utf8' }).stdout.trim();
  if (staged) expect(staged.split(/\s+/)[0], `${where}: ${rel} is not executable in git's index`).toBe('100755');
  const first = fs.readFileSync(abs, 'utf8').split('\n')[0];
  expect(first, `${where}: ${rel} has no #! line`).toMatch(/^#!\/(usr\/bin\/env (bash|sh)|bin\/(ba)?sh)$/);
  const shell = first.endsWith('bash') ? 'bash' : 'sh';
  const syntax = spawnSync(shell, ['-n', abs], { encoding: 'utf8' });
  expect(syntax.status, `${shell} -n ${rel}: ${syntax.stderr}`).toBe(0);
}

// ---- compose.yaml: the apps it mounts
const COMPOSE_TEXT = read('docker/compose.yaml');
const COMPOSE = asMap(parseYamlSubset(COMPOSE_TEXT), 'compose.yaml');

interface MountedApp {
  name: string;
  source: string; // absolute, on this machine
}

function composeService() {
  const services = asMap(COMPOSE.services, 'services');
  const names = Object.keys(services);
  expect(names, 'compose.yaml: one Apache service hosts both apps').toHaveLength(1);
  return asMap(services[names[0]], `services.${names[0]}`);
}

function composeApps(): MountedApp[] {
  const apps: MountedApp[] = [];
  for (const v of asList(composeService().volumes, 'volumes')) {
    expect(typeof v).toBe('string');
    const [src, dst, mode, ...rest] = (v as string).split(':');
    expect(rest, `volume ${v as string}`).toHaveLength(0);
    const m = /^\/srv\/apps\/([a-z0-9]([a-z0-9-]*[a-z0-9])?)\/app\.tsgi$/.exec(dst ?? '');
    expect(m, `volume ${v as string}: apps are mounted at /srv/apps/<name>/app.tsgi`).not.toBeNull();
    expect(mode, `volume ${v as string}: mounted read-only`).toBe('ro');
    apps.push({ name: m![1], source: path.resolve(DOCKER, src) });
  }
  return apps;
}

describe('docker/', () => {
  beforeAll(() => {
    ensureModTsgi();
  }, 600_000);

  it('the Dockerfile installs with scripts/install-system.sh, the script .ci/run runs, and it succeeds here', () => {
    const ci = read('.ci/run');
    expect(spawnSync('bash', ['-n', path.join(ROOT, '.ci/run')]).status).toBe(0);
    expect(ci).toMatch(/^\s*bash scripts\/install-system\.sh\s*$/m);
    expect(ci).toMatch(/^npm test$/m);
    const runs = DOCKERFILE.filter((x) => x.op === 'RUN').map((x) => x.args);
    expect(runs.some((r) => /(^|\s)\.\/scripts\/install-system\.sh(\s|$)/.test(r))).toBe(true);
    expect(runs.some((r) => /(^|&&\s*)npm ci(\s|$)/.test(r)), 'RUN npm ci').toBe(true);
    expect(runs.some((r) => /(^|&&\s*)npm run build(\s|&|$)/.test(r)), 'RUN npm run build').toBe(true);
    // Everything it installs today, as .ci/run installed before the script existed.
    const script = read('scripts/install-system.sh');
    expect(script).toMatch(/^PACKAGES=\(apache2 lighttpd nginx-light curl ca-certificates\)$/m);
    expect(script).toMatch(/^bash scripts\/setup-native\.sh$/m);

    const t0 = Date.now();
    const r = spawnSync(path.join(ROOT, 'scripts', 'install-system.sh'), [], { cwd: ROOT, encoding: 'utf8', timeout: 900_000, env: { ...process.env, PATH } });
    expect(r.status, `scripts/install-system.sh failed:\n${r.stdout}\n${r.stderr}`).toBe(0);
    console.log(`scripts/install-system.sh: ${Date.now() - t0} ms`);
    for (const bin of ['/usr/sbin/apache2', '/usr/sbin/lighttpd', '/usr/sbin/nginx', '/usr/bin/curl', '/usr/bin/apxs']) {
      expect(fs.existsSync(bin), `${bin} after install-system.sh`).toBe(true);
    }
  }, 900_000);

  it('the Dockerfile: node:20-bookworm, every COPY source in the context, every script it runs executable', () => {
    expect(DOCKERFILE[0].op).toBe('FROM');
    expect(DOCKERFILE[0].args).toBe('node:20-bookworm');
    expect(DOCKERFILE.filter((x) => x.op === 'FROM'), 'one stage').toHaveLength(1);
    expect(WORKDIR).toBe('/opt/tsgi');
    for (const ignored of ['node_modules', 'dist', 'build']) expect(DOCKERIGNORE, `.dockerignore ${ignored}`).toContain(ignored);

    const copies = DOCKERFILE.filter((x) => x.op === 'COPY' || x.op === 'ADD');
    expect(copies.length).toBeGreaterThan(0);
    for (const c of copies) {
      expect(c.op, `docker/Dockerfile:${c.line}: COPY, not ADD`).toBe('COPY');
      const words = c.args.split(/\s+/);
      expect(words.some((w) => w.startsWith('--from')), `docker/Dockerfile:${c.line}: no --from`).toBe(false);
      const sources = words.filter((w) => !w.startsWith('--')).slice(0, -1);
      expect(sources.length, `docker/Dockerfile:${c.line}: a source and a destination`).toBeGreaterThan(0);
      for (const src of sources) {
        const rel = src.replace(/^\.\//, '');
        expect(fs.existsSync(path.join(ROOT, rel)), `docker/Dockerfile:${c.line}: COPY source ${src} does not exist`).toBe(true);
        if (rel !== '.') expect(DOCKERIGNORE, `docker/Dockerfile:${c.line}: ${src} is excluded by .dockerignore`).not.toContain(rel.split('/')[0]);
      }
    }

    // Scripts and files the RUN lines name (they run in WORKDIR, a copy of the repository).
    let scripts = 0;
    for (const run of DOCKERFILE.filter((x) => x.op === 'RUN')) {
      for (const word of run.args.split(/[\s;&|<>]+/)) {
        if (!/^(\.\/)?(scripts|docker|bin)\//.test(word)) continue;
        const rel = word.replace(/^\.\//, '');
        if (rel.endsWith('.sh')) {
          expectExecutableScript(rel, `docker/Dockerfile:${run.line}`);
          scripts++;
        } else {
          expect(fs.existsSync(path.join(ROOT, rel)), `docker/Dockerfile:${run.line}: ${rel} does not exist`).toBe(true);
        }
      }
    }
    expect(scripts).toBeGreaterThanOrEqual(2); // install-system.sh, tsgi-vhosts.sh

    const entry = DOCKERFILE.find((x) => x.op === 'ENTRYPOINT');
    expect(entry).toBeDefined();
    const argv = JSON.parse(entry!.args) as string[];
    expect(argv).toHaveLength(1);
    expectExecutableScript(repoPathOf(argv[0]), `docker/Dockerfile:${entry!.line}: ENTRYPOINT`);
    // The entrypoint runs the generator beside it, which reads its templates beside it.
    for (const f of ['docker/tsgi-vhosts.sh', 'docker/vhost.conf.template', 'docker/default-vhost.conf.template', 'docker/tsgi-apps.conf']) {
      expect(fs.existsSync(path.join(ROOT, f)), f).toBe(true);
    }
    expect(DOCKERFILE.find((x) => x.op === 'STOPSIGNAL')?.args).toBe('SIGWINCH');
    expect(DOCKERFILE.find((x) => x.op === 'EXPOSE')?.args).toBe('80');
  });

  it('the build leaves what the image loads: mod_tsgi.so, bootstrap.js, and `tsgi module-config` for tsgi.load', () => {
    expect(fs.existsSync(MOD_TSGI_SO)).toBe(true);
    // The image build fails unless the module links the libnode of its own tree (else it
    // would be the runtime-less build that answers 503): the same check here.
    const check = /ldd build\/native\/mod_tsgi\.so \| grep -q '([^']+)'/.exec(read('docker/Dockerfile'));
    expect(check, 'docker/Dockerfile checks the module with ldd').not.toBeNull();
    const ldd = spawnSync('ldd', [MOD_TSGI_SO], { encoding: 'utf8' }).stdout;
    const here = new RegExp(check![1].replace(WORKDIR + '/', `${ROOT}/(native/\\.\\./)?`));
    expect(ldd, `ldd ${MOD_TSGI_SO}`).toMatch(here);
    expect(fs.existsSync(path.join(ROOT, 'dist', 'embedded', 'bootstrap.js'))).toBe(true);
    const r = spawnSync(process.execPath, [path.join(ROOT, 'bin', 'tsgi.js'), 'module-config'], { cwd: ROOT, encoding: 'utf8' });
    expect(r.status, r.stderr).toBe(0);
    expect(r.stdout).toBe(`LoadModule tsgi_module ${MOD_TSGI_SO}\n`);
  });

  it('compose.yaml parses and hosts two apps from examples/ as two VirtualHosts on one port', () => {
    const svc = composeService();
    const build = asMap(svc.build, 'build');
    const context = path.resolve(DOCKER, build.context as string);
    expect(context).toBe(ROOT);
    expect(path.resolve(context, build.dockerfile as string)).toBe(path.join(DOCKER, 'Dockerfile'));
    const ports = asList(svc.ports, 'ports');
    expect(ports).toHaveLength(1);
    expect(ports[0]).toMatch(/^\d+:80$/);
    const apps = composeApps();
    expect(apps).toHaveLength(2);
    expect(new Set(apps.map((a) => a.name)).size).toBe(2);
    for (const a of apps) {
      expect(path.dirname(a.source)).toBe(path.join(ROOT, 'examples'));
      expect(fs.existsSync(a.source), a.source).toBe(true);
    }
    const env = asMap(svc.environment, 'environment');
    expect(env.TSGI_DOMAIN).toBe('localhost');

    // The same document through a real YAML parser, where there is one.
    const probe = spawnSync('python3', ['-c', 'import yaml'], { encoding: 'utf8' });
    if (probe.status === 0) {
      const py = spawnSync('python3', ['-c', 'import json, sys, yaml; print(json.dumps(yaml.safe_load(sys.stdin)))'], { input: COMPOSE_TEXT, encoding: 'utf8' });
      expect(py.status, py.stderr).toBe(0);
      expect(JSON.parse(py.stdout)).toEqual(COMPOSE);
    } else {
      console.log('python3 yaml not available: compose.yaml checked by the subset parser only');
    }
  });

  it('the YAML subset parser refuses what it does not understand', () => {
    expect(() => parseYamlSubset('a:\n  - [x]\n')).toThrow(/unsupported/);
    expect(() => parseYamlSubset('a: 1\na: 2\n')).toThrow(/duplicate/);
    expect(() => parseYamlSubset('a:\n\tb: 1\n')).toThrow(/tab/);
    expect(() => parseYamlSubset('a:\n  b: 1\n    c: 2\n')).toThrow(/indentation/);
    expect(parseYamlSubset('a:\n  b: "x: y" # c\n  l:\n    - \'it\'\'s\'\n')).toEqual({ a: { b: 'x: y', l: ["it's"] } });
  });

  describe('the VirtualHosts of the apps compose.yaml mounts', () => {
    /** Lays out /srv/apps as compose mounts it, runs docker/tsgi-vhosts.sh on it for `port`. */
    function generate(port: number, extra: (appsDir: string) => void = () => {}) {
      const root = makeReadableTempDir('tsgi-docker-');
      const appsDir = path.join(root, 'srv', 'apps');
      const vhostsDir = path.join(root, 'tsgi-apps');
      for (const app of composeApps()) {
        fs.mkdirSync(path.join(appsDir, app.name), { recursive: true, mode: 0o755 });
        fs.copyFileSync(app.source, path.join(appsDir, app.name, 'app.tsgi'));
        fs.chmodSync(path.join(appsDir, app.name, 'app.tsgi'), 0o644);
      }
      fs.chmodSync(path.join(root, 'srv'), 0o755);
      fs.chmodSync(appsDir, 0o755);
      extra(appsDir);
      const r = spawnSync(path.join(DOCKER, 'tsgi-vhosts.sh'), [], {
        encoding: 'utf8',
        env: { ...process.env, TSGI_APPS_DIR: appsDir, TSGI_VHOSTS_DIR: vhostsDir, TSGI_PORT: String(port), TSGI_DOMAIN: 'localhost' },
      });
      if (r.status !== 0) throw new Error(`docker/tsgi-vhosts.sh failed:\n${r.stderr}`);
      // docker/tsgi-apps.conf as the image installs it, with this run's directory.
      const appsConf = read('docker/tsgi-apps.conf');
      expect(appsConf).toContain('IncludeOptional /etc/apache2/tsgi-apps/*.conf');
      const config = appsConf.replace('/etc/apache2/tsgi-apps/', `${vhostsDir}/`);
      return { root, appsDir, vhostsDir, config, log: r.stderr };
    }

    it('one file per app, ServerName <name>.localhost, the catch-all first; `apache2 -t` accepts them with mod_tsgi', async () => {
      let g: ReturnType<typeof generate> | undefined;
      try {
        const res = await configtest({
          modules: [MOD_TSGI],
          config: (ctx) => {
            g = generate(ctx.port);
            return g.config;
          },
        });
        expect(res.code, res.output).toBe(0);
        expect(res.output).toContain('Syntax OK');
        const files = fs.readdirSync(g!.vhostsDir).sort();
        const names = composeApps().map((a) => a.name);
        expect(files).toEqual(['000-default.conf', ...names.map((n) => `app-${n}.conf`).sort()]);
        for (const n of names) {
          const conf = fs.readFileSync(path.join(g!.vhostsDir, `app-${n}.conf`), 'utf8');
          expect(conf).toMatch(new RegExp(`^\\s*ServerName ${n}\\.localhost$`, 'm'));
          expect(conf).toMatch(new RegExp(`^\\s*TSGIScriptAlias / ${g!.appsDir}/${n}/app\\.tsgi$`, 'm'));
          expect(conf).not.toContain('@');
        }
      } finally {
        if (g) fs.rmSync(g.root, { recursive: true, force: true });
      }
    });

    it('a private Apache with that configuration serves each app by its Host, and 404 for any other', async () => {
      let g: ReturnType<typeof generate> | undefined;
      const apache = await startApache({
        modules: [MOD_TSGI],
        config: (ctx) => {
          g = generate(ctx.port);
          return g.config;
        },
      });
      try {
        const byName = new Map(composeApps().map((a) => [a.name, a.source]));
        expect([...byName.keys()].sort()).toEqual(['hello', 'rest']);
        const hello = await request(apache.url('/'), { headers: { Host: 'hello.localhost' } });
        expect(hello.status, apache.errorLog()).toBe(200);
        expect(hello.text).toBe('Hello World!\n');
        const rest = await request(apache.url('/custompath'), { headers: { Host: 'rest.localhost' } });
        expect(rest.status, apache.errorLog()).toBe(200);
        expect(rest.text).toBe('Hello World!\nPATH_INFO = /custompath\nSCRIPT_NAME = empty\n');
        const other = await request(apache.url('/'), { headers: { Host: 'nobody.localhost' } });
        expect(other.status).toBe(404);
      } finally {
        await apache.stop();
        if (g) fs.rmSync(g.root, { recursive: true, force: true });
      }
    }, 60_000);

    it('a provided vhost.conf is used unchanged; a directory that is no host name is skipped; bad settings are refused', () => {
      const g = generate(80, (appsDir) => {
        fs.mkdirSync(path.join(appsDir, 'custom'));
        fs.writeFileSync(path.join(appsDir, 'custom', 'app.tsgi'), '');
        fs.writeFileSync(path.join(appsDir, 'custom', 'vhost.conf'), '# mine\n');
        fs.mkdirSync(path.join(appsDir, 'Not_A_Host'));
        fs.writeFileSync(path.join(appsDir, 'Not_A_Host', 'app.tsgi'), '');
      });
      try {
        expect(fs.readFileSync(path.join(g.vhostsDir, 'app-custom.conf'), 'utf8')).toBe('# mine\n');
        expect(fs.existsSync(path.join(g.vhostsDir, 'app-Not_A_Host.conf'))).toBe(false);
        expect(g.log).toMatch(/skipping .*Not_A_Host/);
        // A second run starts from scratch: an app that went away loses its VirtualHost.
        fs.rmSync(path.join(g.appsDir, 'custom'), { recursive: true });
        const again = spawnSync(path.join(DOCKER, 'tsgi-vhosts.sh'), [], { encoding: 'utf8', env: { ...process.env, TSGI_APPS_DIR: g.appsDir, TSGI_VHOSTS_DIR: g.vhostsDir } });
        expect(again.status, again.stderr).toBe(0);
        expect(fs.existsSync(path.join(g.vhostsDir, 'app-custom.conf'))).toBe(false);
        for (const [k, v] of [
          ['TSGI_PORT', '80; x'],
          ['TSGI_DOMAIN', 'a|b'],
          ['TSGI_APPS_DIR', 'relative/apps'],
        ]) {
          const bad = spawnSync(path.join(DOCKER, 'tsgi-vhosts.sh'), [], { encoding: 'utf8', env: { ...process.env, TSGI_APPS_DIR: g.appsDir, TSGI_VHOSTS_DIR: g.vhostsDir, [k]: v } });
          expect(bad.status, `${k}=${v}`).toBe(1);
          expect(bad.stderr).toContain(k);
        }
      } finally {
        fs.rmSync(g.root, { recursive: true, force: true });
      }
    });

    it('the entrypoint writes the VirtualHosts, then apache2ctl -D FOREGROUND execs apache2 in its place (PID 1 stays apache2)', () => {
      const root = makeReadableTempDir('tsgi-docker-entry-');
      try {
        // A stand-in for /usr/sbin/apache2 that reports its pid and arguments.
        const fake = path.join(root, 'apache2');
        fs.writeFileSync(fake, '#!/bin/sh\necho "pid=$$ args=$*"\n', { mode: 0o755 });
        fs.mkdirSync(path.join(root, 'apps', 'hello'), { recursive: true });
        fs.writeFileSync(path.join(root, 'apps', 'hello', 'app.tsgi'), '');
        const r = spawnSync(path.join(DOCKER, 'entrypoint.sh'), ['-e', 'info'], {
          encoding: 'utf8',
          env: {
            ...process.env,
            PATH,
            APACHE_HTTPD: `exec ${fake}`,
            TSGI_APPS_DIR: path.join(root, 'apps'),
            TSGI_VHOSTS_DIR: path.join(root, 'vhosts'),
          },
        });
        expect(r.status, r.stderr).toBe(0);
        expect(r.stdout.trim()).toBe(`pid=${r.pid} args=-D FOREGROUND -e info`);
        expect(fs.existsSync(path.join(root, 'vhosts', 'app-hello.conf'))).toBe(true);
        // Without APACHE_HTTPD, it is Debian's apache2, exec'd.
        expect(read('docker/entrypoint.sh')).toContain('APACHE_HTTPD="${APACHE_HTTPD:-exec /usr/sbin/apache2}"');
      } finally {
        fs.rmSync(root, { recursive: true, force: true });
      }
    });
  });

  it('docker/README.md says how to build and run it, and that CI cannot build it', () => {
    const readme = read('docker/README.md');
    expect(readme).toContain('docker build -f docker/Dockerfile');
    expect(readme).toContain('docker compose -f docker/compose.yaml up');
    expect(readme).toMatch(/no Docker engine/i);
  });
});
