package bpf

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/containerdsnoop/containerdsnoop/internal/capture"
)

// TestHelperProcess is not a test: the follow test and
// TestCaptureFromFirstSend run this binary as the processes of their
// scenarios.
func TestHelperProcess(t *testing.T) {
	mode := os.Getenv("CDSNOOP_HELPER")
	if mode == "" {
		t.Skip("helper process only")
	}
	sock := os.Getenv("CDSNOOP_SOCK")
	switch mode {
	case "kprobe-tracer":
		// A tracer that stays attached until killed
		// (TestCaptureProbesLeftByKill).
		tr, err := Open(Options{Attach: "kprobe", IncludeSelf: true, RingBufSize: 1 << 16})
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
		defer tr.Close()
		fmt.Println("ready")
		for {
			time.Sleep(time.Hour) // until killed
		}
	case "server":
		ln, err := net.Listen("unix", sock)
		if err != nil {
			os.Exit(2)
		}
		fmt.Println("ready")
		for {
			c, err := ln.Accept()
			if err != nil {
				os.Exit(0)
			}
			go io.Copy(c, c) // echo: the peer's replies are traced too
		}
	case "client", "child":
		c, err := net.Dial("unix", sock)
		if err != nil {
			os.Exit(2)
		}
		fmt.Fprintf(c, "%s-%d", mode, os.Getpid())
		buf := make([]byte, 64)
		c.Read(buf)
		if mode == "client" {
			// A grandchild of the traced command.
			cmd := exec.Command(os.Args[0], "-test.run=^TestHelperProcess$")
			cmd.Env = append(os.Environ(), "CDSNOOP_HELPER=child")
			cmd.Stdout = os.Stdout
			if cmd.Run() != nil {
				os.Exit(3)
			}
		}
		os.Exit(0)
	case "handoff":
		// Like a shim's "start" process: listen, hand the listener to a
		// child that accepts, and exit.
		ln, err := net.Listen("unix", sock)
		if err != nil {
			os.Exit(2)
		}
		f, err := ln.(*net.UnixListener).File()
		if err != nil {
			os.Exit(2)
		}
		cmd := exec.Command(os.Args[0], "-test.run=^TestHelperProcess$")
		cmd.Env = append(os.Environ(), "CDSNOOP_HELPER=acceptor")
		cmd.ExtraFiles = []*os.File{f}
		cmd.Stdout = os.Stdout
		if cmd.Start() != nil {
			os.Exit(3)
		}
		os.Exit(0)
	case "acceptor":
		ln, err := net.FileListener(os.NewFile(3, "listener"))
		if err != nil {
			os.Exit(2)
		}
		fmt.Printf("acceptor %d\n", os.Getpid())
		c, err := ln.Accept()
		if err != nil {
			os.Exit(2)
		}
		// A first read that finds nothing yet, as a Go server's reader
		// makes the moment it accepts (the runtime's read of a
		// non-blocking socket): the socket tracepoint backend sees no
		// accept, and learns the holder from this read.
		raw, _ := c.(*net.UnixConn).SyscallConn()
		raw.Control(func(fd uintptr) { unix.Recvfrom(int(fd), make([]byte, 1), unix.MSG_DONTWAIT|unix.MSG_PEEK) })
		fmt.Println("accepted")
		io.Copy(io.Discard, c) // never sends: only the accept (or that read) names it
		os.Exit(0)
	case "burst":
		burst(sock)
	case "exit":
		// Sends, says its socket's inode, and exits without closing it.
		c, err := net.Dial("unix", sock)
		if err != nil {
			os.Exit(2)
		}
		raw, _ := c.(*net.UnixConn).SyscallConn()
		var st unix.Stat_t
		raw.Control(func(fd uintptr) { err = unix.Fstat(int(fd), &st) })
		if err != nil {
			os.Exit(4)
		}
		io.WriteString(c, "bye")
		fmt.Println(st.Ino)
		os.Exit(0)
	case "unrelated":
		c, err := net.Dial("unix", sock)
		if err != nil {
			os.Exit(2)
		}
		in := bufio.NewScanner(os.Stdin)
		for in.Scan() { // writes whenever told, long after the attach
			fmt.Fprintf(c, "unrelated-%d", os.Getpid())
			buf := make([]byte, 64)
			c.Read(buf) // echoed: the send and the reply are both done
			fmt.Println("sent")
		}
		os.Exit(0)
	}
}

func helper(t *testing.T, mode, sock string) *exec.Cmd {
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperProcess$")
	cmd.Env = append(os.Environ(), "CDSNOOP_HELPER="+mode, "CDSNOOP_SOCK="+sock)
	return cmd
}

// TestFollowChildren is trace -- CMD: with this process as the filter and
// children followed, a command started after the attach and its own child
// are traced, with replies to them; a process started before is not.
func TestFollowChildren(t *testing.T) {
	if len(availableBackends(t)) == 0 {
		t.Fatal("no backend")
	}
	dir, _ := os.MkdirTemp("/tmp", "cdsnoop-follow-")
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "s.sock")

	server := helper(t, "server", sock)
	out, _ := server.StdoutPipe()
	if err := server.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { server.Process.Kill(); server.Wait() })
	if line, _ := bufio.NewReader(out).ReadString('\n'); line != "ready\n" {
		t.Fatalf("server: %q", line)
	}
	unrelated := helper(t, "unrelated", sock)
	poke, _ := unrelated.StdinPipe()
	acks, _ := unrelated.StdoutPipe()
	ack := bufio.NewReader(acks)
	if err := unrelated.Start(); err != nil {
		t.Fatal(err)
	}
	sendUnrelated := func() {
		fmt.Fprintln(poke)
		if line, _ := ack.ReadString('\n'); line != "sent\n" {
			t.Fatalf("unrelated: %q", line)
		}
	}
	t.Cleanup(func() { poke.Close(); unrelated.Wait() })

	tr, err := Open(Options{PIDs: []uint32{uint32(os.Getpid())}, FollowChildren: true})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	sendUnrelated() // while we trace

	client := helper(t, "client", sock)
	if out, err := client.CombinedOutput(); err != nil {
		t.Fatalf("client: %v %s", err, out)
	}
	sendUnrelated()
	// The command tree's records, and the server's echoes to it. A send's
	// record is written by the program at the syscall's (or the
	// function's) exit, which a preemptible kernel (6.1-rt) can run after
	// the peer already read the bytes and exited: read what the ring
	// buffer holds until every expected record is there (or 20 s).
	clientMsg := fmt.Sprintf("client-%d", client.Process.Pid)
	var payloads []string
	var ev capture.Event
	joined := ""
	complete := func() bool {
		return strings.Count(joined, clientMsg) >= 2 && strings.Count(joined, "child-") >= 2
	}
	for deadline := time.Now().Add(20 * time.Second); ; {
		tr.Drain()
		for {
			if err := tr.Read(&ev); err != nil {
				break
			}
			// The kernel could not tell who reads these (the other end has
			// not spoken since the attach): userspace decides, see
			// pipeline's undecided.go.
			if ev.Undecided {
				continue
			}
			if len(ev.Data) > 0 {
				payloads = append(payloads, string(ev.Data))
			}
		}
		joined = strings.Join(payloads, "|")
		if complete() || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	for _, want := range []string{clientMsg, "child-"} {
		if strings.Count(joined, want) != 2 { // the send and its echo
			t.Errorf("%q seen %d times, want 2 (sent and echoed); captured %q", want, strings.Count(joined, want), joined)
		}
	}
	if strings.Contains(joined, "unrelated") {
		t.Errorf("an unfollowed process was traced: %q", joined)
	}
}
