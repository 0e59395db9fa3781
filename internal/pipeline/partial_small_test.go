package pipeline

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protowire"

	"github.com/containerdsnoop/containerdsnoop/internal/budget"
	"github.com/containerdsnoop/containerdsnoop/internal/output"
)

// TestSmallPartialsWithinBudget: frames up to budget.SmallFrame are never
// refused, but they count. Connections each holding all but the last 100
// bytes of a 16 KiB ttrpc frame, more than budget.MaxPartialFrames in
// all, make the pipeline drop the connections of the oldest holders
// (counted in budget.PartialConns), so that what is reserved never
// exceeds the budget (16,384 such connections would otherwise hold
// 512 MiB both ways). The connection that sends is never the one
// dropped: the newest holder's frame, finished, is decoded; the oldest's
// end is not decoded into a call (its connection starts over, as joined
// mid-stream). Closing every connection releases everything.
func TestSmallPartialsWithinBudget(t *testing.T) {
	var buf bytes.Buffer
	w, _ := output.New("json", &buf, output.Options{})
	p := New(w, Filter{})
	before, evicted, refused := budget.PartialFrames.Used(), budget.PartialConns.Load(), budget.PartFrames.Load()
	id := protowire.AppendString(protowire.AppendTag(nil, 1, protowire.BytesType), strings.Repeat("x", 16000))
	frame := ttrpcRequest(3, "containerd.task.v2.Task", "Connect", id)
	if len(frame) > budget.SmallFrame {
		t.Fatalf("frame of %d bytes is not small", len(frame))
	}
	n := int(budget.MaxPartialFrames/int64(len(frame))) + 200
	t0 := time.Unix(1767323045, 0)
	var conns []*partialConn
	for i := range n {
		c := &partialConn{p: p, sock: 100000 + 2*uint64(i), t: t0.Add(time.Duration(i) * time.Millisecond)}
		conns = append(conns, c)
		// A call first, so the connection is known as ttrpc: its bytes
		// are then held by the ttrpc decoder, at the frame's size.
		c.send(0, ttrpcRequest(1, "containerd.task.v2.Task", "State", nil))
		c.send(1, ttrpcFrame(1, 2, nil))
		c.send(0, frame[:len(frame)-100])
		if used := budget.PartialFrames.Used(); used > budget.MaxPartialFrames {
			t.Fatalf("after %d connections, %d bytes of partial frames reserved: over the %d budget", i+1, used, budget.MaxPartialFrames)
		}
	}
	if got := budget.PartialConns.Load() - evicted; got < 200 {
		t.Errorf("%d connections dropped to stay within the budget, want at least 200", got)
	}
	if budget.PartFrames.Load() != refused {
		t.Error("a small frame was refused")
	}
	conns[0].send(0, frame[len(frame)-100:])
	conns[n-1].send(0, frame[len(frame)-100:])
	for _, c := range conns {
		c.close()
	}
	p.Close()
	if got := budget.PartialFrames.Used(); got != before {
		t.Errorf("%d bytes of partial frames still reserved after the connections closed", got-before)
	}
	if got := strings.Count(buf.String(), `"type":"request","stream":3,"method":"/containerd.task.v2.Task/Connect"`); got != 1 {
		t.Errorf("%d Connect requests decoded, want 1 (the newest holder's; the oldest's connection was dropped)", got)
		for _, l := range strings.Split(buf.String(), "\n") {
			if strings.Contains(l, "Connect") {
				t.Logf("%.300s", l)
			}
		}
	}
}
