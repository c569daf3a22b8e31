#!/usr/bin/env bash
# bench/run.sh: issue 3 §8. One run measures four "Hello World!\n" (13 bytes) configurations,
# each in its own PRIVATE Apache instance (event MPM, own ServerRoot/config/pid/logs in a temp
# dir, 127.0.0.1 on a free port; never the system service), and writes its section of
# docs/benchmarks.md (between <!-- bench:apache --> and <!-- /bench:apache -->; the rest is kept).
#
#   1 static       Apache serving a 13-byte file
#   2 tsgi         mod_tsgi embedded, examples/hello.tsgi
#   3 wsgi         mod_wsgi embedded (Debian libapache2-mod-wsgi-py3), Python hello world
#   4 proxy-node   mod_proxy_http -> a Node http hello server (started/stopped here)
#
# Method (as in shared/reference/anchors-measured.md): ROUNDS rounds, configurations interleaved
# inside each round; per configuration and round: start, check the body, idle RSS, 2 s warm-up,
# main run `wrk -t1 -c32 -d10s --latency`, RSS after the run, stop. Medians over rounds; the
# ratio is the median of the per-round ratios to static.
#
# Usage: sudo bash bench/run.sh        (or: npm run bench, as root)
# Env:   ROUNDS=3 DURATION=10s CONNS=32 THREADS=1 WARMUP=2s OUT=docs/benchmarks.md
# Not part of `npm test`.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
# shellcheck source=bench/lib.sh
. "$REPO/bench/lib.sh"

ROUNDS="${ROUNDS:-3}"
DURATION="${DURATION:-10s}"
CONNS="${CONNS:-32}"
THREADS="${THREADS:-1}"
WARMUP="${WARMUP:-2s}"
OUT="${OUT:-docs/benchmarks.md}"
BODY=$'Hello World!\n'
CONFIGS=(static tsgi wsgi proxy-node)
APACHE=/usr/sbin/apache2
MODDIR=/usr/lib/apache2/modules
STARTED_AT="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
SECONDS=0


[ "$(id -u)" = 0 ] || die "run as root (apt-get installs, Apache drops to www-data)"

# ---- prerequisites (idempotent) --------------------------------------------------------------
missing=()
for p in wrk libapache2-mod-wsgi-py3; do installed "$p" || missing+=("$p"); done
if [ "${#missing[@]}" -gt 0 ]; then
  log "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
command -v wrk >/dev/null || die "wrk not found after install"
[ -f "$MODDIR/mod_wsgi.so" ] || die "mod_wsgi.so not found in $MODDIR"

log "npm run build"
npm run build >/tmp/tsgi-bench-build.$$.log 2>&1 || { cat /tmp/tsgi-bench-build.$$.log >&2; die "npm run build failed"; }
rm -f /tmp/tsgi-bench-build.$$.log
TSGI_LOADMODULE="$(node bin/tsgi.js module-config | grep -m1 '^LoadModule')" || die "tsgi module-config failed"
[ -n "$TSGI_LOADMODULE" ] || die "no LoadModule line from tsgi module-config"

# ---- temp dir and cleanup ----------------------------------------------------------------------
TMP="$(mktemp -d /tmp/tsgi-bench.XXXXXX)"
chmod 755 "$TMP"
NODE_PID=""
CUR_ROOT=""


stop_apache() { # $1 = root
  local root="$1" ppid="" i
  [ -f "$root/httpd.pid" ] && ppid="$(cat "$root/httpd.pid" 2>/dev/null || true)"
  "$APACHE" -d "$root" -f "$root/httpd.conf" -k stop >/dev/null 2>&1 || true
  if [ -n "$ppid" ]; then
    for i in $(seq 1 100); do kill -0 "$ppid" 2>/dev/null || break; sleep 0.1; done
  fi
  # Leftovers of this instance (parent or children): by pid, never by name.
  local left; left="$(pgrep -f -- "-d $root " 2>/dev/null || true)"
  if [ -n "$left" ]; then
    log "killing leftover processes of $root: $(echo $left)"
    kill -9 $left 2>/dev/null || true
    sleep 0.2
  fi
  rm -f "$root/httpd.pid"
}

