#!/usr/bin/env bash
# Puts the control-plane binaries envtest and the local demo need (etcd,
# kube-apiserver, kubectl) into bin/k8s, once.
#
# First it tries the standard setup-envtest release tarball of the pinned
# Kubernetes version (seconds on a machine with internet), installed only
# when its SHA-512 matches the one pinned in hack/envtest-checksums.sha512.
# When there is no pin for this platform, the download fails (no internet:
# the connect timeout is short) or the checksum differs, it builds the
# binaries from the Go module proxy instead: hack/tools pins
# k8s.io/kubernetes with every staging module replaced by its published
# version, and `go install` builds the commands (5-8 minutes on 2 cores).
# It says which of the two it did.
#
# Environment:
#   ENVTEST_ASSETS_DIR    where the binaries go (bin/k8s)
#   ENVTEST_DOWNLOAD      "false" skips the download and builds from source
#   ENVTEST_DOWNLOAD_URL  base URL of the release downloads (tests serve one on loopback)
#   ENVTEST_CHECKSUMS     the file of pinned SHA-512s (hack/envtest-checksums.sha512)
#   ENVTEST_SOURCE_BUILD_CMD
#                         tests only: a command run instead of the source build
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
dest=${ENVTEST_ASSETS_DIR:-$root/bin/k8s}
k8s_version=v1.37.2
stamp="$dest/.built-$k8s_version"
download_url=${ENVTEST_DOWNLOAD_URL:-https://github.com/kubernetes-sigs/controller-tools/releases/download}
checksums=${ENVTEST_CHECKSUMS:-$root/hack/envtest-checksums.sha512}

if [[ -f $stamp && -x $dest/etcd && -x $dest/kube-apiserver && -x $dest/kubectl ]]; then
  exit 0
fi

mkdir -p "$dest"
dest=$(cd "$dest" && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
start=$SECONDS

# platform prints the os-arch of this machine as the release files name it,
# or nothing when there is no release for it.
platform() {
  local os arch
  case "$(uname -s)" in
    Linux) os=linux ;;
    Darwin) os=darwin ;;
    *) return 0 ;;
  esac
  case "$(uname -m)" in
    x86_64 | amd64) arch=amd64 ;;
    aarch64 | arm64) arch=arm64 ;;
    *) return 0 ;;
  esac
  echo "$os-$arch"
}

sha512_of() {
  if command -v sha512sum >/dev/null; then
    sha512sum "$1" | cut -d' ' -f1
  else
    shasum -a 512 "$1" | cut -d' ' -f1
  fi
}

# download installs the release tarball, or prints why it did not and fails.
# It runs in a subshell (its output is the reason), so every step checks its
# own error: errexit does not apply there.
download() {
  local plat file want url got dir
  if [[ ${ENVTEST_DOWNLOAD:-true} == false ]]; then
    echo "ENVTEST_DOWNLOAD=false"
    return 1
  fi
  plat=$(platform)
  if [[ -z $plat ]]; then
    echo "no setup-envtest release for $(uname -s)/$(uname -m)"
    return 1
  fi
  file="envtest-$k8s_version-$plat.tar.gz"
  want=$(awk -v f="$file" '$1 !~ /^#/ && $2 == f { print $1 }' "$checksums" 2>/dev/null || true)
  if [[ ! $want =~ ^[0-9a-f]{128}$ ]]; then
    echo "no SHA-512 of $file pinned in ${checksums#"$root"/}: refusing to download what cannot be verified"
    return 1
  fi
  if ! command -v curl >/dev/null; then
    echo "curl is not installed"
    return 1
  fi
  url="$download_url/envtest-$k8s_version/$file"
  echo ">> Downloading $url" >&2
  # A short connect timeout, so that a machine without internet falls back
  # within seconds; a stalled transfer (under 10 KB/s for 30s) gives up too.
  if ! curl --fail --silent --show-error --location --connect-timeout 5 \
    --speed-limit 10240 --speed-time 30 --output "$tmp/$file" "$url" 2>"$tmp/curl.err"; then
    echo "download failed: $(tr '\n' ' ' <"$tmp/curl.err")"
    return 1
  fi
  got=$(sha512_of "$tmp/$file")
  if [[ $got != "$want" ]]; then
    echo "checksum mismatch for $file: got sha512 $got, pinned $want: refusing it"
    return 1
  fi
  # The release layout: controller-tools/envtest/{etcd,kube-apiserver,kubectl}.
  dir="$tmp/extract"
  mkdir -p "$dir"
  if ! tar -xzf "$tmp/$file" -C "$dir" 2>"$tmp/tar.err"; then
    echo "cannot unpack $file: $(tr '\n' ' ' <"$tmp/tar.err")"
    return 1
  fi
  for bin in etcd kube-apiserver kubectl; do
    if [[ ! -f $dir/controller-tools/envtest/$bin ]]; then
      echo "$file has no controller-tools/envtest/$bin"
      return 1
    fi
  done
  for bin in etcd kube-apiserver kubectl; do
    if ! { chmod +x "$dir/controller-tools/envtest/$bin" && mv "$dir/controller-tools/envtest/$bin" "$dest/$bin"; }; then
      echo "cannot install $bin into $dest"
      return 1
    fi
  done
}

build_from_source() {
  if [[ -n ${ENVTEST_SOURCE_BUILD_CMD:-} ]]; then
    echo ">> ENVTEST_SOURCE_BUILD_CMD replaces the source build (tests only)" >&2
    ENVTEST_ASSETS_DIR=$dest bash -c "$ENVTEST_SOURCE_BUILD_CMD"
    return
  fi

  echo ">> Building control-plane binaries $k8s_version (etcd, kube-apiserver, kubectl) into ${dest#"$root"/}" >&2
  echo ">> Cold builds take about 5-8 minutes on 2 cores; they are reused afterwards." >&2
  cd "$root/hack/tools"
  local etcd_version version_ldflags
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
}

if reason=$(download); then
  echo ">> Installed the setup-envtest binaries $k8s_version (SHA-512 verified) into ${dest#"$root"/} in $((SECONDS - start))s" >&2
  echo downloaded >"$stamp"
else
  echo ">> Not using the setup-envtest download ($reason): building from source" >&2
  build_from_source
  echo ">> Control-plane binaries built from source in $((SECONDS - start))s" >&2
  echo source >"$stamp"
fi
