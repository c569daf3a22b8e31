// Summarises V8 .cpuprofile files (node --cpu-prof) for bench/daemon.sh PROFILE=1: self time
// per function and per source area, over all the files given (the daemon workers).
// Usage: node cpuprofile-top.js [--top N] FILE.cpuprofile...
const fs = require('fs');
const args = process.argv.slice(2);
let top = 30;
if (args[0] === '--top') { top = +args[1]; args.splice(0, 2); }
if (!args.length) { console.error('usage: node cpuprofile-top.js [--top N] FILE.cpuprofile...'); process.exit(2); }
const byFn = new Map();
const inclFn = new Map();
const byArea = new Map();
let total = 0;
const add = (m, k, v) => m.set(k, (m.get(k) || 0) + v);
function area(url, name) {
  if (!url) return name.startsWith('(') ? name : '(native/V8 builtins)';
  if (url.startsWith('node:')) return 'node: ' + url.slice(5).split('/').slice(0, url.startsWith('node:internal/') ? 2 : 1).join('/');
  const m = url.match(/\/dist\/(.*)$/);
  if (m) return 'tsgi dist/' + m[1];
  return url.replace(/^file:\/\//, '');
}
for (const file of args) {
  let p;
  try { p = JSON.parse(fs.readFileSync(file, 'utf8')); } catch (e) { console.error(`${file}: not a cpuprofile: ${e.message}`); process.exit(1); }
  if (!Array.isArray(p.nodes) || !Array.isArray(p.samples) || !Array.isArray(p.timeDeltas)) {
    console.error(`${file}: not a cpuprofile (nodes/samples/timeDeltas missing)`); process.exit(1);
  }
  const node = new Map(p.nodes.map((n) => [n.id, n]));
  const parent = new Map();
  for (const n of p.nodes) for (const c of n.children || []) parent.set(c, n.id);
  const keyOf = (n) => {
    const cf = n.callFrame;
    const name = cf.functionName || '(anonymous)';
    const where = cf.url ? `${cf.url.replace(/^file:\/\//, '').replace(/^.*\/dist\//, 'dist/')}:${cf.lineNumber + 1}` : '';
    return where ? `${name}  ${where}` : name;
  };
  // Self time: each sample's delta goes to the node it hit (more exact than hitCount x mean interval).
  for (let i = 0; i < p.samples.length; i++) {
    const n = node.get(p.samples[i]);
    const dt = p.timeDeltas[i + 1] !== undefined ? p.timeDeltas[i + 1] : 0;
    if (!n || dt <= 0) continue;
    const cf = n.callFrame;
    const name = cf.functionName || '(anonymous)';
    const where = cf.url ? `${cf.url.replace(/^file:\/\//, '').replace(/^.*\/dist\//, 'dist/')}:${cf.lineNumber + 1}` : '';
    add(byFn, where ? `${name}  ${where}` : name, dt);
    add(byArea, area(cf.url, name), dt);
    total += dt;
    // Inclusive: every distinct function on the sample's stack gets the delta once.
    if (!name.startsWith('(')) {
      const seen = new Set();
      for (let id = n.id; id !== undefined; id = parent.get(id)) {
        const k = keyOf(node.get(id));
        if (k === '(root)' || seen.has(k)) continue;
        seen.add(k);
        add(inclFn, k, dt);
      }
    }
  }
}
const pct = (v) => (100 * v / total).toFixed(1).padStart(5) + ' %';
console.log(`total sampled: ${(total / 1e6).toFixed(2)} s over ${args.length} profile(s)`);
console.log('\nself time by area:');
for (const [k, v] of [...byArea].sort((a, b) => b[1] - a[1]).slice(0, 15)) console.log(`  ${pct(v)}  ${k}`);
console.log(`\nself time, top ${top} functions:`);
for (const [k, v] of [...byFn].sort((a, b) => b[1] - a[1]).slice(0, top)) console.log(`  ${pct(v)}  ${k}`);
console.log(`\ninclusive time (self + callees), top ${top} functions:`);
for (const [k, v] of [...inclFn].sort((a, b) => b[1] - a[1]).slice(0, top)) console.log(`  ${pct(v)}  ${k}`);
