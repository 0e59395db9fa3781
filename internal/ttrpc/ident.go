package ttrpc

import (
	"strings"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/containerdsnoop/containerdsnoop/internal/stream"
)

// shimIsClient says whether the shim is the client of a service: shims
// serve the Task and Sandbox APIs (containerd.task.*, containerd.runtime.*),
// and call containerd's own services on its ttrpc socket
// (containerd.services.*, e.g. events.ttrpc.v1.Events/Forward).
func shimIsClient(service string) bool {
	return strings.HasPrefix(service, "containerd.services.")
}

// shimPID is the pid of the shim end of the call's connection: the server,
// or the client for the services a shim calls. 0 while the roles are
// unknown.
func (s *conn) shimPID(cl *ttrpcCall) uint32 {
	client, known := s.sc.ClientEnd()
	if !known {
		return 0
	}
	end := stream.Peer(client)
	if shimIsClient(cl.service) {
		end = client
	}
	return s.sc.Ends[end].PID
}

// containerIDOf finds the container (or sandbox) a request is about: its
// top-level container_id, id or sandbox_id, else a container_id further
// down (e.g. in the event an Events/Forward envelope carries), looking
// into Any values whose type is compiled in.
func containerIDOf(m proto.Message) string {
	if m == nil {
		return ""
	}
	msg := m.ProtoReflect()
	for _, name := range []protoreflect.Name{"container_id", "id", "sandbox_id"} {
		if v := stringField(msg, name); v != "" {
			return v
		}
	}
	return nestedContainerID(msg, 0)
}

func stringField(msg protoreflect.Message, name protoreflect.Name) string {
	fd := msg.Descriptor().Fields().ByName(name)
	if fd == nil || fd.Kind() != protoreflect.StringKind || fd.IsList() || fd.IsMap() {
		return ""
	}
	return msg.Get(fd).String()
}

func nestedContainerID(msg protoreflect.Message, depth int) string {
	if depth > 3 {
		return ""
	}
	if depth > 0 {
		if v := stringField(msg, "container_id"); v != "" {
			return v
		}
	}
	if a, ok := msg.Interface().(*anypb.Any); ok {
		mt, err := protoregistry.GlobalTypes.FindMessageByURL(a.GetTypeUrl())
		if err != nil {
			return ""
		}
		inner := mt.New()
		if proto.Unmarshal(a.GetValue(), inner.Interface()) != nil {
			return ""
		}
		return nestedContainerID(inner, depth+1)
	}
	found := ""
	msg.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		if fd.Kind() != protoreflect.MessageKind || fd.IsList() || fd.IsMap() {
			return true
		}
		found = nestedContainerID(v.Message(), depth+1)
		return found == ""
	})
	return found
}

// containerIDFromPath reads a container id from a shim socket path that
// has one: shim v1's @/containerd-shim/<namespace>/<id>/shim.sock, or a
// socket in a task bundle, .../io.containerd.runtime.v2.task/<namespace>/<id>/...
// (v2 shims listen on /run/containerd/s/<hash>, which names no container).
func containerIDFromPath(path string) string {
	parts := strings.Split(path, "/")
	for i, p := range parts {
		if p != "containerd-shim" && !strings.HasPrefix(p, "io.containerd.runtime.") {
			continue
		}
		// <marker>/<namespace>/<id>/<file>
		if i+3 < len(parts) && parts[i+1] != "" && parts[i+2] != "" {
			return parts[i+2]
		}
	}
	return ""
}
