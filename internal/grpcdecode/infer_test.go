package grpcdecode

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/containerdsnoop/containerdsnoop/internal/call"
	"github.com/containerdsnoop/containerdsnoop/internal/capture"
	"github.com/containerdsnoop/containerdsnoop/internal/h2"
	"github.com/containerdsnoop/containerdsnoop/internal/h2/hpack"
	"github.com/containerdsnoop/containerdsnoop/internal/stream"
	"github.com/containerdsnoop/containerdsnoop/internal/testutil/wirerec"
)

// A hostile (or merely unlucky) connection (wirerec.JoinedRequest): before
// the attach the client inserted ":path:
// /runtime.v1.RuntimeService/ContainerStats", never sent again; after it,
// every call refers to that entry, but its payloads are a Version request
// and response.
const truePath = "/runtime.v1.RuntimeService/ContainerStats"

func versionPayloads(t *testing.T) (req, resp []byte) {
	req, err := proto.Marshal(&runtimeapi.VersionRequest{Version: "v1"})
	if err != nil {
		t.Fatal(err)
	}
	resp, err = proto.Marshal(&runtimeapi.VersionResponse{Version: "0.1.0", RuntimeName: "containerd", RuntimeVersion: "v2.1.0", RuntimeApiVersion: "v1"})
	if err != nil {
		t.Fatal(err)
	}
	return req, resp
}

func hostileCall(t *testing.T, id uint32, block, req, resp []byte) []wirerec.Record {
	return wirerec.H2Call(id, block, req, wirerec.JoinedResponse, resp, wirerec.JoinedOKTrailers)
}

// truthPeer names the client's index 62 from call `from` on, as a peer
// probe would: the entry's real content.
type truthPeer struct {
	calls, from int
}

func (p *truthPeer) Begin(*capture.Event, []byte) { p.calls++ }
func (p *truthPeer) Reset()                       {}
func (p *truthPeer) Pending() bool                { return false }
func (p *truthPeer) Resolve(q hpack.Query) (string, string, bool) {
	if p.calls >= p.from && q.End-q.Start == 1 && q.Block[q.Start] == 0xbe && bytes.Equal(q.Block[:2], []byte{0x83, 0x86}) {
		return ":path", truePath, true
	}
	return "", "", false
}

func decodeRecords(t *testing.T, recs []wirerec.Record, peer *truthPeer) []*call.Record {
	var out []*call.Record
	d := h2.NewDecoder(New(func(r *call.Record) { c := *r; out = append(out, &c) }))
	if peer != nil {
		client := true
		d.SetPeerFields(func() h2.PeerDirection {
			// Only the client direction is named.
			if client {
				client = false
				return peer
			}
			return &truthPeer{from: 1 << 30}
		})
	}
	asm := stream.New(d)
	evs := wirerec.Events(recs, time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC))
	for i := range evs {
		asm.Feed(&evs[i])
	}
	asm.Close()
	return out
}

// TestInferenceContradicted: the calls' payloads fit Version, so after two
// of them Version is inferred (wrongly, but labelled); then the truth
// arrives, as a literal :path on a call that also refers to the entry, or
// as a peer probe's answer. The line that shows it says the earlier
// inference was wrong, the count goes up, and no later line shows Version.
func TestInferenceContradicted(t *testing.T) {
	req, resp := versionPayloads(t)
	for _, tc := range []struct {
		name  string
		probe bool
	}{{"literal", false}, {"probe", true}} {
		t.Run(tc.name, func(t *testing.T) {
			var recs []wirerec.Record
			for i := uint32(0); i < 8; i++ {
				block := wirerec.JoinedRequest
				if i == 4 && !tc.probe {
					block = wirerec.JoinedRequestWithPath(truePath)
				}
				recs = append(recs, hostileCall(t, 2*i+1, block, req, resp)...)
			}
			var peer *truthPeer
			if tc.probe {
				peer = &truthPeer{from: 5}
			}
			before := InferredWrong()
			lines := decodeRecords(t, recs, peer)
			inferred, notes, after := 0, 0, false
			for _, r := range lines {
				n := (r.Stream + 1) / 2 // call number, from 1
				if r.MethodInferred() {
					inferred++
					if r.Method != "/runtime.v1.RuntimeService/Version" || n < 3 {
						t.Errorf("call %d: inferred %s", n, r.Method)
					}
					if after {
						t.Errorf("call %d: inferred %s after the truth was shown", n, r.Method)
					}
				}
				if strings.Contains(r.Note, "were wrong") {
					notes++
					if n != 5 || r.Method != truePath {
						t.Errorf("call %d (%s): note %q", n, r.Method, r.Note)
					}
					after = true
				}
				if n > 5 && r.Method != "" && r.Method != truePath {
					t.Errorf("call %d: shown as %s", n, r.Method)
				}
				if n > 5 && tc.probe && (r.Method != truePath || r.MethodSource != call.SourcePeerProbe) {
					t.Errorf("call %d: method %q from %q, want the probe's", n, r.Method, r.MethodSource)
				}
			}
			if inferred == 0 || notes != 1 {
				t.Fatalf("%d lines inferred, %d notes; want some and 1", inferred, notes)
			}
			if got := InferredWrong() - before; got != 1 {
				t.Errorf("InferredWrong grew by %d, want 1", got)
			}
		})
	}
}

