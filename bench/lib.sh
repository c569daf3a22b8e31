# bench/lib.sh: the helpers bench/run.sh, bench/webservers.sh and bench/daemon.sh share.
# Sourced, not run. Callers set TMP (their temp dir) before using pids_under_tmp.

log() { printf '[bench %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }

# Processes started from the run's temp dir (its servers and backends), by command line.
pids_under_tmp() { pgrep -f -- "$TMP/" 2>/dev/null || true; }

# Exact body (command substitution would strip the trailing newline).
fetch_body() { local b; b="$(curl -s --max-time 5 "$1"; echo x)" || true; printf '%s' "${b%x}"; }

free_port() {
  node -e 'const s=require("net").createServer();s.listen(0,"127.0.0.1",()=>{console.log(s.address().port);s.close()})'
}

# % of all vCPUs busy over one second.
cpu_busy_pct() {
  local a b
  a="$(awk '/^cpu /{print $2+$3+$4+$7+$8+$9, $5+$6}' /proc/stat)"; sleep 1
  b="$(awk '/^cpu /{print $2+$3+$4+$7+$8+$9, $5+$6}' /proc/stat)"
  awk -v a="$a" -v b="$b" 'BEGIN{split(a,x," "); split(b,y," "); bu=y[1]-x[1]; id=y[2]-x[2]; printf "%.0f", (bu+id>0 ? 100*bu/(bu+id) : 0)}'
}

# A wrk latency ("850.00us", "1.20ms", "2.00s") in ms.
to_ms() { awk -v v="$1" 'BEGIN{ if (v ~ /us$/) { sub(/us$/,"",v); printf "%.3f", v/1000 } else if (v ~ /ms$/) { sub(/ms$/,"",v); printf "%.3f", v } else if (v ~ /s$/) { sub(/s$/,"",v); printf "%.3f", v*1000 } else print "nan" }'; }

# The base of every private Apache the benchmarks start, up to where each adds its own
# lines: $1 = ServerRoot, $2 = port, $3 = DocumentRoot, $4 = User/Group (default www-data);
# modules from $MODDIR. Nothing from /etc/apache2, no access log, and the event MPM with
# Debian's mpm_event.conf defaults and keep-alive unlimited (as in
# shared/reference/anchors-measured.md).
apache_base_conf() {
  local root="$1" port="$2" docroot="$3" user="${4:-www-data}"
  cat <<CONF
ServerRoot "$root"
DefaultRuntimeDir "$root"
PidFile "$root/httpd.pid"
Listen 127.0.0.1:$port
ServerName 127.0.0.1
LoadModule mpm_event_module $MODDIR/mod_mpm_event.so
LoadModule authz_core_module $MODDIR/mod_authz_core.so
LoadModule mime_module $MODDIR/mod_mime.so
LoadModule dir_module $MODDIR/mod_dir.so
LoadModule alias_module $MODDIR/mod_alias.so
User $user
Group $user
Mutex file:$root default
ErrorLog "$root/error.log"
LogLevel warn
TypesConfig /etc/mime.types
DocumentRoot "$docroot"
<Directory />
    AllowOverride None
</Directory>
StartServers 2
ServerLimit 16
ThreadLimit 64
ThreadsPerChild 25
MinSpareThreads 25
MaxSpareThreads 75
MaxRequestWorkers 150
MaxConnectionsPerChild 0
KeepAlive On
MaxKeepAliveRequests 0
KeepAliveTimeout 5
CONF
}
