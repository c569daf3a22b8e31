#!/usr/bin/env node
// Measures how long the loader takes to turn a .tsgi into a callable, in a fresh
// process each time (as an Apache child or a CGI request would):
//   first load  — empty transpile cache: require sucrase, transpile, compile;
//   cached load — the cache holds the output: read it, compile (sucrase never loads).
// Usage: node bench/loader-time.js [SCRIPT.tsgi] [ROUNDS]   (after `npm run build`)
'use strict';
const { execFileSync } = require('node:child_process');
const { mkdtempSync, rmSync } = require('node:fs');
const { tmpdir } = require('node:os');
const path = require('node:path');

const script = path.resolve(process.argv[2] || path.join(__dirname, '..', 'examples', 'dispatch.tsgi'));
const rounds = Number(process.argv[3] || 15);
const loader = path.join(__dirname, '..', 'dist', 'loader.js');
const probe = `
const t0 = process.hrtime.bigint();
const { ScriptLoader } = require(${JSON.stringify(loader)});
new ScriptLoader(${JSON.stringify(script)}, { cacheDir: process.env.CACHE }).load();
process.stdout.write(String(Number(process.hrtime.bigint() - t0) / 1e6));
`;

function once(cache) {
  return Number(execFileSync(process.execPath, ['-e', probe], { env: { ...process.env, CACHE: cache }, encoding: 'utf8' }));
}

const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
};

const first = [];
const cached = [];
for (let i = 0; i < rounds; i++) {
  const cache = mkdtempSync(path.join(tmpdir(), 'tsgi-bench-cache-'));
  first.push(once(cache));
  cached.push(once(cache));
  rmSync(cache, { recursive: true, force: true });
}
const fmt = (xs) => `median ${median(xs).toFixed(1)} ms (min ${Math.min(...xs).toFixed(1)}, max ${Math.max(...xs).toFixed(1)})`;
console.log(`loader: ${path.relative(process.cwd(), script)}, node ${process.version}, ${rounds} fresh processes each`);
console.log(`  first load (empty cache): ${fmt(first)}`);
console.log(`  cached load:              ${fmt(cached)}`);
