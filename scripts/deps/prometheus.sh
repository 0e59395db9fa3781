#!/usr/bin/env bash
# Builds the Prometheus server and promtool, pinned, from the Go module proxy
# (the only registry CI reaches), for the metrics tests: promtool checks the
# tracer's /metrics page, and the e2e test has a real Prometheus scrape the
# tracer and answers PromQL. Idempotent: a build is kept under $PREFIX keyed by
# the pinned version, and only the symlinks in $BINDIR are refreshed.
#
# remove_all_sd leaves out every service-discovery plugin but file and http
# (the test uses a static target): half the build time, nothing the tests need.
set -euo pipefail

VERSION=v0.316.0 # Prometheus 3.16.0 (the Go module's v0.3MM.P scheme)
PREFIX=${PREFIX:-/usr/local/lib/containerdsnoop-test}
BINDIR=${BINDIR:-/usr/local/bin}
GO=${GO:-go}

log() { printf 'deps/prometheus: %s\n' "$*"; }

dir=$PREFIX/prometheus-$VERSION
if [[ -x $dir/prometheus && -x $dir/promtool ]]; then
	log "prometheus and promtool $VERSION already built in $dir"
else
	log "building prometheus and promtool $VERSION into $dir (a few minutes, once)"
	rm -rf "$dir.tmp"
	mkdir -p "$dir.tmp"
	GOBIN="$dir.tmp" GOFLAGS="${GOFLAGS:-} -buildvcs=false" CGO_ENABLED=0 \
		"$GO" install -trimpath -ldflags "-s -w" -tags remove_all_sd \
		"github.com/prometheus/prometheus/cmd/prometheus@$VERSION" \
		"github.com/prometheus/prometheus/cmd/promtool@$VERSION"
	rm -rf "$dir"
	mv "$dir.tmp" "$dir"
fi
mkdir -p "$BINDIR"
ln -sfn "$dir/prometheus" "$BINDIR/prometheus"
ln -sfn "$dir/promtool" "$BINDIR/promtool"
log "prometheus and promtool $VERSION in $BINDIR"
