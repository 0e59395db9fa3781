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
// and a new process or thread inherits it from its parent).

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
// be captured, from its first send.
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

	_, c := startCapture(t, Options{Attach: backend})
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

	for i, ino := range inos {
		var want bytes.Buffer
		for seq := range burstSends {
			want.WriteString(burstLine(i, seq))
		}
		got := c.waitFor(t, ino, want.Len())
		if !bytes.Equal(got, want.Bytes()) {
			first, _, _ := bytes.Cut(got, []byte("\n"))
			t.Errorf("connection %d: captured %d of the %d bytes sent, first %q (want %q)",
				i, len(got), want.Len(), first, strings.TrimSuffix(burstLine(i, 0), "\n"))
		}
	}
}
