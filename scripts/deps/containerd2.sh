#!/usr/bin/env bash
# Builds containerd 2.x and its runc shim (github.com/containerd/containerd/v2),
# pinned, from the Go module proxy (the only registry CI reaches), so that the
# e2e tests run against containerd 2 (config version 3, task API v3, transfer
# service) besides Debian's 1.6. Static (CGO_ENABLED=0), without the
# snapshotters that need cgo or tools the tests do not use. Installed at a
# fixed versioned path, never in PATH (it would shadow Debian's containerd).
# Idempotent: skipped when that version is already built.
set -euo pipefail

VERSION=v2.4.2
PREFIX=${PREFIX:-/usr/local/lib/containerdsnoop-test}
GO=${GO:-go}
TAGS="no_btrfs no_devmapper no_zfs no_aufs no_dynamic_plugins"

log() { printf 'deps/containerd2: %s\n' "$*"; }

dir=$PREFIX/containerd-$VERSION
if [[ -x $dir/containerd && -x $dir/containerd-shim-runc-v2 ]]; then
	log "containerd and containerd-shim-runc-v2 $VERSION already built in $dir"
	exit 0
fi
log "building containerd and containerd-shim-runc-v2 $VERSION into $dir (once)"
rm -rf "$dir.tmp"
mkdir -p "$dir.tmp"
GOBIN="$dir.tmp" GOFLAGS="${GOFLAGS:-} -buildvcs=false" CGO_ENABLED=0 \
	"$GO" install -trimpath -tags "$TAGS" \
	-ldflags "-s -w -X github.com/containerd/containerd/v2/version.Version=$VERSION" \
	"github.com/containerd/containerd/v2/cmd/containerd@$VERSION" \
	"github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2@$VERSION"
rm -rf "$dir"
mv "$dir.tmp" "$dir"
log "containerd and containerd-shim-runc-v2 $VERSION in $dir"
