# containerdsnoop. Building needs only Go: the BPF objects are committed.
GO        ?= go
VERSION   ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS   := -s -w -X main.version=$(VERSION)
BIN       := bin/containerdsnoop
FUZZTIME  ?= 60s

.PHONY: all build generate test test-unit test-deps test-kernels bench lint vet fmt fuzz clean

all: build

build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN) ./cmd/containerdsnoop

# Rebuild bpf/*.c into internal/bpf/snoop_{x86,arm64}_bpfel.{go,o} (needs clang, llvm-strip).
generate:
	$(GO) generate ./internal/bpf/

# Regenerate bpf/vmlinux_{x86,arm64}.h from kernel BTF (this host's for x86,
# Debian's arm64 kernel package for arm64; needs bpftool), then `make generate`.
vmlinux:
	GO='$(GO)' bash scripts/gen-vmlinux.sh

# Static linux/amd64 and linux/arm64 tarballs and sha256sums.txt in $(DIST).
DIST ?= dist
release:
	VERSION='$(VERSION)' DIST='$(DIST)' GO='$(GO)' bash scripts/release.sh

.PHONY: vmlinux release

# Every test, privileged ones included: run as root. Installs what the tests
# need (containerd, runc, clang, ...) from the distribution first.
test: test-deps
	# -p 1: the tracers under test see every unix socket on the machine, so
	# packages running at once would load each other's ring buffers.
	CONTAINERDSNOOP_REQUIRE_PRIVILEGED=$${CONTAINERDSNOOP_REQUIRE_PRIVILEGED:-1} $(GO) test -p 1 -count=1 -timeout 30m ./...
	GO=$(GO) bash scripts/test-kernels.sh

# The capture tests on Debian's kernels from bullseye's 5.10 to sid's newest,
# amd64 and (KERNEL_SLOW, on by default while bpf/ differs from the last
# release tag) arm64, booted under qemu, and on this host's kernel. As root;
# kernels are cached in /var/cache/containerdsnoop. README: "Capture backends".
test-kernels:
	GO=$(GO) bash scripts/test-kernels.sh

# Tests that need neither root nor a kernel.
test-unit:
	$(GO) test -count=1 ./internal/h2/... ./internal/call/... ./internal/protoreg/... ./internal/grpcdecode/... ./internal/stream/... ./internal/output/... ./internal/recording/... ./internal/pcapout/... ./internal/ttrpc/...

test-deps:
	bash scripts/install-test-deps.sh

# Cost benchmark against the untraced baseline and strace, with the budget
# verdicts (docs/performance.md). As root: sudo make bench
bench:
	bash scripts/bench.sh

# Each fuzz target for FUZZTIME (CI: a minute each). Seeds are committed.
FUZZ_TARGETS := FuzzDecode:./internal/h2/hpack/ FuzzAttach:./internal/h2/ FuzzSplitter:./internal/grpcdecode/ FuzzReader:./internal/recording/ FuzzTTRPC:./internal/ttrpc/

fuzz:
	@set -e; for t in $(FUZZ_TARGETS); do \
		echo "fuzz $${t%%:*} in $${t#*:} for $(FUZZTIME)"; \
		$(GO) test -run='^$$' -fuzz="^$${t%%:*}$$" -fuzztime=$(FUZZTIME) "$${t#*:}"; \
	done

lint: vet fmt

vet:
	$(GO) vet ./...

fmt:
	@out=$$(gofmt -l $$(git ls-files '*.go' | grep -v '_bpfel.go')); \
	if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

clean:
	rm -rf bin dist
