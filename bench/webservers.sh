#!/usr/bin/env bash
# bench/webservers.sh: issue 5 ("Done means", last bullet). One run measures "Hello World!\n"
# (13 bytes) behind PRIVATE lighttpd and nginx instances (own config/pid/logs in a temp dir,
# 127.0.0.1 on a free port; never the system services), each in front of either
#   - `tsgi daemon examples/hello.tsgi --processes 2` (threads at their default, 15) over each
#     protocol: scgi, uwsgi, fastcgi, http (lighttpd mod_scgi/mod_fastcgi/mod_proxy, nginx
#     scgi_pass/uwsgi_pass/fastcgi_pass/proxy_pass), or
#   - uWSGI 2.0 (python3 plugin, uwsgi protocol), processes=2 threads=15 master (as in
#     shared/reference/anchors-measured.md), the equivalent Python WSGI hello world
#     (lighttpd: mod_scgi with scgi.protocol "uwsgi"; nginx: uwsgi_pass).
# Every backend listens on a Unix socket in the temp dir and runs as www-data.
#
# Method (as in shared/reference/anchors-measured.md and bench/run.sh): ROUNDS rounds, the
# configurations interleaved inside each round; per configuration and round: start the backend,
# start the web server, check the body, backend idle RSS, 2 s warm-up, main run
# `wrk -t1 -c32 -d10s --latency`, backend RSS after the run, stop both. Medians over rounds; the
# tsgi/uWSGI ratio is the median of the per-round ratios (same front-end, same round).
#
# Usage: sudo bash bench/webservers.sh        (or: npm run bench:webservers, as root)
# Env:   ROUNDS=3 DURATION=10s CONNS=32 THREADS=1 WARMUP=2s QUIET_WAIT=15 QUIET_PCT=10 OUT=docs/benchmarks.md
# Rewrites only the part of OUT between <!-- bench:webservers --> and <!-- /bench:webservers -->
# (appended if missing). Not part of `npm test`.
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
QUIET_WAIT="${QUIET_WAIT:-15}"   # seconds to wait at most for a quiet machine before each config
QUIET_PCT="${QUIET_PCT:-10}"     # "quiet": other processes use <= this % of all vCPUs (1 s sample)
OUT="${OUT:-docs/benchmarks.md}"
BODY=$'Hello World!\n'
PROCS=2          # backend processes, both sides
BTHREADS=15      # requests per process at once, both sides (tsgi's --threads default; uWSGI threads=)
CONFIGS=(l-scgi l-uwsgi l-fastcgi l-http l-uwsgi-py n-uwsgi n-scgi n-fastcgi n-http n-uwsgi-py)
LIGHTTPD=/usr/sbin/lighttpd
NGINX=/usr/sbin/nginx
UWSGI=/usr/bin/uwsgi
RUNAS=www-data
STARTED_AT="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
SECONDS=0


[ "$(id -u)" = 0 ] || die "run as root (apt-get installs, servers and backends drop to $RUNAS)"

# ---- prerequisites (idempotent) --------------------------------------------------------------
missing=()
for p in wrk uwsgi uwsgi-plugin-python3 lighttpd nginx-light; do installed "$p" || missing+=("$p"); done
if [ "${#missing[@]}" -gt 0 ]; then
  log "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # apt-get update only when a package is missing from the lists.
  for p in "${missing[@]}"; do
    apt-cache show "$p" >/dev/null 2>&1 || { apt-get update -qq; break; }
  done
  # Never let an install remove anything.
  if apt-get install -s --no-install-recommends "${missing[@]}" 2>/dev/null | grep -q '^Remv '; then
    die "installing ${missing[*]} would remove packages; install them by hand"
  fi
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # The Debian packages enable and start system services; we only want the binaries. Leave
  # services that were running before alone, stop only those this install started.
  for s in lighttpd nginx uwsgi; do
    case " ${missing[*]} " in *" $s "*|*" $s-light "*) ;; *) continue ;; esac
    if command -v systemctl >/dev/null && systemctl is-active -q "$s" 2>/dev/null; then
      log "stopping the $s service the package install just started"; systemctl stop "$s" || true
    elif [ -x "/etc/init.d/$s" ]; then
      "/etc/init.d/$s" stop >/dev/null 2>&1 || true
    fi
  done
