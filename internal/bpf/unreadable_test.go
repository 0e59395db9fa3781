package bpf

import (
	"bytes"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

// mmsghdr is struct mmsghdr (sendmmsg(2)): x/sys/unix has no wrapper.
type mmsghdr struct {
	hdr unix.Msghdr
	len uint32
	_   [4]byte
}

func sendmmsg(t *testing.T, fd int, p []byte) {
	t.Helper()
	iov := unix.Iovec{Base: &p[0]}
	iov.SetLen(len(p))
	var m mmsghdr
	m.hdr.Iov = &iov
	m.hdr.SetIovlen(1)
	n, _, errno := unix.Syscall6(unix.SYS_SENDMMSG, uintptr(fd), uintptr(unsafe.Pointer(&m)), 1, 0, 0, 0)
	if errno != 0 || n != 1 || int(m.len) != len(p) {
		t.Fatalf("sendmmsg: %d messages, %d bytes: %v", n, m.len, errno)
	}
}

// TestUnreadableSendIsGap: a send the backend sees but cannot read must
// leave a gap of its exact size in the stream, counted as lost, never be
// skipped (the bytes after it would be decoded as if they followed the
// ones before) nor filled with other bytes. sendmmsg(2) is such a send for
// the socket tracepoint backend (its program reads the bytes from the
// syscall's arguments, and knows only write, writev, sendto and sendmsg);
// the probes on unix_stream_sendmsg read it whole. The syscall tracepoints
// do not see sendmmsg(2) at all (README, "Capture backends"): not run for
// them. (Named outside the kernel matrix's TestCapture pattern, where
// every test must have a result for every backend.)
func TestUnreadableSendIsGap(t *testing.T) {
	forEachBackendBut(t, "tracepoint", testUnreadableSendIsGap)
}

func testUnreadableSendIsGap(t *testing.T, backend string) {
	tr, c := startCapture(t, Options{Attach: backend, IncludeSelf: true})
	client, _, _ := listenPair(t)
	fd := rawFD(t, client)
	ino := inode(t, fd)
	before, err := tr.Stats()
	if err != nil {
		t.Fatal(err)
	}
	a, b, z := bytes.Repeat([]byte("a"), 10), bytes.Repeat([]byte("b"), 20), bytes.Repeat([]byte("z"), 5)
	if _, err := unix.Write(fd, a); err != nil {
		t.Fatal(err)
	}
	sendmmsg(t, fd, b)
	if _, err := unix.Write(fd, z); err != nil {
		t.Fatal(err)
	}
	if backend != "sock-tracepoint" {
		want := append(append(append([]byte{}, a...), b...), z...)
		if got := c.waitFor(t, ino, len(want)); !bytes.Equal(got, want) {
			t.Fatalf("captured %q, want %q", got, want)
		}
		return
	}
	c.waitFor(t, ino, len(a)+len(z))
	segs := c.contiguous(ino)
	if len(segs) != 2 || !bytes.Equal(segs[0], a) || !bytes.Equal(segs[1], z) {
		t.Fatalf("captured stretches %q, want %q then %q after a gap", segs, a, z)
	}
	c.mu.Lock()
	gaps := c.gapsOn(ino)
	c.mu.Unlock()
	if len(gaps) != 1 || gaps[0] != uint64(len(b)) {
		t.Fatalf("gaps %v, want one of %d bytes", gaps, len(b))
	}
	after, err := tr.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if lost := after.LostBytes - before.LostBytes; lost < uint64(len(b)) {
		t.Fatalf("%d bytes counted lost, want at least %d", lost, len(b))
	}
}
