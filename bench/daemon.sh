#!/usr/bin/env bash
# bench/daemon.sh: issue 4 ("Done means", bench bullet). One run measures "Hello World!\n"
# (13 bytes, the body and headers of bench/run.sh) in daemon-style configurations, each in its
# own PRIVATE Apache instance (event MPM, own ServerRoot/config/pid/logs in a temp dir,
# 127.0.0.1 on a free port; never the system service):
#
#   static       Apache serving a 13-byte file (the baseline)
#   tsgi-daemon  mod_tsgi daemon mode: TSGIDaemonProcess bench processes=2 threads=15,
#                TSGIProcessGroup bench, TSGIRestrictEmbedded On, examples/hello.tsgi
#   wsgi-daemon  mod_wsgi daemon mode: WSGIDaemonProcess bench processes=2 threads=15,
#                WSGIProcessGroup bench, WSGIRestrictEmbedded On (bench/apps/hello.wsgi)
#   passenger    Phusion Passenger (libapache2-mod-passenger) running bench/apps/node-hello.js,
#                PassengerMinInstances 2 / PassengerMaxPoolSize 2
#   proxy-node   mod_proxy_http -> bench/apps/node-cluster.js (node:cluster, 2 workers),
#                pooled keep-alive backend connections (mod_proxy's default reuse)
#
# Method (as bench/run.sh and shared/reference/anchors-measured.md): ROUNDS rounds, configurations
# interleaved inside each round; per configuration and round: wait (bounded) for a quiet machine,
# start, check the body, wait until the daemon processes are all up, idle RSS, 2 s warm-up, main
# run `wrk -t1 -c32 -d10s --latency` (with the server's CPU time read around it), RSS after the
# run, stop. Medians over rounds; a ratio is the median of the per-round ratios.
#
# Usage: sudo bash bench/daemon.sh
# Env:   ROUNDS=3 DURATION=10s CONNS=32 THREADS=1 WARMUP=2s QUIET_WAIT=15 QUIET_PCT=10
#        CONFIGS="static tsgi-daemon wsgi-daemon passenger proxy-node" SKIP_BUILD=0 OUT=docs/benchmarks.md
#        PROFILE=1: a diagnosis run, not a measurement: tsgi-daemon only, one round, the daemon
#        workers under `node --cpu-prof` and (if perf exists) `perf record` of the instance's
#        processes during the main run; prints where the time goes and writes no OUT.
# Rewrites only the part of OUT between <!-- bench:daemon --> and <!-- /bench:daemon -->
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
QUIET_PCT="${QUIET_PCT:-10}"     # "quiet": the machine's CPU use <= this % of all vCPUs (1 s sample)
OUT="${OUT:-docs/benchmarks.md}"
SKIP_BUILD="${SKIP_BUILD:-0}"
PROFILE="${PROFILE:-0}"
if [ "$PROFILE" = 1 ]; then ROUNDS=1; CONFIGS="${CONFIGS:-tsgi-daemon}"; fi
read -r -a CONFIGS <<<"${CONFIGS:-static tsgi-daemon wsgi-daemon passenger proxy-node}"
BODY=$'Hello World!\n'
PROCS=2          # daemon processes on every side
DTHREADS=15      # requests per daemon process at once (tsgi, mod_wsgi)
APACHE=/usr/sbin/apache2
MODDIR=/usr/lib/apache2/modules
PASSENGER_ROOT=/usr/lib/ruby/vendor_ruby/phusion_passenger/locations.ini
RUNAS=www-data
STARTED_AT="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
SECONDS=0


[ "$(id -u)" = 0 ] || die "run as root (apt-get installs, Apache drops to $RUNAS)"
for c in "${CONFIGS[@]}"; do
  case "$c" in static|tsgi-daemon|wsgi-daemon|passenger|proxy-node) ;;
    *) die "CONFIGS: unknown configuration '$c' (known: static tsgi-daemon wsgi-daemon passenger proxy-node)" ;;
  esac
done
has_cfg() { local c; for c in "${CONFIGS[@]}"; do [ "$c" = "$1" ] && return 0; done; return 1; }

# ---- prerequisites (idempotent) --------------------------------------------------------------
missing=()
for p in wrk libapache2-mod-wsgi-py3 libapache2-mod-passenger; do installed "$p" || missing+=("$p"); done
if [ "${#missing[@]}" -gt 0 ]; then
  log "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # apt-get update only when a package is missing from the lists.
  for p in "${missing[@]}"; do
    apt-cache show "$p" >/dev/null 2>&1 || { apt-get update -qq; break; }
  done
  # Never let an install remove anything (Passenger pulls in Ruby; Node must stay as it is).
  if apt-get install -s --no-install-recommends "${missing[@]}" 2>/dev/null | grep -q '^Remv '; then
    die "installing ${missing[*]} would remove packages; install them by hand"
  fi
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # The Debian packages a2enmod themselves into the system Apache; this script only wants the
  # .so files, so the system configuration is put back as it was.
  for m in wsgi passenger; do
    case " ${missing[*]} " in *"-$m-"*|*"-$m "*) ;; *) continue ;; esac
    [ -e "/etc/apache2/mods-enabled/$m.load" ] && { a2dismod -q "$m" >/dev/null 2>&1 || true; }
  done