fi
for b in wrk "$LIGHTTPD" "$NGINX" "$UWSGI"; do command -v "$b" >/dev/null || die "$b not found after install"; done
[ -f /usr/lib/uwsgi/plugins/python3_plugin.so ] || die "uWSGI python3 plugin not found"
id "$RUNAS" >/dev/null 2>&1 || die "user $RUNAS missing"

log "building dist/ (tsc -p tsconfig.build.json; the daemon needs no native code)"
npx tsc -p tsconfig.build.json >/tmp/tsgi-bench-build.$$.log 2>&1 || { cat /tmp/tsgi-bench-build.$$.log >&2; die "tsc failed"; }
rm -f /tmp/tsgi-bench-build.$$.log

# ---- temp dir and cleanup ----------------------------------------------------------------------
TMP="$(mktemp -d /tmp/tsgi-bench-ws.XXXXXX)"
chmod 755 "$TMP"
BACK_PID=""   # current backend (tsgi daemon master or uWSGI master)
FRONT_PID=""  # current web server (lighttpd, nginx master), run in the foreground


descendants() { # $1 = pid: itself and all descendants
  local p c
  p="$1"; echo "$p"
  for c in $(pgrep -P "$p" 2>/dev/null || true); do descendants "$c"; done
}

stop_pid() { # $1 = pid, $2 = signal, $3 = what: signal, wait up to 20 s, then SIGKILL its tree
  local pid="$1" sig="$2" what="$3" tree i
  [ -n "$pid" ] || return 0
  kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
  tree="$(descendants "$pid")"
  kill "-$sig" "$pid" 2>/dev/null || true
  for i in $(seq 1 200); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$pid" 2>/dev/null; then log "$what ($pid) did not stop on SIG$sig; killing"; fi
  local left=""
  for p in $tree; do kill -0 "$p" 2>/dev/null && left="$left $p"; done
  if [ -n "$left" ]; then kill -9 $left 2>/dev/null || true; fi
  wait "$pid" 2>/dev/null || true
}
stop_front() { stop_pid "$FRONT_PID" TERM "web server"; FRONT_PID=""; }
stop_back() { # tsgi daemon: graceful stop; uWSGI: stop (die-on-term, else SIGTERM would reload it)
  stop_pid "$BACK_PID" TERM "backend"; BACK_PID=""
}

cleanup() {
  local rc=$?
  set +e
  stop_front
  stop_back
  local left; left="$(pids_under_tmp)"
  [ -n "$left" ] && { log "killing leftovers: $(echo $left)"; kill -9 $left 2>/dev/null; }
  if [ "${KEEP_TMP:-0}" = 1 ] || [ "$rc" != 0 ]; then log "kept $TMP"; else rm -rf "$TMP"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM



# Prints "count sum_kB" of VmRSS over the backend's process tree (master + workers).
tree_rss() { # $1 = pid
  local n=0 sum=0 p kb
  for p in $(descendants "$1"); do
    kb="$(awk '/^VmRSS:/{print $2}' "/proc/$p/status" 2>/dev/null || true)"
    [ -n "$kb" ] || continue
    n=$((n + 1)); sum=$((sum + kb))
  done
  echo "$n $sum"
}
# Machine CPU busy (% of all vCPUs) over 1 s, read while no instance of ours runs: other load.
# Latency value from wrk ("677.00us", "1.07ms", "1.20s") in ms.

# ---- fixtures ----------------------------------------------------------------------------------
mkdir -p "$TMP/app" "$TMP/htdocs"
cat >"$TMP/app/hello.wsgi" <<'PY'
def application(environ, start_response):
    body = b"Hello World!\n"
    start_response("200 OK", [("Content-Type", "text/plain; charset=utf-8"),
                              ("Content-Length", str(len(body)))])
    return [body]
PY
chmod -R a+rX "$TMP"

front_of() { case "$1" in l-*) echo lighttpd ;; n-*) echo nginx ;; esac; }
proto_of() { # protocol between the web server and the backend
  case "$1" in *-uwsgi-py) echo uwsgi ;; *) echo "${1#?-}" ;; esac
}
backend_of() { case "$1" in *-py) echo uwsgi ;; *) echo tsgi ;; esac; }

