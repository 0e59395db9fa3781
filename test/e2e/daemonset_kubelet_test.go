//go:build linux

package e2e

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/containerdsnoop/containerdsnoop/internal/testutil/containerdtest"
	"github.com/containerdsnoop/containerdsnoop/internal/testutil/kubelettest"
)

// TestDaemonSetUnderKubelet runs deploy/daemonset.yaml's pod template, as
// a static pod, under a real kubelet (standalone, internal/testutil/
// kubelettest) against the test containerd, with the image `make image`
// builds: kubelet itself turns the manifest's capabilities, security
// context, mounts, downward-API env and memory limit into CRI calls. It
// checks that the tracer starts and attaches, sees kubelet's own CRI
// calls, and answers on its metrics port. The template is changed only
// where the test machine requires it (see TestDaemonSetPodSpec): the
// image, the node's network and a free metrics port (no CNI), the test
// containerd's socket directory at its own path, and capabilities outside
// this machine's bounding set left out.
func TestDaemonSetUnderKubelet(t *testing.T) {
	c := containerdtest.Start(t)
	k := kubelettest.Start(t, c)
	ref := importTracerImage(t, c)
	metricsAddr := freeAddr(t)

	var doc map[string]any
	decodeDaemonSet(t, &doc)
	template := doc["spec"].(map[string]any)["template"].(map[string]any)
	spec := template["spec"].(map[string]any)
	spec["hostNetwork"] = true
	socketDir := filepath.Dir(c.Socket)
	for _, v := range spec["volumes"].([]any) {
		hp := v.(map[string]any)["hostPath"].(map[string]any)
		if hp["path"] == "/run/containerd" {
			hp["path"] = socketDir
		}
	}
	ctr := spec["containers"].([]any)[0].(map[string]any)
	ctr["image"], ctr["imagePullPolicy"] = ref, "Never"
	args := ctr["args"].([]any)
	for i, a := range args {
		switch {
		case a == "/run/containerd/containerd.sock":
			args[i] = c.Socket
		case i > 0 && args[i-1] == "--metrics-addr":
			args[i] = metricsAddr
		}
	}
	for _, m := range ctr["volumeMounts"].([]any) {
		if mm := m.(map[string]any); mm["mountPath"] == "/run/containerd" {
			mm["mountPath"] = socketDir
		}
	}
	capsAdd := ctr["securityContext"].(map[string]any)["capabilities"].(map[string]any)
	var add []string
	for _, c := range capsAdd["add"].([]any) {
		add = append(add, c.(string))
	}
	capsAdd["add"] = boundedCaps(t, add)
	pod := map[string]any{
		"apiVersion": "v1",
		"kind":       "Pod",
		"metadata":   map[string]any{"name": "containerdsnoop", "namespace": "containerdsnoop", "labels": template["metadata"].(map[string]any)["labels"]},
		"spec":       spec,
	}
	manifest, err := yaml.Marshal(pod)
	if err != nil {
		t.Fatal(err)
	}
	// Written aside and renamed: kubelet must never read half a file.
	tmp := filepath.Join(k.Dir, ".containerdsnoop.yaml")
	if err := os.WriteFile(tmp, manifest, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(k.Dir, "manifests", "containerdsnoop.yaml")); err != nil {
		t.Fatal(err)
	}
	defer func() {
		if t.Failed() {
			t.Logf("static pod:\n%s\nkubelet log tail:\n%s", indent(string(manifest)), indent(k.LogTail(40)))
		}
	}()

	rt, _ := c.CRI(t)
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	var logPath string
	readLog := func() string { b, _ := os.ReadFile(logPath); return string(b) }
	deadline := time.Now().Add(2 * time.Minute)
	waitUntil := func(what string, done func() bool) {
		t.Helper()
		for !done() {
			select {
			case <-k.Exited():
				t.Fatalf("kubelet exited while waiting for %s", what)
			default:
			}
			if time.Now().After(deadline) {
				t.Fatalf("no %s within 2 minutes; container log:\n%s", what, indent(readLog()))
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
	waitUntil("running tracer container", func() bool {
		resp, err := rt.ListContainers(ctx, &runtimeapi.ListContainersRequest{Filter: &runtimeapi.ContainerFilter{
			State:         &runtimeapi.ContainerStateValue{State: runtimeapi.ContainerState_CONTAINER_RUNNING},
			LabelSelector: map[string]string{"io.kubernetes.pod.name": "containerdsnoop-" + kubelettest.NodeName},
		}})
		if err != nil || len(resp.GetContainers()) == 0 {
			return false
		}
		st, err := rt.ContainerStatus(ctx, &runtimeapi.ContainerStatusRequest{ContainerId: resp.GetContainers()[0].GetId()})
		if err != nil {
			return false
		}
		logPath = st.GetStatus().GetLogPath()
		return logPath != ""
	})
	waitUntil("readiness line in the tracer's log", func() bool { return strings.Contains(readLog(), readyLine) })
	// kubelet polls containerd every second or so (relist, status). Its
	// command name is its binary's (kubelet-vX.Y.Z here).
	comm, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", k.PID))
	if err != nil {
		t.Fatal(err)
	}
	kubeletComm := strings.TrimSpace(string(comm))
	waitUntil("kubelet's calls on the metrics page", func() bool {
		resp, err := http.Get("http://" + metricsAddr + "/metrics")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		page, _ := io.ReadAll(resp.Body)
		return strings.Contains(string(page), `client_comm="`+kubeletComm+`"`)
	})
	waitUntil("kubelet's calls on containerd's socket in the JSON lines", func() bool {
		return strings.Contains(readLog(), `"comm":"`+kubeletComm+`","pid":`+fmt.Sprint(k.PID)+`,`) && strings.Contains(readLog(), `"socket":"`+c.Socket+`"`)
	})
	// kubelet's connection is older than the tracer (kubelet started it):
	// its calls are shown with "method": null until the connection's
	// header table turns over (README, "What is shown"), which a kubelet
	// whose pods do not change may not do for a long time.
	named, all := 0, 0
	for _, l := range strings.Split(readLog(), "\n") {
		if strings.Contains(l, `"comm":"`+kubeletComm+`"`) {
			all++
			if !strings.Contains(l, `"method":null`) {
				named++
			}
		}
	}
	t.Logf("kubelet's lines seen: %d, with a method: %d", all, named)
}
