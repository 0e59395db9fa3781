// Package bpf loads bpf/snoop.bpf.c (compiled ahead of time by bpf2go, so the
// node needs neither clang nor kernel headers), attaches the chosen capture
// backend, and turns ring-buffer records into capture.Events. It also places
// the peer probes (peer.go) that internal/peerprobe decides on.
package bpf