# ---- backends ----------------------------------------------------------------------------------
start_tsgi() { # $1 = dir, $2 = protocol
  local dir="$1" proto="$2" i
  node "$REPO/bin/tsgi.js" daemon "$REPO/examples/hello.tsgi" --listen "unix:$dir/backend.sock" \
    --protocol "$proto" --processes "$PROCS" --threads "$BTHREADS" --user "$RUNAS" \
    >"$dir/backend.log" 2>&1 &
  BACK_PID=$!; BACK_KIND=tsgi
  for i in $(seq 1 300); do
    grep -q ' ready: ' "$dir/backend.log" 2>/dev/null && return 0
    kill -0 "$BACK_PID" 2>/dev/null || break
    sleep 0.1
  done
  cat "$dir/backend.log" >&2; die "tsgi daemon ($proto) did not become ready"
}
start_uwsgi() { # $1 = dir
  local dir="$1" i n
  # uWSGI binds after dropping privileges: the socket's directory belongs to the worker user.
  chown "$RUNAS:$RUNAS" "$dir"
  cat >"$dir/uwsgi.ini" <<EOF
[uwsgi]
; Generated by bench/webservers.sh: as in shared/reference/anchors-measured.md (2 x 15, master).
plugins = python3
socket = $dir/backend.sock
chmod-socket = 666
wsgi-file = $TMP/app/hello.wsgi
master = true
processes = $PROCS
threads = $BTHREADS
uid = $RUNAS
gid = $RUNAS
disable-logging = true
die-on-term = true
EOF
  "$UWSGI" --ini "$dir/uwsgi.ini" >"$dir/backend.log" 2>&1 &
  BACK_PID=$!; BACK_KIND=uwsgi
  for i in $(seq 1 300); do
    # Workers spawned (one line each) and the socket exists.
    n="$(grep -c 'spawned uWSGI worker' "$dir/backend.log" 2>/dev/null || true)"
    if [ -S "$dir/backend.sock" ] && [ "${n:-0}" -ge "$PROCS" ]; then return 0; fi
    kill -0 "$BACK_PID" 2>/dev/null || break
    sleep 0.1
  done
  cat "$dir/backend.log" >&2; die "uWSGI did not become ready"
}

