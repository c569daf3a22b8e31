// mod_proxy -> Node peer: node:cluster with N workers (default 2, as processes=2) sharing one
// port, each running node-hello.js. Prints "ready N" once every worker listens.
// Usage: node node-cluster.js PORT [WORKERS]
const cluster = require('cluster');
const path = require('path');
const port = process.argv[2];
const workers = +(process.argv[3] || 2);
if (!port) { console.error('usage: node node-cluster.js PORT [WORKERS]'); process.exit(2); }
if (cluster.isPrimary) {
  let up = 0;
  cluster.on('message', (w, msg) => { if (msg === 'listening' && ++up === workers) console.log('ready ' + workers); });
  let stopping = false;
  cluster.on('exit', (w, code, sig) => { if (!stopping) console.error('worker ' + w.process.pid + ' exited: ' + (sig || code)); });
  for (let i = 0; i < workers; i++) cluster.fork({ PORT: port });
  const stop = () => { stopping = true; for (const id in cluster.workers) cluster.workers[id].kill(); process.exitCode = 0; };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
} else {
  require(path.join(__dirname, 'node-hello.js'));
}
