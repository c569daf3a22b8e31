#!/usr/bin/env bash
# bench/quick.sh: a quick static vs. mod_tsgi hello comparison inside ONE private Apache
# (same settings as bench/run.sh: event MPM, Debian mpm_event defaults, no access log,
# LogLevel warn). Alternates wrk runs on /hello.txt (static) and /tsgi/ (examples/hello.tsgi),
# ROUNDS rounds of DURATION each after a warm-up, and prints the per-round ratio.
# Not the published benchmark (that is bench/run.sh); for ratios within one run while
# working on the hand-off. Needs root (Apache drops to www-data) and a built module.
#
# Usage: sudo bash bench/quick.sh      Env: ROUNDS=3 DURATION=5s CONNS=32 THREADS=1 KEEP=0 HOOK=''
#        EXTRA_CONF='TSGIScriptReloading Off' (appended to httpd.conf)
#        MODULE=/path/to/mod_tsgi.so (default: the LoadModule line of `tsgi module-config`)
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=bench/lib.sh
. "$REPO/bench/lib.sh"
ROUNDS="${ROUNDS:-3}" DURATION="${DURATION:-5s}" CONNS="${CONNS:-32}" THREADS="${THREADS:-1}"
APACHE=/usr/sbin/apache2 MODDIR=/usr/lib/apache2/modules
LOADMODULE="${MODULE:+LoadModule tsgi_module $MODULE}"; [ -n "$LOADMODULE" ] || LOADMODULE="$(cd "$REPO" && node bin/tsgi.js module-config | grep -m1 "^LoadModule")"
ROOT="$(mktemp -d /tmp/tsgi-quick.XXXXXX)"; chmod 755 "$ROOT"; mkdir -p "$ROOT/htdocs"
printf 'Hello World!\n' >"$ROOT/htdocs/hello.txt"; chmod -R a+rX "$ROOT"
PORT="$(free_port)"
{
  apache_base_conf "$ROOT" "$PORT" "$ROOT/htdocs"
  cat <<CONF
$LOADMODULE
TSGIScriptAlias /tsgi $REPO/examples/hello.tsgi
${EXTRA_CONF:-}
CONF
} >"$ROOT/httpd.conf"
stop() {
  local p=""; [ -f "$ROOT/httpd.pid" ] && p="$(cat "$ROOT/httpd.pid")"
  "$APACHE" -d "$ROOT" -f "$ROOT/httpd.conf" -k stop >/dev/null 2>&1 || true
  if [ -n "$p" ]; then for _ in $(seq 1 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done; fi
  if [ "${KEEP:-0}" != 1 ]; then rm -rf "$ROOT"; else echo "kept $ROOT" >&2; fi
}
trap stop EXIT
"$APACHE" -d "$ROOT" -f "$ROOT/httpd.conf" -k start
for _ in $(seq 1 100); do [ -s "$ROOT/httpd.pid" ] && break; sleep 0.1; done
S="http://127.0.0.1:$PORT/hello.txt" T="http://127.0.0.1:$PORT/tsgi/"
for _ in $(seq 1 50); do [ "$(curl -s "$T")" = "Hello World!" ] && break; sleep 0.1; done
[ "$(curl -s "$T")" = "Hello World!" ] || { cat "$ROOT/error.log" >&2; exit 1; }
echo "apache pid $(cat "$ROOT/httpd.pid"), port $PORT" >&2
wrk -t"$THREADS" -c"$CONNS" -d2s "$S" >/dev/null; wrk -t"$THREADS" -c"$CONNS" -d2s "$T" >/dev/null
# HOOK='cmd': run cmd instead of the rounds (with S, T, APACHE_PID exported), e.g. to profile.
if [ -n "${HOOK:-}" ]; then S="$S" T="$T" APACHE_PID="$(cat "$ROOT/httpd.pid")" bash -c "$HOOK"; exit; fi
rps() { wrk -t"$THREADS" -c"$CONNS" -d"$DURATION" "$1" | awk '/^Requests\/sec:/{print $2}'; }
for r in $(seq 1 "$ROUNDS"); do
  s="$(rps "$S")"; t="$(rps "$T")"
  awk -v r="$r" -v s="$s" -v t="$t" 'BEGIN{printf "round %d: static %.0f  tsgi %.0f  ratio %.3f\n", r, s, t, t/s}'
done
if grep -Eq '\[(\w+:)?(emerg|alert|crit|error)\]' "$ROOT/error.log"; then grep -E '\[(\w+:)?(emerg|alert|crit|error)\]' "$ROOT/error.log" | head -5 >&2; fi
