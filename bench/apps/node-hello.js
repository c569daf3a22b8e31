// The Node hello world of bench/run.sh (same body and headers). Passenger runs it as is (its
// loader takes over listen(), so the port does not matter there); node-cluster.js runs it in
// each worker for mod_proxy.
const http = require('http');
const body = Buffer.from('Hello World!\n');
const server = http.createServer((req, res) => {
  res.writeHead(200, { 'Content-Type': 'text/plain; charset=utf-8', 'Content-Length': body.length });
  res.end(body);
});
// Longer than any idle gap Apache's pooled backend connections see: a connection Node closes
// while mod_proxy picks it for reuse would surface as a 502, which is noise, not the peer.
server.keepAliveTimeout = 65000;
server.listen(+(process.env.PORT || process.argv[2] || 3000), '127.0.0.1', () => {
  if (process.send) process.send('listening'); else console.log('listening');
});
