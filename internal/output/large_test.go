package output

import (
	"encoding/json"
	"fmt"
	"io"
	"reflect"
	"runtime"
	"strings"
	"testing"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// A large message's JSON is built in a buffer sized from its wire size,
// not grown from nothing (about twice its JSON allocated and copied), and
// is the same JSON.
func TestRenderLargeMessageSizedAhead(t *testing.T) {
	labels := map[string]string{}
	for i := range 10000 {
		labels[fmt.Sprintf("example.com/label-%05d", i)] = strings.Repeat("v", 80)
	}
	m := &runtimeapi.ListContainersRequest{Filter: &runtimeapi.ContainerFilter{LabelSelector: labels}}
	wire, err := proto.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	j := newJSON(io.Discard)
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	out := j.render(m, 5+len(wire))
	runtime.ReadMemStats(&after)
	var got, want any
	ref, _ := protojson.Marshal(m)
	if err := json.Unmarshal(out.json, &got); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(ref, &want); err != nil || !reflect.DeepEqual(got, want) {
		t.Fatalf("rendered JSON differs from protojson's (%v)", err)
	}
	n := after.TotalAlloc - before.TotalAlloc
	t.Logf("wire %d bytes, JSON %d, allocated %d", len(wire), len(out.json), n)
	// protojson's own work on a 10,000-entry map (sorting it, a value
	// per entry) allocates ~4x the JSON, the buffer sized ahead 1.25x,
	// taking the spaces out 1x: 6.2 MB here. Grown from nothing, the
	// buffer made it 10.1 MB.
	if n > 15*uint64(len(out.json))/2 {
		t.Fatalf("allocated %d bytes to render %d bytes of JSON", n, len(out.json))
	}
}
