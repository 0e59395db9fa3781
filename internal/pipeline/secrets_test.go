package pipeline

import (
	"strings"
	"testing"

	"google.golang.org/protobuf/encoding/prototext"
	"google.golang.org/protobuf/proto"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/containerdsnoop/containerdsnoop/internal/call"
	"github.com/containerdsnoop/containerdsnoop/internal/protoreg"
	"github.com/containerdsnoop/containerdsnoop/internal/redact"
	"github.com/containerdsnoop/containerdsnoop/internal/testutil/schemalessref"
)

// TestSecretsWithoutSchema: a PullImage request shown without its schema
// (kubelet's connection joined mid-stream, so the :path is unknown) has
// its password hidden, with the method guessed or not; and a v1alpha2
// PullImage, decoded from the schema built from v1, is redacted like v1.
func TestSecretsWithoutSchema(t *testing.T) {
	raw, _ := proto.Marshal(&runtimeapi.PullImageRequest{Image: &runtimeapi.ImageSpec{Image: "registry.example/app:1"},
		Auth: &runtimeapi.AuthConfig{Username: "deploy", Password: "hunter2", IdentityToken: "tok"}})
	for _, guess := range []string{"/runtime.v1.ImageService/PullImage", ""} {
		r := &call.Record{Type: call.Request, Raw: raw, MethodGuess: guess}
		raw, _ := redactedRaw(r)
		fields, ok := schemalessref.Fields(raw)
		text := schemalessref.Text(fields)
		if !ok || strings.Contains(text, "hunter2") || strings.Contains(text, "tok") || !strings.Contains(text, redact.Placeholder) || !strings.Contains(text, "registry.example/app:1") {
			t.Errorf("guess %q: shown as %s", guess, text)
		}
	}
	// Bytes that fit no credential-carrying type are shown as they are.
	plain, _ := proto.Marshal(&runtimeapi.VersionRequest{Version: "v1"})
	if got, _ := redactedRaw(&call.Record{Type: call.Request, Raw: plain}); string(got) != string(plain) {
		t.Errorf("VersionRequest changed")
	}

	m, ok := protoreg.Lookup("/runtime.v1alpha2.ImageService/PullImage")
	if !ok {
		t.Fatal("v1alpha2 PullImage not registered")
	}
	msg := m.Input.New().Interface()
	if err := proto.Unmarshal(raw, msg); err != nil {
		t.Fatal(err)
	}
	if !redact.Message(msg) || strings.Contains(prototext.Format(msg), "hunter2") {
		t.Errorf("v1alpha2 PullImage not redacted: %s", prototext.Format(msg))
	}
}