fi
command -v wrk >/dev/null || die "wrk not found after install"
[ -f "$MODDIR/mod_wsgi.so" ] || die "mod_wsgi.so not found in $MODDIR"
[ -f "$MODDIR/mod_passenger.so" ] || die "mod_passenger.so not found in $MODDIR"
[ -f "$PASSENGER_ROOT" ] || die "Passenger's locations.ini not found at $PASSENGER_ROOT"
id "$RUNAS" >/dev/null 2>&1 || die "user $RUNAS missing"

if [ "$SKIP_BUILD" = 1 ]; then
  log "SKIP_BUILD=1: using dist/ and build/native/mod_tsgi.so as they are"
else
  log "npm run build"
  npm run build >/tmp/tsgi-bench-build.$$.log 2>&1 || { cat /tmp/tsgi-bench-build.$$.log >&2; die "npm run build failed"; }
  rm -f /tmp/tsgi-bench-build.$$.log
fi
TSGI_LOADMODULE=""
if has_cfg tsgi-daemon; then
  TSGI_LOADMODULE="$(node bin/tsgi.js module-config | grep -m1 '^LoadModule')" || die "tsgi module-config failed"
  [ -n "$TSGI_LOADMODULE" ] || die "no LoadModule line from tsgi module-config"
  [ -f "$REPO/dist/daemon-mode.js" ] || die "dist/daemon-mode.js missing (npm run build)"
fi

# ---- temp dir and cleanup ----------------------------------------------------------------------
TMP="$(mktemp -d /tmp/tsgi-bench-daemon.XXXXXX)"
chmod 755 "$TMP"
CUR_ROOT=""
BACK_PID=""      # the node:cluster primary of proxy-node
TRACKED=""       # "pid:starttime" of every daemon process seen in the current instance


descendants() { # $1 = pid: all its descendants (not itself)
  local c
  for c in $(pgrep -P "$1" 2>/dev/null || true); do echo "$c"; descendants "$c"; done
}
starttime() { awk '{sub(/^.*\) /, ""); print $20}' "/proc/$1/stat" 2>/dev/null || true; }
cmdline() { tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null || true; }

# The processes of an instance, one "kind pid" a line: "mpm" for the Apache parent's worker
# children (recognised by their inherited command line), "daemon" for everything else the parent
# started (tsgi supervisor + workers, mod_wsgi daemons, Passenger watchdog/core/apps) and the
# proxy-node backend tree. The Apache parent itself is left out: it is the same in every config.
classify() { # $1 = Apache parent pid, $2 = root, $3 = "apache-only" to leave the backend out
  local ppid="$1" root="$2" c d
  for c in $(pgrep -P "$ppid" 2>/dev/null || true); do
    case "$(cmdline "$c")" in
      "$APACHE -d $root "*) echo "mpm $c" ;;
      *) echo "daemon $c"; for d in $(descendants "$c"); do echo "daemon $d"; done ;;
    esac
  done
  if [ -n "$BACK_PID" ] && [ "${3:-}" != apache-only ]; then
    echo "daemon $BACK_PID"; for d in $(descendants "$BACK_PID"); do echo "daemon $d"; done
  fi
}
# "n rss_kB pss_kB" over the pids given.
mem_of() {
  local n=0 rss=0 pss=0 p r s
  for p in "$@"; do
    r="$(awk '/^VmRSS:/{print $2}' "/proc/$p/status" 2>/dev/null || true)"
    [ -n "$r" ] || continue
    s="$(awk '/^Pss:/{print $2}' "/proc/$p/smaps_rollup" 2>/dev/null || true)"
    n=$((n + 1)); rss=$((rss + r)); pss=$((pss + ${s:-0}))
  done
  echo "$n $rss $pss"
}
# CPU time (utime+stime, clock ticks) summed over the pids given.
ticks_of() {
  local sum=0 p t
  for p in "$@"; do
    t="$(awk '{sub(/^.*\) /, ""); print $12 + $13}' "/proc/$p/stat" 2>/dev/null || true)"
    sum=$((sum + ${t:-0}))
  done
  echo "$sum"
}
kind_pids() { awk -v k="$1" '$1 == k {print $2}'; }

track_daemons() { # $1 = Apache parent pid, $2 = root: remember the daemons Apache started
  local p st
  for p in $(classify "$1" "$2" apache-only | kind_pids daemon); do
    st="$(starttime "$p")"; [ -n "$st" ] || continue
    case " $TRACKED " in *" $p:$st "*) ;; *) TRACKED="$TRACKED $p:$st" ;; esac
  done
}
# Daemons that outlive `apache2 -k stop` are a finding, not just litter: wait for them (tsgi's
# graceful-timeout is 15 s by default), then kill by pid (checked against its start time).
reap_tracked() { # $1 = what
  local i e p st left=""
  for i in $(seq 1 250); do
    left=""
    for e in $TRACKED; do p="${e%%:*}"; st="${e#*:}"; [ "$(starttime "$p")" = "$st" ] && left="$left $p"; done
    [ -z "$left" ] && break
    sleep 0.1
  done
  if [ -n "$left" ]; then
    log "$1: daemon processes still alive 25 s after the stop, killing:$left"
    kill -9 $left 2>/dev/null || true
  elif [ "$i" -gt 10 ]; then
    log "$1: daemon processes took $(awk -v i="$i" 'BEGIN{printf "%.1f", i/10}') s to exit after the stop"
  fi
  TRACKED=""
}

