#!/usr/bin/env bash
# Builds crictl (sigs.k8s.io/cri-tools), pinned, from the Go module proxy (the
# only registry CI reaches), for the e2e tests that drive containerd's CRI
# with the client people really run. Installed at a fixed versioned path, not
# in PATH: the tests look for it there. Idempotent: skipped when that
# version is already built.
set -euo pipefail

VERSION=v1.37.0
PREFIX=${PREFIX:-/usr/local/lib/containerdsnoop-test}
GO=${GO:-go}

log() { printf 'deps/crictl: %s\n' "$*"; }

dir=$PREFIX/crictl-$VERSION
if [[ -x $dir/crictl ]]; then
	log "crictl $VERSION already built in $dir"
	exit 0
fi
log "building crictl $VERSION into $dir (once)"
rm -rf "$dir.tmp"
mkdir -p "$dir.tmp"
GOBIN="$dir.tmp" GOFLAGS="${GOFLAGS:-} -buildvcs=false" CGO_ENABLED=0 \
	"$GO" install -trimpath -ldflags "-s -w -X sigs.k8s.io/cri-tools/pkg/version.Version=$VERSION" \
	"sigs.k8s.io/cri-tools/cmd/crictl@$VERSION"
rm -rf "$dir"
mv "$dir.tmp" "$dir"
log "crictl $VERSION in $dir"
