#!/usr/bin/env bash
# Build the release: static binaries per platform (the tracer and its
# watchdog, internal/watchdog), packed with README.md and LICENSE as
# DIST/containerdsnoop-VERSION-linux-ARCH.tar.gz (one top-level directory
# of the same name), and DIST/sha256sums.txt over the tarballs.
#
#   scripts/release.sh                     (or: make release [VERSION=v1.2.3] [DIST=dir])
#
# VERSION   stamped into the binary (main.version) and the file names;
#           default: git describe --tags --always --dirty
# DIST      output directory (default dist/, relative to the repository root)
# PLATFORMS default "linux/amd64 linux/arm64"
# SOURCE_DATE_EPOCH, when set, is the mtime of every file in the tarballs,
#           which makes them byte-for-byte reproducible.
#
# The BPF objects are the committed ones (internal/bpf/snoop_*_bpfel.o): a
# release needs only Go, no clang.
set -euo pipefail
cd "$(dirname "$0")/.."

GO="${GO:-go}"
VERSION="${VERSION:-$(git describe --tags --always --dirty 2>/dev/null || echo dev)}"
DIST="${DIST:-dist}"
PLATFORMS="${PLATFORMS:-linux/amd64 linux/arm64}"

case $VERSION in
'' | *[!A-Za-z0-9._+~-]*)
	echo "release: VERSION '$VERSION' must be non-empty and contain only letters, digits and . _ + ~ -" >&2
	exit 2
	;;
esac

mkdir -p "$DIST"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

tar_opts=(--sort=name --owner=0 --group=0 --numeric-owner --format=gnu)
if [ -n "${SOURCE_DATE_EPOCH:-}" ]; then
	tar_opts+=(--mtime="@$SOURCE_DATE_EPOCH")
fi

tarballs=()
for p in $PLATFORMS; do
	os=${p%/*} arch=${p#*/}
	name="containerdsnoop-$VERSION-$os-$arch"
	stage="$work/$name"
	mkdir -p "$stage"
	echo "release: building $name" >&2
	CGO_ENABLED=0 GOOS=$os GOARCH=$arch "$GO" build -trimpath \
		-ldflags "-s -w -X main.version=$VERSION" \
		-o "$stage/containerdsnoop" ./cmd/containerdsnoop
	# Beside the tracer, which runs it with --yield-cpu (internal/watchdog).
	CGO_ENABLED=0 GOOS=$os GOARCH=$arch "$GO" build -trimpath -ldflags "-s -w" \
		-o "$stage/containerdsnoop-watchdog" ./cmd/containerdsnoop-watchdog
	install -m 0644 README.md LICENSE "$stage/"
	chmod 0755 "$stage" "$stage/containerdsnoop" "$stage/containerdsnoop-watchdog"
	tar "${tar_opts[@]}" -C "$work" -cf - "$name" | gzip -9n >"$DIST/$name.tar.gz"
	tarballs+=("$name.tar.gz")
done

(cd "$DIST" && sha256sum "${tarballs[@]}" >sha256sums.txt)
echo "release: $VERSION in $DIST:" >&2
(cd "$DIST" && cat sha256sums.txt) >&2