stop_backend() {
  [ -n "$BACK_PID" ] || return 0
  kill "$BACK_PID" 2>/dev/null || true
  local i; for i in $(seq 1 50); do kill -0 "$BACK_PID" 2>/dev/null || break; sleep 0.1; done
  kill -0 "$BACK_PID" 2>/dev/null && { log "node cluster $BACK_PID did not stop on SIGTERM; killing"; kill -9 "$BACK_PID" 2>/dev/null || true; }
  wait "$BACK_PID" 2>/dev/null || true
  BACK_PID=""
}

stop_apache() { # $1 = root
  local root="$1" ppid="" i
  [ -f "$root/httpd.pid" ] && ppid="$(cat "$root/httpd.pid" 2>/dev/null || true)"
  [ -n "$ppid" ] && track_daemons "$ppid" "$root"
  "$APACHE" -d "$root" -f "$root/httpd.conf" -k stop >/dev/null 2>&1 || true
  if [ -n "$ppid" ]; then
    for i in $(seq 1 300); do kill -0 "$ppid" 2>/dev/null || break; sleep 0.1; done
  fi
  local left; left="$(pgrep -f -- "-d $root " 2>/dev/null || true)"
  if [ -n "$left" ]; then
    log "killing leftover Apache processes of $root: $(echo $left)"
    kill -9 $left 2>/dev/null || true
    sleep 0.2
  fi
  reap_tracked "$(basename "$root")"
  rm -f "$root/httpd.pid"
}

cleanup() {
  local rc=$?
  set +e
  [ -n "$CUR_ROOT" ] && stop_apache "$CUR_ROOT"
  stop_backend
  local left; left="$(pids_under_tmp)"
  [ -n "$left" ] && { log "killing leftovers: $(echo $left)"; kill -9 $left 2>/dev/null; }
  if [ "${KEEP_TMP:-0}" = 1 ] || [ "$rc" != 0 ]; then log "kept $TMP"; else rm -rf "$TMP"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM


# Machine CPU busy (% of all vCPUs) over 1 s.
cpu_snap() { awk '/^cpu /{print $2+$3+$4+$7+$8+$9, $5+$6}' /proc/stat; }
busy_between() { # $1, $2 = cpu_snap outputs: % of all vCPUs busy in between
  awk -v a="$1" -v b="$2" 'BEGIN{split(a,x," "); split(b,y," "); bu=y[1]-x[1]; id=y[2]-x[2]; printf "%.0f", (bu+id>0 ? 100*bu/(bu+id) : 0)}'
}
# Latency value from wrk ("677.00us", "1.07ms", "1.20s") in ms.

# ---- fixtures ----------------------------------------------------------------------------------
mkdir -p "$TMP/htdocs" "$TMP/app" "$TMP/papp/public"
printf '%s' "$BODY" >"$TMP/htdocs/hello.txt"
cp "$REPO/bench/apps/hello.wsgi" "$TMP/app/hello.wsgi"
cp "$REPO/bench/apps/node-hello.js" "$REPO/bench/apps/node-cluster.js" "$TMP/app/"
# Passenger wants an app root with a public/ dir; it runs the app as the startup file's owner.
cp "$REPO/bench/apps/node-hello.js" "$TMP/papp/node-hello.js"
chown -R "$RUNAS:$RUNAS" "$TMP/papp"
chmod -R a+rX "$TMP"
[ -r "$REPO/examples/hello.tsgi" ] || die "examples/hello.tsgi missing"

# ---- Apache config -----------------------------------------------------------------------------
write_conf() { # $1 = config, $2 = root, $3 = port, $4 = backend port (proxy-node)
  local cfg="$1" root="$2" port="$3" bport="${4:-}"
  mkdir -p "$root"
  chmod 755 "$root"
  {
    cat <<EOF
# Generated by bench/daemon.sh ($cfg): a private instance, nothing from /etc/apache2.
EOF
    apache_base_conf "$root" "$port" "$TMP/htdocs" "$RUNAS"
    case "$cfg" in
      static) ;;
      tsgi-daemon)
        echo "$TSGI_LOADMODULE"
        echo "TSGISocketPrefix $root/tsgi"
        if [ "$PROFILE" = 1 ]; then
          mkdir -p "$root/prof"; chown "$RUNAS:$RUNAS" "$root/prof"
          echo "TSGIDaemonProcess bench processes=$PROCS threads=$DTHREADS \"node-options=--cpu-prof --cpu-prof-dir=$root/prof\""
        else
          echo "TSGIDaemonProcess bench processes=$PROCS threads=$DTHREADS"
        fi
        echo "TSGIProcessGroup bench"
        echo "TSGIRestrictEmbedded On"
        echo "TSGIScriptAlias / $REPO/examples/hello.tsgi"
        ;;
      wsgi-daemon)
        # display-name only renames the daemons, so that they can be told from Apache's workers.
        echo "LoadModule wsgi_module $MODDIR/mod_wsgi.so"
        echo "WSGISocketPrefix $root/wsgi"
        echo "WSGIDaemonProcess bench processes=$PROCS threads=$DTHREADS display-name=%{GROUP}"
        echo "WSGIProcessGroup bench"
        echo "WSGIApplicationGroup %{GLOBAL}"
        echo "WSGIRestrictEmbedded On"
        echo "WSGIScriptAlias / $TMP/app/hello.wsgi"
        ;;
      passenger)
        cat <<EOF
