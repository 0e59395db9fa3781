package main

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"time"

	"google.golang.org/protobuf/proto"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// baseTime is a fixed "now", so payloads are the same on every run.
var baseTime = time.Unix(1700000000, 0).UTC()

// id64 is a 64-hex-digit id, the shape containerd gives containers.
func id64(seed string) string {
	h := sha256.Sum256([]byte(seed))
	return hex.EncodeToString(h[:])
}

// container is what kubelet's ListContainers typically gets back for one
// running pod container: ids, image, state and the io.kubernetes labels and
// annotations that kubelet itself sets.
func container(i int) *runtimeapi.Container {
	name := fmt.Sprintf("app-%03d", i)
	pod := fmt.Sprintf("web-%03d-7d9c8b6f5-x2x4q", i)
	return &runtimeapi.Container{
		Id:           id64("container-" + name),
		PodSandboxId: id64("sandbox-" + name),
		Metadata:     &runtimeapi.ContainerMetadata{Name: name, Attempt: uint32(i % 3)},
		Image:        &runtimeapi.ImageSpec{Image: "docker.io/library/nginx:1.25"},
		ImageRef:     "sha256:" + id64("image-nginx"),
		State:        runtimeapi.ContainerState_CONTAINER_RUNNING,
		CreatedAt:    baseTime.Add(-time.Duration(i) * time.Minute).UnixNano(),
		Labels: map[string]string{
			"io.kubernetes.container.name": name,
			"io.kubernetes.pod.name":       pod,
			"io.kubernetes.pod.namespace":  "default",
			"io.kubernetes.pod.uid":        "0b6f8a3e-1c2d-4e5f-9a8b-" + id64("uid-" + name)[:12],
		},
		Annotations: map[string]string{
			"io.kubernetes.container.hash":                   "5d3f1c2a",
			"io.kubernetes.container.restartCount":           "0",
			"io.kubernetes.container.terminationMessagePath": "/dev/termination-log",
		},
	}
}

// listResponse has as many containers as it takes to reach size bytes
// (at least one).
func listResponse(size int) *runtimeapi.ListContainersResponse {
	r := &runtimeapi.ListContainersResponse{}
	for i := 0; len(r.Containers) == 0 || proto.Size(r) < size; i++ {
		r.Containers = append(r.Containers, container(i))
	}
	return r
}

// listRequest is a ListContainers request with a state filter and a label
// selector grown to size bytes: kubelet's own selectors plus
// "example.com/selector-NN" entries.
func listRequest(size int) *runtimeapi.ListContainersRequest {
	sel := map[string]string{
		"io.kubernetes.pod.namespace": "default",
		"io.kubernetes.pod.name":      "web-000-7d9c8b6f5-x2x4q",
	}
	r := &runtimeapi.ListContainersRequest{Filter: &runtimeapi.ContainerFilter{
		State:         &runtimeapi.ContainerStateValue{State: runtimeapi.ContainerState_CONTAINER_RUNNING},
		LabelSelector: sel,
	}}
	for i := 0; proto.Size(r) < size; i++ {
		v := id64(fmt.Sprint("selector-", i))
		// Grow in steps of about 60 bytes; the last entry is cut to fit.
		if missing := size - proto.Size(r) - 30; missing < len(v) {
			v = v[:max(missing, 1)]
		}
		sel[fmt.Sprintf("example.com/selector-%02d", i)] = v
	}
	return r
}
