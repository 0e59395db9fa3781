package pipeline

import (
	"regexp"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/containerdsnoop/containerdsnoop/internal/callfilter"
	"github.com/containerdsnoop/containerdsnoop/internal/protoreg"
	"github.com/containerdsnoop/containerdsnoop/internal/testutil/wirerec"
)

// TestAttachInference starts decoding steady.wire (one connection whose
// header table never turns over: every call has kubelet's grpc-timeout of
// 120000m) at every 7th write, without peer probes. Nothing can be proven
// there of the calls' methods and statuses; what is inferred must always
// equal the truth, be labelled so, and be there (the test fails if
// inference does nothing). Health/Check has the types of Health/Watch, so
// it is never inferred.
func TestAttachInference(t *testing.T) {
	recs, calls := load(t, "steady")
	want := map[uint32]expectedCall{}
	for _, c := range calls {
		want[c.Stream] = c
	}
	evs := events(recs)
	ambiguous := ambiguousMethods(t, recs, want)
	methods, statuses, errorsShown, lines := 0, 0, 0, 0
	for start := 1; start < len(evs); start += 7 {
		for _, l := range replay(t, evs[start:]) {
			c, ok := want[l.Stream]
			if !ok {
				t.Fatalf("start %d: line for stream %d that the recording has no call for", start, l.Stream)
			}
			lines++
			if l.Method != nil {
				if *l.Method != c.Method {
					t.Fatalf("start %d: stream %d shown as %s (%s), was %s", start, l.Stream, *l.Method, l.MethodSource, c.Method)
				}
				switch l.MethodSource {
				case "inferred":
					methods++
					if strings.HasPrefix(c.Method, "/grpc.health.v1.Health/") {
						t.Fatalf("start %d: stream %d: %s inferred, but Health/Watch has its types", start, l.Stream, c.Method)
					}
					if ambiguous[c.Method] {
						t.Fatalf("start %d: stream %d: %s inferred, but its payloads fit other methods too", start, l.Stream, c.Method)
					}
				case "wire":
				default:
					t.Fatalf("start %d: stream %d: method_source %q", start, l.Stream, l.MethodSource)
				}
			} else if l.MethodSource != "" {
				t.Fatalf("start %d: stream %d: method_source %q without a method", start, l.Stream, l.MethodSource)
			}
			if l.Status != nil {
				if l.Status.Code != c.StatusCode {
					t.Fatalf("start %d: stream %d status %d (%s), was %d", start, l.Stream, l.Status.Code, l.StatusSource, c.StatusCode)
				}
				switch l.StatusSource {
				case "inferred":
					statuses++
				case "wire":
					if c.StatusCode != 0 {
						errorsShown++
					}
				default:
					t.Fatalf("start %d: stream %d: status_source %q", start, l.Stream, l.StatusSource)
				}
			} else if l.StatusSource != "" {
				t.Fatalf("start %d: stream %d: status_source %q without a status", start, l.Stream, l.StatusSource)
			}
			if strings.Contains(l.Note, "were wrong") || strings.Contains(l.Note, "was wrong") {
				t.Fatalf("start %d: stream %d: %s", start, l.Stream, l.Note)
			}
		}
	}
	t.Logf("%d lines from %d attach points: %d with an inferred method, %d with an inferred status, %d errors shown", lines, (len(evs)+6)/7, methods, statuses, errorsShown)
	if methods == 0 || statuses == 0 {
		t.Fatal("inference named nothing: the test proves nothing")
	}
}

// TestInferredRedactedAndFiltered: PullImage calls on a connection joined
// mid-stream (their :path an entry from before, wirerec.JoinedRequest),
// with registry credentials. Once PullImage is inferred, its lines carry
// it, labelled; --method selects them as what they are (inferred, and
// so labelled), and the password is hidden as on any PullImage.
// ambiguousMethods names the methods whose recorded payloads (read by the
// reference parser) fit another candidate's types as well as theirs, in
// every call: inference must never name them.
func ambiguousMethods(t *testing.T, recs []wirerec.Record, calls map[uint32]expectedCall) map[string]bool {
	client, err := wirerec.ParseH2(wirerec.Stream(recs, 1, false), true)
	if err != nil {
		t.Fatal(err)
	}
	server, err := wirerec.ParseH2(wirerec.Stream(recs, 1, true), false)
	if err != nil {
		t.Fatal(err)
	}
	fit := map[string]protoreg.MethodSet{}
	for id, c := range calls {
		set := protoreg.AllMethods()
		for _, d := range []struct {
			data     []byte
			response bool
		}{{client.Stream(id).Data, false}, {server.Stream(id).Data, true}} {
			msgs, err := wirerec.SplitGRPC(d.data)
			if err != nil {
				t.Fatal(err)
			}
			if len(msgs) > 0 {
				set = set.And(protoreg.FitMethods(msgs[0].Data, d.response))
			}
		}
		if old, ok := fit[c.Method]; ok {
			set = set.And(old)
		}
		fit[c.Method] = set
	}
	out := map[string]bool{}
	for m, set := range fit {
		_, one := set.Only()
		out[m] = !one
		t.Logf("%s: payloads fit only it: %v", m, one)
	}
	return out
}

func TestInferredRedactedAndFiltered(t *testing.T) {
	req, _ := proto.Marshal(&runtimeapi.PullImageRequest{Image: &runtimeapi.ImageSpec{Image: "registry.example/app:1"},
		Auth: &runtimeapi.AuthConfig{Username: "deploy", Password: "hunter2", IdentityToken: "tok"}})
	resp, _ := proto.Marshal(&runtimeapi.PullImageResponse{ImageRef: "sha256:" + strings.Repeat("ab", 32)})
	var recs []wirerec.Record
	for i := uint32(0); i < 4; i++ {
		recs = append(recs, wirerec.H2Call(2*i+1, wirerec.JoinedRequest, req, wirerec.JoinedResponse, resp, wirerec.JoinedOKTrailers)...)
	}
	evs := events(recs)
	for _, secrets := range []bool{false, true} {
		all := replayFiltered(t, evs, Filter{ShowSecrets: secrets})
		inferred := 0
		for _, l := range all {
			if l.Method != nil {
				if *l.Method != "/runtime.v1.ImageService/PullImage" || l.MethodSource != "inferred" {
					t.Fatalf("stream %d: %s (%s)", l.Stream, *l.Method, l.MethodSource)
				}
				inferred++
			}
			if shown := strings.Contains(string(l.Message), "hunter2"); shown != (secrets && l.Type == "request") {
				t.Errorf("secrets %v: stream %d %s: %s", secrets, l.Stream, l.Type, l.Message)
			}
		}
		if inferred == 0 {
			t.Fatal("PullImage never inferred: the test proves nothing")
		}
		filtered := replayFiltered(t, evs, Filter{Calls: callfilter.Options{Method: regexp.MustCompile("PullImage$")}})
		if len(filtered) != inferred {
			t.Errorf("--method PullImage$: %d lines, want the %d inferred ones", len(filtered), inferred)
		}
	}
}
