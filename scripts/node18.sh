#!/usr/bin/env bash
# Provides a Node 18 executable (Debian bookworm's nodejs 18.20.x on libnode108, the
# runtime the embedded Apache mode will use) beside this machine's own Node, without
# installing Debian's nodejs package or touching /usr/bin/node. See DESIGN.md §5.
#
#   scripts/node18.sh      prints the path of build/node18/bin/node18
#
# What it does (each step only when needed; a second run only checks and prints):
#   1. apt-get download nodejs + libnode108 (the same version) into build/node18/debs,
#      running apt-get update only if the download cannot be done without it;
#   2. dpkg -x both into build/node18 (a private prefix: Debian's nodejs cannot be
#      apt-installed beside NodeSource's, and its files would clash);
#   3. dpkg -x node-acorn, node-cjs-module-lexer, node-undici into / : libnode loads its
#      "externalized builtins" from absolute /usr/share/nodejs/... paths at start-up and
#      aborts if any of them is missing (needs root);
#   4. shared libraries node needs that the system lacks (checked with ldd: libc-ares2
#      here; libuv1 and others if absent) are extracted into the private prefix too;
#   5. writes the wrapper build/node18/bin/node18, which sets LD_LIBRARY_PATH and execs
#      the extracted usr/bin/node, and checks that it reports v18.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PREFIX="$ROOT/build/node18"
DEBS="$PREFIX/debs"
WRAPPER="$PREFIX/bin/node18"
STAMP="$PREFIX/.complete"
say() { printf 'node18.sh: %s\n' "$*" >&2; }
die() { say "$*"; exit 1; }
# shellcheck source=lib/debian-libnode.sh
source "$ROOT/scripts/lib/debian-libnode.sh"

# Fast path: everything was done before and is still there.
if [[ -f "$STAMP" && -x "$WRAPPER" ]] && builtins_present; then
  echo "$WRAPPER"
  exit 0
fi

command -v apt-get >/dev/null && command -v dpkg >/dev/null || die "needs a Debian system (apt-get, dpkg)"

mkdir -p "$PREFIX" "$DEBS"
exec 9>"$PREFIX/.lock"
flock 9 # one setup at a time; a concurrent run waits, then finds the work done
if [[ -f "$STAMP" && -x "$WRAPPER" ]] && builtins_present; then
  echo "$WRAPPER"
  exit 0
fi

# 1. nodejs 18 and its libnode108, same version. `apt-get download nodejs` alone would pick
#    the installed (NodeSource, 20.x) version, which no repository has.
VERSION=$(libnode_version)
download "nodejs=$VERSION" "libnode108=$VERSION" "${LIBNODE_BUILTIN_PACKAGES[@]}"

# 2. The private prefix.
if [[ ! -x "$PREFIX/usr/bin/node" ]] || ! compgen -G "$PREFIX/usr/lib/*/libnode.so.108" >/dev/null; then
  say "dpkg -x nodejs libnode108 -> $PREFIX"
  dpkg -x "$(deb nodejs)" "$PREFIX"
  dpkg -x "$(deb libnode108)" "$PREFIX"
fi
LIBNODE=$(compgen -G "$PREFIX/usr/lib/*/libnode.so.108" | head -n 1) || true
[[ -n "$LIBNODE" ]] || die "libnode.so.108 not found under $PREFIX/usr/lib after extraction"
LIBDIR=$(dirname "$LIBNODE")

# 3. The externalized builtins, where libnode looks for them.
extract_builtins

# 4. Shared libraries the system lacks go into the private prefix too.
lib_package() {
  case "$1" in
    libcares.so.*) echo libc-ares2 ;;
    libuv.so.*) echo libuv1 ;;
    libicu*.so.72) echo libicu72 ;;
    libnghttp2.so.14) echo libnghttp2-14 ;;
    libbrotli*.so.1) echo libbrotli1 ;;
    libssl.so.3 | libcrypto.so.3) echo libssl3 ;;
    libz.so.1) echo zlib1g ;;
    *) return 1 ;;
  esac
}
missing_libs() {
  LD_LIBRARY_PATH="$LIBDIR" ldd "$PREFIX/usr/bin/node" | awk '/not found/ { print $1 }'
}
MISSING=$(missing_libs)
if [[ -n "$MISSING" ]]; then
  pkgs=()
  for lib in $MISSING; do
    p=$(lib_package "$lib") || die "node 18 needs $lib and this script does not know its package; install it and run again"
    [[ " ${pkgs[*]-} " == *" $p "* ]] || pkgs+=("$p")
  done
  download "${pkgs[@]}"
  for p in "${pkgs[@]}"; do
    say "dpkg -x $p -> $PREFIX (provides a missing shared library)"
    dpkg -x "$(deb "$p")" "$PREFIX"
  done
  MISSING=$(missing_libs)
  [[ -z "$MISSING" ]] || die "still missing after extraction: $MISSING"
fi

# 5. The wrapper.
mkdir -p "$PREFIX/bin"
# Paths relative to the wrapper, so the checkout can move.
cat >"$WRAPPER.tmp" <<EOF
#!/bin/sh
# Debian bookworm's Node $VERSION from a private prefix (written by scripts/node18.sh).
prefix=\$(cd "\$(dirname "\$0")/.." && pwd)
LD_LIBRARY_PATH="\$prefix/${LIBDIR#"$PREFIX/"}\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
export LD_LIBRARY_PATH
exec "\$prefix/usr/bin/node" "\$@"
EOF
chmod 755 "$WRAPPER.tmp"
mv "$WRAPPER.tmp" "$WRAPPER"
GOT=$("$WRAPPER" --version) || die "$WRAPPER --version failed"
[[ "$GOT" == v18.* ]] || die "$WRAPPER --version printed $GOT, expected v18.x"
"$WRAPPER" -e 'require("node:fs"); fetch' || die "$WRAPPER cannot run a script"
echo "$VERSION" >"$STAMP"
say "ready: $WRAPPER ($GOT)"
echo "$WRAPPER"
