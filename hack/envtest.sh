#!/usr/bin/env bash
# Builds the control-plane binaries envtest and the local demo need (etcd,
# kube-apiserver, kubectl) from the Go module proxy into bin/k8s, once.
# setup-envtest's download site is unreachable here, so hack/tools pins
# k8s.io/kubernetes with every staging module replaced by its published
# version, and `go install` builds the commands.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
dest=${ENVTEST_ASSETS_DIR:-$root/bin/k8s}
k8s_version=v1.37.2
stamp="$dest/.built-$k8s_version"

if [[ -f $stamp && -x $dest/etcd && -x $dest/kube-apiserver && -x $dest/kubectl ]]; then
  exit 0
fi

echo ">> Building control-plane binaries $k8s_version (etcd, kube-apiserver, kubectl) into ${dest#"$root"/}" >&2
echo ">> Cold builds take about 5-8 minutes on 2 cores; they are reused afterwards." >&2
mkdir -p "$dest"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
start=$SECONDS

cd "$root/hack/tools"
etcd_version=$(go list -m -f '{{.Version}}' go.etcd.io/etcd/server/v3)
version_ldflags="-X k8s.io/component-base/version.gitVersion=$k8s_version -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=37 -X k8s.io/component-base/version.gitTreeState=clean"

echo ">>   etcd $etcd_version" >&2
GOBIN=$tmp go install go.etcd.io/etcd/server/v3
mv "$tmp/server" "$dest/etcd"

echo ">>   kube-apiserver (the long one)" >&2
GOBIN=$tmp go install -ldflags "$version_ldflags" k8s.io/kubernetes/cmd/kube-apiserver
mv "$tmp/kube-apiserver" "$dest/kube-apiserver"

echo ">>   kubectl" >&2
GOBIN=$tmp go install -ldflags "$version_ldflags" k8s.io/kubernetes/cmd/kubectl
mv "$tmp/kubectl" "$dest/kubectl"

touch "$stamp"
echo ">> Control-plane binaries ready in $((SECONDS - start))s" >&2