LoadModule passenger_module $MODDIR/mod_passenger.so
PassengerRoot $PASSENGER_ROOT
PassengerDefaultRuby /usr/bin/ruby
PassengerNodejs /usr/bin/node
PassengerInstanceRegistryDir $root
PassengerLogFile $root/passenger.log
PassengerDisableSecurityUpdateCheck on
PassengerDisableAnonymousTelemetry on
PassengerDefaultUser $RUNAS
PassengerDefaultGroup $RUNAS
PassengerMaxPoolSize $PROCS
PassengerAppRoot $TMP/papp
PassengerAppType node
PassengerStartupFile node-hello.js
PassengerMinInstances $PROCS
<Directory "$TMP/papp/public">
    AllowOverride None
</Directory>
EOF
        ;;
      proxy-node)
        echo "LoadModule proxy_module $MODDIR/mod_proxy.so"
        echo "LoadModule proxy_http_module $MODDIR/mod_proxy_http.so"
        # Connection reuse is mod_proxy's default (no disablereuse): pooled keep-alive to Node.
        echo "ProxyPass / http://127.0.0.1:$bport/"
        ;;
    esac
  } >"$root/httpd.conf"
}

url_of() { # $1 = config, $2 = port
  if [ "$1" = static ]; then echo "http://127.0.0.1:$2/hello.txt"; else echo "http://127.0.0.1:$2/"; fi
}
# Daemon processes a config has once it is fully up (idle RSS is read only then).
expected_daemons() {
  case "$1" in
    static) echo 0 ;;
    tsgi-daemon) echo $((PROCS + 1)) ;;   # supervisor + workers
    wsgi-daemon) echo "$PROCS" ;;
    passenger) echo $((PROCS + 2)) ;;     # watchdog + core + app processes
    proxy-node) echo $((PROCS + 1)) ;;    # cluster primary + workers
  esac
}

start_backend() { # $1 = root, $2 = port
  local root="$1" bport="$2" i
  node "$TMP/app/node-cluster.js" "$bport" "$PROCS" >"$root/backend.log" 2>&1 &
  BACK_PID=$!
  for i in $(seq 1 100); do
    grep -q '^ready ' "$root/backend.log" 2>/dev/null && return 0
    kill -0 "$BACK_PID" 2>/dev/null || break
    sleep 0.1
  done
  cat "$root/backend.log" >&2; die "node cluster did not become ready"
}

start_apache() { # $1 = root
  local root="$1" i
  "$APACHE" -d "$root" -f "$root/httpd.conf" -k start >"$root/start.out" 2>&1 \
    || { cat "$root/start.out" "$root/error.log" >&2 2>/dev/null; die "apache2 failed to start ($root)"; }
  for i in $(seq 1 100); do [ -s "$root/httpd.pid" ] && break; sleep 0.1; done
  [ -s "$root/httpd.pid" ] || { cat "$root/error.log" >&2; die "no pid file in $root"; }
}

RESULTS="$TMP/runs.tsv"
printf 'round\tconfig\treqs\trequests\tp50_ms\tp99_ms\terrors\tmpm_idle_n\tmpm_idle_kb\td_idle_n\td_idle_kb\td_idle_pss_kb\tmpm_after_n\tmpm_after_kb\td_after_n\td_after_kb\td_after_pss_kb\tcpu_us_per_req\tcpu_daemon_us_per_req\tmachine_busy_run_pct\terrors_detail\tbusy_before_pct\n' >"$RESULTS"
CLK_TCK="$(getconf CLK_TCK)"

