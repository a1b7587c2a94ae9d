#!/usr/bin/env bash
# Builds the real Kubernetes binaries (control plane, kubelet, kubeadm,
# kubectl), etcd and the in-memory CRI the kubelets run on, from the tools
# module (e2e/tools/k8s) into a cache directory keyed by version and by the
# tools module's go.sum, so they are rebuilt only when a version changes
# (fake-cri, our own code, also when its source changes).
# Prints the bin directory on the last line of stdout.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
tools="$here/tools/k8s"
k8s_version=v1.37.2
etcd_version=v3.7.0
cache_root=${ROTATE_E2E_CACHE:-/var/cache/rotate-e2e}
# go.sum pins every dependency version: the binaries change only with it.
key=$(sha256sum < "$tools/go.sum" | cut -c1-12)
bin="$cache_root/k8s-$k8s_version-etcd-$etcd_version-$key/bin"
want=(kube-apiserver kube-controller-manager kube-scheduler kubeadm kubectl kubelet etcd fake-cri)
# fake-cri is our own source: rebuilt when it changes (stamp file).
fake_sum=$(cat "$tools"/cmd/fake-cri/*.go "$tools/go.sum" | sha256sum | cut -c1-16)
find_missing() {
  missing=()
  for b in "${want[@]}"; do [ -x "$bin/$b" ] || missing+=("$b"); done
  if [ -x "$bin/fake-cri" ] && [ "$(cat "$bin/.fake-cri.sum" 2>/dev/null)" != "$fake_sum" ]; then missing+=(fake-cri); fi
}
find_missing
if [ ${#missing[@]} -eq 0 ]; then echo "$bin"; exit 0; fi
# One build at a time per cache: a second caller waits for the first and
# then finds the binaries in place.
mkdir -p "$cache_root"
exec 9>"$cache_root/.build.lock"
if ! flock -n 9; then
  echo "another build holds $cache_root/.build.lock, waiting" >&2
  flock 9
fi
find_missing
if [ ${#missing[@]} -eq 0 ]; then echo "$bin"; exit 0; fi
mkdir -p "$bin.partial"
major=${k8s_version#v}; major=${major%%.*}
minor=${k8s_version#v*.}; minor=${minor%%.*}
ldflags="-s -w -X k8s.io/component-base/version.gitVersion=$k8s_version -X k8s.io/component-base/version.gitMajor=$major -X k8s.io/component-base/version.gitMinor=$minor -X k8s.io/component-base/version.gitTreeState=clean -X k8s.io/client-go/pkg/version.gitVersion=$k8s_version -X k8s.io/client-go/pkg/version.gitMajor=$major -X k8s.io/client-go/pkg/version.gitMinor=$minor"
cd "$tools"
for b in "${missing[@]}"; do
  start=$(date +%s)
  case $b in
    etcd) pkg=go.etcd.io/etcd/server/v3 ;;
    fake-cri) pkg=rotate.local/e2e/tools/k8s/cmd/fake-cri ;;
    *) pkg=k8s.io/kubernetes/cmd/$b ;;
  esac
  echo "building $b ($pkg)" >&2
  if [ "$b" = etcd ] || [ "$b" = fake-cri ]; then
    CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$bin.partial/$b" "$pkg" >&2
  else
    CGO_ENABLED=0 go build -trimpath -ldflags "$ldflags" -o "$bin.partial/$b" "$pkg" >&2
  fi
  echo "built $b in $(( $(date +%s) - start ))s" >&2
done
mkdir -p "$bin"
for b in "${missing[@]}"; do mv "$bin.partial/$b" "$bin/$b"; done
echo "$fake_sum" > "$bin/.fake-cri.sum"
rmdir "$bin.partial" 2>/dev/null || true
echo "$bin"
