#!/usr/bin/env bash
# Installs the host packages the e2e cluster needs (Debian): OpenSSH server
# (sshd runs inside every node), iproute2 (ip netns/veth/bridge) and
# util-linux (unshare, nsenter, mountpoint). Idempotent: installs only what
# is missing.
set -euo pipefail
need=()
[ -x /usr/sbin/sshd ] || need+=(openssh-server)
command -v ip >/dev/null 2>&1 || need+=(iproute2)
for t in unshare nsenter mountpoint; do
  command -v "$t" >/dev/null 2>&1 || { need+=(util-linux); break; }
done
if [ ${#need[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "ensure-deps: need root to install: ${need[*]}" >&2
  exit 1
fi
echo "ensure-deps: installing ${need[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
# Keep the package from starting a host-wide sshd: the harness runs its own
# sshd inside each node. policy-rc.d is removed again afterwards.
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
  chmod +x /usr/sbin/policy-rc.d
  trap 'rm -f /usr/sbin/policy-rc.d' EXIT
fi
apt-get install -y --no-install-recommends "${need[@]}" >&2 || {
  apt-get update >&2
  apt-get install -y --no-install-recommends "${need[@]}" >&2
}
