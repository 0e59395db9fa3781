package protoreg

import (
	"bytes"
	"fmt"
	"runtime"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/containerdsnoop/containerdsnoop/internal/call"
)

func allocated(f func()) int {
	var a, b runtime.MemStats
	runtime.ReadMemStats(&a)
	f()
	runtime.ReadMemStats(&b)
	return int(b.TotalAlloc - a.TotalAlloc)
}

func u64(v uint64) *runtimeapi.UInt64Value { return &runtimeapi.UInt64Value{Value: v} }

// statsAnswer is a ListContainerStats answer for n containers, every
// counter a wrapper message, half of them zero: the densest real answer.
func statsAnswer(n int) *runtimeapi.ListContainerStatsResponse {
	r := &runtimeapi.ListContainerStatsResponse{}
	for i := range n {
		r.Stats = append(r.Stats, &runtimeapi.ContainerStats{
			Attributes: &runtimeapi.ContainerAttributes{Id: fmt.Sprintf("%064d", i), Metadata: &runtimeapi.ContainerMetadata{Name: "c"},
				Labels: map[string]string{"io.kubernetes.pod.name": "p"}},
			Cpu: &runtimeapi.CpuUsage{Timestamp: 1700000000000000000, UsageCoreNanoSeconds: u64(123456789012), UsageNanoCores: u64(0)},
			Memory: &runtimeapi.MemoryUsage{Timestamp: 1700000000000000000, WorkingSetBytes: u64(12345678), AvailableBytes: u64(0),
				UsageBytes: u64(12345678), RssBytes: u64(0), PageFaults: u64(1234), MajorPageFaults: u64(0)},
			WritableLayer: &runtimeapi.FilesystemUsage{Timestamp: 1700000000000000000, FsId: &runtimeapi.FilesystemIdentifier{Mountpoint: "/var/lib/containerd"},
				UsedBytes: u64(123456), InodesUsed: u64(0)},
			Swap: &runtimeapi.SwapUsage{Timestamp: 1700000000000000000, SwapAvailableBytes: u64(0), SwapUsageBytes: u64(0)},
		})
	}
	return r
}

func imagesAnswer(n int) *runtimeapi.ListImagesResponse {
	r := &runtimeapi.ListImagesResponse{}
	for i := range n {
		r.Images = append(r.Images, &runtimeapi.Image{Id: fmt.Sprintf("sha256:%064d", i),
			RepoTags:    []string{fmt.Sprintf("docker.io/library/img%d:latest", i)},
			RepoDigests: []string{fmt.Sprintf("docker.io/library/img%d@sha256:%064d", i, i)}, Size: 12345678, Spec: &runtimeapi.ImageSpec{Image: "x"}})
	}
	return r
}

func lookupType(t *testing.T, path string, response bool) protoreflect.MessageType {
	t.Helper()
	m, ok := Lookup(path)
	if !ok {
		t.Fatalf("%s not registered", path)
	}
	if response {
		return m.Output
	}
	return m.Input
}

// TestDenseMessages: a large message so dense with values that decoding
// it would take many times its size (any local process can send one on a
// known method) is refused with a TooDenseError and kept raw, for display
// by field number, while real answers, large and small, are decoded; and
// the estimate is worth its name (what decoding allocates is within 4x
// of it).
func TestDenseMessages(t *testing.T) {
	real := func(m proto.Message) []byte { b, _ := proto.Marshal(m); return b }
	for _, tc := range []struct {
		name  string
		mt    protoreflect.MessageType
		b     []byte
		dense bool
	}{
		{"ListContainers, 3,000 labelled containers", lookupType(t, "/runtime.v1.RuntimeService/ListContainers", true), real(bigListContainers(3000)), false},
		{"ListImages, 20,000 images", lookupType(t, "/runtime.v1.ImageService/ListImages", true), real(imagesAnswer(20000)), false},
		{"ListContainerStats, 8,000 containers", lookupType(t, "/runtime.v1.RuntimeService/ListContainerStats", true), real(statsAnswer(8000)), false},
		{"4 MiB of empty strings in a list", lookupType(t, "/containerd.services.images.v1.Images/List", false), bytes.Repeat([]byte{0x0a, 0x00}, 2<<20), true},
		{"4 MiB of empty descriptors", lookupType(t, "/containerd.services.diff.v1.Diff/Apply", false), bytes.Repeat([]byte{0x12, 0x00}, 2<<20), true},
		{"1 MiB of empty containers", lookupType(t, "/runtime.v1.RuntimeService/ListContainers", true), bytes.Repeat([]byte{0x0a, 0x00}, 512<<10), true},
		{"1 MiB of empty v1alpha2 containers (dynamic)", lookupType(t, "/runtime.v1alpha2.RuntimeService/ListContainers", true), bytes.Repeat([]byte{0x0a, 0x00}, 512<<10), true},
		{"16 KiB of empty containers (under the check)", lookupType(t, "/runtime.v1.RuntimeService/ListContainers", true), bytes.Repeat([]byte{0x0a, 0x00}, 8<<10), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			est := decodedCost(tc.mt.Descriptor(), tc.b, 0)
			alloc := allocated(func() {
				if err := proto.Unmarshal(tc.b, tc.mt.New().Interface()); err != nil {
					t.Fatal(err)
				}
			})
			t.Logf("%d bytes: estimate %.1fx, decoding allocates %.1fx", len(tc.b), float64(est)/float64(len(tc.b)), float64(alloc)/float64(len(tc.b)))
			if alloc > 4*est+64<<10 {
				t.Errorf("decoding allocates %d, over 4x the estimate %d", alloc, est)
			}
			var r call.Record
			m := &Method{Path: "/x/y", Input: tc.mt, Output: tc.mt}
			DecodeMessage(&r, m, call.Request, tc.b)
			if got := r.Message == nil; got != tc.dense {
				t.Fatalf("refused %v, want %v (note %q)", got, tc.dense, r.Note)
			}
			if tc.dense && (!bytes.Equal(r.Raw, tc.b) || !strings.HasPrefix(r.Note, "not decoded as "+string(tc.mt.Descriptor().FullName())+", shown by field number: its ")) {
				t.Errorf("refused without its bytes (%d) or a note: %q", len(r.Raw), r.Note)
			}
		})
	}
}
