# containerdsnoop. Building needs only Go: the BPF objects are committed.
GO        ?= go
VERSION   ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS   := -s -w -X main.version=$(VERSION)
BIN       := bin/containerdsnoop
# Beside the tracer: with --yield-cpu it raises the tracer when its ring
# buffer fills, so that the tracer can yield the CPU (internal/watchdog).
WATCHDOG  := bin/containerdsnoop-watchdog
FUZZTIME  ?= 60s

.PHONY: all build generate check-generated vmlinux release image test test-unit test-deps test-kernels bench lint vet fmt staticcheck fuzz clean

all: build

build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN) ./cmd/containerdsnoop
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '-s -w' -o $(WATCHDOG) ./cmd/containerdsnoop-watchdog

# The committed BPF objects are built with Debian 12's clang 14. Another
# clang major emits other (equally valid) bytes, so that the committed
# objects would change with whoever ran generate last: generate refuses it.
# With clang 14 installed under another name: make generate BPF_CLANG=clang-14
# (bpf2go then uses llvm-strip-14).
BPF_CLANG_MAJOR := 14
BPF_CLANG       ?= clang
bpf_clang_major  = $$($(BPF_CLANG) --version 2>/dev/null | sed -n 's/.*clang version \([0-9][0-9]*\)\..*/\1/p' | head -n 1)

# Rebuild bpf/*.c into internal/bpf/snoop_{x86,arm64}_bpfel.{go,o} (needs clang 14, llvm-strip).
generate:
	@v=$(bpf_clang_major); if [ "$$v" != "$(BPF_CLANG_MAJOR)" ]; then \
		echo "generate: $(BPF_CLANG) is clang '$$v'; the committed BPF objects are built with clang $(BPF_CLANG_MAJOR) (Debian 12). Install clang-$(BPF_CLANG_MAJOR) and run make generate BPF_CLANG=clang-$(BPF_CLANG_MAJOR)" >&2; exit 1; fi
	BPF2GO_CC=$(BPF_CLANG) $(GO) generate ./internal/bpf/

# CI: the committed objects are what bpf/ compiles to. Compared only with
# the pinned clang (see generate): with another, a difference proves nothing.
check-generated:
	@v=$(bpf_clang_major); if [ "$$v" != "$(BPF_CLANG_MAJOR)" ]; then \
		echo "check-generated: skipped: $(BPF_CLANG) is clang '$$v', the objects are built with clang $(BPF_CLANG_MAJOR)"; exit 0; fi; \
	$(MAKE) generate && git diff --exit-code -- internal/bpf

# Regenerate bpf/vmlinux_{x86,arm64}.h from kernel BTF (this host's for x86,
# Debian's arm64 kernel package for arm64; needs bpftool), then `make generate`.
vmlinux:
	GO='$(GO)' bash scripts/gen-vmlinux.sh

# Static linux/amd64 and linux/arm64 tarballs and sha256sums.txt in $(DIST).
DIST ?= dist
release:
	VERSION='$(VERSION)' DIST='$(DIST)' GO='$(GO)' bash scripts/release.sh

# The container image as an OCI image archive (ctr image import),
# built without a container engine and reproducibly: the same commit gives
# the same image digest (cmd/mkimage, internal/image).
IMAGE ?= ghcr.io/containerdsnoop/containerdsnoop:$(VERSION)
image: build
	mkdir -p $(DIST)
	SOURCE_DATE_EPOCH=$${SOURCE_DATE_EPOCH:-$$(git log -1 --format=%ct 2>/dev/null || echo 0)} \
		$(GO) run ./cmd/mkimage -binary $(BIN) -watchdog $(WATCHDOG) -arch $$($(GO) env GOARCH) -tag '$(IMAGE)' -version '$(VERSION)' -o $(DIST)/containerdsnoop-image-$$($(GO) env GOARCH).tar