# ---- web servers -------------------------------------------------------------------------------
write_lighttpd() { # $1 = dir, $2 = port, $3 = protocol
  local dir="$1" port="$2" proto="$3" sock="$1/backend.sock" mod
  case "$proto" in scgi|uwsgi) mod=mod_scgi ;; fastcgi) mod=mod_fastcgi ;; http) mod=mod_proxy ;; esac
  # lighttpd opens its logs after dropping privileges: create them for the worker user.
  : >"$dir/error.log"; chown "$RUNAS:$RUNAS" "$dir/error.log"
  {
    cat <<EOF
# Generated by bench/webservers.sh: a private instance, nothing from /etc/lighttpd.
server.modules = ("$mod")
server.bind = "127.0.0.1"
server.port = $port
server.document-root = "$TMP/htdocs"
server.errorlog = "$dir/error.log"
server.pid-file = "$dir/lighttpd.pid"
server.username = "$RUNAS"
server.groupname = "$RUNAS"
server.max-keep-alive-requests = 100000
EOF
    case "$proto" in
      scgi|uwsgi)
        echo "scgi.protocol = \"$proto\""
        echo "scgi.server = ( \"/\" => (( \"socket\" => \"$sock\", \"check-local\" => \"disable\" )) )" ;;
      fastcgi)
        echo "fastcgi.server = ( \"/\" => (( \"socket\" => \"$sock\", \"check-local\" => \"disable\" )) )" ;;
      http)
        echo "proxy.server = ( \"\" => (( \"socket\" => \"$sock\" )) )" ;;
    esac
  } >"$dir/front.conf"
  "$LIGHTTPD" -tt -f "$dir/front.conf" >"$dir/configtest.out" 2>&1 || { cat "$dir/configtest.out" >&2; die "lighttpd config test failed ($dir)"; }
}
write_nginx() { # $1 = dir, $2 = port, $3 = protocol
  local dir="$1" port="$2" proto="$3" sock="$1/backend.sock" d
  mkdir -p "$dir/tmp"
  for d in client_body proxy fastcgi uwsgi scgi; do mkdir -p "$dir/tmp/$d"; chown "$RUNAS:$RUNAS" "$dir/tmp/$d"; done
  : >"$dir/error.log"
  {
    cat <<EOF
# Generated by bench/webservers.sh: a private instance, nothing from /etc/nginx but the *_params files.
user $RUNAS;
worker_processes 1;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 1024; }
http {
  access_log off;
  keepalive_requests 100000;
  client_body_temp_path $dir/tmp/client_body;
  proxy_temp_path $dir/tmp/proxy;
  fastcgi_temp_path $dir/tmp/fastcgi;
  uwsgi_temp_path $dir/tmp/uwsgi;
  scgi_temp_path $dir/tmp/scgi;
  default_type application/octet-stream;
EOF
    # FastCGI and HTTP can keep the backend connection open; uwsgi and SCGI cannot.
    case "$proto" in fastcgi|http) echo "  upstream backend { server unix:$sock; keepalive 32; }" ;; esac
    cat <<EOF
  server {
    listen 127.0.0.1:$port;
    server_name localhost;
    location / {
EOF
    case "$proto" in
      uwsgi) echo "      include /etc/nginx/uwsgi_params;"; echo "      uwsgi_pass unix:$sock;" ;;
      scgi) echo "      include /etc/nginx/scgi_params;"; echo "      scgi_pass unix:$sock;" ;;
      fastcgi) echo "      include /etc/nginx/fastcgi_params;"; echo "      fastcgi_keep_conn on;"; echo "      fastcgi_pass backend;" ;;
      http) echo "      proxy_http_version 1.1;"; echo '      proxy_set_header Connection "";'; echo '      proxy_set_header Host $host;'; echo "      proxy_pass http://backend;" ;;
    esac
    cat <<EOF
    }
  }
}
EOF
  } >"$dir/front.conf"
  "$NGINX" -t -p "$dir" -c "$dir/front.conf" -e "$dir/error.log" >"$dir/configtest.out" 2>&1 || { cat "$dir/configtest.out" >&2; die "nginx config test failed ($dir)"; }
}
start_front() { # $1 = front, $2 = dir
  if [ "$1" = lighttpd ]; then
    "$LIGHTTPD" -D -f "$2/front.conf" >"$2/front.out" 2>&1 &
  else
    "$NGINX" -p "$2" -c "$2/front.conf" -e "$2/error.log" -g 'daemon off;' >"$2/front.out" 2>&1 &
  fi
  FRONT_PID=$!
}

RESULTS="$TMP/runs.tsv"
printf 'round\tconfig\treqs\tp50_ms\tp99_ms\terrors\tidle_n\tidle_kb\tafter_n\tafter_kb\tbusy_before_pct\n' >"$RESULTS"

