package protoreg

import (
	"testing"

	"google.golang.org/protobuf/proto"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
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