cleanup() {
  local rc=$?
  set +e
  [ -n "$CUR_ROOT" ] && stop_apache "$CUR_ROOT"
  if [ -n "$NODE_PID" ]; then kill "$NODE_PID" 2>/dev/null; wait "$NODE_PID" 2>/dev/null; fi
  local left; left="$(pids_under_tmp)"
  [ -n "$left" ] && { log "killing leftovers: $(echo $left)"; kill -9 $left 2>/dev/null; }
  if [ "${KEEP_TMP:-0}" = 1 ] || [ "$rc" != 0 ]; then log "kept $TMP"; else rm -rf "$TMP"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM



# ---- fixtures ----------------------------------------------------------------------------------
mkdir -p "$TMP/htdocs" "$TMP/app"
printf '%s' "$BODY" >"$TMP/htdocs/hello.txt"
cat >"$TMP/app/hello.wsgi" <<'PY'
def application(environ, start_response):
    body = b"Hello World!\n"
    start_response("200 OK", [("Content-Type", "text/plain; charset=utf-8"),
                              ("Content-Length", str(len(body)))])
    return [body]
PY
cat >"$TMP/app/node-hello.js" <<'JS'
const http = require('http');
const body = Buffer.from('Hello World!\n');
http.createServer((req, res) => {
  res.writeHead(200, { 'Content-Type': 'text/plain; charset=utf-8', 'Content-Length': body.length });
  res.end(body);
}).listen(+process.argv[2], '127.0.0.1', () => console.log('listening'));
JS
chmod -R a+rX "$TMP"

NODE_PORT="$(free_port)"
node "$TMP/app/node-hello.js" "$NODE_PORT" >"$TMP/node.log" 2>&1 &
NODE_PID=$!
for i in $(seq 1 50); do grep -q listening "$TMP/node.log" 2>/dev/null && break; sleep 0.1; done
[ "$(fetch_body "http://127.0.0.1:$NODE_PORT/"; echo x)" = "${BODY}x" ] || die "node backend does not answer"

# ---- Apache config -----------------------------------------------------------------------------
write_conf() { # $1 = config, $2 = root, $3 = port
  local cfg="$1" root="$2" port="$3"
  mkdir -p "$root"
  chmod 755 "$root"
  {
    cat <<EOF
# Generated by bench/run.sh ($cfg): a private instance, nothing from /etc/apache2.
EOF
    apache_base_conf "$root" "$port" "$TMP/htdocs"
    case "$cfg" in
      static) ;;
      tsgi)
        echo "$TSGI_LOADMODULE"
        echo "TSGIScriptAlias / $REPO/examples/hello.tsgi"
        ;;
      wsgi)
        echo "LoadModule wsgi_module $MODDIR/mod_wsgi.so"
        echo "WSGIScriptAlias / $TMP/app/hello.wsgi"
        echo "WSGIApplicationGroup %{GLOBAL}"
        ;;
      proxy-node)
        echo "LoadModule proxy_module $MODDIR/mod_proxy.so"
        echo "LoadModule proxy_http_module $MODDIR/mod_proxy_http.so"
        echo "ProxyPass / http://127.0.0.1:$NODE_PORT/"
        ;;
    esac
  } >"$root/httpd.conf"
}

url_of() { # $1 = config, $2 = port
  if [ "$1" = static ]; then echo "http://127.0.0.1:$2/hello.txt"; else echo "http://127.0.0.1:$2/"; fi
}

start_apache() { # $1 = root
  local root="$1" i
  "$APACHE" -d "$root" -f "$root/httpd.conf" -k start >"$root/start.out" 2>&1 \
    || { cat "$root/start.out" "$root/error.log" >&2 2>/dev/null; die "apache2 failed to start ($root)"; }
  for i in $(seq 1 100); do [ -s "$root/httpd.pid" ] && break; sleep 0.1; done
  [ -s "$root/httpd.pid" ] || { cat "$root/error.log" >&2; die "no pid file in $root"; }
}

