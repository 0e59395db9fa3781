// Package pods names the Kubernetes pod (and container) a call is about.
// It learns from the CRI traffic it decodes, nothing else: a sandbox id is
// tied to a pod (namespace, name, uid) by a RunPodSandbox whose response
// came back OK with that id, or by containerd's answers to ListPodSandbox
// and PodSandboxStatus; a container id to its pod and name by a
// CreateContainer answered OK, or by ListContainers and ContainerStatus
// answers (the pod from the container's sandbox, else from the labels
// kubelet puts on every container). Kubelet polls the List calls every
// few seconds, so pods created before the tracer are learnt within them;
// Query (query.go) asks once at start so they are named at once.
//
// Every input is hostile: the tables are LRUs of fixed size, calls waiting
// for their response are bounded, and a name, namespace, uid or id is learnt
// only when it is short and made of the characters Kubernetes allows, so
// nothing learnt needs escaping on a terminal.
package pods

import (
	"strings"
	"sync"

	lru "github.com/hashicorp/golang-lru/v2"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/containerdsnoop/containerdsnoop/internal/call"
)

// Sizes of the tables: a node runs at most a few hundred pods; these leave
// room for churn and bound memory under a flood of made-up ids.
const (
	MaxSandboxes  = 8192
	MaxContainers = 32768
	maxPending    = 4096
	maxLen        = 253 // a DNS subdomain, Kubernetes' longest name
)

// Pod is what the index knows of a sandbox.
type Pod = call.Pod

type container struct {
	pod  Pod
	name string
}

// Index maps sandbox and container ids to pods. Not safe for concurrent
// use except Query, which the pipeline serializes (see Learn).
type Index struct {
	sandboxes  *lru.Cache[string, Pod]
	containers *lru.Cache[string, container]
	// pending holds what a call's request said until its end: the pod of
	// a RunPodSandbox, the sandbox and name of a CreateContainer, and the
	// id any call is about.
	pending map[callKey]pending
	// changes counts entries added to either table or given another
	// value. kubelet polls ListPodSandbox and ListContainers and mostly
	// gets the same answers, which the message cache hands over as the
	// same message: learning one again when nothing changed since it was
	// learnt changes nothing (every entry it gave is still there with its
	// value: an eviction needs an addition), and took a tenth of the
	// tracer's CPU on a node answering ListContainers at a high rate.
	changes            uint64
	lastPods, lastCtrs learntList
}

// learntList is a list answer and the table changes just after it was learnt.
type learntList struct {
	msg     proto.Message
	changes uint64
}

type callKey struct {
	conn     uint64
	stream   uint32
	protocol string
}

type pending struct {
	subject string // the sandbox or container id the request names
	pod     Pod    // the pod RunPodSandbox, PullImage or CreateContainer names
	sandbox string // CreateContainer's sandbox
	name    string // CreateContainer's container name
}

// New returns an empty Index.
func New() *Index {
	s, _ := lru.New[string, Pod](MaxSandboxes)
	c, _ := lru.New[string, container](MaxContainers)
	return &Index{sandboxes: s, containers: c, pending: map[callKey]pending{}}
}

// Annotate learns from r and sets r.Pod and r.ContainerName when the call
// is about a sandbox or container the index knows. Call it with every
// record, in order, before any filter.
func (x *Index) Annotate(r *call.Record) {
	k := callKey{r.Conn, r.Stream, r.Protocol}
	p, held := x.pending[k]
	if r.Type == call.Request && r.Message != nil && !held {
		p = x.request(r.Message)
		if p != (pending{}) {
			if len(x.pending) >= maxPending {
				// Calls whose end was never seen (evicted, or a flood):
				// forget them rather than grow.
				clear(x.pending)
			}
			x.pending[k] = p
			held = true
		}
	}
	ok := r.Status == nil || r.Status.Code == codes.OK
	if r.Type == call.Response && r.Message != nil && ok {
		x.response(r.Message, p)
	}
	if r.Final {
		delete(x.pending, k)
	}
	// The id the message names (a response's new sandbox or container),
	// else the one the call's request named.
	subject := r.ContainerID
	if subject == "" && r.Message != nil {
		subject = idOf(r.Message)
	}
	if subject == "" {
		subject = p.subject
	}
	switch {
	case subject != "":
		x.name(r, subject)
	case p.pod.Name != "":
		// RunPodSandbox, PullImage: the pod the request says it is for.
		r.Pod = p.pod
	}
}

