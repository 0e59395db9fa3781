// Package containerdtest runs a private, throw-away containerd for tests.
//
// containerdsnoop traces gRPC traffic on containerd's unix socket, so its
// end-to-end tests need a real daemon answering both containerd's own API and
// the CRI. Sharing the machine's containerd would make results depend on
// whatever else talks to it and could damage a real installation, so Start
// launches a dedicated daemon whose root, state, sockets, runc root and CNI
// directories all live in one temporary directory that Cleanup removes.
package containerdtest
