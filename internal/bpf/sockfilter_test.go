package bpf

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"testing"
	"time"
)

// listenAt listens on path and returns a connected (client, server) pair
// and the listener (closed by the caller or at cleanup).
func listenAt(t *testing.T, path string) (client, server *net.UnixConn, ln *net.UnixListener) {
	t.Helper()
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	client, server = dialDrained(t, ln, path)
	return client, server, ln
}

// dialDrained connects a client to ln at path; what it sends is read and
// discarded, so that its sends never block on a full socket.
func dialDrained(t *testing.T, ln *net.UnixListener, path string) (client, server *net.UnixConn) {
	t.Helper()
	accepted := make(chan *net.UnixConn, 1)
	go func() {
		c, _ := ln.AcceptUnix()
		accepted <- c
	}()
	client, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	server = <-accepted
	if server == nil {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { client.Close(); server.Close() })
	go io.Copy(io.Discard, server)
	return client, server
}

func tempDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("/tmp", "cdsnoop-sockfilter-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

func connIno(t *testing.T, c *net.UnixConn) uint64 {
	t.Helper()
	return inode(t, rawFD(t, c))
}

// TestSocketFilterInKernel: with Options.Socket, traffic on another unix
// socket never enters the ring buffer. Only the selected socket's bytes can
// (no other process uses this test's fresh path), so the kernel's own
// counters must show exactly the bytes sent on it, even while other test
// suites on the machine send on their sockets.
func TestSocketFilterInKernel(t *testing.T) {
	forEachBackend(t, func(t *testing.T, backend string) {
		dir := tempDir(t)
		want := filepath.Join(dir, "selected.sock")
		tr, c := startCapture(t, Options{Attach: backend, IncludeSelf: true, Socket: want})
		other, _, _ := listenAt(t, filepath.Join(dir, "other.sock"))
		sel, selServer, _ := listenAt(t, want)

		noise := randomBytes(1 << 20)
		if _, err := other.Write(noise); err != nil {
			t.Fatal(err)
		}
		msg := randomBytes(3000)
		if _, err := sel.Write(msg); err != nil {
			t.Fatal(err)
		}
		reply := []byte("reply")
		if _, err := selServer.Write(reply); err != nil {
			t.Fatal(err)
		}
		if got := c.waitFor(t, connIno(t, sel), len(msg)); !bytes.Equal(got, msg) {
			t.Fatalf("selected socket: captured %d bytes, want the %d sent", len(got), len(msg))
		}
		if got := c.waitFor(t, connIno(t, selServer), len(reply)); !bytes.Equal(got, reply) {
			t.Fatalf("selected socket, server end: captured %q, want %q", got, reply)
		}
		c.mu.Lock()
		_, leaked := c.streams[connIno(t, other)]
		c.mu.Unlock()
		if leaked {
			t.Error("bytes of an unselected socket were captured")
		}
		s, err := tr.Stats()
		if err != nil {
			t.Fatal(err)
		}
		if s.Bytes != uint64(len(msg)+len(reply)) || s.LostBytes != 0 {
			t.Errorf("kernel counted %d bytes into the ring (%d lost), want exactly the %d sent on the selected socket", s.Bytes, s.LostBytes, len(msg)+len(reply))
		}
	})
}

// TestSocketFilterServerRestart: a server that goes away and listens again
// at the same path (a new socket inode, as containerd restarting) is still
// traced, from the first byte of its first new connection.
func TestSocketFilterServerRestart(t *testing.T) {
	forEachBackend(t, func(t *testing.T, backend string) {
		dir := tempDir(t)
		path := filepath.Join(dir, "restart.sock")
		_, c := startCapture(t, Options{Attach: backend, IncludeSelf: true, Socket: path})

		c1, s1, ln := listenAt(t, path)
		first := []byte("before the restart")
		if _, err := c1.Write(first); err != nil {
			t.Fatal(err)
		}
		if got := c.waitFor(t, connIno(t, c1), len(first)); !bytes.Equal(got, first) {
			t.Fatalf("first server: captured %q, want %q", got, first)
		}
		c1.Close()
		s1.Close()
		ln.Close() // Go's listener removes the socket file on close
		if _, err := os.Stat(path); !os.IsNotExist(err) {
			t.Fatalf("socket file still there after close: %v", err)
		}

		// At once, well within the userspace re-check interval: the kernel
		// must match the new listener by itself.
		c2, _, _ := listenAt(t, path)
		second := []byte("after the restart")
		if _, err := c2.Write(second); err != nil {
			t.Fatal(err)
		}
		if got := c.waitFor(t, connIno(t, c2), len(second)); !bytes.Equal(got, second) {
			t.Fatalf("restarted server: captured %q, want %q", got, second)
		}
	})
}

// TestSocketFilterSymlinks: --socket given through a symlink to the socket,
// or through a symlinked directory (/var/run → /run), selects the socket.
func TestSocketFilterSymlinks(t *testing.T) {
	forEachBackend(t, func(t *testing.T, backend string) {
		dir := tempDir(t)
		real := filepath.Join(dir, "real")
		if err := os.Mkdir(real, 0o755); err != nil {
			t.Fatal(err)
		}
		path := filepath.Join(real, "s.sock")
		linkDir := filepath.Join(dir, "linkdir")
		if err := os.Symlink(real, linkDir); err != nil {
			t.Fatal(err)
		}
		c1, _, _ := listenAt(t, path)
		linkSock := filepath.Join(dir, "link.sock")
		if err := os.Symlink(path, linkSock); err != nil {
			t.Fatal(err)
		}
		for _, sel := range []string{linkSock, filepath.Join(linkDir, "s.sock")} {
			tr, c := startCapture(t, Options{Attach: backend, IncludeSelf: true, Socket: sel})
			msg := []byte("through " + sel)
			if _, err := c1.Write(msg); err != nil {
				t.Fatal(err)
			}
			if got := c.waitFor(t, connIno(t, c1), len(msg)); !bytes.HasSuffix(got, msg) {
				t.Fatalf("--socket %s: captured %q, want it to end with %q", sel, got, msg)
			}
			tr.Close()
		}
	})
}

// TestSocketKey: what cannot be compared in the kernel says so, and the
// socket need not exist yet.
func TestSocketKey(t *testing.T) {
	if _, err := socketKey("@abstract"); err == nil {
		t.Error("abstract name: no error")
	}
	dir := tempDir(t)
	long := filepath.Join(dir, string(bytes.Repeat([]byte("n"), 65)))
	if _, err := socketKey(long); err == nil {
		t.Error("65-byte name: no error")
	}
	if _, err := socketKey(filepath.Join(dir, "no-such-dir", "x.sock")); !errors.Is(err, errNoKernelFilter) {
		t.Errorf("missing directory: %v, want the kernel filter off", err)
	}
	k, err := socketKey(filepath.Join(dir, "not-yet.sock"))
	if err != nil {
		t.Fatal(err)
	}
	if k.NameLen != uint32(len("not-yet.sock")) || k.DirIno == 0 {
		t.Errorf("key = %+v", k)
	}
}

// TestSocketFilterNewIdentity: the directory of the --socket path is
// replaced (a new directory inode, so a new identity, which userspace
// learns within its re-check interval) and a client connects to the new
// server before userspace has learnt it: its first send is not selected.
// Once the filter has the new identity, that same connection's next send
// must be, although the kernel keeps each socket's answer (sock_verdict,
// and per CPU verdict_memo_map): the filter's generation moved.
func TestSocketFilterNewIdentity(t *testing.T) {
	forEachBackend(t, func(t *testing.T, backend string) {
		parent := tempDir(t)
		dir := filepath.Join(parent, "run")
		if err := os.Mkdir(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		path := filepath.Join(dir, "s.sock")
		_, c := startCapture(t, Options{Attach: backend, IncludeSelf: true, Socket: path})

		if err := os.Rename(dir, dir+".old"); err != nil {
			t.Fatal(err)
		}
		if err := os.Mkdir(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		go func() {
			for {
				s, err := ln.AcceptUnix()
				if err != nil {
					return
				}
				t.Cleanup(func() { s.Close() })
			}
		}()
		dial := func() *net.UnixConn {
			conn, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: path, Net: "unix"})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { conn.Close() })
			return conn
		}
		// Both of its sends from CPU 0, which then remembers the first
		// answer (verdict_memo_map) when the second is asked; the probes
		// from another, so as not to push it out.
		if runtime.NumCPU() < 2 {
			t.Log("one CPU: the per-CPU verdict memory is not put to the test")
		}
		early := dial()
		cpu0 := onCPU(t, 0)
		writeEarly := func(s string) func() error {
			return func() error {
				_, err := early.Write([]byte(s))
				return err
			}
		}
		if err := cpu0(writeEarly("early")); err != nil {
			t.Fatal(err)
		}
		restore, err := pinThread(runtime.NumCPU() - 1)
		defer restore()
		if err != nil {
			t.Fatal(err)
		}
		// Probe connections until one is captured: the filter has the new
		// identity from then on.
		deadline := time.Now().Add(20 * time.Second)
		for {
			probe := dial()
			if _, err := probe.Write([]byte("probe")); err != nil {
				t.Fatal(err)
			}
			ino := connIno(t, probe)
			c.mu.Lock()
			seen := c.streams[ino] != nil
			c.mu.Unlock()
			if !seen {
				// The ring buffer is asynchronous: give this one a moment
				// before the next probe.
				seen = len(c.waitForWithin(t, ino, 5, 200*time.Millisecond)) == 5
			}
			if seen {
				break
			}
			if time.Now().After(deadline) {
				t.Fatal("the filter never selected the new directory's socket")
			}
		}
		if err := cpu0(writeEarly("late")); err != nil {
			t.Fatal(err)
		}
		if got := c.waitFor(t, connIno(t, early), 4); string(got) != "late" {
			t.Fatalf("the connection made before the filter learnt the new identity: captured %q, want %q (its first send, before, is not selected)", got, "late")
		}
	})
}
