package bpf

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"

	"golang.org/x/sys/unix"
)

// Open returning is what the tracer's ready line announces ("tracing gRPC
// on unix sockets ...; Ctrl-C to stop"): from then on every send is
// captured, also by a process started right after, from its first write
// and on every one of its threads (a syscall hook takes effect per task,
// and a new process or thread inherits it from its parent) -- or counted
// as lost. A preemptible kernel (Debian's 7.x: PREEMPT_LAZY) skips a
// tracing program's run now and then when several threads send at once
// on few CPUs, and a kretprobe skips returns past its maxactive (Debian's
// 5.10 on two CPUs: two sends in progress); see SEND_MISSED in
// bpf/snoop.bpf.c. Such a send must never vanish silently: the loss
// counters say so, and the stream shows a gap or starts over where it was
// (no stretch of captured bytes joins bytes that were not adjacent).

const burstConns, burstSends = 4, 300

func burstLine(conn, seq int) string { return fmt.Sprintf("conn %d send %04d\n", conn, seq) }

// burst is the helper process: it dials burstConns connections and writes
// on each from a thread of its own at once, as fast as it can, then prints
// each connection's socket inode.
func burst(sock string) {
	conns := make([]*net.UnixConn, burstConns)
	for i := range conns {
		c, err := net.Dial("unix", sock)
		if err != nil {
			os.Exit(2)
		}
		conns[i] = c.(*net.UnixConn)
	}
	var wg sync.WaitGroup
	for i, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			runtime.LockOSThread()
			for seq := range burstSends {
				if _, err := io.WriteString(c, burstLine(i, seq)); err != nil {
					os.Exit(3)
				}
			}
		}()
	}
	wg.Wait()
	for _, c := range conns {
		raw, err := c.SyscallConn()
		if err != nil {
			os.Exit(4)
		}
		var st unix.Stat_t
		raw.Control(func(fd uintptr) { err = unix.Fstat(int(fd), &st) })
		if err != nil {
			os.Exit(4)
		}
		fmt.Println(st.Ino)
	}
	os.Exit(0)
}

// TestCaptureFromFirstSend starts a process that writes at full speed
// from several threads the moment Open returns: every byte it sends must
// be captured, from its first send, or counted as lost, and every
// stretch of the stream the tracer presents as contiguous must be, but
// for one case README documents ("Capture backends"): a send whose entry
// program the kernel skipped on the kprobe or tracepoint backend (their
// exits do not know the socket) is counted, not placed. CI's sid 7.2 guest
// met it once (tracepoint: one 17-byte send of 300 vanished from a
// stretch, 3 lost events counted).
func TestCaptureFromFirstSend(t *testing.T) {
	forEachBackend(t, testCaptureFromFirstSend)
}

func testCaptureFromFirstSend(t *testing.T, backend string) {
	dir, err := os.MkdirTemp("/tmp", "cdsnoop-ready-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	path := filepath.Join(dir, "s.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { io.Copy(io.Discard, c); c.Close() }()
		}
	}()

	// IncludeSelf: the marker below is sent by this process.
	tr, c := startCapture(t, Options{Attach: backend, IncludeSelf: true})
	cmd := helper(t, "burst", path)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var inos []uint64
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		ino, err := strconv.ParseUint(strings.TrimSpace(sc.Text()), 10, 64)
		if err != nil {
			t.Fatalf("helper printed %q", sc.Text())
		}
		inos = append(inos, ino)
	}
	if err := cmd.Wait(); err != nil || len(inos) != burstConns {
		t.Fatalf("helper: %v, %d inodes", err, len(inos))
	}
	// Every send of the helper returned before it printed: a send after
	// that, once read, comes after all of theirs in the ring buffer.
	c.waitMarker(t)
	st, err := tr.Stats()
	if err != nil {
		t.Fatal(err)
	}

	missing := 0 // sends, each burstLine long
	for i, ino := range inos {
		var want bytes.Buffer
		for seq := range burstSends {
			want.WriteString(burstLine(i, seq))
		}
		segs := c.contiguous(ino)
		got := 0
		for _, seg := range segs {
			got += len(seg)
			if !bytes.Contains(want.Bytes(), seg) {
				first, _, _ := bytes.Cut(seg, []byte("\n"))
				if backend == "fentry" || st.LostEvents == 0 {
					t.Errorf("connection %d: %d bytes from %q presented as contiguous were not sent so: a send vanished silently", i, len(seg), first)
				} else {
					t.Logf("connection %d: %d bytes from %q presented as contiguous were not sent so: a send whose entry was skipped (counted in %d lost events), not placed", i, len(seg), first, st.LostEvents)
				}
			}
		}
		missing += (want.Len() - got) / len(burstLine(i, 0))
		switch {
		case got == want.Len() && len(segs) == 1:
		case !st.Lost():
			t.Errorf("connection %d: captured %d of the %d bytes sent in %d stretches, and no loss counted (%+v)", i, got, want.Len(), len(segs), st)
		default:
			t.Logf("connection %d: captured %d of the %d bytes sent in %d stretches; loss counted (%+v)", i, got, want.Len(), len(segs), st)
		}
	}
	// A send whose size is known is counted in bytes, one whose size is
	// not as an event: together they cover every send missing.
	if counted := st.LostEvents + st.LostBytes/uint64(len(burstLine(0, 0))); uint64(missing) > counted {
		t.Errorf("%d sends missing, only %d counted lost (%+v)", missing, counted, st)
	}
}
