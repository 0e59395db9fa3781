package output

import (
	"bytes"
	"strings"
	"testing"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/containerdsnoop/containerdsnoop/internal/protoreg"
	"github.com/containerdsnoop/containerdsnoop/internal/testutil/schemalessref"
)

// checkSchemaless compares the streaming renderings of msg with the
// reference's (a tree through encoding/json and strings.Builder).
func checkSchemaless(t *testing.T, msg []byte) {
	t.Helper()
	fields, ok := schemalessref.Fields(msg)
	if protoreg.WellFormed(msg) != ok {
		t.Fatalf("WellFormed %v, reference %v: %x", !ok, ok, msg)
	}
	wantJSON, wantText := []byte("null"), ""
	if ok {
		wantText = schemalessref.Text(fields)
		if msg != nil { // nil is no message at all
			wantJSON = schemalessref.JSON(fields)
		}
	}
	if got := appendRaw([]byte("x"), msg); !bytes.Equal(got[1:], wantJSON) {
		t.Fatalf("JSON of %x:\n got %s\nwant %s", msg, got[1:], wantJSON)
	}
	got, gotOK := appendRawText([]byte("x"), msg, 0)
	if gotOK != ok || (ok && string(got[1:]) != wantText) || (!ok && string(got) != "x") {
		t.Fatalf("text of %x: %v %q, want %v %q", msg, gotOK, got, ok, wantText)
	}
	var scratch []uint64
	if _, gotOK := appendRawJSON(nil, msg, 0, &scratch); gotOK != ok || len(scratch) != 0 {
		t.Fatalf("JSON of %x: %v, scratch left with %d words", msg, gotOK, len(scratch))
	}
}

func schemalessSeeds() [][]byte {
	cri, _ := proto.Marshal(&runtimeapi.ListContainersRequest{Filter: &runtimeapi.ContainerFilter{
		Id: "abc", LabelSelector: map[string]string{"b": "<&>", "a": "x\u2028y", "c": "\n\t\r"}}})
	var many []byte
	for _, n := range []protowire.Number{2, 10, 1, 2, 100, 3, 10} {
		many = protowire.AppendVarint(protowire.AppendTag(many, n, protowire.VarintType), uint64(n)*1000)
	}
	many = protowire.AppendFixed32(protowire.AppendTag(many, 4, protowire.Fixed32Type), 7)
	many = protowire.AppendFixed64(protowire.AppendTag(many, 4, protowire.Fixed64Type), 1<<63)
	many = protowire.AppendBytes(protowire.AppendTag(many, 5, protowire.BytesType), []byte{0xff, 0x00})
	many = protowire.AppendBytes(protowire.AppendTag(many, 6, protowire.BytesType), nil)
	// Numbers whose decimal order is not their order, to the largest.
	var numbers []byte
	for _, n := range []protowire.Number{2147483647, 1000000000, 999999999, 100, 10, 1, 19, 2, 536870911, 10, 1000000000} {
		numbers = protowire.AppendVarint(protowire.AppendTag(numbers, n, protowire.VarintType), 1)
	}
	return [][]byte{cri, many, numbers, nil, {}, {0x0a, 0x05, 'h'}, {0x0b}, {0x08}}
}

func TestSchemalessRendering(t *testing.T) {
	for _, s := range schemalessSeeds() {
		checkSchemaless(t, s)
	}
	// Nested past the depth shown: the deepest level shown holds the
	// rest as hex.
	var deep []byte
	for range protoreg.MaxSchemalessDepth + 3 {
		deep = protowire.AppendBytes(protowire.AppendTag(nil, 1, protowire.BytesType), append(deep, 0x10, 0x01))
	}
	checkSchemaless(t, deep)
	got := string(appendRaw(nil, deep))
	if n := strings.Count(got, "{"); n != protoreg.MaxSchemalessDepth+1 || !strings.Contains(got, `"0x`) {
		t.Fatalf("%d levels shown (want %d) in %s", n, protoreg.MaxSchemalessDepth+1, got)
	}
}

// FuzzSchemaless: for any bytes, the JSON and text renderings of a message
// of unknown type are the reference's, byte for byte.
func FuzzSchemaless(f *testing.F) {
	for _, s := range schemalessSeeds() {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, msg []byte) { checkSchemaless(t, msg) })
}
