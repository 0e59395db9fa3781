package protoreg

import (
	"strings"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/descriptorpb"
	"google.golang.org/protobuf/types/dynamicpb"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// CRI runtime.v1alpha2 is still served by containerd 1.6 and 1.7 and used
// by older kubelets and crictl, but k8s.io/cri-api dropped its Go code in
// v0.26, and one module cannot be required at two versions. v1 was
// created as a copy of v1alpha2 (same messages, same field numbers; v1
// has only added fields since, at numbers v1alpha2 never used), so the
// v1alpha2 schema is built here from v1's descriptor with the package
// renamed, and registered like compiled-in code: its calls are decoded
// and redacted like v1's (registry credentials in PullImage included).
const v1alpha2Package = "runtime.v1alpha2"

func init() {
	v1 := runtimeapi.File_staging_src_k8s_io_cri_api_pkg_apis_runtime_v1_api_proto
	fdp := protodesc.ToFileDescriptorProto(v1)
	from := "." + string(v1.Package()) + "."
	to := "." + v1alpha2Package + "."
	fdp.Name = proto.String("containerdsnoop/cri/runtime/v1alpha2/api.proto")
	fdp.Package = proto.String(v1alpha2Package)
	fdp.Options = nil
	rename := func(s *string) *string {
		if s != nil && strings.HasPrefix(*s, from) {
			return proto.String(to + strings.TrimPrefix(*s, from))
		}
		return s
	}
	var walk func(ms []*descriptorpb.DescriptorProto)
	walk = func(ms []*descriptorpb.DescriptorProto) {
		for _, m := range ms {
			for _, f := range m.Field {
				f.TypeName = rename(f.TypeName)
			}
			walk(m.NestedType)
		}
	}
	walk(fdp.MessageType)
	for _, s := range fdp.Service {
		for _, m := range s.Method {
			m.InputType, m.OutputType = rename(m.InputType), rename(m.OutputType)
		}
	}
	fd, err := protodesc.NewFile(fdp, protoregistry.GlobalFiles)
	if err != nil {
		panic("protoreg: building CRI v1alpha2 from v1: " + err.Error())
	}
	if err := protoregistry.GlobalFiles.RegisterFile(fd); err != nil {
		panic("protoreg: registering CRI v1alpha2: " + err.Error())
	}
	registerTypes(fd.Messages(), fd.Enums())
}

// registerTypes makes the file's messages and enums known by name, with
// dynamic implementations (they have no generated Go code).
func registerTypes(ms protoreflect.MessageDescriptors, es protoreflect.EnumDescriptors) {
	for i := 0; i < es.Len(); i++ {
		protoregistry.GlobalTypes.RegisterEnum(dynamicpb.NewEnumType(es.Get(i)))
	}
	for i := 0; i < ms.Len(); i++ {
		md := ms.Get(i)
		if !md.IsMapEntry() {
			protoregistry.GlobalTypes.RegisterMessage(dynamicpb.NewMessageType(md))
		}
		registerTypes(md.Messages(), md.Enums())
	}
}
