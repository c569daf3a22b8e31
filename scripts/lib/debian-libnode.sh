# Shared by scripts/node18.sh and scripts/setup-native.sh: bringing Debian bookworm's
# libnode108 (Node 18.20) onto a machine whose /usr/bin/node is another Node, without
# `apt-get install` (libnode108 depends on nodejs:any, which conflicts with it).
# Sourced, not run. The caller sets DEBS (where .deb files are kept) and defines
# say/die before sourcing.

# The files libnode108 loads from / at start-up (strings libnode.so.108 | grep
# /usr/share/nodejs); without any of them it aborts ("Cannot load externalized builtin").
LIBNODE_BUILTINS=(
  /usr/share/nodejs/acorn/dist/acorn.js
  /usr/share/nodejs/acorn-walk/dist/walk.js
  /usr/share/nodejs/cjs-module-lexer/lexer.js
  /usr/share/nodejs/cjs-module-lexer/dist/lexer.js
  /usr/share/nodejs/undici/undici-fetch.js
)
# The packages that provide them.
LIBNODE_BUILTIN_PACKAGES=(node-acorn node-cjs-module-lexer node-undici)

builtins_present() {
  local f
  for f in "${LIBNODE_BUILTINS[@]}"; do [[ -f "$f" ]] || return 1; done
}

APT_UPDATED=0
apt_update() {
  [[ $APT_UPDATED == 1 ]] && return 0
  [[ "$(id -u)" == 0 ]] || die "apt-get update is needed, and that needs root; run: sudo $0"
  say "apt-get update"
  DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2 || die "apt-get update failed"
  APT_UPDATED=1
}

candidate() { apt-cache policy "$1" 2>/dev/null | awk '/Candidate:/ { print $2 }'; }

# The libnode108 version the apt sources offer (updating the lists once if they have
# none); dies unless it is an 18.x.
libnode_version() {
  local v
  v=$(candidate libnode108)
  if [[ -z "$v" || "$v" == "(none)" ]]; then
    apt_update
    v=$(candidate libnode108)
  fi
  [[ -n "$v" && "$v" != "(none)" ]] || die "no libnode108 package in the apt sources (this needs Debian bookworm's main archive)"
  [[ "$v" == 18.* ]] || die "libnode108 candidate is $v, expected 18.x"
  echo "$v"
}

# Downloads packages (name or name=version) into $DEBS unless a .deb for them is there.
download() {
  local want=() spec name ver
  for spec in "$@"; do
    name="${spec%%=*}"
    ver=""
    [[ "$spec" == *=* ]] && ver="${spec#*=}"
    # .deb names carry the version with ':' (epoch) written as %3a.
    if compgen -G "$DEBS/${name}_${ver//:/%3a}*.deb" >/dev/null; then continue; fi
    want+=("$spec")
  done
  [[ ${#want[@]} == 0 ]] && return 0
  say "apt-get download ${want[*]}"
  # The download sandbox user (_apt) may not be able to write into the repo: download as ourselves.
  if ! (cd "$DEBS" && apt-get download -qq -o APT::Sandbox::User="$(id -un)" "${want[@]}" >&2); then
    apt_update
    (cd "$DEBS" && apt-get download -qq -o APT::Sandbox::User="$(id -un)" "${want[@]}" >&2) || die "apt-get download ${want[*]} failed"
  fi
}

# The newest downloaded .deb of a package.
deb() {
  local f
  f=$(compgen -G "$DEBS/${1}_*.deb" | sort | tail -n 1) || true
  [[ -n "$f" ]] || die "no .deb for $1 in $DEBS"
  echo "$f"
}

# Extracts the builtin packages into / (they must already be downloaded) unless present.
extract_builtins() {
  builtins_present && return 0
  [[ "$(id -u)" == 0 ]] || die "libnode108 needs ${LIBNODE_BUILTIN_PACKAGES[*]} extracted into /usr/share/nodejs, which needs root; run: sudo $0"
  local p
  for p in "${LIBNODE_BUILTIN_PACKAGES[@]}"; do
    say "dpkg -x $p -> /"
    dpkg -x "$(deb "$p")" /
  done
  builtins_present || die "builtins still missing after extracting ${LIBNODE_BUILTIN_PACKAGES[*]}"
}
