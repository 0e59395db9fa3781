// Command mkimage builds containerdsnoop's container image from a built
// binary, without a container engine, into an image tarball that
// `ctr image import` and other OCI tools take: `make image`.
//
//	mkimage -binary bin/containerdsnoop -watchdog bin/containerdsnoop-watchdog -arch amd64 -tag ghcr.io/containerdsnoop/containerdsnoop:v1.2.3 -o dist/image.tar
//
// The same binary gives the same image digest (printed): timestamps are
// SOURCE_DATE_EPOCH (default: 0, the Unix epoch). See internal/image.
package main

import (
	"flag"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"time"

	"github.com/containerdsnoop/containerdsnoop/internal/image"
)

func main() {
	binary := flag.String("binary", "bin/containerdsnoop", "the static containerdsnoop binary")
	watchdog := flag.String("watchdog", "bin/containerdsnoop-watchdog", "the static containerdsnoop-watchdog binary, put beside it")
	arch := flag.String("arch", runtime.GOARCH, "GOARCH the binary was built for")
	tag := flag.String("tag", "ghcr.io/containerdsnoop/containerdsnoop:dev", "image name and tag")
	version := flag.String("version", "dev", "version label")
	out := flag.String("o", "dist/containerdsnoop-image.tar", "output OCI image archive")
	flag.Parse()
	epoch := time.Unix(0, 0).UTC()
	if s := os.Getenv("SOURCE_DATE_EPOCH"); s != "" {
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			fail(fmt.Errorf("SOURCE_DATE_EPOCH=%q: %w", s, err))
		}
		epoch = time.Unix(n, 0).UTC()
	}
	img, err := image.Build(image.Options{
		Files: []image.File{
			{Path: "/containerdsnoop", Source: *binary, Mode: 0o755},
			{Path: "/containerdsnoop-watchdog", Source: *watchdog, Mode: 0o755},
			{Path: "/usr/share/doc/containerdsnoop/LICENSE", Source: "LICENSE", Mode: 0o644},
			{Path: "/usr/share/doc/containerdsnoop/README.md", Source: "README.md", Mode: 0o644},
		},
		Arch:       *arch,
		Epoch:      epoch,
		Entrypoint: []string{"/containerdsnoop"},
		// JSON lines on stdout, for the cluster's log pipeline.
		Cmd:    []string{"trace", "--output", "json"},
		Labels: map[string]string{"org.opencontainers.image.version": *version, "org.opencontainers.image.source": "https://github.com/containerdsnoop/containerdsnoop"},
	})
	if err != nil {
		fail(err)
	}
	if err := image.Write(*out, *tag, img); err != nil {
		fail(err)
	}
	d, err := img.Digest()
	if err != nil {
		fail(err)
	}
	fmt.Printf("%s %s %s\n", *out, *tag, d)
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "mkimage:", err)
	os.Exit(1)
}