# ---- the run -----------------------------------------------------------------------------------
for round in $(seq 1 "$ROUNDS"); do
  for cfg in "${CONFIGS[@]}"; do
    root="$TMP/r$round-$cfg"
    port="$(free_port)"
    bport=""
    [ "$cfg" = proxy-node ] && bport="$(free_port)"
    write_conf "$cfg" "$root" "$port" "$bport"
    "$APACHE" -d "$root" -f "$root/httpd.conf" -t >"$root/configtest.out" 2>&1 \
      || { cat "$root/configtest.out" >&2; die "config test failed for $cfg ($root/httpd.conf)"; }
    # Quiet gate: wait (up to QUIET_WAIT s) until the machine uses <= QUIET_PCT % of all vCPUs
    # for 1 s; none of our processes runs now, so what is left is other load.
    waited=0
    while :; do
      busy="$(cpu_busy_pct)"
      { [ "$busy" -le "$QUIET_PCT" ] || [ "$waited" -ge "$QUIET_WAIT" ]; } && break
      waited=$((waited + 1))
    done
    [ "$busy" -le "$QUIET_PCT" ] || log "round $round $cfg: machine not quiet after ${QUIET_WAIT}s (${busy}% busy); measuring anyway"
    [ "$cfg" = proxy-node ] && start_backend "$root" "$bport"
    CUR_ROOT="$root"
    start_apache "$root"
    ppid="$(cat "$root/httpd.pid")"
    url="$(url_of "$cfg" "$port")"
    got=""
    for i in $(seq 1 300); do got="$(fetch_body "$url"; echo x)"; got="${got%x}"; [ "$got" = "$BODY" ] && break; sleep 0.1; done
    [ "$got" = "$BODY" ] || { cat "$root/error.log" "$root/passenger.log" >&2 2>/dev/null; die "$cfg: wrong body: $(printf %q "$got")"; }
    # The response head as the client sees it (Date dropped), for the report.
    curl -si --max-time 5 "$url" | tr -d '\r' | sed -n '1,/^$/p' | grep -v '^Date:' | grep -v '^$' >"$root/head.txt" || true
    [ "$round" = 1 ] && cp "$root/head.txt" "$TMP/head-$cfg.txt"
    want="$(expected_daemons "$cfg")"
    for i in $(seq 1 200); do
      have="$(classify "$ppid" "$root" | kind_pids daemon | wc -l)"
      [ "$have" -ge "$want" ] && break
      sleep 0.1
    done
    [ "$have" -ge "$want" ] || log "round $round $cfg: only $have of $want daemon processes after 20 s"
    sleep 1
    procs="$(classify "$ppid" "$root")"
    read -r mi_n mi_kb _ <<<"$(mem_of $(kind_pids mpm <<<"$procs"))"
    read -r di_n di_kb di_pss <<<"$(mem_of $(kind_pids daemon <<<"$procs"))"
    track_daemons "$ppid" "$root"
    wrk -t"$THREADS" -c"$CONNS" -d"$WARMUP" "$url" >"$root/wrk-warmup.txt" 2>&1
    # Server CPU: every process of the instance (parent, workers, daemons) present before and after
    # the main run; one that starts or exits in between loses its share (rare: Apache may fork a
    # third worker under -c32 during the warm-up already).
    procs="$(classify "$ppid" "$root")"
    all_before="$ppid $(awk '{print $2}' <<<"$procs" | tr '\n' ' ')"
    daemons_before="$(kind_pids daemon <<<"$procs" | tr '\n' ' ')"
    t0="$(ticks_of $all_before)"; t0d="$(ticks_of $daemons_before)"; m0="$(cpu_snap)"
    PERF_PID=""
    if [ "$PROFILE" = 1 ] && command -v perf >/dev/null; then
      perf record -q -g -o "$root/perf.data" -p "$(echo $all_before | tr ' ' ,)" >"$root/perf.out" 2>&1 &
      PERF_PID=$!
      sleep 0.5
    fi
    wrk -t"$THREADS" -c"$CONNS" -d"$DURATION" --latency "$url" >"$root/wrk.txt" 2>&1
    t1="$(ticks_of $all_before)"; t1d="$(ticks_of $daemons_before)"; mbusy="$(busy_between "$m0" "$(cpu_snap)")"
    if [ -n "$PERF_PID" ]; then kill -INT "$PERF_PID" 2>/dev/null || true; wait "$PERF_PID" 2>/dev/null || true; fi
    procs="$(classify "$ppid" "$root")"
    read -r ma_n ma_kb _ <<<"$(mem_of $(kind_pids mpm <<<"$procs"))"
    read -r da_n da_kb da_pss <<<"$(mem_of $(kind_pids daemon <<<"$procs"))"
    track_daemons "$ppid" "$root"
    ps -o pid,ppid,user,rss,pcpu,args -p "$(echo $ppid $(awk '{print $2}' <<<"$procs") | tr ' ' ,)" >"$root/ps.txt" 2>&1 || true
    rps="$(awk '/^Requests\/sec:/{print $2}' "$root/wrk.txt")"
    nreq="$(awk '/requests in/{print $1}' "$root/wrk.txt")"
    p50="$(to_ms "$(awk '$1=="50%"{print $2}' "$root/wrk.txt")")"
    p99="$(to_ms "$(awk '$1=="99%"{print $2}' "$root/wrk.txt")")"
    errs="$(awk '/Socket errors/{gsub(/,/,""); s=$4+$6+$8+$10} /Non-2xx/{n=$NF} END{print (s+0)+(n+0)}' "$root/wrk.txt")"
    # Which kind: c(onnect)/r(ead)/w(rite)/t(imeout) socket errors and n(on-2xx) responses.
    errd="$(awk '/Socket errors/{gsub(/,/,""); c=$4; r=$6; w=$8; t=$10} /Non-2xx/{n=$NF} END{printf "c%d/r%d/w%d/t%d/n%d", c, r, w, t, n}' "$root/wrk.txt")"
    [ -n "$rps" ] && [ -n "$nreq" ] || { cat "$root/wrk.txt" >&2; die "$cfg: no wrk result"; }
    cpu="$(awk -v a="$t0" -v b="$t1" -v n="$nreq" -v hz="$CLK_TCK" 'BEGIN{printf "%.1f", (b-a)/hz*1e6/(n>0?n:1)}')"
    cpud="$(awk -v a="$t0d" -v b="$t1d" -v n="$nreq" -v hz="$CLK_TCK" 'BEGIN{printf "%.1f", (b-a)/hz*1e6/(n>0?n:1)}')"
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$round" "$cfg" "$rps" "$nreq" "$p50" "$p99" "$errs" \
      "$mi_n" "$mi_kb" "$di_n" "$di_kb" "$di_pss" "$ma_n" "$ma_kb" "$da_n" "$da_kb" "$da_pss" "$cpu" "$cpud" "$mbusy" "$errd" "$busy" >>"$RESULTS"
    log "round $round $cfg: $rps req/s, p50 ${p50} ms, p99 ${p99} ms, errors $errs ($errd), ${cpu} µs CPU/req (daemons ${cpud}), machine ${mbusy}% busy; daemons idle $di_n/${di_kb} kB (PSS ${di_pss}), after $da_n/${da_kb} kB; Apache workers idle $mi_n/${mi_kb} kB"
    stop_apache "$root"
    CUR_ROOT=""
    stop_backend
    if grep -Eq '\[(\w+:)?(emerg|alert|crit)\]|\[tsgi:error\]' "$root/error.log"; then
      log "$cfg: serious lines in error.log:"; grep -E '\[(\w+:)?(emerg|alert|crit)\]|\[tsgi:error\]' "$root/error.log" | head -5 >&2 || true
    fi
  done
