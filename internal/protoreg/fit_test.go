package protoreg

import (
	"bytes"
	"testing"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// FuzzFit: the look at the tags Fit takes before parsing refuses only
// what parsing would: Fit and fitParsed agree on every candidate type
// (the fuzzer's inputs are far below where Fit also refuses messages too
// dense to parse, TestDenseMessages).
func FuzzFit(f *testing.F) {
	pull, _ := proto.Marshal(&runtimeapi.PullImageRequest{Image: &runtimeapi.ImageSpec{Image: "x", Annotations: map[string]string{"a": "b"}},
		Auth: &runtimeapi.AuthConfig{Username: "u", Password: "p"}})
	f.Add(uint8(0), pull)
	lc, _ := proto.Marshal(&runtimeapi.ListContainersResponse{Containers: []*runtimeapi.Container{{Id: "c", Labels: map[string]string{"k": "v"}}}})
	f.Add(uint8(1), lc)
	f.Add(uint8(2), []byte{0x08, 0x96, 0x01, 0x12, 0x00})
	f.Add(uint8(3), []byte{0x0a, 0x03, 0x08, 0x01, 0x10})
	candOnce.Do(buildCandidates)
	f.Fuzz(func(t *testing.T, which uint8, b []byte) {
		for _, typ := range []int{int(which) % len(candTypes), int(which/2) % len(candTypes)} {
			mt := candTypes[typ]
			_, ok := Fit(b, mt)
			_, want := fitParsed(b, mt)
			if ok != want {
				t.Fatalf("%s: Fit %v, parsing %v: %x", mt.Descriptor().FullName(), ok, want, b)
			}
		}
	})
}

// TestFitRefusesUndeclaredFields: 4 MiB of a field no credential type
// declares (a message any local process can send on a method no schema
// knows) is refused from its tags, without being parsed (protobuf-go
// kept it as unknown bytes, copied and grown, once per type tried).
func TestFitRefusesUndeclaredFields(t *testing.T) {
	garbage := bytes.Repeat([]byte{0xf8, 0x07, 0x00}, 4<<20/3) // field 127, varint 0
	mt := (&runtimeapi.PullImageRequest{}).ProtoReflect().Type()
	allocs := testing.AllocsPerRun(3, func() {
		if _, ok := Fit(garbage, mt); ok {
			t.Fatal("undeclared fields fit")
		}
	})
	if allocs > 0 {
		t.Errorf("refusing %d bytes of undeclared fields allocated %.0f times", len(garbage), allocs)
	}
	// A declared field nested under one: refused at its own level.
	inner, _ := proto.Marshal(&runtimeapi.ImageSpec{Image: "x"})
	nested := protowire.AppendBytes(protowire.AppendTag(nil, 1, protowire.BytesType), append(inner, 0xf8, 0x07, 0x00))
	if wireFits(nested, mt.Descriptor(), 0) {
		t.Errorf("%x: an undeclared field inside the image spec passed", nested)
	}
	if whole, _ := proto.Marshal(&runtimeapi.PullImageRequest{Image: &runtimeapi.ImageSpec{Image: "x"}, Auth: &runtimeapi.AuthConfig{Password: "p"}}); !wireFits(whole, mt.Descriptor(), 0) {
		t.Errorf("%x: a pull request does not pass as one", whole)
	}
}
