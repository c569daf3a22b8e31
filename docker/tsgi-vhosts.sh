#!/usr/bin/env bash
# docker/tsgi-vhosts.sh: one Apache VirtualHost per app, for the tsgi image.
#
# Every /srv/apps/<name>/app.tsgi becomes an app served at http://<name>.<domain>/
# (TSGIScriptAlias / at the root of its own VirtualHost), written to
# /etc/apache2/tsgi-apps/app-<name>.conf from docker/vhost.conf.template. An app
# directory that holds a vhost.conf of its own gets that file instead, unchanged.
# 000-default.conf is written first: a catch-all VirtualHost answering 404 for any
# other Host. Files from an earlier run are removed first, so apps that went away go.
#
# The entrypoint (docker/entrypoint.sh) runs it at every container start; the image
# build runs it once with no apps. Environment (defaults in brackets):
#   TSGI_DOMAIN        [localhost]               ServerName is <name>.$TSGI_DOMAIN
#   TSGI_PORT          [80]                      the port of the VirtualHosts
#   TSGI_APPS_DIR      [/srv/apps]
#   TSGI_VHOSTS_DIR    [/etc/apache2/tsgi-apps]
# (the last three exist for test/integration/docker-layout.test.ts).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
APPS_DIR="${TSGI_APPS_DIR:-/srv/apps}"
OUT_DIR="${TSGI_VHOSTS_DIR:-/etc/apache2/tsgi-apps}"
PORT="${TSGI_PORT:-80}"
DOMAIN="${TSGI_DOMAIN:-localhost}"

say() { printf 'tsgi-vhosts: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

# Values end up in httpd.conf and in a sed replacement: allow no quoting, spaces,
# '|', '&' or '\' at all.
[[ "$PORT" =~ ^[0-9]{1,5}$ ]] || die "TSGI_PORT must be a port number, got '$PORT'"
[[ "$DOMAIN" =~ ^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$ ]] || die "TSGI_DOMAIN must be a host name, got '$DOMAIN'"
[[ "$APPS_DIR" =~ ^/[A-Za-z0-9._/-]*$ ]] || die "TSGI_APPS_DIR must be an absolute path of [A-Za-z0-9._/-], got '$APPS_DIR'"

render() { # template name server-name app-dir
  sed -e "s|@APP_NAME@|$2|g" -e "s|@SERVER_NAME@|$3|g" -e "s|@APP_DIR@|$4|g" -e "s|@PORT@|$PORT|g" "$1"
}

mkdir -p "$OUT_DIR"
rm -f "$OUT_DIR"/*.conf
render "$HERE/default-vhost.conf.template" "" "" "" >"$OUT_DIR/000-default.conf"

count=0
shopt -s nullglob
for script in "$APPS_DIR"/*/app.tsgi; do
  dir="${script%/app.tsgi}"
  name="${dir##*/}"
  if [[ ! "$name" =~ ^[a-z0-9]([a-z0-9-]*[a-z0-9])?$ ]]; then
    say "skipping $dir: an app's directory name is its host name label ([a-z0-9-], not starting or ending with '-')"
    continue
  fi
  out="$OUT_DIR/app-$name.conf"
  if [[ -f "$dir/vhost.conf" ]]; then
    cp "$dir/vhost.conf" "$out"
    say "$name: $dir/vhost.conf (provided)"
  else
    render "$HERE/vhost.conf.template" "$name" "$name.$DOMAIN" "$dir" >"$out"
    say "$name: http://$name.$DOMAIN:$PORT/ -> $script"
  fi
  count=$((count + 1))
done
[[ $count -gt 0 ]] || say "no apps: mount one at $APPS_DIR/<name>/app.tsgi (every Host gets 404 until then)"