done

left="$(pids_under_tmp)"; [ -z "$left" ] || { log "killing leftovers: $(echo $left)"; kill -9 $left 2>/dev/null || true; }

if [ "$PROFILE" = 1 ]; then
  for cfg in "${CONFIGS[@]}"; do
    root="$TMP/r1-$cfg"
    log "$cfg: $(awk -F'\t' -v c="$cfg" '$2 == c {print $3 " req/s, " $18 " us CPU/req, daemons " $19 " (profiled, so slower than a measurement)"}' "$RESULTS")"
    if [ -f "$root/perf.data" ]; then
      echo "== perf: CPU samples by process and object ($cfg, main run) =="
      perf report -i "$root/perf.data" -g none --no-children --percent-limit 0.3 --sort comm,dso --stdio 2>/dev/null | grep -v '^#' | grep -v '^$' | head -25
      echo "== perf: top symbols =="
      perf report -i "$root/perf.data" -g none --no-children --percent-limit 0.3 --sort comm,dso,sym --stdio 2>/dev/null | grep -E '^ +[0-9]' | head -40
    fi
    if ls "$root"/prof/*.cpuprofile >/dev/null 2>&1; then
      echo "== node --cpu-prof of the daemon processes ($cfg; warm-up, main run and idle time) =="
      node "$REPO/bench/apps/cpuprofile-top.js" --top 40 "$root"/prof/*.cpuprofile
    elif [ "$cfg" = tsgi-daemon ]; then
      log "no .cpuprofile in $root/prof (workers write it only when they exit normally)"
    fi
  done
  KEEP_TMP=1
  log "PROFILE=1: nothing written to $OUT; raw data kept in $TMP"
  exit 0
fi

# ---- report ------------------------------------------------------------------------------------
ELAPSED=$SECONDS
APACHE_V="$("$APACHE" -v | sed -n 's/^Server version: //p') (apache2-bin $(dpkg-query -W -f='${Version}' apache2-bin))"
NODE_V="$(node -v) ($(command -v node))"
WRK_V="wrk $(dpkg-query -W -f='${Version}' wrk) (Debian package)"
WSGI_V="libapache2-mod-wsgi-py3 $(dpkg-query -W -f='${Version}' libapache2-mod-wsgi-py3), $(/usr/bin/python3 -V 2>&1) (/usr/bin/python3)"
PASS_V="libapache2-mod-passenger $(dpkg-query -W -f='${Version}' libapache2-mod-passenger), Node apps on $(command -v node)"
CPU="$(awk -F': ' '/^model name/{print $2; exit}' /proc/cpuinfo)"
MEM="$(awk '/^MemTotal/{printf "%.1f GiB", $2/1048576}' /proc/meminfo)"
GIT_REV="$(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet HEAD -- native src 2>/dev/null || echo '+dirty')"

python3 - "$RESULTS" "$OUT" "$TMP" <<PY
import csv, os, statistics as st, sys
rows = list(csv.DictReader(open(sys.argv[1]), delimiter='\t'))
out = sys.argv[2]
tmp = sys.argv[3]
names = {'static': 'static: Apache event, 13-byte file',
         'tsgi-daemon': 'mod_tsgi daemon 2×15 (examples/hello.tsgi)',
         'wsgi-daemon': 'mod_wsgi daemon 2×15 (Python hello world)',
         'passenger': 'Passenger + Node (2 app processes)',
         'proxy-node': 'mod_proxy_http → Node cluster (2 workers)'}
daemons = {'static': '—', 'tsgi-daemon': 'supervisor + 2 workers', 'wsgi-daemon': '2 daemons',
           'passenger': 'watchdog + core + 2 apps', 'proxy-node': 'primary + 2 workers'}
cfgs = [c for c in names if any(r['config'] == c for r in rows)]
by = {(r['round'], r['config']): r for r in rows}
rounds = sorted({r['round'] for r in rows}, key=int)
med = lambda xs: st.median(xs) if xs else float('nan')
MiB = 1024.0
def f(cfg, key, conv=float):
    return [conv(by[(rd, cfg)][key]) for rd in rounds if (rd, cfg) in by]
def ratio(a, b):
    return med([float(by[(rd, a)]['reqs']) / float(by[(rd, b)]['reqs']) for rd in rounds if (rd, a) in by and (rd, b) in by])
def per(cfg, n, s):
    return med([int(by[(rd, cfg)][s]) / max(1, int(by[(rd, cfg)][n])) / MiB for rd in rounds if (rd, cfg) in by])
res = {}
for c in cfgs:
    res[c] = dict(rps=med(f(c, 'reqs')), p50=med(f(c, 'p50_ms')), p99=med(f(c, 'p99_ms')), cpu=med(f(c, 'cpu_us_per_req')), cpud=med(f(c, 'cpu_daemon_us_per_req')), mbusy=med(f(c, 'machine_busy_run_pct')),
                  d_n=med(f(c, 'd_idle_n', int)), d_idle=med([x / MiB for x in f(c, 'd_idle_kb', int)]),
                  d_pss=med([x / MiB for x in f(c, 'd_idle_pss_kb', int)]),
                  d_after=med([x / MiB for x in f(c, 'd_after_kb', int)]),
                  mpm=per(c, 'mpm_idle_n', 'mpm_idle_kb'),
                  errs=', '.join(by[(rd, c)]['errors_detail'] for rd in rounds if (rd, c) in by))
    res[c]['ratio'] = ratio(c, 'static') if 'static' in cfgs else float('nan')
L = []
w = L.append
w('# Apache daemon mode: mod_tsgi daemon vs. mod_wsgi daemon, Passenger and mod_proxy → Node (issue 4)')
w('')
w('Generated by \`bench/daemon.sh\` (issue 4) — do not edit this section by hand; re-run the script instead '
  '(it rewrites only the text between the \`bench:daemon\` markers).')
w('')
w('Command: \`sudo bash bench/daemon.sh\`, with ROUNDS=$ROUNDS, wrk \`-t$THREADS -c$CONNS -d$DURATION --latency\` after a $WARMUP warm-up.')
w('Run: $STARTED_AT, $ELAPSED s, checkout $GIT_REV; configurations: %s.' % ', '.join(cfgs))
missing = [c for c in names if c not in cfgs]
if missing:
    w('')
    w('**Not measured in this run: %s.**' % ', '.join(missing))
w('')
w('Every configuration answers \`Hello World!\\\\n\` (13 bytes, \`Content-Type: text/plain; charset=utf-8\`) over 127.0.0.1 '
  'in its own private Apache (event MPM); the application processes number 2 everywhere.')
w('')
w('## Results (medians of %d rounds)' % len(rounds))
w('')
w('| # | config | req/s | ratio to static | p50 ms | p99 ms | server CPU µs/req (of it daemons) | machine CPU busy during run | daemon processes | daemons idle RSS MiB (sum) | daemons idle PSS MiB | daemons RSS after MiB | Apache RSS/worker idle MiB | wrk errors per round |')
w('|---|---|---|---|---|---|---|---|---|---|---|---|---|---|')
for i, c in enumerate(cfgs, 1):
    r = res[c]
    w('| %d | %s | %s | **%.3f** | %.3f | %.3f | %.1f (%.1f) | %.0f %% | %s (%g) | %.1f | %.1f | %.1f | %.1f | %s |' % (
        i, names[c], format(round(r['rps']), ','), r['ratio'], r['p50'], r['p99'], r['cpu'], r['cpud'], r['mbusy'], daemons[c], r['d_n'],
        r['d_idle'], r['d_pss'], r['d_after'], r['mpm'], r['errs']))
w('')
w('Per round (req/s): ' + '; '.join('%s: %s' % (c, ', '.join(format(round(x), ',') for x in f(c, 'reqs'))) for c in cfgs) + '.')
w('')
w('Response heads (round 1, \`curl -si\`, Date left out), all with the same 13-byte body:')
w('')
for c in cfgs:
    try:
        head = [l for l in open(os.path.join(tmp, 'head-%s.txt' % c)).read().split('\n') if l]
    except FileNotFoundError:
        head = ['?']
    w('- %s: %s' % (c, '; '.join('\`%s\`' % l for l in head)))
w('')
w('## Issue 4 targets')
w('')
if 'tsgi-daemon' in cfgs:
    w('| target | measured: req/s ratio (median of per-round ratios) | verdict | server CPU per request, peer / mod_tsgi daemon |')
    w('|---|---|---|---|')
    def cost_ratio(a, b):
        return med([float(by[(rd, b)]['cpu_us_per_req']) / float(by[(rd, a)]['cpu_us_per_req'])
                    for rd in rounds if (rd, a) in by and (rd, b) in by and float(by[(rd, a)]['cpu_us_per_req']) > 0])
    for peer, want in (('static', 0.75), ('wsgi-daemon', 2.0), ('proxy-node', 1.2), ('passenger', 3.0)):
        if peer not in cfgs:
            w('| mod_tsgi daemon ≥ %g× %s | not measured | n/a | n/a |' % (want, names[peer])); continue
        x = ratio('tsgi-daemon', peer)
        w('| mod_tsgi daemon ≥ %g× %s | %.3f× (%+.1f %% vs. the target) | %s | %.3f |' % (
            want, names[peer], x, (x / want - 1) * 100, '**met**' if x >= want else '**not met**', cost_ratio('tsgi-daemon', peer)))
    w('')
    w('The last column divides the peer\'s server CPU per request by mod_tsgi daemon\'s (median of per-round ratios): '
      'where the CPUs are the limit, it is what the req/s ratio tends to, and it is less disturbed by other load on the machine than req/s.')
else:
    w('mod_tsgi daemon was not measured in this run, so the targets (≥ 0.75× static, ≥ 2× mod_wsgi daemon, '
      '≥ 1.2× mod_proxy → Node, ≥ 3× Passenger) are not evaluated.')
w('')
w('## Method')
w('')
w('- One run of \`bench/daemon.sh\` (root). It installs \`wrk\`, \`libapache2-mod-wsgi-py3\` and \`libapache2-mod-passenger\` with apt-get if missing '
  '(refusing any install that would remove a package, and undoing the packages\\' a2enmod of the system Apache), runs \`npm run build\`, '
  'takes the LoadModule line from \`node bin/tsgi.js module-config\`, and writes everything else into a fresh temp dir.')
w('- Each configuration runs in a private Apache (own ServerRoot, httpd.conf with nothing from /etc/apache2, pid file, error log, runtime dir, '
  'mutexes and daemon sockets, \`Listen 127.0.0.1:<free port>\`), started with \`apache2 -d ROOT -f ROOT/httpd.conf -k start\`, stopped with '
  '\`-k stop\`. Identical Apache settings everywhere: bench/run.sh\\'s (Debian\\'s mpm_event.conf defaults, KeepAlive On, MaxKeepAliveRequests 0, '
  'no access log, LogLevel warn, User/Group $RUNAS).')
w('- Configurations: (static) \`hello.txt\` from the DocumentRoot; (tsgi-daemon) \`TSGIDaemonProcess bench processes=$PROCS threads=$DTHREADS\`, '
  '\`TSGIProcessGroup bench\`, \`TSGIRestrictEmbedded On\`, \`TSGISocketPrefix ROOT/tsgi\`, \`TSGIScriptAlias / <repo>/examples/hello.tsgi\`; '
  '(wsgi-daemon) \`WSGIDaemonProcess bench processes=$PROCS threads=$DTHREADS display-name=%{GROUP}\`, \`WSGIProcessGroup bench\`, '
  '\`WSGIApplicationGroup %{GLOBAL}\`, \`WSGIRestrictEmbedded On\`, \`WSGIScriptAlias / bench/apps/hello.wsgi\`; '
  '(passenger) \`PassengerAppRoot\` + \`PassengerAppType node\` + \`PassengerStartupFile\` bench/apps/node-hello.js, '
  '\`PassengerMinInstances $PROCS\`, \`PassengerMaxPoolSize $PROCS\`, \`PassengerNodejs /usr/bin/node\`, app user $RUNAS, other settings at their defaults; '
  '(proxy-node) \`ProxyPass / http://127.0.0.1:<port>/\` (connection reuse on, mod_proxy\\'s default) to bench/apps/node-cluster.js: '
  'node:cluster with $PROCS workers, each running the same node-hello.js (keepAliveTimeout 65 s), started before and stopped after its Apache.')
w('- %d rounds, configurations interleaved inside each round. For each configuration and round: quiet gate (wait up to $QUIET_WAIT s until '
  'the machine uses ≤ $QUIET_PCT %% of all vCPUs over 1 s), start, check the 13-byte body with curl (this first request also starts '
  'Passenger\\'s app), wait until all daemon processes exist, wait 1 s, read idle memory, $WARMUP warm-up, main run '
  '\`wrk -t$THREADS -c$CONNS -d$DURATION --latency\`, read memory, stop. After \`-k stop\` the script waits (up to 25 s) for every daemon process '
  'it saw to exit and reports any it has to kill.' % len(rounds))
w('- req/s, p50 and p99 come from the main run. A ratio is the median over rounds of req/s(a) / req/s(b) in the same round; '
  'all other columns are medians over rounds.')
w('- Daemon processes: everything the Apache parent started that is not one of its worker children (tsgi: supervisor + workers; mod_wsgi: '
  'its daemons; Passenger: watchdog, core and the Node app processes), plus the Node cluster of proxy-node (not Apache\\'s child). '
  'RSS is the sum of VmRSS (shared pages counted once per process), PSS the sum of Pss from smaps_rollup. '
  '"Apache RSS/worker" is the mean VmRSS of Apache\\'s worker children (no application code in them in any of these configurations).')
w('- Server CPU µs/req: utime+stime of the Apache parent, its workers and all daemon processes over the main run, divided by its requests. '
  'It is the cost of the whole server path without wrk; in brackets the daemon processes\' share (the rest is Apache). '
  '"machine CPU busy during run": all vCPUs over the main run, wrk and any other load included; well under 100 %% means the '
  'configuration did not use the CPUs it had (waiting, not computing). wrk errors: c(onnect)/r(ead)/w(rite)/t(imeout) socket errors and '
  'n(on-2xx) responses per round.')
w('- The machine\\'s CPU use in the last 1 s sample before each start: median %s %%, max %s %% of all vCPUs (busy_before_pct); '
  '%d of %d measurements started after the quiet wait timed out. Compare ratios rather than absolute req/s across runs.' % (
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
w('| Apache httpd | $APACHE_V, event MPM |')
w('| Node.js (tsgi daemons, Passenger apps, proxy backend) | $NODE_V |')
w('| mod_wsgi | $WSGI_V |')
w('| Passenger | $PASS_V |')
w('| wrk | $WRK_V |')
w('')
w('## Raw results (runs.tsv)')
w('')
w('| ' + ' | '.join(rows[0].keys()) + ' |')
w('|' + '---|' * len(rows[0]))
for r in rows:
    w('| ' + ' | '.join(r.values()) + ' |')
start, end = '<!-- bench:daemon -->', '<!-- /bench:daemon -->'
block = start + '\n' + '\n'.join(L) + '\n' + end
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
log "wrote $OUT in ${ELAPSED}s"
sed -n '/<!-- bench:daemon -->/,/<!-- \/bench:daemon -->/p' "$OUT" | sed -n '/^## Results/,/^## Method/p'
