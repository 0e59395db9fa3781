# syntax=docker/dockerfile:1
# containerdsnoop as a container image, for deploy/daemonset.yaml.
#
#   docker build --build-arg VERSION=$(git describe --tags --always --dirty) -t containerdsnoop .
#   docker buildx build --platform linux/amd64,linux/arm64 --build-arg VERSION=v1.2.3 -t REGISTRY/containerdsnoop:v1.2.3 --push .
#
# The BPF objects are committed (internal/bpf/snoop_{x86,arm64}_bpfel.o), so
# the build stage needs only Go: no clang, no kernel headers. It runs on the
# build machine's platform and cross-compiles for the target's.
ARG GO_VERSION=1.26

FROM --platform=$BUILDPLATFORM golang:${GO_VERSION}-bookworm AS build
ARG TARGETOS=linux
ARG TARGETARCH
# .git is not in the build context (.dockerignore): pass the version in.
ARG VERSION=dev
WORKDIR /src
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod go mod download
COPY . .
RUN --mount=type=cache,target=/go/pkg/mod --mount=type=cache,target=/root/.cache/go-build \
	GOOS=$TARGETOS GOARCH=$TARGETARCH make build VERSION="$VERSION"

# A static binary needs nothing else. The image's default user is root: the
# tracer needs root with CAP_BPF and CAP_PERFMON, which the DaemonSet grants
# (see deploy/daemonset.yaml) instead of running privileged.
FROM gcr.io/distroless/static-debian12
COPY --from=build /src/bin/containerdsnoop /containerdsnoop
# Beside the tracer, which runs it with --yield-cpu (internal/watchdog).
COPY --from=build /src/bin/containerdsnoop-watchdog /containerdsnoop-watchdog
COPY LICENSE README.md /usr/share/doc/containerdsnoop/
ENTRYPOINT ["/containerdsnoop"]
# JSON lines on stdout, for the cluster's log pipeline.
CMD ["trace", "--output", "json"]