# ---- the run -----------------------------------------------------------------------------------
for round in $(seq 1 "$ROUNDS"); do
  for cfg in "${CONFIGS[@]}"; do
    dir="$TMP/r$round-$cfg"
    mkdir -p "$dir"; chmod 755 "$dir"
    front="$(front_of "$cfg")"; proto="$(proto_of "$cfg")"; backend="$(backend_of "$cfg")"
    port="$(free_port)"
    if [ "$front" = lighttpd ]; then write_lighttpd "$dir" "$port" "$proto"; else write_nginx "$dir" "$port" "$proto"; fi
    # Wait (up to QUIET_WAIT s) until other processes use <= QUIET_PCT % of all vCPUs for 1 s.
    waited=0
    while :; do
      busy="$(cpu_busy_pct)"
      [ "$busy" -le "$QUIET_PCT" ] || [ "$waited" -ge "$QUIET_WAIT" ] && break
      waited=$((waited + 1))
    done
    if [ "$backend" = tsgi ]; then start_tsgi "$dir" "$proto"; else start_uwsgi "$dir"; fi
    start_front "$front" "$dir"
    url="http://127.0.0.1:$port/"
    got=""
    for i in $(seq 1 100); do got="$(fetch_body "$url"; echo x)"; got="${got%x}"; [ "$got" = "$BODY" ] && break; sleep 0.1; done
    [ "$got" = "$BODY" ] || { cat "$dir/error.log" "$dir/backend.log" >&2; die "$cfg: wrong body: $(printf %q "$got")"; }
    sleep 1
    read -r idle_n idle_kb <<<"$(tree_rss "$BACK_PID")"
    wrk -t"$THREADS" -c"$CONNS" -d"$WARMUP" "$url" >"$dir/wrk-warmup.txt" 2>&1
    wrk -t"$THREADS" -c"$CONNS" -d"$DURATION" --latency "$url" >"$dir/wrk.txt" 2>&1
    read -r after_n after_kb <<<"$(tree_rss "$BACK_PID")"
    rps="$(awk '/^Requests\/sec:/{print $2}' "$dir/wrk.txt")"
    p50="$(to_ms "$(awk '$1=="50%"{print $2}' "$dir/wrk.txt")")"
    p99="$(to_ms "$(awk '$1=="99%"{print $2}' "$dir/wrk.txt")")"
    errs="$(awk '/Socket errors/{gsub(/,/,""); s=$4+$6+$8+$10} /Non-2xx/{n=$NF} END{print (s+0)+(n+0)}' "$dir/wrk.txt")"
    [ -n "$rps" ] || { cat "$dir/wrk.txt" >&2; die "$cfg: no wrk result"; }
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$round" "$cfg" "$rps" "$p50" "$p99" "$errs" \
      "$idle_n" "$idle_kb" "$after_n" "$after_kb" "$busy" >>"$RESULTS"
    log "round $round $cfg: $rps req/s, p50 ${p50} ms, p99 ${p99} ms, errors $errs, backend RSS idle $idle_n/${idle_kb} kB, after $after_n/${after_kb} kB"
    stop_front
    stop_back
    if grep -Eiq '\[(emerg|alert|crit)\]|\[(tsgi-[a-z]+):(error|fatal)\]' "$dir/error.log" "$dir/backend.log" 2>/dev/null; then
      log "$cfg: serious lines in the logs:"; grep -EiH '\[(emerg|alert|crit)\]|\[(tsgi-[a-z]+):(error|fatal)\]' "$dir/error.log" "$dir/backend.log" | head -5 >&2 || true
    fi
  done
done
left="$(pids_under_tmp)"; [ -z "$left" ] || { log "killing leftovers: $(echo $left)"; kill -9 $left 2>/dev/null || true; }

# ---- report ------------------------------------------------------------------------------------
ELAPSED=$SECONDS
ver() { dpkg-query -W -f='${Version}' "$1" 2>/dev/null || echo '?'; }
LIGHTTPD_V="$("$LIGHTTPD" -v 2>&1 | head -1 | awk '{print $1}') (lighttpd $(ver lighttpd))"
NGINX_V="$("$NGINX" -v 2>&1 | sed 's/^nginx version: //') (nginx-light $(ver nginx-light))"
UWSGI_V="uWSGI $("$UWSGI" --version) (uwsgi-core $(ver uwsgi-core), uwsgi-plugin-python3 $(ver uwsgi-plugin-python3)), $(/usr/bin/python3 -V 2>&1)"
NODE_V="$(node -v) ($(command -v node))"
WRK_V="wrk $(ver wrk) (Debian package)"
CPU="$(awk -F': ' '/^model name/{print $2; exit}' /proc/cpuinfo)"
MEM="$(awk '/^MemTotal/{printf "%.1f GiB", $2/1048576}' /proc/meminfo)"
GIT_REV="$(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet HEAD -- src 2>/dev/null || echo '+dirty')"

