package protoreg

import (
	"testing"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/containerdsnoop/containerdsnoop/internal/call"
)

// labelsInOrder encodes a Container with the given labels in the order
// given, as a Go encoder iterating a map does: each entry is field 8, a
// message of key (1) and value (2).
func labelsInOrder(id string, kv ...string) []byte {
	b := protowire.AppendTag(nil, 1, protowire.BytesType)
	b = protowire.AppendString(b, id)
	for i := 0; i < len(kv); i += 2 {
		var e []byte
		e = protowire.AppendTag(e, 1, protowire.BytesType)
		e = protowire.AppendString(e, kv[i])
		e = protowire.AppendTag(e, 2, protowire.BytesType)
		e = protowire.AppendString(e, kv[i+1])
		b = protowire.AppendTag(b, 8, protowire.BytesType)
		b = protowire.AppendBytes(b, e)
	}
	var resp []byte
	resp = protowire.AppendTag(resp, 1, protowire.BytesType)
	return protowire.AppendBytes(resp, b)
}

// TestCacheMapOrder: the same answer with its map entries in another
// order (as containerd 2.x and grpc-go send it) is the same shared
// message; a different answer is not.
func TestCacheMapOrder(t *testing.T) {
	m, ok := Lookup("/runtime.v1.RuntimeService/ListContainers")
	if !ok {
		t.Fatal("ListContainers not registered")
	}
	decode := func(payload []byte) *runtimeapi.ListContainersResponse {
		t.Helper()
		var r call.Record
		DecodeMessage(&r, m, call.Response, payload)
		got, ok := r.Message.(*runtimeapi.ListContainersResponse)
		if !ok {
			t.Fatalf("decoded %T (%s)", r.Message, r.Note)
		}
		return got
	}
	a := decode(labelsInOrder("cache-map-order", "a", "1", "b", "2", "c", "3"))
	b := decode(labelsInOrder("cache-map-order", "c", "3", "a", "1", "b", "2"))
	if a != b {
		t.Error("the same answer in another map order was decoded into another message")
	}
	again := decode(labelsInOrder("cache-map-order", "c", "3", "a", "1", "b", "2"))
	if again != a {
		t.Error("the second order, seen again, was not found")
	}
	other := decode(labelsInOrder("cache-map-order", "a", "1", "b", "2", "c", "4"))
	if other == a || other.Containers[0].Labels["c"] != "4" {
		t.Errorf("a different answer shared the message: %v", other)
	}
	if want := map[string]string{"a": "1", "b": "2", "c": "3"}; !proto.Equal(a, &runtimeapi.ListContainersResponse{Containers: []*runtimeapi.Container{{Id: "cache-map-order", Labels: want}}}) {
		t.Errorf("decoded %v", a)
	}
}
