//go:build linux

package e2e

import (
	"bufio"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/containerdsnoop/containerdsnoop/internal/testutil/child"
	"github.com/containerdsnoop/containerdsnoop/internal/testutil/containerdtest"
	"github.com/containerdsnoop/containerdsnoop/internal/testutil/privileged"
)

const healthCheck = "/grpc.health.v1.Health/Check"

// helperServer is a gRPC health server in a child process (see
// runHelperServer): a second gRPC peer, unrelated to containerd, whose PID
// and socket the test knows before any tracer starts.
type helperServer struct {
	pid    int
	socket string
}

func startHelperServer(t *testing.T) *helperServer {
	t.Helper()
	dir, err := os.MkdirTemp("/tmp", "cdsnoop-e2e-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "helper.sock")
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(self)
	cmd.Env = append(os.Environ(), helperSocketEnv+"="+sock)
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	exited, err := child.Start(cmd, syscall.SIGKILL)
	if err != nil {
		t.Fatalf("start helper server: %v", err)
	}
	t.Cleanup(func() {
		// Closing stdin tells the helper to stop.
		stdin.Close()
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
	})
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil || line != "ready\n" {
		t.Fatalf("helper server did not start: %q, %v", line, err)
	}
	return &helperServer{pid: cmd.Process.Pid, socket: sock}
}

// TestTraceFilters checks --pid and --socket. A filter is only proven by
// what it hides, and "nothing printed yet" proves nothing with an
// asynchronous ring buffer, so every filtered tracer is given a last event
// it must show, sent after everything it must hide. The ring buffer hands
// events over in the order the sends completed: once that marker is
// printed, anything the filter let through before it would have been
// printed too.
//
// The traffic: A test→containerd (CRI), B ctr→containerd, C test→helper,
// then D test→helper and E test→containerd. Tracers that must hide
// containerd's traffic stop after C; those that must hide the helper's
// stop after E.
func TestTraceFilters(t *testing.T) {
	privileged.Require(t)
	ctrBin := privileged.RequireBinary(t, "ctr")
	helper := startHelperServer(t)
	c := containerdtest.Start(t)
	self := os.Getpid()

	// The socket filter resolves symlinks: name containerd's socket
	// through a symlinked directory.
	linkDir, err := os.MkdirTemp("/tmp", "cdsnoop-e2e-link-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(linkDir) })
	link := filepath.Join(linkDir, "d")
	if err := os.Symlink(c.Dir, link); err != nil {
		t.Fatal(err)
	}
	viaLink := filepath.Join(link, filepath.Base(c.Socket))

	pidArg := func(pid int) string { return strconv.Itoa(pid) }
	all := startTracer(t, "--output", "json")
	// Hide containerd's traffic; stopped after C.
	pidHelper := startTracer(t, "--output", "json", "--pid", pidArg(helper.pid))
	sockHelper := startTracer(t, "--output", "json", "--socket", helper.socket)
	// Hide ctr's traffic; stopped after C.
	pidSelf := startTracer(t, "--output", "json", "--pid", pidArg(self))
	// Show everything of the two pids; stopped after C.
	pidBoth := startTracer(t, "--output", "json", "--pid", pidArg(helper.pid), "--pid", pidArg(c.PID))
	// Hide the helper's traffic; stopped after E. One of them names the
	// backend explicitly.
	pidContainerd := startTracer(t, "--output", "json", "--pid", pidArg(c.PID), "--attach", "tracepoint")
	if s := pidContainerd.Stderr(); !strings.Contains(s, "(backend tracepoint)") {
		t.Errorf("--attach tracepoint: readiness line does not name the backend:\n%s", indent(s))
	}
	sockLink := startTracer(t, "--output", "json", "--socket", viaLink)

	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	rt, img := c.CRI(t)
	hconn, err := grpc.NewClient("unix://"+helper.socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer hconn.Close()
	hc := healthpb.NewHealthClient(hconn)

	// A
	if _, err := rt.Version(ctx, &runtimeapi.VersionRequest{Version: "v1"}); err != nil {
		t.Fatalf("CRI Version: %v", err)
	}
	// B
	ctr := &ctrRun{args: []string{"version"}}
	runCtr(t, ctrBin, c.Socket, ctr)
	// C
	if _, err := hc.Check(ctx, &healthpb.HealthCheckRequest{Service: "C"}); err != nil {
		t.Fatalf("health check C: %v", err)
	}

	checkPIDs := func(t *testing.T, recs []*record, pids ...int) {
		t.Helper()
		for _, r := range recs {
			ok := false
			for _, p := range pids {
				ok = ok || int(r.PID) == p || int(r.PeerPID) == p
			}
			if !ok {
				t.Errorf("line with neither pid nor peer_pid in %v:\n    %s", pids, r)
			}
		}
	}
	checkSocket := func(t *testing.T, recs []*record, socket string) {
		t.Helper()
		for _, r := range recs {
			if r.Socket != socket {
				t.Errorf("line on socket %q, want only %q:\n    %s", r.Socket, socket, r)
			}
		}
	}

	// Phase one: everyone must have shown C.
	markerC := func(recs []*record) bool { return countCalls(recs, healthCheck, self, helper.socket) >= 1 }
	for _, tr := range []*tracer{pidHelper, sockHelper, pidSelf, pidBoth} {
		tr.waitRecords("health check C", markerC)
	}
	t.Run("pid=helper", func(t *testing.T) {
		recs := stopJSON(t, pidHelper, syscall.SIGTERM)
		checkPIDs(t, recs, helper.pid)
		wantCalls(t, recs, healthCheck, self, helper.socket, 1)
		wantCalls(t, recs, "/runtime.v1.RuntimeService/Version", self, c.Socket, 0)
		wantCallsFrom(t, recs, ctr.pid, 0)
	})
	t.Run("socket=helper", func(t *testing.T) {
		recs := stopJSON(t, sockHelper, syscall.SIGINT)
		checkSocket(t, recs, helper.socket)
		wantCalls(t, recs, healthCheck, self, helper.socket, 1)
		wantCalls(t, recs, "/runtime.v1.RuntimeService/Version", self, c.Socket, 0)
		wantCallsFrom(t, recs, ctr.pid, 0)
	})
	t.Run("pid=self", func(t *testing.T) {
		recs := stopJSON(t, pidSelf, syscall.SIGTERM)
		checkPIDs(t, recs, self)
		wantCalls(t, recs, "/runtime.v1.RuntimeService/Version", self, c.Socket, 1)
		wantCalls(t, recs, healthCheck, self, helper.socket, 1)
		wantCallsFrom(t, recs, ctr.pid, 0)
	})
	t.Run("pid=helper,containerd", func(t *testing.T) {
		recs := stopJSON(t, pidBoth, syscall.SIGINT)
		checkPIDs(t, recs, helper.pid, c.PID)
		// Every call of the test and ctr involves one of the two.
		wantCalls(t, recs, "/runtime.v1.RuntimeService/Version", self, c.Socket, 1)
		wantCalls(t, recs, healthCheck, self, helper.socket, 1)
		wantCalls(t, recs, "/containerd.services.version.v1.Version/Version", ctr.pid, c.Socket, 1)
	})

	// Phase two: D, then E as the marker for the containerd filters.
	if _, err := hc.Check(ctx, &healthpb.HealthCheckRequest{Service: "D"}); err != nil {
		t.Fatalf("health check D: %v", err)
	}
	if _, err := img.ListImages(ctx, &runtimeapi.ListImagesRequest{}); err != nil {
		t.Fatalf("CRI ListImages (E): %v", err)
	}
	markerE := func(recs []*record) bool {
		return countCalls(recs, "/runtime.v1.ImageService/ListImages", self, c.Socket) >= 1
	}
	for _, tr := range []*tracer{pidContainerd, sockLink, all} {
		tr.waitRecords("ListImages E", markerE)
	}
	t.Run("pid=containerd", func(t *testing.T) {
		recs := stopJSON(t, pidContainerd, syscall.SIGINT)
		checkPIDs(t, recs, c.PID)
		wantCalls(t, recs, "/runtime.v1.RuntimeService/Version", self, c.Socket, 1)
		wantCalls(t, recs, "/containerd.services.version.v1.Version/Version", ctr.pid, c.Socket, 1)
		wantCalls(t, recs, "/runtime.v1.ImageService/ListImages", self, c.Socket, 1)
		wantCalls(t, recs, healthCheck, self, helper.socket, 0)
	})
	t.Run("socket=containerd via symlink", func(t *testing.T) {
		recs := stopJSON(t, sockLink, syscall.SIGTERM)
		// Lines show the path the socket was bound to.
		checkSocket(t, recs, c.Socket)
		wantCalls(t, recs, "/runtime.v1.RuntimeService/Version", self, c.Socket, 1)
		wantCalls(t, recs, "/containerd.services.version.v1.Version/Version", ctr.pid, c.Socket, 1)
		wantCalls(t, recs, "/runtime.v1.ImageService/ListImages", self, c.Socket, 1)
		wantCalls(t, recs, healthCheck, self, helper.socket, 0)
	})
	t.Run("unfiltered", func(t *testing.T) {
		// Other processes on the machine may use gRPC over unix sockets
		// too; only the test's own traffic is counted.
		recs := stopJSON(t, all, syscall.SIGINT)
		wantCalls(t, recs, "/runtime.v1.RuntimeService/Version", self, c.Socket, 1)
		wantCalls(t, recs, "/containerd.services.version.v1.Version/Version", ctr.pid, c.Socket, 1)
		wantCalls(t, recs, healthCheck, self, helper.socket, 2)
		wantCalls(t, recs, "/runtime.v1.ImageService/ListImages", self, c.Socket, 1)
		for _, r := range recs {
			if r.method() == healthCheck && r.Type == "request" {
				if r.Comm != testComm() || int(r.PeerPID) != helper.pid {
					t.Errorf("health check from %s to %d, want from %s to the helper (%d):\n    %s", r.Comm, r.PeerPID, testComm(), helper.pid, r)
				}
			}
		}
	})
}

// stopJSON stops tr with sig and returns its parsed output.
func stopJSON(t *testing.T, tr *tracer, sig os.Signal) []*record {
	t.Helper()
	out := tr.stop(sig)
	tr.checkQuietStderr(t)
	recs, err := parseJSON(out)
	if err != nil {
		t.Fatalf("%s: %v", tr.name, err)
	}
	return recs
}

// countCalls counts the complete calls (a request line and a final
// response line on the same connection and stream) to method that process
// client made on socket.
func countCalls(recs []*record, method string, client int, socket string) int {
	type key struct {
		conn   uint64
		stream uint32
	}
	reqs := map[key]bool{}
	n := 0
	for _, r := range recs {
		if r.method() != method || r.Socket != socket {
			continue
		}
		k := key{r.Conn, r.Stream}
		switch {
		case r.Type == "request" && int(r.PID) == client:
			reqs[k] = true
		case r.Type == "response" && r.Status != nil && int(r.PeerPID) == client && reqs[k]:
			n++
		}
	}
	return n
}

func wantCalls(t *testing.T, recs []*record, method string, client int, socket string, want int) {
	t.Helper()
	if got := countCalls(recs, method, client, socket); got != want {
		t.Errorf("%d complete %s calls by pid %d on %s, want %d; output:\n%s", got, method, client, socket, want, indent(joinRecords(recs)))
	}
}

// wantCallsFrom asserts the number of lines involving process pid.
func wantCallsFrom(t *testing.T, recs []*record, pid, want int) {
	t.Helper()
	n := 0
	for _, r := range recs {
		if int(r.PID) == pid || int(r.PeerPID) == pid {
			n++
		}
	}
	if n != want {
		t.Errorf("%d lines involving pid %d, want %d", n, pid, want)
	}
}
