package pods_test

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/containerdsnoop/containerdsnoop/internal/call"
	"github.com/containerdsnoop/containerdsnoop/internal/callfilter"
	"github.com/containerdsnoop/containerdsnoop/internal/output"
	"github.com/containerdsnoop/containerdsnoop/internal/pipeline"
	"github.com/containerdsnoop/containerdsnoop/internal/pods"
	"github.com/containerdsnoop/containerdsnoop/internal/testutil/wirerec"
)

type line struct {
	Type   string `json:"type"`
	Method string `json:"method"`
	Pod    *struct {
		Namespace, Name, UID string
	} `json:"pod"`
	ContainerName string          `json:"container_name"`
	Message       json.RawMessage `json:"message"`
}

func replay(t *testing.T, f pipeline.Filter) []line {
	t.Helper()
	recs, err := wirerec.Load(filepath.Join("../../testdata/wire", "pod_lifecycle.wire"))
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	w, err := output.New("json", &buf, output.Options{})
	if err != nil {
		t.Fatal(err)
	}
	p := pipeline.New(w, f)
	evs := wirerec.Events(recs, time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC))
	for i := range evs {
		p.Feed(&evs[i])
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	var out []line
	sc := bufio.NewScanner(&buf)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var l line
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			t.Fatal(err)
		}
		out = append(out, l)
	}
	return out
}

func (l line) pod() string {
	if l.Pod == nil {
		return ""
	}
	s := l.Pod.Namespace + "/" + l.Pod.Name + " " + l.Pod.UID
	if l.ContainerName != "" {
		s += " " + l.ContainerName
	}
	return s
}

const (
	web = "shop/web-0 0d6f3c2e-8a51-4c7b-9f0e-5b1e2a7c9d31"
	db  = "shop/db-0 7c4d1f0a-2b3e-4f5a-8c9d-0e1f2a3b4c5d db"
)

// TestPodLifecycle: recorded grpc-go CRI traffic of a pod's start names
// the pod on every call about it, from the ids the responses returned;
// a pod that existed before is named from a ListContainers answer.
func TestPodLifecycle(t *testing.T) {
	want := map[string][2]string{ // method: request's pod, response's pod
		"/runtime.v1.ImageService/PullImage":         {web, web},
		"/runtime.v1.RuntimeService/RunPodSandbox":   {web, web},
		"/runtime.v1.RuntimeService/CreateContainer": {web, web + " nginx"},
		"/runtime.v1.RuntimeService/StartContainer":  {web + " nginx", web + " nginx"},
		"/runtime.v1.RuntimeService/ListContainers":  {"", ""},
		"/runtime.v1.RuntimeService/ContainerStats":  {db, db},
		"/runtime.v1.RuntimeService/StopPodSandbox":  {web, web},
	}
	lines := replay(t, pipeline.Filter{})
	if len(lines) != 2*len(want) {
		t.Fatalf("%d lines, want %d", len(lines), 2*len(want))
	}
	for _, l := range lines {
		w, ok := want[l.Method]
		if !ok {
			t.Errorf("unexpected %s", l.Method)
			continue
		}
		i := 0
		if l.Type == "response" {
			i = 1
		}
		if got := l.pod(); got != w[i] {
			t.Errorf("%s %s: pod %q, want %q", l.Method, l.Type, got, w[i])
		}
	}
}

// TestPodFilter: --pod keeps only the calls about matching pods.
func TestPodFilter(t *testing.T) {
	for glob, n := range map[string]int{"shop/web-*": 10, "*/db-0": 2, "other/*": 0} {
		lines := replay(t, pipeline.Filter{Calls: callfilter.Options{Pod: glob}})
		if len(lines) != n {
			t.Errorf("--pod %s: %d lines, want %d", glob, len(lines), n)
		}
	}
}

