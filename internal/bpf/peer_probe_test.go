package bpf_test

import (
	"bytes"
	"errors"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/http2/hpack"

	"github.com/containerdsnoop/containerdsnoop/internal/bpf"
	"github.com/containerdsnoop/containerdsnoop/internal/capture"
	"github.com/containerdsnoop/containerdsnoop/internal/peerprobe"
	"github.com/containerdsnoop/containerdsnoop/internal/testutil/privileged"
)

// TestCapturePeerProbe: the peer probe (a uprobe on
// hpack.(*Encoder).WriteField) loads next to every backend, is placed on
// this test binary by peerprobe's own discovery, and hands over the field
// this process encodes, name and value whole. Named TestCapture* so the
// kernel matrix runs it on every kernel and architecture.
func TestCapturePeerProbe(t *testing.T) {
	privileged.Require(t)
	expect := strings.Split(os.Getenv("CONTAINERDSNOOP_EXPECT_BACKENDS"), ",")
	for _, b := range bpf.Backends() {
		tr, err := bpf.Open(bpf.Options{Attach: b, PeerProbes: true, IncludeSelf: true, PollInterval: 20 * time.Millisecond, RingBufSize: 1 << 20})
		if err != nil {
			if slices.Contains(expect, b) {
				t.Errorf("backend %s is expected to work on this kernel: %v", b, err)
			} else {
				t.Logf("backend %s not available on this kernel: %v", b, err)
			}
			continue
		}
		t.Run(b, func(t *testing.T) {
			defer tr.Close()
			testPeerProbe(t, tr, b)
		})
	}
}

func testPeerProbe(t *testing.T, tr *bpf.Tracer, backend string) {
	if !tr.PeerProbes() {
		t.Fatal("the kernel refused the peer-probe program")
	}
	m := peerprobe.New(tr, t.Logf, 0)
	defer m.Close()
	if v := m.Examine(uint32(os.Getpid())); !strings.HasPrefix(v, "probed") {
		t.Fatalf("this test binary: %s", v)
	}
	path := "/peer.probe.v1.Test/" + backend
	var buf bytes.Buffer
	if err := hpack.NewEncoder(&buf).WriteField(hpack.HeaderField{Name: ":path", Value: path}); err != nil {
		t.Fatal(err)
	}
	var ev capture.Event
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); {
		err := tr.Read(&ev)
		if errors.Is(err, bpf.ErrIdle) {
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		if f := ev.Field; f != nil && f.Value == path {
			if f.Name != ":path" || !f.Whole() || int(ev.PID) != os.Getpid() {
				t.Fatalf("field %+v from pid %d", f, ev.PID)
			}
			return
		}
	}
	t.Fatalf("no record of the field %q within 20 s", path)
}