// TestInferenceResponseMisfit: a call shown as Version (inferred) whose
// response then does not fit Version ends without a method and with a
// note, counted.
func TestInferenceResponseMisfit(t *testing.T) {
	req, resp := versionPayloads(t)
	other, err := proto.Marshal(&runtimeapi.ContainerStatsResponse{Stats: &runtimeapi.ContainerStats{Attributes: &runtimeapi.ContainerAttributes{Id: "x", Metadata: &runtimeapi.ContainerMetadata{Name: "n", Attempt: 3}}}})
	if err != nil {
		t.Fatal(err)
	}
	var recs []wirerec.Record
	for i := uint32(0); i < 4; i++ {
		r := resp
		if i == 3 {
			r = other
		}
		recs = append(recs, hostileCall(t, 2*i+1, wirerec.JoinedRequest, req, r)...)
	}
	before := InferredWrong()
	lines := decodeRecords(t, recs, nil)
	var last *call.Record
	for _, r := range lines {
		if r.Stream == 7 && r.Final {
			last = r
		}
	}
	if last == nil || last.Method != "" || !strings.Contains(last.Note, "inference was wrong") {
		t.Fatalf("last call's end: %+v", last)
	}
	if got := InferredWrong() - before; got != 1 {
		t.Errorf("InferredWrong grew by %d, want 1", got)
	}
}

// TestInferenceCRIVersion: CRI v1alpha2 has v1's shapes, so payloads
// cannot tell them apart; the connection's own proven :paths do. One that
// showed a v1alpha2 path gets v1alpha2 names, one that showed both gets
// no CRI inference.
func TestInferenceCRIVersion(t *testing.T) {
	req, resp := versionPayloads(t)
	// A literal :path and content-type, no reference to index 62.
	literal := func(path string) []byte {
		b := append([]byte{0x83, 0x86, 0x04, byte(len(path))}, path...)
		return append(b, wirerec.JoinedRequest[3:]...)
	}
	for _, tc := range []struct {
		shown []string
		want  string
	}{
		{nil, "/runtime.v1.RuntimeService/Version"},
		{[]string{"/runtime.v1alpha2.RuntimeService/Status"}, "/runtime.v1alpha2.RuntimeService/Version"},
		{[]string{"/runtime.v1alpha2.RuntimeService/Status", "/runtime.v1.RuntimeService/Status"}, ""},
	} {
		var recs []wirerec.Record
		id := uint32(1)
		for _, p := range tc.shown {
			recs = append(recs, hostileCall(t, id, literal(p), req, resp)...)
			id += 2
		}
		for range 4 {
			recs = append(recs, hostileCall(t, id, wirerec.JoinedRequest, req, resp)...)
			id += 2
		}
		inferred := ""
		for _, r := range decodeRecords(t, recs, nil) {
			if r.MethodInferred() {
				if inferred != "" && r.Method != inferred {
					t.Fatalf("shown %v: inferred %s and %s", tc.shown, inferred, r.Method)
				}
				inferred = r.Method
			}
		}
		if inferred != tc.want {
			t.Errorf("shown %v: inferred %q, want %q", tc.shown, inferred, tc.want)
		}
	}
}

// TestInferenceStatusContradicted: trailers inferred OK (they ended two
// Version calls that got their reply) then end a unary call that got no
// reply, which an OK never does: the note says the earlier statuses were
// wrong, it is counted, and those trailers are never inferred OK again.
func TestInferenceStatusContradicted(t *testing.T) {
	req, resp := versionPayloads(t)
	var recs []wirerec.Record
	for i := uint32(0); i < 7; i++ {
		r := resp
		if i == 4 {
			r = nil
		}
		recs = append(recs, hostileCall(t, 2*i+1, wirerec.JoinedRequest, req, r)...)
	}
	before := InferredWrong()
	okBefore, okAfter, notes := 0, 0, 0
	for _, r := range decodeRecords(t, recs, nil) {
		n := (r.Stream + 1) / 2
		if r.Status != nil && r.StatusSource == call.SourceInferred {
			if n < 5 {
				okBefore++
			} else {
				okAfter++
			}
		}
		if strings.Contains(r.Note, "those statuses were wrong") {
			notes++
			if n != 5 || r.Status != nil {
				t.Errorf("call %d: note %q with status %v", n, r.Note, r.Status)
			}
		}
	}
	if okBefore == 0 || okAfter != 0 || notes != 1 {
		t.Fatalf("inferred OK before the contradiction %d, after %d; notes %d", okBefore, okAfter, notes)
	}
	if got := InferredWrong() - before; got != 1 {
		t.Errorf("InferredWrong grew by %d, want 1", got)
	}
}
