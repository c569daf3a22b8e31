#!/usr/bin/env bash
# Everything mod_tsgi's native build needs, installed idempotently (DESIGN.md §5,
# shared/reference/embedding.md §3):
#
#   scripts/setup-native.sh        (as root on Debian 12; a second run only checks)
#
#   1. Debian packages, installed with apt-get when missing (apt-get update runs only
#      when an install cannot be done without it): apache2 and apache2-dev (apxs, the
#      httpd and APR headers), cmake, g++, make, libuv1-dev (uv.h matching the libuv
#      libnode uses) and libnode108's shared-library dependencies (libc-ares2, ...).
#      Installing apache2 starts the system service; it is stopped again, the project
#      only ever runs private instances.
#   2. libnode108 + libnode-dev (Node 18.20.4) into the private prefix build/libnode/ by
#      `apt-get download` + `dpkg -x`. Not `apt-get install`: node-acorn depends on
#      `nodejs:any`, which this machine's NodeSource Node does not satisfy, and
#      libnode-dev's /usr/include/node would clash with Node 20's headers.
#   3. node-acorn, node-cjs-module-lexer, node-undici extracted into / : libnode loads
#      these "externalized builtins" from absolute /usr/share/nodejs/... paths at start-up
#      and aborts if one is missing.
#
# scripts/node18.sh does the same kind of thing for a Node 18 *executable* in
# build/node18/; this script keeps its own prefix and shares nothing with it but the
# /usr/share/nodejs files of step 3 (identical packages, so either may extract them).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PREFIX="$ROOT/build/libnode"
DEBS="$PREFIX/debs"
STAMP="$PREFIX/.complete"

APT_PACKAGES=(
  apache2 apache2-dev cmake g++ make libuv1-dev
  # libnode108's own dependencies (its Depends: line, less the node-* ones of step 3)
  libc-ares2 libbrotli1 libicu72 libnghttp2-14 libssl3 zlib1g libuv1
)
say() { printf 'setup-native: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }
# shellcheck source=lib/debian-libnode.sh
source "$ROOT/scripts/lib/debian-libnode.sh"

missing_packages() {
  local p status
  for p in "${APT_PACKAGES[@]}"; do
    status=$(dpkg-query -W -f='${db:Status-Abbrev}' "$p" 2>/dev/null || true)
    [[ "$status" == ii* ]] || echo "$p"
  done
}
libnode_lib() { compgen -G "$PREFIX/usr/lib/*/libnode.so.108" | head -n 1 || true; }
prefix_complete() {
  [[ -f "$STAMP" && -f "$PREFIX/usr/include/node/node.h" && -f "$PREFIX/usr/include/node/node_api.h" && -n "$(libnode_lib)" ]]
}
all_done() { [[ -z "$(missing_packages)" ]] && prefix_complete && builtins_present; }

# Fast path: nothing to do.
if all_done; then exit 0; fi

command -v apt-get >/dev/null && command -v dpkg >/dev/null || die "needs a Debian system (apt-get, dpkg)"
[[ "$(id -u)" == 0 ]] || die "missing pieces need root to install; run: sudo $0"

mkdir -p "$DEBS"
exec 9>"$PREFIX/.lock"
flock 9 # one setup at a time; a concurrent run waits, then finds the work done
if all_done; then exit 0; fi

export DEBIAN_FRONTEND=noninteractive

# 1. Debian packages.
mapfile -t MISSING < <(missing_packages)
if [[ ${#MISSING[@]} -gt 0 ]]; then
  say "apt-get install ${MISSING[*]}"
  had_apache=0
  [[ -x /usr/sbin/apache2 ]] && had_apache=1
  if ! apt-get install -y -qq --no-install-recommends "${MISSING[@]}" >&2; then
    apt_update
    apt-get install -y -qq --no-install-recommends "${MISSING[@]}" >&2 || die "apt-get install ${MISSING[*]} failed"
  fi
  if [[ $had_apache == 0 ]]; then
    service apache2 stop >/dev/null 2>&1 || true
  fi
  mapfile -t STILL < <(missing_packages)
  [[ ${#STILL[@]} -eq 0 ]] || die "still not installed: ${STILL[*]}"
fi

# 2. libnode108 + libnode-dev, one version, into the private prefix.
VERSION=$(libnode_version)

download "libnode108=$VERSION" "libnode-dev=$VERSION" "${LIBNODE_BUILTIN_PACKAGES[@]}"

if ! prefix_complete || [[ "$(cat "$STAMP" 2>/dev/null)" != "$VERSION" ]]; then
  rm -rf "$PREFIX/usr"
  for p in libnode108 libnode-dev; do
    say "dpkg -x $p -> $PREFIX"
    dpkg -x "$(deb "$p")" "$PREFIX"
  done
fi
LIBNODE=$(libnode_lib)
[[ -n "$LIBNODE" ]] || die "libnode.so.108 not found under $PREFIX/usr/lib after extraction"
[[ -f "$PREFIX/usr/include/node/node.h" ]] || die "node.h not found under $PREFIX/usr/include/node after extraction"
NOTFOUND=$(ldd "$LIBNODE" | awk '/not found/ { print $1 }')
[[ -z "$NOTFOUND" ]] || die "libnode.so.108 needs libraries this system lacks: $NOTFOUND"

# 3. The externalized builtins, where libnode looks for them.
extract_builtins

echo "$VERSION" >"$STAMP"
say "ready: $LIBNODE (libnode $VERSION), headers in $PREFIX/usr/include/node"
