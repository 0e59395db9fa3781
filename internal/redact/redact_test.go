package redact

import (
	"strings"
	"testing"

	transfer "github.com/containerd/containerd/api/types/transfer"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/encoding/prototext"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	_ "github.com/containerdsnoop/containerdsnoop/internal/protoreg" // registers the API types
)

const secret = "hunter2-S3cr3t"

func rendered(t *testing.T, m proto.Message) string {
	t.Helper()
	j, err := protojson.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return string(j) + prototext.Format(m)
}

func TestCRIAuthConfig(t *testing.T) {
	req := &runtimeapi.PullImageRequest{
		Image: &runtimeapi.ImageSpec{Image: "registry.example/app:1"},
		Auth: &runtimeapi.AuthConfig{
			Username: "alice", Password: secret, Auth: secret + "b64",
			IdentityToken: secret + "id", RegistryToken: secret + "reg", ServerAddress: "registry.example",
		},
	}
	if !Message(req) {
		t.Fatal("nothing redacted")
	}
	out := rendered(t, req)
	if strings.Contains(out, secret) {
		t.Fatalf("secret in output: %s", out)
	}
	for _, keep := range []string{"alice", "registry.example/app:1", Placeholder} {
		if !strings.Contains(out, keep) {
			t.Errorf("%q missing from %s", keep, out)
		}
	}
}

func TestTransferHeadersInsideAny(t *testing.T) {
	reg := &transfer.OCIRegistry{
		Reference: "registry.example/app:1",
		Resolver: &transfer.RegistryResolver{Headers: map[string]string{
			"Authorization": "Basic " + secret, "User-Agent": "ctr",
		}},
	}
	a, err := anypb.New(reg)
	if err != nil {
		t.Fatal(err)
	}
	auth := &transfer.AuthResponse{Username: "bob", Secret: secret}
	if !Message(a) || !Message(auth) {
		t.Fatal("nothing redacted")
	}
	for _, m := range []proto.Message{a, auth} {
		if out := rendered(t, m); strings.Contains(out, secret) {
			t.Fatalf("secret in output: %s", out)
		}
	}
	if out := rendered(t, a); !strings.Contains(out, "User-Agent") || !strings.Contains(out, "registry.example/app:1") {
		t.Errorf("non-secret content lost: %s", out)
	}
}

func TestNothingToHide(t *testing.T) {
	req := &runtimeapi.ListContainersRequest{Filter: &runtimeapi.ContainerFilter{LabelSelector: map[string]string{"app": "web"}}}
	before := rendered(t, req)
	if Message(req) || rendered(t, req) != before {
		t.Fatal("changed a message without secrets")
	}
}

// Holds answers what Message would do, without changing the message, and
// types that cannot hold a secret are not walked at all.
func TestHolds(t *testing.T) {
	pull := &runtimeapi.PullImageRequest{Auth: &runtimeapi.AuthConfig{Password: secret}}
	withHeader := &runtimeapi.ListContainersRequest{Filter: &runtimeapi.ContainerFilter{LabelSelector: map[string]string{"Authorization": secret}}}
	plain := &runtimeapi.ListContainersRequest{Filter: &runtimeapi.ContainerFilter{LabelSelector: map[string]string{"app": "web"}}}
	reg := &transfer.OCIRegistry{Resolver: &transfer.RegistryResolver{Headers: map[string]string{"Authorization": secret}}}
	inAny, err := anypb.New(reg)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name string
		m    proto.Message
		want bool
	}{
		{"PullImage with a password", pull, true},
		{"label keyed like a credential header", withHeader, true},
		{"plain labels", plain, false},
		{"registry headers inside an Any", inAny, true},
		{"empty PullImage", &runtimeapi.PullImageRequest{}, false},
	} {
		before := rendered(t, c.m)
		if got := Holds(c.m); got != c.want {
			t.Errorf("%s: Holds = %v, want %v", c.name, got, c.want)
		}
		if rendered(t, c.m) != before {
			t.Errorf("%s: Holds changed the message", c.name)
		}
		if got := Message(proto.Clone(c.m)); got != c.want {
			t.Errorf("%s: Message = %v, Holds disagrees", c.name, got)
		}
	}
	for _, c := range []struct {
		m    proto.Message
		want bool
	}{
		{&runtimeapi.VersionResponse{}, false},
		{&runtimeapi.ContainerStatusRequest{}, false},
		{&runtimeapi.PullImageRequest{}, true},
		{&runtimeapi.ListContainersResponse{}, true}, // labels and annotations
		{&anypb.Any{}, true},
	} {
		if got := MayHold(c.m.ProtoReflect().Descriptor()); got != c.want {
			t.Errorf("MayHold(%s) = %v, want %v", c.m.ProtoReflect().Descriptor().FullName(), got, c.want)
		}
	}
}
