package peerprobe

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/containerdsnoop/containerdsnoop/internal/bpf"
	"github.com/containerdsnoop/containerdsnoop/internal/capture"
	"github.com/containerdsnoop/containerdsnoop/internal/testutil/containerdtest"
	"github.com/containerdsnoop/containerdsnoop/internal/testutil/privileged"
)

func TestIsWriteField(t *testing.T) {
	for name, want := range map[string]bool{
		"golang.org/x/net/http2/hpack.(*Encoder).WriteField":                              true,
		"vendor/golang.org/x/net/http2/hpack.(*Encoder).WriteField":                       true,
		"github.com/docker/cli/vendor/golang.org/x/net/http2/hpack.(*Encoder).WriteField": true,
		"example.com/golang.org/x/net/http2/hpack.(*Encoder).WriteField":                  false,
		"golang.org/x/net/http2/hpack.(*Encoder).WriteFieldX":                             false,
		"golang.org/x/net/http2/hpack.(*Decoder).Write":                                   false,
	} {
		if IsWriteField(name) != want {
			t.Errorf("%s: %v", name, !want)
		}
	}
}

// TestProbeDebianContainerd: the server side. Debian 12's containerd 1.6.20
// (stripped, go1.19) is probed, and its response and trailer fields come
// through the probe with a readable block prefix and insertion count: what
// peerfields needs to name the entries of grpc-status.
func TestProbeDebianContainerd(t *testing.T) {
	privileged.Require(t)
	c := containerdtest.Start(t)
	tr, err := bpf.Open(bpf.Options{PeerProbes: true, PollInterval: 20 * time.Millisecond, IncludeSelf: true})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	if !tr.PeerProbes() {
		t.Fatal("peer-probe program not loaded")
	}
	m := New(tr, t.Logf, 0)
	defer m.Close()
	if v := m.Examine(uint32(c.PID)); !strings.HasPrefix(v, "probed") {
		t.Fatalf("containerd: %s", v)
	}
	rt, _ := c.CRI(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for i := 0; i < 3; i++ {
		if _, err := rt.Version(ctx, &runtimeapi.VersionRequest{}); err != nil {
			t.Fatal(err)
		}
		_, _ = rt.ContainerStatus(ctx, &runtimeapi.ContainerStatusRequest{ContainerId: fmt.Sprint("missing-", i)})
	}
	var ev capture.Event
	seen := map[string]int{}
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) && seen["grpc-message"] < 6 {
		err := tr.Read(&ev)
		if errors.Is(err, bpf.ErrIdle) {
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		if ev.Field == nil || int(ev.PID) != c.PID {
			continue
		}
		f := ev.Field
		seen[f.Name]++
		if !f.HasInserted || !f.HasPrefix || !f.Whole() {
			t.Errorf("field %+v: unreadable parts", f)
		}
		if f.Name == ":status" && f.PrefixLen != 0 {
			t.Errorf(":status is not first in its block: %+v", f)
		}
	}
	if seen["grpc-status"] < 6 || seen["grpc-message"] < 6 {
		t.Fatalf("from containerd: %v", seen)
	}
	if s, _ := tr.Stats(); s.HeaderFields == 0 {
		t.Fatalf("stats %+v", s)
	}
}

// TestConnected: the processes at the ends of connections to a bound path
// are found (the client, whose own socket has no path, through the
// kernel's peer inode).
func TestConnected(t *testing.T) {
	privileged.Require(t)
	c := containerdtest.Start(t)
	rt, _ := c.CRI(t)
	if _, err := rt.Version(context.Background(), &runtimeapi.VersionRequest{}); err != nil {
		t.Fatal(err)
	}
	pids, err := Connected(func(p string) bool { return p == c.Socket })
	if err != nil {
		t.Fatal(err)
	}
	// The client is this process, which Connected leaves out (the tool
	// never probes itself); the e2e test covers a separate client.
	server := false
	for _, p := range pids {
		server = server || int(p) == c.PID
		if int(p) == os.Getpid() {
			t.Fatalf("the calling process is among %v", pids)
		}
	}
	if !server {
		t.Fatalf("containerd (pid %d) not among %v", c.PID, pids)
	}
}