python3 - "$RESULTS" "$OUT" <<PY
import csv, statistics as st, sys
rows = list(csv.DictReader(open(sys.argv[1]), delimiter='\t'))
out = sys.argv[2]
names = {'l-scgi': 'lighttpd → tsgi daemon, SCGI (mod_scgi)',
         'l-uwsgi': 'lighttpd → tsgi daemon, uwsgi (mod_scgi, scgi.protocol "uwsgi")',
         'l-fastcgi': 'lighttpd → tsgi daemon, FastCGI (mod_fastcgi)',
         'l-http': 'lighttpd → tsgi daemon, HTTP (mod_proxy)',
         'l-uwsgi-py': 'lighttpd → uWSGI python3 (mod_scgi, scgi.protocol "uwsgi")',
         'n-uwsgi': 'nginx → tsgi daemon, uwsgi (uwsgi_pass)',
         'n-scgi': 'nginx → tsgi daemon, SCGI (scgi_pass)',
         'n-fastcgi': 'nginx → tsgi daemon, FastCGI (fastcgi_pass, keepalive)',
         'n-http': 'nginx → tsgi daemon, HTTP (proxy_pass, keepalive)',
         'n-uwsgi-py': 'nginx → uWSGI python3 (uwsgi_pass)'}
cfgs = [c for c in names if any(r['config'] == c for r in rows)]
by = {(r['round'], r['config']): r for r in rows}
rounds = sorted({r['round'] for r in rows}, key=int)
med = lambda xs: st.median(xs) if xs else float('nan')
MiB = 1024.0
def f(cfg, key, conv=float):
    return [conv(by[(rd, cfg)][key]) for rd in rounds if (rd, cfg) in by]
def ratio(a, b):
    return med([float(by[(rd, a)]['reqs']) / float(by[(rd, b)]['reqs']) for rd in rounds if (rd, a) in by and (rd, b) in by])
res = {}
for c in cfgs:
    res[c] = dict(rps=med(f(c, 'reqs')), p50=med(f(c, 'p50_ms')), p99=med(f(c, 'p99_ms')),
                  idle=med([x / MiB for x in f(c, 'idle_kb', int)]), after=med([x / MiB for x in f(c, 'after_kb', int)]),
                  n=med(f(c, 'after_n', int)), errs=','.join(by[(rd, c)]['errors'] for rd in rounds if (rd, c) in by))
fronts = [('lighttpd', 'l', ['l-scgi', 'l-uwsgi', 'l-fastcgi', 'l-http'], 'l-uwsgi-py'),
          ('nginx', 'n', ['n-uwsgi', 'n-scgi', 'n-fastcgi', 'n-http'], 'n-uwsgi-py')]
L = []
w = L.append
w('<!-- bench:webservers -->')
w('# Benchmarks: lighttpd and nginx → tsgi daemon vs. uWSGI (issue 5)')
w('')
w('Generated by \`bench/webservers.sh\` — do not edit this section by hand; re-run the script instead '
  '(it rewrites only the text between the \`bench:webservers\` markers).')
w('')
w('Command: \`sudo bash bench/webservers.sh\` (the same as \`npm run bench:webservers\` as root), with ROUNDS=$ROUNDS, '
  'wrk \`-t$THREADS -c$CONNS -d$DURATION --latency\` after a $WARMUP warm-up.')
w('Run: $STARTED_AT, $ELAPSED s, checkout $GIT_REV.')
w('')
w('Every configuration answers \`Hello World!\\\\n\` (13 bytes) over 127.0.0.1 through a private web server; '
  'the backend is \`tsgi daemon examples/hello.tsgi --processes $PROCS --threads $BTHREADS\` or uWSGI '
  '(\`processes = $PROCS\`, \`threads = $BTHREADS\`, \`master\`) running the equivalent Python WSGI app, on a Unix socket.')
