package protoreg

import (
	"bytes"
	"fmt"
	"testing"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

func bigListContainers(n int) *runtimeapi.ListContainersResponse {
	r := &runtimeapi.ListContainersResponse{}
	for i := range n {
		c := &runtimeapi.Container{Id: fmt.Sprintf("c%03d", i), Labels: map[string]string{}, Annotations: map[string]string{}}
		for j := range 12 {
			c.Labels[fmt.Sprintf("label-%02d", j)] = fmt.Sprintf("value-%d-%d", i, j)
			c.Annotations[fmt.Sprintf("io.example/annotation-%02d", j)] = fmt.Sprint(j)
		}
		r.Containers = append(r.Containers, c)
	}
	return r
}

// TestCanonicalMaps: an answer marshalled again (Go writes each map in a
// new random order) has one canonical form, the decoder's message for it
// is the same, and a changed label gives another form.
func TestCanonicalMaps(t *testing.T) {
	msg := bigListContainers(20)
	md := msg.ProtoReflect().Descriptor()
	first, _ := proto.Marshal(msg)
	want, ok := canonicalMaps(md, first)
	if !ok {
		t.Fatal("a ListContainers answer has no canonical form")
	}
	orders := 0
	for range 20 {
		b, _ := proto.Marshal(msg)
		if !bytes.Equal(b, first) {
			orders++
		}
		got, ok := canonicalMaps(md, b)
		if !ok || !bytes.Equal(got, want) {
			t.Fatalf("another map order, another canonical form (ok %v)", ok)
		}
	}
	if orders == 0 {
		t.Fatal("marshalling never changed the map order: the test proves nothing")
	}
	checkCanonicalDecodes(t, md, first)
	msg.Containers[7].Labels["label-03"] = "changed"
	b, _ := proto.Marshal(msg)
	if got, ok := canonicalMaps(md, b); !ok || bytes.Equal(got, want) {
		t.Fatalf("a changed label kept the canonical form (ok %v)", ok)
	}
}

// TestCanonicalMapsRefused: where the order of entries can matter, or an
// entry is not the plain key-and-value this walk reads, there is no
// canonical form (the cache then keys by the bytes as sent).
func TestCanonicalMapsRefused(t *testing.T) {
	md := (&runtimeapi.Container{}).ProtoReflect().Descriptor()
	entry := func(fields ...[2]string) []byte {
		var e []byte
		for _, f := range fields {
			num := protowire.Number(1)
			if f[0] == "v" {
				num = 2
			}
			e = protowire.AppendString(protowire.AppendTag(e, num, protowire.BytesType), f[1])
		}
		return protowire.AppendBytes(protowire.AppendTag(nil, 8, protowire.BytesType), e)
	}
	cat := func(parts ...[]byte) []byte { return bytes.Join(parts, nil) }
	for name, b := range map[string][]byte{
		"one key twice":      cat(entry([2]string{"k", "a"}, [2]string{"v", "1"}), entry([2]string{"k", "a"}, [2]string{"v", "2"})),
		"value before key":   entry([2]string{"v", "1"}, [2]string{"k", "a"}),
		"no key":             entry([2]string{"v", "1"}),
		"key twice in entry": entry([2]string{"k", "a"}, [2]string{"k", "b"}, [2]string{"v", "1"}),
		"truncated":          entry([2]string{"k", "a"})[:4],
	} {
		if _, ok := canonicalMaps(md, b); ok {
			t.Errorf("%s: a canonical form", name)
		}
	}
	ok := cat(entry([2]string{"k", "b"}, [2]string{"v", "1"}), entry([2]string{"k", "a"}))
	if _, good := canonicalMaps(md, ok); !good {
		t.Error("an entry without a value (the default) refused")
	}
	checkCanonicalDecodes(t, md, ok)
}

// checkCanonicalDecodes: b and its canonical form decode (protobuf-go's
// Unmarshal, the oracle) to equal messages, or both fail.
func checkCanonicalDecodes(t *testing.T, md protoreflect.MessageDescriptor, b []byte) {
	t.Helper()
	canon, ok := canonicalMaps(md, b)
	if !ok {
		return
	}
	if len(canon) != len(b) {
		t.Fatalf("canonical form of %d bytes for %d", len(canon), len(b))
	}
	mt, err := protoregistry.GlobalTypes.FindMessageByName(md.FullName())
	if err != nil {
		t.Fatal(err)
	}
	x, y := mt.New().Interface(), mt.New().Interface()
	ex, ey := proto.Unmarshal(b, x), proto.Unmarshal(canon, y)
	if (ex == nil) != (ey == nil) || (ex == nil && !proto.Equal(x, y)) {
		t.Fatalf("%s: %x decodes to %v (%v), its canonical form %x to %v (%v)", md.FullName(), b, x, ex, canon, y, ey)
	}
}

// canonTypes are map-bearing types the fuzzer reads its bytes as.
var canonTypes = []protoreflect.MessageDescriptor{
	(&runtimeapi.ListContainersResponse{}).ProtoReflect().Descriptor(),
	(&runtimeapi.PodSandboxConfig{}).ProtoReflect().Descriptor(),
	(&runtimeapi.ListContainersRequest{}).ProtoReflect().Descriptor(),
	(&runtimeapi.ContainerStatusResponse{}).ProtoReflect().Descriptor(),
}

// FuzzCanonicalMaps: whatever the bytes, a canonical form decodes to what
// the bytes do; and shuffling a decodable message's map entries keeps it.
func FuzzCanonicalMaps(f *testing.F) {
	seed, _ := proto.Marshal(bigListContainers(2))
	f.Add(uint8(0), seed)
	sb, _ := proto.Marshal(&runtimeapi.PodSandboxConfig{Labels: map[string]string{"a": "1", "b": "2"},
		Linux: &runtimeapi.LinuxPodSandboxConfig{Sysctls: map[string]string{"x": "y", "z": ""}}})
	f.Add(uint8(1), sb)
	f.Fuzz(func(t *testing.T, which uint8, b []byte) {
		md := canonTypes[int(which)%len(canonTypes)]
		checkCanonicalDecodes(t, md, b)
		mt, _ := protoregistry.GlobalTypes.FindMessageByName(md.FullName())
		m := mt.New().Interface()
		if proto.Unmarshal(b, m) != nil {
			return
		}
		// Two encodings of one message by protobuf-go differ only in
		// their maps' order: one canonical form.
		x, err := proto.Marshal(m)
		if err != nil {
			return
		}
		y, _ := proto.MarshalOptions{Deterministic: true}.Marshal(m)
		cx, okx := canonicalMaps(md, x)
		cy, oky := canonicalMaps(md, y)
		if okx != oky || !bytes.Equal(cx, cy) {
			t.Fatalf("one message, two canonical forms (%v %v):\n%x\n%x", okx, oky, cx, cy)
		}
	})
}

// BenchmarkMapOrderLookup: finding a decoded 64 KiB ListContainers answer
// again when it comes in another map order (as every answer from a Go
// server does): by its canonical form, and, for comparison, what the
// cache did before (unmarshal, then marshal deterministically to look up).
//
//	go test -run '^$' -bench MapOrderLookup ./internal/protoreg/
func BenchmarkMapOrderLookup(b *testing.B) {
	msg := bigListContainers(40)
	mt := msg.ProtoReflect().Type()
	var payloads [][]byte
	for range 16 {
		p, _ := proto.Marshal(msg)
		payloads = append(payloads, p)
	}
	size := int64(len(payloads[0]))
	b.Run("canonical", func(b *testing.B) {
		if _, err := messages.decode(mt, payloads[0]); err != nil {
			b.Fatal(err)
		}
		b.SetBytes(size)
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			if _, err := messages.decode(mt, payloads[i%len(payloads)]); err != nil {
				b.Fatal(err)
			}
			i++
		}
	})
	b.Run("unmarshal_remarshal", func(b *testing.B) {
		b.SetBytes(size)
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			m := mt.New().Interface()
			if err := proto.Unmarshal(payloads[i%len(payloads)], m); err != nil {
				b.Fatal(err)
			}
			if _, err := (proto.MarshalOptions{Deterministic: true}).Marshal(m); err != nil {
				b.Fatal(err)
			}
			i++
		}
	})
}
