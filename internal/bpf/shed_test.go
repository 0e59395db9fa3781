package bpf

import (
	"bytes"
	"errors"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/containerdsnoop/containerdsnoop/internal/capture"
	"github.com/containerdsnoop/containerdsnoop/internal/testutil/privileged"
)

// TestCaptureShedsBulkKeepingRoom: one large send cannot take the whole
// ring buffer from the small sends of other connections
// (capture.ShedAfter). Named TestCapture* so that the kernel matrix runs
// it on every backend, the bounded programs of kernels before 5.17 included
// (whose cut of a send past 1 MiB then counts as lost, not shed).
// Nothing reads the 1 MiB ring while an 8 MiB write goes through it, as
// when the tracer's reader gets no CPU during a flood: the write's bulk
// fills the ring to three quarters and the rest is shed, so a small send
// on another connection right after it still finds room and is captured
// whole, as is the large connection's next short send. Every byte of the
// large write is either captured, in place, or counted lost, the shed ones
// among them. Without the shedding, the write fills the ring and the small
// sends are lost.
func TestCaptureShedsBulkKeepingRoom(t *testing.T) {
	forEachBackend(t, func(t *testing.T, backend string) {
		privileged.Require(t)
		dir := tempDir(t)
		path := filepath.Join(dir, "bulk.sock")
		const (
			ring      = 1 << 20
			bulkAfter = capture.ShedAfter
			chunk     = 16 << 10 // snoop.h's SNOOP_CHUNK
		)
		// No spool: nothing moves records out of the ring until the
		// test reads them. The socket filter keeps the host's other
		// traffic out of it.
		tr, err := Open(Options{Attach: backend, IncludeSelf: true, Socket: path, RingBufSize: ring,
			SpoolBytes: -1, PollInterval: 50 * time.Millisecond})
		if err != nil {
			t.Fatalf("open tracer: %v", err)
		}
		t.Cleanup(func() { tr.Close() })
		large, _, ln := listenAt(t, path)
		small, _ := dialDrained(t, ln, path)

		big := randomBytes(8 << 20)
		fd := rawFD(t, large)
		writeSends(t, fd, big)
		// Small calls beside the flood: together more than the last
		// chunk of a ring the flood filled would leave.
		var msg []byte
		for range 8 {
			call := randomBytes(4 << 10)
			if _, err := small.Write(call); err != nil {
				t.Fatal(err)
			}
			msg = append(msg, call...)
		}
		tail := []byte("the large connection's next call")
		if _, err := unix.Write(fd, tail); err != nil {
			t.Fatal(err)
		}

		largeIno, smallIno := inode(t, fd), connIno(t, small)
		var gotSmall []byte
		var gotLarge, gotTail int
		var ev capture.Event
		for {
			err := tr.ReadWithin(&ev, 500*time.Millisecond)
			if errors.Is(err, ErrIdle) {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			switch {
			case ev.Ino == smallIno:
				gotSmall = append(gotSmall, ev.Data...)
			case ev.Ino == largeIno && ev.Offset >= uint64(len(big)):
				if !bytes.Equal(ev.Data, tail[ev.Offset-uint64(len(big)):][:len(ev.Data)]) {
					t.Fatalf("the large connection's next call at offset %d: %q", ev.Offset, ev.Data)
				}
				gotTail += len(ev.Data)
			case ev.Ino == largeIno:
				if ev.Fault || !bytes.Equal(ev.Data, big[ev.Offset:][:len(ev.Data)]) {
					t.Fatalf("chunk at offset %d of the large write is not its bytes there", ev.Offset)
				}
				gotLarge += len(ev.Data)
			}
		}
		st, err := tr.Stats()
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("the 8 MiB write: %d KiB captured, %d KiB shed; stats %+v", gotLarge>>10, st.ShedBytes>>10, st)
		if !bytes.Equal(gotSmall, msg) {
			t.Errorf("the small calls beside the flood: %d of their %d bytes captured", len(gotSmall), len(msg))
		}
		if gotTail != len(tail) {
			t.Errorf("the large connection's next call: %d of %d bytes captured", gotTail, len(tail))
		}
		if gotLarge < bulkAfter || gotLarge > ring*3/4+chunk {
			t.Errorf("%d bytes of the 8 MiB write captured; want its first %d and at most three quarters of the ring", gotLarge, bulkAfter)
		}
		if st.ShedBytes == 0 || st.ShedBytes > st.LostBytes {
			t.Errorf("shed %d bytes, lost %d: want some shed, counted among the lost", st.ShedBytes, st.LostBytes)
		}
		if want := uint64(len(big) - gotLarge); st.LostBytes != want {
			t.Errorf("lost bytes %d; want the %d of the write not captured", st.LostBytes, want)
		}
	})
}