w('')
w('## Results (medians of %d rounds)' % len(rounds))
w('')
w('| # | config | req/s | vs. uWSGI, same front-end | p50 ms | p99 ms | backend RSS idle MiB | backend RSS after MiB | backend procs | wrk errors per round |')
w('|---|---|---|---|---|---|---|---|---|---|')
for i, c in enumerate(cfgs, 1):
    r = res[c]
    ref = c[0] + '-uwsgi-py'
    rr = '1.000' if c == ref else ('%.3f×' % ratio(c, ref) if ref in res else 'n/a')
    w('| %d | %s | %s | %s | %.3f | %.3f | %.1f | %.1f | %g | %s |' % (
        i, names[c], format(round(r['rps']), ','), rr, r['p50'], r['p99'], r['idle'], r['after'], r['n'], r['errs']))
w('')
w('Per round (req/s): ' + '; '.join('%s: %s' % (c, ', '.join(format(round(x), ',') for x in f(c, 'reqs'))) for c in cfgs) + '.')
w('')
w('## Issue 5 target: tsgi daemon ≥ 1.2× uWSGI')
w('')
w('The tsgi side is the fastest protocol for that front-end in this run (highest median req/s).')
w('')
w('| front-end | fastest tsgi protocol | tsgi req/s | uWSGI req/s | ratio tsgi/uWSGI | vs. the 1.2× target | verdict |')
w('|---|---|---|---|---|---|---|')
for label, pre, ts, ref in fronts:
    ts = [c for c in ts if c in res]
    if not ts or ref not in res:
        continue
    best = max(ts, key=lambda c: res[c]['rps'])
    rt = ratio(best, ref)
    w('| %s | %s | %s | %s | **%.3f×** | %+.1f %% | %s |' % (
        label, best.split('-', 1)[1], format(round(res[best]['rps']), ','), format(round(res[ref]['rps']), ','), rt,
        (rt / 1.2 - 1) * 100, '**met**' if rt >= 1.2 else '**not met** (%.0f %% short)' % ((1.2 - rt) / 1.2 * 100)))
w('')
w('## Method')
w('')
w('- One run of \`bench/webservers.sh\` (root). It installs \`wrk\`, \`uwsgi\`, \`uwsgi-plugin-python3\`, \`lighttpd\` and \`nginx-light\` '
  'with apt-get if missing (apt-get update only if a package is unknown; a package service the install starts is stopped), '
  'builds dist/ with \`tsc -p tsconfig.build.json\`, and writes everything else into a fresh temp dir.')
