#!/usr/bin/env bash
# Installs the Debian packages `make test`, `make demo` and `make bench`
# need on this machine, and only those that are missing:
#   openssh-server  real sshd for the nodes tests and every e2e node
#   sudo            the nodes tests' non-root "become" user
#   openssl         pki tests cross-check with `openssl verify`
#   curl, procps    health gates run curl and pgrep/ps on control-plane nodes
#   iproute2, util-linux  network/mount namespaces of the e2e cluster
set -euo pipefail
declare -A pkg_for=(
  [/usr/sbin/sshd]=openssh-server [sudo]=sudo [openssl]=openssl [curl]=curl
  [pgrep]=procps [ip]=iproute2 [unshare]=util-linux [nsenter]=util-linux [timeout]=coreutils
)
need=()
for bin in "${!pkg_for[@]}"; do
  if [[ $bin == /* ]]; then [ -x "$bin" ] && continue; else command -v "$bin" >/dev/null 2>&1 && continue; fi
  need+=("${pkg_for[$bin]}")
done
[ ${#need[@]} -eq 0 ] && exit 0
mapfile -t need < <(printf '%s\n' "${need[@]}" | sort -u)
if [ "$(id -u)" -ne 0 ]; then
  echo "deps: need root to install: ${need[*]}" >&2
  exit 1
fi
echo "deps: installing ${need[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
# Do not let the openssh-server package start a host-wide sshd.
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
  chmod +x /usr/sbin/policy-rc.d
  trap 'rm -f /usr/sbin/policy-rc.d' EXIT
fi
apt-get update -qq >&2
apt-get install -y -qq --no-install-recommends "${need[@]}" >&2