# Children of the Apache parent (workers; for proxy-node the Node backend is not a child).
child_pids() { # $1 = parent pid
  local p
  for p in $(pgrep -P "$1" 2>/dev/null || true); do
    [ "$(cat "/proc/$p/comm" 2>/dev/null)" = apache2 ] && echo "$p"
  done
}
# Prints "count sum_kB" of the children's VmRSS.
children_rss() { # $1 = parent pid
  local n=0 sum=0 p kb
  for p in $(child_pids "$1"); do
    kb="$(awk '/^VmRSS:/{print $2}' "/proc/$p/status" 2>/dev/null || true)"
    [ -n "$kb" ] || continue
    n=$((n + 1)); sum=$((sum + kb))
  done
  echo "$n $sum"
}
# Machine CPU busy (% of all vCPUs) over 1 s, read while no instance of ours runs: other load.
parent_rss() { awk '/^VmRSS:/{print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }

# Latency value from wrk ("677.00us", "1.07ms", "1.20s") in ms.

RESULTS="$TMP/runs.tsv"
printf 'round\tconfig\treqs\tp50_ms\tp99_ms\terrors\tidle_n\tidle_sum_kb\tafter_n\tafter_sum_kb\tparent_kb\tbusy_before_pct\n' >"$RESULTS"

# ---- the run -----------------------------------------------------------------------------------
for round in $(seq 1 "$ROUNDS"); do
  for cfg in "${CONFIGS[@]}"; do
    root="$TMP/r$round-$cfg"
    port="$(free_port)"
    write_conf "$cfg" "$root" "$port"
    "$APACHE" -d "$root" -f "$root/httpd.conf" -t >"$root/configtest.out" 2>&1 \
      || { cat "$root/configtest.out" >&2; die "config test failed for $cfg"; }
    busy="$(cpu_busy_pct)"
    CUR_ROOT="$root"
    start_apache "$root"
    ppid="$(cat "$root/httpd.pid")"
    url="$(url_of "$cfg" "$port")"
    got=""
    for i in $(seq 1 50); do got="$(fetch_body "$url"; echo x)"; got="${got%x}"; [ "$got" = "$BODY" ] && break; sleep 0.1; done
    [ "$got" = "$BODY" ] || { cat "$root/error.log" >&2; die "$cfg: wrong body: $(printf %q "$got")"; }
    sleep 1
    read -r idle_n idle_sum <<<"$(children_rss "$ppid")"
    wrk -t"$THREADS" -c"$CONNS" -d"$WARMUP" "$url" >"$root/wrk-warmup.txt" 2>&1
    wrk -t"$THREADS" -c"$CONNS" -d"$DURATION" --latency "$url" >"$root/wrk.txt" 2>&1
    read -r after_n after_sum <<<"$(children_rss "$ppid")"
    pkb="$(parent_rss "$ppid")"
    rps="$(awk '/^Requests\/sec:/{print $2}' "$root/wrk.txt")"
    p50="$(to_ms "$(awk '$1=="50%"{print $2}' "$root/wrk.txt")")"
    p99="$(to_ms "$(awk '$1=="99%"{print $2}' "$root/wrk.txt")")"
    errs="$(awk '/Socket errors/{gsub(/,/,""); s=$4+$6+$8+$10} /Non-2xx/{n=$NF} END{print (s+0)+(n+0)}' "$root/wrk.txt")"
    [ -n "$rps" ] || { cat "$root/wrk.txt" >&2; die "$cfg: no wrk result"; }
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$round" "$cfg" "$rps" "$p50" "$p99" "$errs" \
      "$idle_n" "$idle_sum" "$after_n" "$after_sum" "$pkb" "$busy" >>"$RESULTS"
    log "round $round $cfg: $rps req/s, p50 ${p50} ms, p99 ${p99} ms, errors $errs, children idle $idle_n/${idle_sum} kB, after $after_n/${after_sum} kB"
    stop_apache "$root"
    CUR_ROOT=""
    if grep -Eq '\[(\w+:)?(emerg|alert|crit)\]' "$root/error.log"; then
      log "$cfg: serious lines in error.log:"; grep -E '\[(\w+:)?(emerg|alert|crit)\]' "$root/error.log" >&2 || true
    fi
  done
done

kill "$NODE_PID" 2>/dev/null || true; wait "$NODE_PID" 2>/dev/null || true; NODE_PID=""
left="$(pids_under_tmp)"; [ -z "$left" ] || { log "killing leftovers: $(echo $left)"; kill -9 $left 2>/dev/null || true; }

# ---- report ------------------------------------------------------------------------------------
ELAPSED=$SECONDS
APACHE_V="$("$APACHE" -v | sed -n 's/^Server version: //p') (apache2-bin $(dpkg-query -W -f='${Version}' apache2-bin))"
NODE_V="$(node -v) ($(command -v node))"
WRK_V="wrk $(dpkg-query -W -f='${Version}' wrk) (Debian package)"
WSGI_V="libapache2-mod-wsgi-py3 $(dpkg-query -W -f='${Version}' libapache2-mod-wsgi-py3), $(/usr/bin/python3 -V 2>&1) (/usr/bin/python3)"
LIBNODE_V="$(ls "$REPO"/build/libnode/usr/lib/*/libnode.so.* 2>/dev/null | head -1 | xargs -r basename || echo '?')"
CPU="$(awk -F': ' '/^model name/{print $2; exit}' /proc/cpuinfo)"
MEM="$(awk '/^MemTotal/{printf "%.1f GiB", $2/1048576}' /proc/meminfo)"
GIT_REV="$(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet HEAD -- native src 2>/dev/null || echo '+dirty')"

python3 - "$RESULTS" "$OUT" <<PY
import csv, statistics as st, sys
rows = list(csv.DictReader(open(sys.argv[1]), delimiter='\t'))
out = sys.argv[2]
names = {'static': 'static: Apache event, 13-byte file',
         'tsgi': 'mod_tsgi embedded (examples/hello.tsgi)',
         'wsgi': 'mod_wsgi embedded (Python hello world)',
         'proxy-node': 'mod_proxy_http → Node http'}
cfgs = ['static', 'tsgi', 'wsgi', 'proxy-node']
by = {(r['round'], r['config']): r for r in rows}
rounds = sorted({r['round'] for r in rows}, key=int)
med = lambda xs: st.median(xs) if xs else float('nan')
MiB = 1024.0
def f(cfg, key, conv=float):
    return [conv(by[(rd, cfg)][key]) for rd in rounds if (rd, cfg) in by]
def ratio(a, b):
    return med([float(by[(rd, a)]['reqs']) / float(by[(rd, b)]['reqs']) for rd in rounds if (rd, a) in by and (rd, b) in by])
def per_child(cfg, n, s):
    return med([int(by[(rd, cfg)][s]) / max(1, int(by[(rd, cfg)][n])) / MiB for rd in rounds])
res = {}
for c in cfgs:
    res[c] = dict(rps=med(f(c, 'reqs')), ratio=ratio(c, 'static'), p50=med(f(c, 'p50_ms')), p99=med(f(c, 'p99_ms')),
                  idle=per_child(c, 'idle_n', 'idle_sum_kb'), idle_n=med(f(c, 'idle_n', int)),
                  after=per_child(c, 'after_n', 'after_sum_kb'), after_n=med(f(c, 'after_n', int)),
                  after_sum=med([int(x) / MiB for x in f(c, 'after_sum_kb', int)]),
                  errs=','.join(by[(rd, c)]['errors'] for rd in rounds))
L = []
w = L.append
w('# Benchmarks: mod_tsgi embedded vs. static, mod_wsgi embedded and mod_proxy → Node')
w('')
w('Generated by \`bench/run.sh\` (issue 3 §8) — do not edit by hand; re-run the script instead.')
w('')
w('Command: \`sudo bash bench/run.sh\` (the same as \`npm run bench\` as root), with ROUNDS=$ROUNDS, '
  'wrk \`-t$THREADS -c$CONNS -d$DURATION --latency\` after a $WARMUP warm-up.')
w('Run: $STARTED_AT, $ELAPSED s, checkout $GIT_REV.')
w('')
w('Every configuration answers \`Hello World!\\\\n\` (13 bytes) over 127.0.0.1 in its own private Apache (event MPM).')
w('')
w('## Results (medians of %d rounds)' % len(rounds))
w('')
w('| # | config | req/s | ratio to static | p50 ms | p99 ms | RSS/child idle MiB | RSS/child after MiB | children after | RSS sum after MiB | wrk errors per round |')
w('|---|---|---|---|---|---|---|---|---|---|---|')
for i, c in enumerate(cfgs, 1):
    r = res[c]
    w('| %d | %s | %s | **%.3f** | %.3f | %.3f | %.1f | %.1f | %g | %.1f | %s |' % (
        i, names[c], format(round(r['rps']), ','), r['ratio'], r['p50'], r['p99'], r['idle'], r['after'], r['after_n'], r['after_sum'], r['errs']))
w('')
w('Per round (req/s): ' + '; '.join('%s: %s' % (c, ', '.join(format(round(x), ',') for x in f(c, 'reqs'))) for c in cfgs) + '.')
w('')
# targets
t_ratio = res['tsgi']['ratio']
t_wsgi = ratio('tsgi', 'wsgi')
d_idle_mib = res['tsgi']['idle'] - res['static']['idle']
d_idle_mb = d_idle_mib * 1.048576
def verdict(ok): return '**met**' if ok else '**not met**'
w('## Issue 3 targets')
w('')
w('| target | measured | verdict |')
w('|---|---|---|')
w('| mod_tsgi embedded ≥ 0.95× static (event MPM) | %.3f× static (%+.1f %% vs. the target) | %s |' % (t_ratio, (t_ratio / 0.95 - 1) * 100, verdict(t_ratio >= 0.95)))
w('| mod_tsgi embedded ≥ 1.25× mod_wsgi embedded | %.3f× mod_wsgi (%+.1f %% vs. the target) | %s |' % (t_wsgi, (t_wsgi / 1.25 - 1) * 100, verdict(t_wsgi >= 1.25)))
w('| ≤ +35 MB RSS per child idle (vs. static) | %+.1f MiB = %+.1f MB per child (%.1f vs. %.1f MiB); %s | %s |' % (
    d_idle_mib, d_idle_mb, res['tsgi']['idle'], res['static']['idle'],
    ('%.1f MB under the limit' % (35 - d_idle_mb)) if d_idle_mb <= 35 else ('%.1f MB over the limit' % (d_idle_mb - 35)), verdict(d_idle_mb <= 35)))
w('| 256 MiB up and down with flat child memory | not measured by this script (request bodies are still read whole, see docs/embedded.md) | n/a |')
w('')
w('For comparison: mod_wsgi embedded is %.3f× static here and uses %+.1f MiB per idle child over static; '
  'mod_proxy → Node is %.3f× static.' % (res['wsgi']['ratio'], res['wsgi']['idle'] - res['static']['idle'], res['proxy-node']['ratio']))
w('')
w('## Method')
w('')
w('- One run of \`bench/run.sh\` (root). It installs \`wrk\` and \`libapache2-mod-wsgi-py3\` with apt-get if missing, runs \`npm run build\`, '
  'takes the LoadModule line from \`node bin/tsgi.js module-config\`, and writes everything else into a fresh temp dir.')
w('- Each configuration runs in a private Apache: own ServerRoot, httpd.conf (nothing from /etc/apache2), pid file, error log, '
  'runtime dir and mutexes, \`Listen 127.0.0.1:<free port>\`, started with \`apache2 -d ROOT -f ROOT/httpd.conf -k start\` and stopped with '
  '\`-k stop\` (leftovers are killed by pid). The system service is never touched.')
w('- Identical Apache settings everywhere (Debian\\'s mpm_event.conf defaults, as in shared/reference/anchors-measured.md): event MPM, '
  'StartServers 2, ServerLimit 16, ThreadLimit 64, ThreadsPerChild 25, MinSpareThreads 25, MaxSpareThreads 75, MaxRequestWorkers 150, '
  'MaxConnectionsPerChild 0, KeepAlive On, MaxKeepAliveRequests 0, KeepAliveTimeout 5, no access log, LogLevel warn, AllowOverride None, '
  'User/Group www-data, EnableMMAP at its default (On).')
