#!/usr/bin/env bash
# The system side of a build, the same on every machine that builds tsgi: CI (.ci/run)
# and the Docker image (docker/Dockerfile) both run exactly this script.
#
#   scripts/install-system.sh        (as root on Debian 12; a second run only checks)
#
#   1. The Debian packages the tests drive and the image serves with: apache2, lighttpd,
#      nginx-light, curl, ca-certificates. When one is missing: apt-get update, then
#      apt-get install of all of them (--no-install-recommends).
#   2. mod_tsgi's build prerequisites: scripts/setup-native.sh (apache2-dev, cmake,
#      libnode108 in the private prefix build/libnode/, libnode's builtins in /).
#   3. Installing the packages starts their system services (on a machine with a service
#      manager); they are stopped again: the tests only run private instances, and the
#      image starts Apache itself. Services are only touched when step 1 installed
#      something, so a run on a ready machine never stops anything.
#
# Idempotent: on a machine where everything is in place it checks and exits 0 in well
# under a second, as any user (test/integration/docker-layout.test.ts runs it).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PACKAGES=(apache2 lighttpd nginx-light curl ca-certificates)

say() { printf 'install-system: %s\n' "$*" >&2; }

missing_packages() {
  local p status
  for p in "${PACKAGES[@]}"; do
    status=$(dpkg-query -W -f='${db:Status-Abbrev}' "$p" 2>/dev/null || true)
    [[ "$status" == ii* ]] || echo "$p"
  done
}

mapfile -t MISSING < <(missing_packages)
INSTALLED=0
if [[ ${#MISSING[@]} -gt 0 ]]; then
  if [[ "$(id -u)" != 0 ]]; then
    say "error: missing Debian packages: ${MISSING[*]}; run as root: sudo $0"
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  say "apt-get update"
  apt-get update
  say "apt-get install ${PACKAGES[*]}"
  apt-get install -y --no-install-recommends "${PACKAGES[@]}"
  INSTALLED=1
fi

# mod_tsgi's build: apache2-dev, cmake, libnode108 in a private prefix, libnode's
# builtins (node-acorn & co.) in /. Idempotent on its own.
bash scripts/setup-native.sh

if [[ $INSTALLED == 1 ]]; then
  # Package installs start the system services; tests use private instances only.
  service apache2 stop >/dev/null 2>&1 || true
  service lighttpd stop >/dev/null 2>&1 || true
  service nginx stop >/dev/null 2>&1 || true
fi