// TestHostile: names that Kubernetes would refuse (control characters,
// too long) are never learnt, and a flood of sandboxes stays bounded.
func TestHostile(t *testing.T) {
	x := pods.New()
	bad := []string{"evil\x1b[31m", "", string(make([]byte, 300)), "a/b", "x y"}
	for i, name := range bad {
		x.Learn(&runtimeapi.ListPodSandboxResponse{Items: []*runtimeapi.PodSandbox{{
			Id: fmt.Sprintf("sb%d", i), Metadata: &runtimeapi.PodSandboxMetadata{Name: name, Namespace: "ns"},
		}}}, nil)
		r := &call.Record{Protocol: "ttrpc", Type: call.Request, ContainerID: fmt.Sprintf("sb%d", i)}
		x.Annotate(r)
		if r.Pod.Name != "" {
			t.Errorf("learnt pod name %q", r.Pod.Name)
		}
	}
	for i := range 3 * pods.MaxSandboxes {
		x.Learn(&runtimeapi.ListPodSandboxResponse{Items: []*runtimeapi.PodSandbox{{
			Id: fmt.Sprintf("flood%d", i), Metadata: &runtimeapi.PodSandboxMetadata{Name: "p", Namespace: "ns"},
		}}}, nil)
	}
	r := &call.Record{Protocol: "ttrpc", Type: call.Request, ContainerID: fmt.Sprintf("flood%d", 3*pods.MaxSandboxes-1)}
	x.Annotate(r)
	if r.Pod.Name != "p" {
		t.Errorf("newest sandbox not named")
	}
	r = &call.Record{Protocol: "ttrpc", Type: call.Request, ContainerID: "flood0"}
	x.Annotate(r)
	if r.Pod.Name != "" {
		t.Errorf("oldest of a flood still named: the table is not bounded")
	}
}

// TestRepeatedList: a list answer seen again (the same message, as the
// message cache hands identical bytes over) still wins over what changed
// since it was first learnt, and one learnt again with nothing changed
// (skipped) still names its containers, also after they were evicted.
func TestRepeatedList(t *testing.T) {
	x := pods.New()
	list := &runtimeapi.ListContainersResponse{Containers: []*runtimeapi.Container{{
		Id: "c1", PodSandboxId: "sb-unknown", Metadata: &runtimeapi.ContainerMetadata{Name: "app"},
		Labels: map[string]string{"io.kubernetes.pod.name": "a", "io.kubernetes.pod.namespace": "ns"},
	}}}
	named := func() string {
		r := &call.Record{Protocol: "ttrpc", Type: call.Request, ContainerID: "c1"}
		x.Annotate(r)
		return r.Pod.Namespace + "/" + r.Pod.Name + " " + r.ContainerName
	}
	x.Learn(nil, list)
	x.Learn(nil, list)
	if got := named(); got != "ns/a app" {
		t.Fatalf("after the list twice: %q", got)
	}
	// A status answer renames c1; the list seen again is newer.
	status := &runtimeapi.ContainerStatusResponse{Status: &runtimeapi.ContainerStatus{
		Id: "c1", Metadata: &runtimeapi.ContainerMetadata{Name: "other"},
		Labels: map[string]string{"io.kubernetes.pod.name": "b", "io.kubernetes.pod.namespace": "ns"},
	}}
	r := &call.Record{Protocol: "ttrpc", Type: call.Response, Message: status, Final: true}
	x.Annotate(r)
	if got := named(); got != "ns/b other" {
		t.Fatalf("after the status: %q", got)
	}
	x.Learn(nil, list)
	if got := named(); got != "ns/a app" {
		t.Errorf("the list seen again after a change was not learnt again: %q", got)
	}
	// A flood evicts c1; the same list then names it again.
	for i := range pods.MaxContainers {
		x.Learn(nil, &runtimeapi.ListContainersResponse{Containers: []*runtimeapi.Container{{
			Id: fmt.Sprintf("f%d", i), Metadata: &runtimeapi.ContainerMetadata{Name: "f"},
			Labels: map[string]string{"io.kubernetes.pod.name": "f", "io.kubernetes.pod.namespace": "ns"},
		}}})
	}
	x.Learn(nil, list)
	if got := named(); got != "ns/a app" {
		t.Errorf("the list after an eviction: %q", got)
	}
}
