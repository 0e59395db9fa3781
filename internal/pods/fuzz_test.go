package pods

import (
	"testing"

	"google.golang.org/protobuf/proto"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/containerdsnoop/containerdsnoop/internal/call"
)

// FuzzAnnotate feeds arbitrary bytes, as each CRI message the index
// learns from, through a request and its OK response: nothing panics, and
// whatever is learnt and shown is made of Kubernetes' name characters.
func FuzzAnnotate(f *testing.F) {
	seed, _ := proto.Marshal(&runtimeapi.RunPodSandboxRequest{Config: &runtimeapi.PodSandboxConfig{
		Metadata: &runtimeapi.PodSandboxMetadata{Name: "web-0", Namespace: "shop", Uid: "u"}}})
	f.Add(seed, []byte{0x0a, 0x02, 'i', 'd'}, uint8(0))
	f.Add([]byte("\x0a\x05evil\x1b"), []byte("\x0a\x03abc"), uint8(3))
	f.Fuzz(func(t *testing.T, req, resp []byte, kind uint8) {
		pairs := [][2]proto.Message{
			{&runtimeapi.RunPodSandboxRequest{}, &runtimeapi.RunPodSandboxResponse{}},
			{&runtimeapi.CreateContainerRequest{}, &runtimeapi.CreateContainerResponse{}},
			{&runtimeapi.ListPodSandboxRequest{}, &runtimeapi.ListPodSandboxResponse{}},
			{&runtimeapi.ListContainersRequest{}, &runtimeapi.ListContainersResponse{}},
			{&runtimeapi.ContainerStatusRequest{}, &runtimeapi.ContainerStatusResponse{}},
			{&runtimeapi.PullImageRequest{}, &runtimeapi.PullImageResponse{}},
		}
		p := pairs[int(kind)%len(pairs)]
		if proto.Unmarshal(req, p[0]) != nil || proto.Unmarshal(resp, p[1]) != nil {
			return
		}
		x := New()
		for _, r := range []*call.Record{
			{Protocol: "grpc", Conn: 1, Stream: 1, Type: call.Request, Message: p[0]},
			{Protocol: "grpc", Conn: 1, Stream: 1, Type: call.Response, Message: p[1], Final: true, Status: &call.Status{}},
		} {
			x.Annotate(r)
			for _, s := range []string{r.Pod.Name, r.Pod.Namespace, r.ContainerName} {
				if s != "" && !valid(s) {
					t.Fatalf("shown %q", s)
				}
			}
			if r.Pod.UID != "" && !valid(r.Pod.UID) {
				t.Fatalf("shown uid %q", r.Pod.UID)
			}
		}
	})
}
