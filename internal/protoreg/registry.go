package protoreg

import (
	"sync"

	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"

	// Every API whose calls can be decoded registers its descriptors here.
	// The method table is read from the descriptors, never typed by hand:
	// a hand-kept list drifts from the APIs, misnaming methods and pairing
	// them with the wrong response types. Message types that travel
	// inside google.protobuf.Any are here too: a task's stats (Task/Stats,
	// Tasks/Metrics) are cgroup metrics.
	_ "github.com/containerd/cgroups/v3/cgroup1/stats"
	_ "github.com/containerd/cgroups/v3/cgroup2/stats"
	_ "github.com/containerd/containerd/api/events"
	_ "github.com/containerd/containerd/api/runtime/sandbox/v1"
	_ "github.com/containerd/containerd/api/runtime/task/v2"
	_ "github.com/containerd/containerd/api/runtime/task/v3"
	_ "github.com/containerd/containerd/api/services/containers/v1"
	_ "github.com/containerd/containerd/api/services/content/v1"
	_ "github.com/containerd/containerd/api/services/diff/v1"
	_ "github.com/containerd/containerd/api/services/events/v1"
	_ "github.com/containerd/containerd/api/services/images/v1"
	_ "github.com/containerd/containerd/api/services/introspection/v1"
	_ "github.com/containerd/containerd/api/services/leases/v1"
	_ "github.com/containerd/containerd/api/services/mounts/v1"
	_ "github.com/containerd/containerd/api/services/namespaces/v1"
	_ "github.com/containerd/containerd/api/services/sandbox/v1"
	_ "github.com/containerd/containerd/api/services/snapshots/v1"
	_ "github.com/containerd/containerd/api/services/streaming/v1"
	_ "github.com/containerd/containerd/api/services/tasks/v1"
	_ "github.com/containerd/containerd/api/services/transfer/v1"
	_ "github.com/containerd/containerd/api/services/ttrpc/events/v1"
	_ "github.com/containerd/containerd/api/services/version/v1"
	_ "github.com/containerd/containerd/api/types/runc/options"
	_ "github.com/containerd/containerd/api/types/runtimeoptions/v1"
	_ "github.com/containerd/containerd/api/types/transfer"
	_ "google.golang.org/grpc/health/grpc_health_v1"
	_ "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// Method describes one RPC.
type Method struct {
	// Path is how it appears on the wire: /package.Service/Method.
	Path            string
	Input, Output   protoreflect.MessageType
	ClientStreaming bool
	ServerStreaming bool
}

var (
	registryOnce sync.Once
	methods      map[string]*Method
)

// Lookup finds a method by its wire path.
func Lookup(path string) (*Method, bool) {
	registryOnce.Do(buildRegistry)
	m, ok := methods[path]
	return m, ok
}

// Methods lists every known method.
func Methods() []*Method {
	registryOnce.Do(buildRegistry)
	out := make([]*Method, 0, len(methods))
	for _, m := range methods {
		out = append(out, m)
	}
	return out
}

func buildRegistry() {
	methods = map[string]*Method{}
	protoregistry.GlobalFiles.RangeFiles(func(fd protoreflect.FileDescriptor) bool {
		svcs := fd.Services()
		for i := 0; i < svcs.Len(); i++ {
			svc := svcs.Get(i)
			ms := svc.Methods()
			for j := 0; j < ms.Len(); j++ {
				md := ms.Get(j)
				in, err1 := protoregistry.GlobalTypes.FindMessageByName(md.Input().FullName())
				out, err2 := protoregistry.GlobalTypes.FindMessageByName(md.Output().FullName())
				if err1 != nil || err2 != nil {
					continue
				}
				path := "/" + string(svc.FullName()) + "/" + string(md.Name())
				methods[path] = &Method{
					Path:            path,
					Input:           in,
					Output:          out,
					ClientStreaming: md.IsStreamingClient(),
					ServerStreaming: md.IsStreamingServer(),
				}
			}
		}
		return true
	})
}