w('- Web servers: private instances, own config (nothing from /etc but nginx\\'s \`*_params\` files), pid file, error log, temp dirs, '
  '\`127.0.0.1:<free port>\`, run in the foreground (\`lighttpd -D -f\`, \`nginx -p DIR -c DIR/front.conf -g "daemon off;"\`), '
  'workers as www-data, stopped with SIGTERM by pid (leftovers killed by pid). The system services are never touched. '
  'lighttpd (single process): \`server.max-keep-alive-requests = 100000\`; \`scgi.server\`/\`fastcgi.server\` '
  '\`"/" => (( "socket" => …, "check-local" => "disable" ))\`, \`proxy.server = ( "" => (( "socket" => … )) )\`. '
  'nginx: \`worker_processes 1\` (like lighttpd), \`keepalive_requests 100000\`, no access log, \`include /etc/nginx/<proto>_params\`, '
  'buffering at its default (on); FastCGI and HTTP use an upstream with \`keepalive 32\` (\`fastcgi_keep_conn on\`; '
  '\`proxy_http_version 1.1\`), uwsgi and SCGI cannot keep a backend connection.')
w('- Backends, the same size on both sides: $PROCS processes × $BTHREADS requests at once, on a Unix socket in the temp dir, as www-data. '
  'tsgi: \`node bin/tsgi.js daemon examples/hello.tsgi --listen unix:DIR/backend.sock --protocol P --processes $PROCS --threads $BTHREADS '
  '--user www-data\` (stopped with SIGTERM). uWSGI: \`uwsgi --ini\` with \`plugins = python3\`, \`master\`, \`processes = $PROCS\`, '
  '\`threads = $BTHREADS\`, \`uid/gid = www-data\`, \`chmod-socket = 666\`, \`disable-logging\` (as in shared/reference/anchors-measured.md), '
  '\`die-on-term\` (stopped with SIGTERM). The Python app returns the 13 bytes with a Content-Length.')
w('- %d rounds, configurations interleaved inside each round (order: %s). For each configuration and round: wait up to $QUIET_WAIT s until the '
  'machine is quiet (other processes ≤ $QUIET_PCT %% of all vCPUs over 1 s), '
  'start the backend (ready line / workers spawned), start the web server, check the 13-byte body with curl, wait 1 s, '
  'read backend idle RSS, $WARMUP warm-up (\`wrk -t$THREADS -c$CONNS -d$WARMUP\`), main run \`wrk -t$THREADS -c$CONNS -d$DURATION --latency\`, '
  'read backend RSS, stop both.' % (len(rounds), ', '.join(cfgs)))
w('- req/s, p50 and p99 come from the main run (wrk\\'s \`--latency\` distribution). The tsgi/uWSGI ratio is the median over rounds of '
  'req/s(config) / req/s(uWSGI behind the same front-end) in the same round. All other columns are medians over rounds.')
w('- Backend RSS: the sum of VmRSS over the backend\\'s whole process tree (tsgi: master + workers; uWSGI: master + workers); '
  '"idle" after the body check, "after" right after the main run. The web server\\'s own memory is not counted.')
w('- The load generator, the web server and the backend share the machine\\'s 2 vCPUs, so the front-end\\'s and wrk\\'s CPU use '
  'limit both sides alike. No noise repeats (unlike the anchors harness); the machine\\'s CPU use in the last 1 s sample before each start, while none of our '
  'processes ran: median %s %%, max %s %% of all vCPUs (busy_before_pct); %d of %d measurements started after the quiet wait '
  'timed out (busy_before_pct > $QUIET_PCT), so other load may have shared the CPUs during them: read the per-round figures with that in mind. '
  'Compare ratios rather than absolute req/s across runs.' % (
      med([float(r['busy_before_pct']) for r in rows]), max(float(r['busy_before_pct']) for r in rows),
      sum(1 for r in rows if float(r['busy_before_pct']) > $QUIET_PCT), len(rows)))
w('')
w('## Machine and versions')
w('')
w('| item | value |')
w('|---|---|')
w('| CPU | $(nproc) vCPUs, $CPU |')
w('| memory | $MEM |')
w('| kernel | $(uname -sr) |')
w('| OS | $(. /etc/os-release; echo "$PRETTY_NAME") |')
w('| lighttpd | $LIGHTTPD_V |')
w('| nginx | $NGINX_V |')
w('| uWSGI | $UWSGI_V |')
w('| Node.js (tsgi daemon) | $NODE_V |')
w('| wrk | $WRK_V |')
w('')
w('## Raw results (runs.tsv)')
w('')
w('| ' + ' | '.join(rows[0].keys()) + ' |')
w('|' + '---|' * len(rows[0]))
for r in rows:
    w('| ' + ' | '.join(r.values()) + ' |')
w('<!-- /bench:webservers -->')
block = '\n'.join(L)
start, end = '<!-- bench:webservers -->', '<!-- /bench:webservers -->'
try:
    old = open(out).read()
except FileNotFoundError:
    old = ''
if start in old and end in old:
    i = old.index(start); j = old.index(end) + len(end)
    new = old[:i] + block + old[j:]
else:
    new = (old.rstrip('\n') + '\n\n' if old.strip() else '') + block + '\n'
open(out, 'w').write(new)
PY
log "wrote the bench:webservers section of $OUT in ${ELAPSED}s"
sed -n '/^# Benchmarks: lighttpd and nginx/,/^## Method/p' "$OUT"
