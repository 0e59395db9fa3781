package grpcdecode

import (
	"bytes"
	"compress/gzip"
	"encoding/binary"
	"testing"

	"google.golang.org/protobuf/proto"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

func frame(flag byte, payload []byte) []byte {
	b := []byte{flag, 0, 0, 0, 0}
	binary.BigEndian.PutUint32(b[1:], uint32(len(payload)))
	return append(b, payload...)
}

func TestSplitterAcrossAndWithinDATA(t *testing.T) {
	a, b := bytes.Repeat([]byte{1}, 40000), []byte("xy")
	wire := append(frame(0, a), frame(0, b)...)
	var s splitter
	var got [][]byte
	for i := 0; i < len(wire); i += 16384 { // DATA frames of 16 KiB
		msgs, err := s.add(wire[i:min(i+16384, len(wire))])
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range msgs {
			got = append(got, bytes.Clone(m.payload)) // valid until the next add
		}
	}
	if len(got) != 2 || !bytes.Equal(got[0], a) || !bytes.Equal(got[1], b) || s.partial() {
		t.Fatalf("got %d messages, partial %v", len(got), s.partial())
	}
	// An empty message is legal: a 5-byte prefix and nothing else.
	msgs, err := s.add(frame(0, nil))
	if err != nil || len(msgs) != 1 || len(msgs[0].payload) != 0 {
		t.Fatalf("empty message: %v %v", msgs, err)
	}
}

func TestSplitterRejectsNonBoundary(t *testing.T) {
	var s splitter
	if _, err := s.add([]byte{7, 0, 0, 0, 1, 0}); err == nil {
		t.Fatal("flag 7 accepted")
	}
	if _, err := s.add([]byte{0, 0xff, 0xff, 0xff, 0xff}); err == nil {
		t.Fatal("4 GiB length accepted")
	}
	if s.partial() {
		t.Fatal("buffer kept after a bad prefix")
	}
}

func TestInflate(t *testing.T) {
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	zw.Write([]byte("hello"))
	zw.Close()
	out, err := inflate("gzip", buf.Bytes())
	if err != nil || string(out) != "hello" {
		t.Fatalf("%q %v", out, err)
	}
	if _, err := inflate("snappy", buf.Bytes()); err == nil {
		t.Fatal("unknown encoding accepted")
	}
	if _, err := inflate("", buf.Bytes()); err == nil {
		t.Fatal("compressed flag without grpc-encoding accepted")
	}
}

func TestPercentDecode(t *testing.T) {
	for in, want := range map[string]string{
		"plain":            "plain",
		"100%25 done":      "100% done",
		"%E2%80%94":        "\u2014",
		"bad %zz escape %": "bad %zz escape %",
	} {
		if got := percentDecode(in); got != want {
			t.Errorf("percentDecode(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestRegistryFromDescriptors(t *testing.T) {
	for path, want := range map[string][2]string{
		"/runtime.v1.RuntimeService/Version":                   {"runtime.v1.VersionRequest", "runtime.v1.VersionResponse"},
		"/containerd.services.leases.v1.Leases/Create":         {"containerd.services.leases.v1.CreateRequest", "containerd.services.leases.v1.CreateResponse"},
		"/containerd.services.namespaces.v1.Namespaces/Delete": {"containerd.services.namespaces.v1.DeleteNamespaceRequest", "google.protobuf.Empty"},
		"/containerd.services.events.v1.Events/Forward":        {"containerd.services.events.v1.ForwardRequest", "google.protobuf.Empty"},
		"/containerd.task.v2.Task/Create":                      {"containerd.task.v2.CreateTaskRequest", "containerd.task.v2.CreateTaskResponse"},
	} {
		m, ok := Lookup(path)
		if !ok {
			t.Errorf("%s not registered", path)
			continue
		}
		if got := [2]string{string(m.Input.Descriptor().FullName()), string(m.Output.Descriptor().FullName())}; got != want {
			t.Errorf("%s: %v, want %v", path, got, want)
		}
	}
	if m, _ := Lookup("/containerd.services.events.v1.Events/Subscribe"); m == nil || !m.ServerStreaming {
		t.Error("Events/Subscribe not known as server-streaming")
	}
}

func TestGuessMethod(t *testing.T) {
	distinctive, _ := proto.Marshal(&runtimeapi.RunPodSandboxRequest{
		Config:         &runtimeapi.PodSandboxConfig{Metadata: &runtimeapi.PodSandboxMetadata{Name: "web", Uid: "u1", Namespace: "default", Attempt: 1}, Hostname: "web"},
		RuntimeHandler: "runc",
	})
	if got := guessMethod(distinctive); got != "/runtime.v1.RuntimeService/RunPodSandbox" {
		t.Errorf("guess for RunPodSandboxRequest = %q", got)
	}
	// {1: "abc"} fits every request type with a string field 1: no guess.
	ambiguous, _ := proto.Marshal(&runtimeapi.ContainerStatusRequest{ContainerId: "abc"})
	if got := guessMethod(ambiguous); got != "" {
		t.Errorf("ambiguous payload guessed as %q", got)
	}
	if got := guessMethod(nil); got != "" {
		t.Errorf("empty payload guessed as %q", got)
	}
}

func TestSchemaless(t *testing.T) {
	fields, ok := Schemaless([]byte{0x0a, 0x05, 'h', 'e', 'l', 'l', 'o', 0x10, 0x96, 0x01})
	if !ok || SchemalessText(fields) != `1:"hello" 2:150` {
		t.Fatalf("%v %q", ok, SchemalessText(fields))
	}
	if _, ok := Schemaless([]byte{0x0a, 0x05, 'h'}); ok {
		t.Fatal("truncated message accepted")
	}
}
