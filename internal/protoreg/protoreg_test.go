package protoreg

import (
	"reflect"
	"strings"
	"testing"

	"google.golang.org/protobuf/encoding/prototext"
	"google.golang.org/protobuf/proto"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/containerdsnoop/containerdsnoop/internal/testutil/wirerec"
)

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

func TestGuessGRPCMethod(t *testing.T) {
	distinctive, _ := proto.Marshal(&runtimeapi.RunPodSandboxRequest{
		Config:         &runtimeapi.PodSandboxConfig{Metadata: &runtimeapi.PodSandboxMetadata{Name: "web", Uid: "u1", Namespace: "default", Attempt: 1}, Hostname: "web"},
		RuntimeHandler: "runc",
	})
	if got := GuessGRPCMethod(distinctive); got != "/runtime.v1.RuntimeService/RunPodSandbox" {
		t.Errorf("guess for RunPodSandboxRequest = %q", got)
	}
	// {1: "abc"} fits every request type with a string field 1: no guess.
	ambiguous, _ := proto.Marshal(&runtimeapi.ContainerStatusRequest{ContainerId: "abc"})
	if got := GuessGRPCMethod(ambiguous); got != "" {
		t.Errorf("ambiguous payload guessed as %q", got)
	}
	if got := GuessGRPCMethod(nil); got != "" {
		t.Errorf("empty payload guessed as %q", got)
	}
	// The same distinctive request grown past fitMaxMessage (a 1 MiB
	// label selector would take a parse per candidate type, seconds in
	// all) is not tried: no guess, and it fits nothing for inference.
	large, _ := proto.Marshal(&runtimeapi.RunPodSandboxRequest{
		Config: &runtimeapi.PodSandboxConfig{Metadata: &runtimeapi.PodSandboxMetadata{Name: "web", Uid: "u1", Namespace: "default", Attempt: 1},
			Hostname: "web", Labels: map[string]string{"big": strings.Repeat("x", fitMaxMessage)}},
		RuntimeHandler: "runc",
	})
	if got := GuessGRPCMethod(large); got != "" {
		t.Errorf("a %d-byte payload was fitted: guessed as %q", len(large), got)
	}
	if set := FitMethods(large, false); !set.Empty() {
		t.Errorf("a %d-byte payload fits %v", len(large), set)
	}
}

func TestSchemaless(t *testing.T) {
	msg := []byte{0x0a, 0x05, 'h', 'e', 'l', 'l', 'o', 0x10, 0x96, 0x01, 0x1a, 0x02, 0x08, 0x07}
	var fields []RawField
	for b := msg; len(b) > 0; {
		f, n := ReadRawField(b, 0)
		if n <= 0 {
			t.Fatalf("field %d of %x: %d", len(fields), msg, n)
		}
		fields, b = append(fields, f), b[n:]
	}
	want := []RawField{{Number: 1, Kind: RawString, Bytes: []byte("hello")}, {Number: 2, Uint: 150}, {Number: 3, Kind: RawMessage, Bytes: []byte{0x08, 0x07}}}
	if !reflect.DeepEqual(fields, want) || FieldCount(msg) != 3 {
		t.Fatalf("%+v, %d fields counted", fields, FieldCount(msg))
	}
	for _, bad := range [][]byte{{0x0a, 0x05, 'h'}, {0x0b}, {0x08}, {0x00, 0x00}} {
		if _, n := ReadRawField(bad, 0); n >= 0 || WellFormed(bad) || FieldCount(bad) != -1 {
			t.Errorf("malformed %x accepted: %d", bad, n)
		}
	}
}

// TestSchemalessDeepNesting: length-delimited fields nested a million
// deep (a 4 MiB message any local process can send) are read as nested
// messages down to MaxSchemalessDepth and no further. Unbounded, every
// level parsed all the levels below it and rendered them as hex: this
// test then ran for hours (a 32,000-deep message: 4 s, 11 GB of garbage).
func TestSchemalessDeepNesting(t *testing.T) {
	b := wirerec.NestedMessage(1 << 20)
	msg, depth := b, 0
	for {
		f, n := ReadRawField(msg, depth)
		if n != len(msg) {
			t.Fatalf("level %d: %d of %d bytes read as one field", depth, n, len(msg))
		}
		if f.Kind != RawMessage {
			if depth != MaxSchemalessDepth || f.Kind != RawHex {
				t.Fatalf("level %d: kind %d, want a message down to level %d and hex there", depth, f.Kind, MaxSchemalessDepth)
			}
			break
		}
		msg, depth = f.Bytes, depth+1
	}
}

// TestV1alpha2: CRI v1alpha2 calls are known, with the v1 message shapes
// under the v1alpha2 names, and decode like v1's.
func TestV1alpha2(t *testing.T) {
	m, ok := Lookup("/runtime.v1alpha2.ImageService/PullImage")
	if !ok || m.Input.Descriptor().FullName() != "runtime.v1alpha2.PullImageRequest" || m.Output.Descriptor().FullName() != "runtime.v1alpha2.PullImageResponse" {
		t.Fatalf("PullImage: %v %+v", ok, m)
	}
	if m, ok := Lookup("/runtime.v1alpha2.RuntimeService/Version"); !ok || m.Input.Descriptor().FullName() != "runtime.v1alpha2.VersionRequest" {
		t.Fatalf("Version: %v", ok)
	}
	b, _ := proto.Marshal(&runtimeapi.PullImageRequest{Image: &runtimeapi.ImageSpec{Image: "busybox"}, Auth: &runtimeapi.AuthConfig{Username: "u", Password: "p"}})
	msg := m.Input.New().Interface()
	if err := proto.Unmarshal(b, msg); err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(strings.Fields(prototext.Format(msg)), " "); !strings.Contains(got, `password: "p"`) || !strings.Contains(got, `image: "busybox"`) {
		t.Fatalf("decoded %s", got)
	}
}
