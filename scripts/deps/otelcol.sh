#!/usr/bin/env bash
# Builds an OpenTelemetry Collector, pinned, with the official collector
# builder (ocb) from the Go module proxy (the only registry CI reaches): the
# OTLP receiver and the file exporter, all the e2e test needs to receive the
# tracer's spans and read them back. Idempotent: the build is kept under
# $PREFIX keyed by the pinned version, and only the symlink in $BINDIR is
# refreshed.
set -euo pipefail

VERSION=v0.165.0   # collector core, builder and contrib move in lockstep
PROVIDERS=v1.71.0  # the confmap providers builder $VERSION generates imports of
PREFIX=${PREFIX:-/usr/local/lib/containerdsnoop-test}
BINDIR=${BINDIR:-/usr/local/bin}
GO=${GO:-go}

log() { printf 'deps/otelcol: %s\n' "$*"; }

dir=$PREFIX/otelcol-$VERSION
if [[ -x $dir/otelcol-containerdsnoop ]]; then
	log "otelcol-containerdsnoop $VERSION already built in $dir"
else
	log "building the collector builder and otelcol-containerdsnoop $VERSION into $dir (a few minutes, once)"
	work=$(mktemp -d)
	trap 'rm -rf "$work"' EXIT
	GOBIN="$work" GOFLAGS="${GOFLAGS:-} -buildvcs=false" CGO_ENABLED=0 \
		"$GO" install -trimpath "go.opentelemetry.io/collector/cmd/builder@$VERSION"
	cat >"$work/builder.yaml" <<YAML
dist:
  name: otelcol-containerdsnoop
  description: OpenTelemetry Collector for containerdsnoop's tests (OTLP in, file out)
  output_path: $work/dist
receivers:
  - gomod: go.opentelemetry.io/collector/receiver/otlpreceiver $VERSION
exporters:
  - gomod: github.com/open-telemetry/opentelemetry-collector-contrib/exporter/fileexporter $VERSION
YAML
	# The builder generates the sources; its own `go mod tidy` is skipped:
	# tidy also resolves the components' test-only imports, and one of
	# those (contrib's otlpencodingextension) is not served by the module
	# proxy CI reaches. go get with the pinned versions and go build need
	# only what the collector is built from.
	"$work/builder" --config "$work/builder.yaml" --skip-get-modules --skip-compilation
	(
		cd "$work/dist"
		"$GO" mod init otelcol-containerdsnoop
		GOFLAGS="${GOFLAGS:-} -buildvcs=false" "$GO" get \
			"go.opentelemetry.io/collector/receiver/otlpreceiver@$VERSION" \
			"github.com/open-telemetry/opentelemetry-collector-contrib/exporter/fileexporter@$VERSION" \
			"go.opentelemetry.io/collector/confmap/provider/envprovider@$PROVIDERS" \
			"go.opentelemetry.io/collector/confmap/provider/fileprovider@$PROVIDERS" \
			"go.opentelemetry.io/collector/confmap/provider/httpprovider@$PROVIDERS" \
			"go.opentelemetry.io/collector/confmap/provider/httpsprovider@$PROVIDERS" \
			"go.opentelemetry.io/collector/confmap/provider/yamlprovider@$PROVIDERS"
		CGO_ENABLED=0 GOFLAGS="${GOFLAGS:-} -buildvcs=false -mod=mod" \
			"$GO" build -trimpath -ldflags "-s -w" -o otelcol-containerdsnoop .
	)
	rm -rf "$dir.tmp"
	mkdir -p "$dir.tmp"
	cp "$work/dist/otelcol-containerdsnoop" "$dir.tmp/"
	rm -rf "$dir"
	mv "$dir.tmp" "$dir"
fi
mkdir -p "$BINDIR"
ln -sfn "$dir/otelcol-containerdsnoop" "$BINDIR/otelcol-containerdsnoop"
log "otelcol-containerdsnoop $VERSION in $BINDIR"