w('- Configurations: (1) \`hello.txt\` from the DocumentRoot; (2) \`TSGIScriptAlias / <repo>/examples/hello.tsgi\` (defaults otherwise); '
  '(3) \`WSGIScriptAlias / hello.wsgi\` + \`WSGIApplicationGroup %{GLOBAL}\`; (4) \`ProxyPass / http://127.0.0.1:<port>/\` to one '
  '\`node\` process running \`http.createServer\`, started once by the script for the whole run and stopped at the end.')
w('- %d rounds, configurations interleaved inside each round. For each configuration and round: start, check the 13-byte body with curl, '
  'wait 1 s, read idle RSS, %s warm-up (\`wrk -t$THREADS -c$CONNS -d$WARMUP\`), main run \`wrk -t$THREADS -c$CONNS -d$DURATION --latency\`, read RSS, stop.' % (len(rounds), '$WARMUP'))
w('- req/s, p50 and p99 come from the main run (wrk\\'s \`--latency\` distribution). The ratio is the median over rounds of '
  'req/s(config) / req/s(static) in the same round. All other columns are medians over rounds.')
w('- RSS per child: VmRSS from /proc of the Apache parent\\'s apache2 children (the parent, and the Node backend of (4), are excluded), '
  'sum divided by the number of children. "idle" is read after the body check (one request has been served, so at least one child has '
  'loaded its app) and before any load; "after" right after the main run (under -c32 Apache usually forks a third child). '
  'The Apache parent itself is ~%.1f MiB in every configuration.' % med([int(r['parent_kb']) / MiB for r in rows]))
w('- No quiet gate or noise repeats (unlike the anchors harness). As a noise check, the whole machine\'s CPU use was sampled for 1 s '
  'before each start, while none of our instances ran (busy_before_pct in the raw table; %% of all vCPUs): median %s %%, max %s %%. '
  'Compare the ratio columns rather than absolute req/s with other runs.' % (med([float(r['busy_before_pct']) for r in rows]), max(float(r['busy_before_pct']) for r in rows)))
w('')
w('## Machine and versions')
w('')
w('| item | value |')
w('|---|---|')
w('| CPU | $(nproc) vCPUs, $CPU |')
w('| memory | $MEM |')
w('| kernel | $(uname -sr) |')
w('| OS | $(. /etc/os-release; echo "$PRETTY_NAME") |')
w('| Apache httpd | $APACHE_V, event MPM |')
w('| Node.js (proxy backend, build tools) | $NODE_V |')
w('| libnode (inside mod_tsgi) | $LIBNODE_V (build/libnode/) |')
w('| mod_wsgi | $WSGI_V |')
w('| wrk | $WRK_V |')
w('')
w('## Raw results (runs.tsv)')
w('')
w('| ' + ' | '.join(rows[0].keys()) + ' |')
w('|' + '---|' * len(rows[0]))
for r in rows:
    w('| ' + ' | '.join(r.values()) + ' |')
# Only the part between the bench:apache markers is ours (bench/webservers.sh owns its own section).
start, end = '<!-- bench:apache -->', '<!-- /bench:apache -->'
block = start + '\n' + '\n'.join(L) + '\n' + end
try:
    old = open(out).read()
except FileNotFoundError:
    old = ''
if start in old and end in old:
    i = old.index(start); j = old.index(end) + len(end)
    new = old[:i] + block + old[j:]
else:
    new = block + '\n' + ('\n' + old if old.strip() else '')
open(out, 'w').write(new)
PY
log "wrote $OUT in ${ELAPSED}s"
sed -n '/<!-- bench:apache -->/,/<!-- \/bench:apache -->/p' "$OUT" | sed -n '/^## Results/,/^## Method/p'