# Every test, privileged ones included: run as root. Installs what the tests
# need (containerd, runc, clang, ...) from the distribution first.
test: test-deps
	# -p 1: the tracers under test see every unix socket on the machine, so
	# packages running at once would load each other's ring buffers.
	CONTAINERDSNOOP_REQUIRE_PRIVILEGED=$${CONTAINERDSNOOP_REQUIRE_PRIVILEGED:-1} $(GO) test -p 1 -count=1 -timeout 30m ./...
	# Every microbenchmark once (decoder stages, the pipeline's calls/s per
	# core and MB/s): they must run; a CI machine is too noisy for their numbers.
	$(GO) test -p 1 -run='^$$' -bench=. -benchtime=1x ./internal/...
	GO=$(GO) bash scripts/test-kernels.sh

# The capture tests on Debian's kernels from bullseye's 5.10 to sid's newest,
# amd64 and arm64, and (KERNEL_SLOW, on by default while bpf/ differs from the
# last release tag) the real-time 6.1 kernel, booted under qemu, and on this
# host's kernel. As root; kernels are cached in /var/cache/containerdsnoop.
# README: "Capture backends".
test-kernels:
	GO=$(GO) bash scripts/test-kernels.sh

# Every package except those whose tests all need root, a kernel or
# containerd (those run in make test); a new package is in by default. Tests
# that need a tool not installed (tshark) skip.
UNIT_EXCLUDE := internal/bpf|internal/testutil/containerdtest|test/e2e|test/release
test-unit:
	$(GO) test -p 1 -count=1 $$($(GO) list ./... | grep -vE '/($(UNIT_EXCLUDE))$$')

test-deps:
	bash scripts/install-test-deps.sh

# Cost benchmark against the untraced baseline and strace, with the budget
# verdicts, and how cost grows (docs/performance.md). As root: sudo make
# bench. A complete run replaces docs/perf/{results.jsonl,report.md,scaling.png}.
bench:
	bash scripts/bench.sh

# Each fuzz target for FUZZTIME (CI: a minute each). Seeds are committed.
# Minimizing a new input is capped: by default it may take a minute, which
# (for a target whose runs take milliseconds) was the whole minute spent
# minimizing one input instead of fuzzing.
FUZZ_TARGETS := FuzzDecode:./internal/h2/hpack/ FuzzPin:./internal/h2/hpack/ FuzzAttach:./internal/h2/ FuzzSplitter:./internal/grpcdecode/ FuzzReader:./internal/recording/ FuzzTTRPC:./internal/ttrpc/ FuzzPipeline:./internal/pipeline/ FuzzSchemaless:./internal/output/ FuzzCanonicalMaps:./internal/protoreg/ FuzzFit:./internal/protoreg/
FUZZMINIMIZE ?= 2s
# Go 1.26's fuzzing coordinator can fail a target with a bare "context
# deadline exceeded" as -fuzztime ends, no input at fault (go.dev/issue/75804:
# the deadline reaches a worker before its own context is cancelled; CI met it
# in FuzzSplitter). Go 1.27 fixed it, so fuzzing alone runs on this toolchain,
# which the go command fetches from the module proxy once (~76 MB).
FUZZ_TOOLCHAIN ?= go1.27.3

fuzz:
	@set -e; for t in $(FUZZ_TARGETS); do \
		echo "fuzz $${t%%:*} in $${t#*:} for $(FUZZTIME)"; \
		GOTOOLCHAIN=$(FUZZ_TOOLCHAIN) $(GO) test -run='^$$' -fuzz="^$${t%%:*}$$" -fuzztime=$(FUZZTIME) -fuzzminimizetime=$(FUZZMINIMIZE) "$${t#*:}"; \
	done

lint: vet fmt staticcheck

vet:
	$(GO) vet ./...

# staticcheck is a tool dependency in go.mod (go tool staticcheck): the
# version is pinned with the module's other dependencies.
staticcheck:
	$(GO) tool staticcheck ./...

fmt:
	@out=$$(gofmt -l $$(git ls-files '*.go' | grep -v '_bpfel.go')); \
	if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

clean:
	rm -rf bin dist