func (x *Index) name(r *call.Record, id string) {
	if c, ok := x.containers.Get(id); ok {
		r.Pod, r.ContainerName = c.pod, c.name
		return
	}
	if p, ok := x.sandboxes.Get(id); ok {
		r.Pod = p
	}
}

// request notes what a request says about its call.
func (x *Index) request(m proto.Message) pending {
	switch m := m.(type) {
	case *runtimeapi.RunPodSandboxRequest:
		return pending{pod: podOf(m.GetConfig().GetMetadata())}
	case *runtimeapi.PullImageRequest:
		return pending{pod: podOf(m.GetSandboxConfig().GetMetadata())}
	case *runtimeapi.CreateContainerRequest:
		p := pending{sandbox: m.GetPodSandboxId(), name: m.GetConfig().GetMetadata().GetName()}
		p.subject = p.sandbox
		if pod := podOf(m.GetSandboxConfig().GetMetadata()); pod.Name != "" && valid(p.sandbox) {
			if _, known := x.sandboxes.Get(p.sandbox); !known {
				// kubelet repeats the sandbox's config; the sandbox id
				// is the one it got from RunPodSandbox. Not proved
				// until containerd answers OK (response).
				p.pod = pod
			}
		}
		return p
	}
	return pending{subject: idOf(m)}
}

// response learns from an OK answer.
func (x *Index) response(m proto.Message, p pending) {
	switch m := m.(type) {
	case *runtimeapi.RunPodSandboxResponse:
		x.addSandbox(m.GetPodSandboxId(), p.pod)
	case *runtimeapi.CreateContainerResponse:
		if p.pod.Name != "" {
			x.addSandbox(p.sandbox, p.pod)
		}
		x.addContainer(m.GetContainerId(), p.sandbox, p.name, nil)
	case *runtimeapi.ListPodSandboxResponse:
		if x.learnt(&x.lastPods, m) {
			return
		}
		defer x.noteList(&x.lastPods, m)
		for _, s := range m.GetItems() {
			x.addSandbox(s.GetId(), podOf(s.GetMetadata()))
		}
	case *runtimeapi.PodSandboxStatusResponse:
		x.addSandbox(m.GetStatus().GetId(), podOf(m.GetStatus().GetMetadata()))
	case *runtimeapi.ListContainersResponse:
		if x.learnt(&x.lastCtrs, m) {
			return
		}
		defer x.noteList(&x.lastCtrs, m)
		for _, c := range m.GetContainers() {
			x.addContainer(c.GetId(), c.GetPodSandboxId(), c.GetMetadata().GetName(), c.GetLabels())
		}
	case *runtimeapi.ContainerStatusResponse:
		s := m.GetStatus()
		x.addContainer(s.GetId(), "", s.GetMetadata().GetName(), s.GetLabels())
	}
}

// learnt is whether m is the list answer l was learnt from, with no table
// changed since.
func (x *Index) learnt(l *learntList, m proto.Message) bool {
	return m == l.msg && x.changes == l.changes
}

func (x *Index) noteList(l *learntList, m proto.Message) { *l = learntList{m, x.changes} }

// Learn adds what a ListPodSandbox and a ListContainers answer say (the
// start-up query); the same rules as for answers seen on the wire.
func (x *Index) Learn(sandboxes *runtimeapi.ListPodSandboxResponse, containers *runtimeapi.ListContainersResponse) {
	if sandboxes != nil {
		x.response(sandboxes, pending{})
	}
	if containers != nil {
		x.response(containers, pending{})
	}
}

