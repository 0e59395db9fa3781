#!/usr/bin/env bash
# Builds kubelet for the tests that run a real kubelet against the test
# containerd (internal/testutil/kubelettest). kubelet is not packaged in Debian
# 12, so it is built from k8s.io/kubernetes through the wrapper module in
# scripts/deps/kubelet/, which pins every k8s.io/* staging module (see its
# go.mod). Idempotent: the binary's path carries the pinned version, and an
# existing one is kept. Takes ~15 minutes on 2 cores the first time.
set -euo pipefail

log() { printf 'deps/kubelet: %s\n' "$*"; }

here=$(cd "$(dirname "$0")" && pwd)
mod=$here/kubelet
# The version is read from the wrapper's go.mod so the pin lives in one place.
version=$(awk '{ sub(/^require[ \t]+/, "") } $1 == "k8s.io/kubernetes" && $2 ~ /^v/ { print $2 }' "$mod/go.mod")
[[ -n $version ]] || { echo "deps/kubelet: no k8s.io/kubernetes version in $mod/go.mod" >&2; exit 1; }
dir=${CONTAINERDSNOOP_TEST_LIBDIR:-/usr/local/lib/containerdsnoop-test}
bin=$dir/kubelet-$version

if [[ -x $bin ]]; then
	log "kubelet $version present at $bin"
	exit 0
fi

GO=${GO:-go}
mkdir -p "$dir"
tmp=$(mktemp "$dir/.kubelet-$version.XXXXXX")
trap 'rm -f "$tmp"' EXIT
log "building kubelet $version into $bin (slow the first time)"
start=$SECONDS
# -mod=mod would let the build rewrite go.sum; readonly makes a stale go.sum
# an error here rather than a silent change.
(cd "$mod" && CGO_ENABLED=0 GOFLAGS=-mod=readonly "$GO" build -trimpath -buildvcs=false \
	-ldflags '-s -w' -o "$tmp" k8s.io/kubernetes/cmd/kubelet)
chmod 755 "$tmp"
mv -f "$tmp" "$bin"
trap - EXIT
log "built $bin in $((SECONDS - start))s"