func (x *Index) addSandbox(id string, p Pod) {
	if valid(id) && p.Name != "" {
		if old, ok := x.sandboxes.Peek(id); !ok || old != p {
			x.changes++
		}
		x.sandboxes.Add(id, p)
	}
}

// Labels kubelet sets on every container it creates.
const (
	labelPodName      = "io.kubernetes.pod.name"
	labelPodNamespace = "io.kubernetes.pod.namespace"
	labelPodUID       = "io.kubernetes.pod.uid"
)

func (x *Index) addContainer(id, sandbox, name string, labels map[string]string) {
	if !valid(id) {
		return
	}
	c := container{}
	if valid(name) {
		c.name = name
	}
	if p, ok := x.sandboxes.Get(sandbox); ok && sandbox != "" {
		c.pod = p
	} else {
		c.pod = checked(Pod{Namespace: labels[labelPodNamespace], Name: labels[labelPodName], UID: labels[labelPodUID]})
	}
	if c.pod.Name == "" {
		return
	}
	if old, ok := x.containers.Peek(id); !ok || old != c {
		x.changes++
	}
	x.containers.Add(id, c)
}

func podOf(m *runtimeapi.PodSandboxMetadata) Pod {
	return checked(Pod{Namespace: m.GetNamespace(), Name: m.GetName(), UID: m.GetUid()})
}

// checked keeps a pod only when its name and namespace are valid; an
// invalid uid is left out.
func checked(p Pod) Pod {
	if !valid(p.Name) || !valid(p.Namespace) {
		return Pod{}
	}
	if !valid(p.UID) {
		p.UID = ""
	}
	return p
}

// valid accepts what Kubernetes names, uids and CRI ids are made of.
func valid(s string) bool {
	if s == "" || len(s) > maxLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '.' || c == '_') {
			return false
		}
	}
	return true
}

// ContainerIDOf is the container a CRI v1 message is about (its
// container_id field), or "" when it names none or an id Kubernetes would
// refuse.
func ContainerIDOf(m proto.Message) string {
	r := m.ProtoReflect()
	fields := idFieldsOf(r.Descriptor())
	return idIn(r, fields[:1])
}

// idOf is the sandbox or container a CRI message is about: its top-level
// container_id, else its pod_sandbox_id.
func idOf(m proto.Message) string {
	r := m.ProtoReflect()
	fields := idFieldsOf(r.Descriptor())
	return idIn(r, fields[:])
}

// idIn is the first valid id among fields of r (nil fields skipped).
func idIn(r protoreflect.Message, fields []protoreflect.FieldDescriptor) string {
	for _, fd := range fields {
		if fd == nil {
			continue
		}
		if id := r.Get(fd).String(); valid(id) {
			return id
		}
	}
	return ""
}

// idFields caches idFieldsOf per message type: as many entries as message
// types compiled in, whatever the wire says. Looked up by name for every
// record, the fields were nearly a third of the index's CPU.
var idFields sync.Map // protoreflect.MessageDescriptor -> [2]protoreflect.FieldDescriptor

// idFieldsOf is a CRI v1 message type's top-level container_id and
// pod_sandbox_id fields, in that order, each nil when it has none.
func idFieldsOf(md protoreflect.MessageDescriptor) [2]protoreflect.FieldDescriptor {
	if f, ok := idFields.Load(md); ok {
		return f.([2]protoreflect.FieldDescriptor)
	}
	var fields [2]protoreflect.FieldDescriptor
	if strings.HasPrefix(string(md.FullName()), "runtime.v1.") {
		for i, name := range []protoreflect.Name{"container_id", "pod_sandbox_id"} {
			if fd := md.Fields().ByName(name); fd != nil && fd.Kind() == protoreflect.StringKind && fd.Cardinality() != protoreflect.Repeated {
				fields[i] = fd
			}
		}
	}
	idFields.Store(md, fields)
	return fields
}
