//go:build linux

package e2e

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/containerdsnoop/containerdsnoop/internal/image"
	"github.com/containerdsnoop/containerdsnoop/internal/testutil/containerdtest"
	"github.com/containerdsnoop/containerdsnoop/internal/testutil/privileged"
)

// daemonSet is the part of deploy/daemonset.yaml a node runs.
type daemonSet struct {
	Kind string `yaml:"kind"`
	Spec struct {
		Template struct {
			Spec struct {
				HostPID    bool `yaml:"hostPID"`
				Containers []struct {
					Image string   `yaml:"image"`
					Args  []string `yaml:"args"`
					Env   []struct {
						Name  string `yaml:"name"`
						Value string `yaml:"value"`
					} `yaml:"env"`
					Resources struct {
						Limits map[string]string `yaml:"limits"`
					} `yaml:"resources"`
					SecurityContext struct {
						Privileged               bool `yaml:"privileged"`
						RunAsUser                *int64
						AllowPrivilegeEscalation *bool `yaml:"allowPrivilegeEscalation"`
						ReadOnlyRootFilesystem   bool  `yaml:"readOnlyRootFilesystem"`
						Capabilities             struct {
							Add  []string `yaml:"add"`
							Drop []string `yaml:"drop"`
						} `yaml:"capabilities"`
						SeccompProfile struct {
							Type string `yaml:"type"`
						} `yaml:"seccompProfile"`
					} `yaml:"securityContext"`
					VolumeMounts []struct {
						Name      string `yaml:"name"`
						MountPath string `yaml:"mountPath"`
						ReadOnly  bool   `yaml:"readOnly"`
					} `yaml:"volumeMounts"`
				} `yaml:"containers"`
				Volumes []struct {
					Name     string `yaml:"name"`
					HostPath struct {
						Path string `yaml:"path"`
					} `yaml:"hostPath"`
				} `yaml:"volumes"`
			} `yaml:"spec"`
		} `yaml:"template"`
	} `yaml:"spec"`
}

func loadDaemonSet(t *testing.T) *daemonSet {
	t.Helper()
	var ds daemonSet
	decodeDaemonSet(t, &ds)
	if len(ds.Spec.Template.Spec.Containers) != 1 {
		t.Fatalf("DaemonSet has %d containers, want 1", len(ds.Spec.Template.Spec.Containers))
	}
	return &ds
}

// decodeDaemonSet decodes the DaemonSet document of deploy/daemonset.yaml
// (the file also holds its ServiceAccount and such) into out.
func decodeDaemonSet(t *testing.T, out any) {
	t.Helper()
	root, err := moduleRoot()
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(root, "deploy", "daemonset.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	dec := yaml.NewDecoder(bytes.NewReader(b))
	for {
		var doc yaml.Node
		if err := dec.Decode(&doc); err != nil {
			t.Fatalf("deploy/daemonset.yaml: no DaemonSet: %v", err)
		}
		var head struct {
			Kind string `yaml:"kind"`
		}
		if err := doc.Decode(&head); err != nil || head.Kind != "DaemonSet" {
			continue
		}
		if err := doc.Decode(out); err != nil {
			t.Fatalf("deploy/daemonset.yaml: %v", err)
		}
		return
	}
}

// TestDaemonSetPodSpec runs the image `make image` builds with the pod
// spec of deploy/daemonset.yaml (its args, capabilities, security
// context, mounts and memory limit; not privileged) through the CRI of
// the test containerd, the way kubelet would start it, and checks that the
// tracer starts, attaches, sees CRI calls made to that containerd, answers
// on its metrics port and stays within its memory limit. No kubelet: the
// test is kubelet's CRI client. Two things differ from a cluster, because
// of the test machine: the pod uses the node's network (no CNI plugin is
// installed), so the metrics port is a free one; and the test containerd's
// socket directory is mounted at its own path instead of /run/containerd
// (and --socket follows), because the tracer matches sockets by the path
// they were bound to, which on a node is /run/containerd.
func TestDaemonSetPodSpec(t *testing.T) {
	privileged.Require(t)
	privileged.RequireBinary(t, "runc")
	ds := loadDaemonSet(t)
	spec := ds.Spec.Template.Spec
	ctr := spec.Containers[0]
	if ctr.SecurityContext.Privileged {
		t.Fatal("the DaemonSet's container is privileged")
	}

	c := containerdtest.Start(t)
	containerdtest.ImportBusyboxImage(t, c, containerdtest.SandboxImage)
	ref := importTracerImage(t, c)

	socketDir := filepath.Dir(c.Socket)
	metricsAddr := freeAddr(t)
	args := make([]string, len(ctr.Args))
	for i, a := range ctr.Args {
		switch {
		case a == "/run/containerd/containerd.sock":
			a = c.Socket
		case i > 0 && ctr.Args[i-1] == "--metrics-addr":
			a = metricsAddr
		}
		args[i] = a
	}
	var mounts []*runtimeapi.Mount
	for _, vm := range ctr.VolumeMounts {
		host := ""
		for _, v := range spec.Volumes {
			if v.Name == vm.Name {
				host = v.HostPath.Path
			}
		}
		if host == "" {
			t.Fatalf("volume %s is not a hostPath", vm.Name)
		}
		path := vm.MountPath
		if host == "/run/containerd" {
			host, path = socketDir, socketDir
		}
		mounts = append(mounts, &runtimeapi.Mount{ContainerPath: path, HostPath: host, Readonly: vm.ReadOnly})
	}
	var envs []*runtimeapi.KeyValue
	for _, e := range ctr.Env {
		v := e.Value
		if e.Name == "NODE_NAME" {
			v = "e2e-node" // kubelet's fieldRef spec.nodeName
		}
		envs = append(envs, &runtimeapi.KeyValue{Key: e.Name, Value: []byte(strings.ReplaceAll(v, "$(NODE_NAME)", "e2e-node"))})
	}
	memLimit := parseQuantity(t, ctr.Resources.Limits["memory"])
	ns := &runtimeapi.NamespaceOption{Network: runtimeapi.NamespaceMode_NODE}
	if spec.HostPID {
		ns.Pid = runtimeapi.NamespaceMode_NODE
	}
	sc := ctr.SecurityContext
	if sc.SeccompProfile.Type != "Unconfined" {
		t.Fatalf("seccompProfile %q: the test knows Unconfined only", sc.SeccompProfile.Type)
	}
	lsc := &runtimeapi.LinuxContainerSecurityContext{
		Capabilities:     &runtimeapi.Capability{AddCapabilities: boundedCaps(t, sc.Capabilities.Add), DropCapabilities: sc.Capabilities.Drop},
		Privileged:       sc.Privileged,
		NamespaceOptions: ns,
		ReadonlyRootfs:   sc.ReadOnlyRootFilesystem,
		NoNewPrivs:       sc.AllowPrivilegeEscalation != nil && !*sc.AllowPrivilegeEscalation,
		Seccomp:          &runtimeapi.SecurityProfile{ProfileType: runtimeapi.SecurityProfile_Unconfined},
	}
	if sc.RunAsUser != nil {
		lsc.RunAsUser = &runtimeapi.Int64Value{Value: *sc.RunAsUser}
	}

	rt, _ := c.CRI(t)
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	logDir := t.TempDir()
	podConfig := &runtimeapi.PodSandboxConfig{
		Metadata:     &runtimeapi.PodSandboxMetadata{Name: "containerdsnoop-e2e", Uid: "e2e-uid-daemonset", Namespace: "containerdsnoop"},
		LogDirectory: logDir,
		Linux: &runtimeapi.LinuxPodSandboxConfig{SecurityContext: &runtimeapi.LinuxSandboxSecurityContext{
			NamespaceOptions: ns, Seccomp: &runtimeapi.SecurityProfile{ProfileType: runtimeapi.SecurityProfile_Unconfined},
		}},
	}
	sb, err := rt.RunPodSandbox(ctx, &runtimeapi.RunPodSandboxRequest{Config: podConfig})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		rt.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: sb.PodSandboxId})
		rt.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: sb.PodSandboxId})
	})
	cc, err := rt.CreateContainer(ctx, &runtimeapi.CreateContainerRequest{
		PodSandboxId: sb.PodSandboxId,
		Config: &runtimeapi.ContainerConfig{
			Metadata: &runtimeapi.ContainerMetadata{Name: "containerdsnoop"},
			Image:    &runtimeapi.ImageSpec{Image: ref},
			Args:     args,
			Envs:     envs,
			Mounts:   mounts,
			LogPath:  "containerdsnoop.log",
			Linux: &runtimeapi.LinuxContainerConfig{
				Resources:       &runtimeapi.LinuxContainerResources{MemoryLimitInBytes: memLimit},
				SecurityContext: lsc,
			},
		},
		SandboxConfig: podConfig,
	})
	if err != nil {
		t.Fatal(err)
	}
	id := cc.ContainerId
	if _, err := rt.StartContainer(ctx, &runtimeapi.StartContainerRequest{ContainerId: id}); err != nil {
		t.Fatal(err)
	}
	logPath := filepath.Join(logDir, "containerdsnoop.log")
	readLog := func() string { b, _ := os.ReadFile(logPath); return string(b) }
	defer func() {
		if t.Failed() {
			t.Logf("container log:\n%s", indent(readLog()))
		}
	}()
	waitUntil := func(what string, done func() bool) {
		t.Helper()
		deadline := time.Now().Add(time.Minute)
		for !done() {
			st, err := rt.ContainerStatus(ctx, &runtimeapi.ContainerStatusRequest{ContainerId: id})
			if err != nil {
				t.Fatal(err)
			}
			if s := st.GetStatus(); s.GetState() != runtimeapi.ContainerState_CONTAINER_RUNNING {
				t.Fatalf("waiting for %s: container %v, exit code %d, reason %q", what, s.GetState(), s.GetExitCode(), s.GetReason())
			}
			if time.Now().After(deadline) {
				t.Fatalf("no %s within a minute", what)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	waitUntil("readiness line in the container's log", func() bool { return strings.Contains(readLog(), readyLine) })

	// Calls made to containerd now, on a connection of their own. The
	// first is about the tracer's own pod, which it can know only from its
	// start-up query (--list-pods), made from inside the container.
	rt2, _ := c.CRI(t)
	if _, err := rt2.PodSandboxStatus(ctx, &runtimeapi.PodSandboxStatusRequest{PodSandboxId: sb.PodSandboxId}); err != nil {
		t.Fatal(err)
	}
	if _, err := rt2.ListPodSandbox(ctx, &runtimeapi.ListPodSandboxRequest{}); err != nil {
		t.Fatal(err)
	}
	var page string
	waitUntil("ListPodSandbox on the metrics page", func() bool {
		resp, err := http.Get("http://" + metricsAddr + "/metrics")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		page = string(b)
		return strings.Contains(page, `containerdsnoop_calls_total{client_comm="e2e.test",code="OK",method="ListPodSandbox",protocol="grpc",service="runtime.v1.RuntimeService"} 1`)
	})
	waitUntil("ListPodSandbox in the JSON lines", func() bool {
		return strings.Contains(readLog(), `"method":"/runtime.v1.RuntimeService/ListPodSandbox"`)
	})
	named := false
	for _, l := range strings.Split(readLog(), "\n") {
		if strings.Contains(l, `"type":"request"`) && strings.Contains(l, `"method":"/runtime.v1.RuntimeService/PodSandboxStatus"`) {
			named = strings.Contains(l, `"pod":{"namespace":"containerdsnoop","name":"containerdsnoop-e2e","uid":"e2e-uid-daemonset"}`)
		}
	}
	if !named {
		t.Error("the PodSandboxStatus request about the tracer's own pod does not name it: no start-up query from inside the container")
	}
	st, err := rt.ContainerStats(ctx, &runtimeapi.ContainerStatsRequest{ContainerId: id})
	if err != nil {
		t.Fatal(err)
	}
	ws := st.GetStats().GetMemory().GetWorkingSetBytes().GetValue()
	t.Logf("tracer working set %d MiB of the %d MiB limit", ws>>20, memLimit>>20)
	if ws == 0 || ws > uint64(memLimit)*3/4 {
		t.Errorf("tracer working set %d bytes; want some, and under 3/4 of the DaemonSet's limit %d", ws, memLimit)
	}
	// SIGTERM, as kubelet stops a pod: the tracer detaches and exits 0.
	if _, err := rt.StopContainer(ctx, &runtimeapi.StopContainerRequest{ContainerId: id, Timeout: 30}); err != nil {
		t.Fatal(err)
	}
	cs, err := rt.ContainerStatus(ctx, &runtimeapi.ContainerStatusRequest{ContainerId: id})
	if err != nil {
		t.Fatal(err)
	}
	if code := cs.GetStatus().GetExitCode(); code != 0 {
		t.Errorf("tracer exit code %d after SIGTERM, want 0", code)
	}
}

// importTracerImage builds the image as `make image` does, from a static
// build of this checkout, and imports it into c's CRI namespace.
func importTracerImage(t *testing.T, c *containerdtest.Containerd) string {
	t.Helper()
	dir := t.TempDir()
	bin := filepath.Join(dir, "containerdsnoop")
	watchdog := filepath.Join(dir, "containerdsnoop-watchdog")
	if err := goBuild(dir, true, "./cmd/containerdsnoop", "./cmd/containerdsnoop-watchdog"); err != nil {
		t.Fatalf("static build: %v", err)
	}
	const ref = "ghcr.io/containerdsnoop/containerdsnoop:e2e"
	img, err := image.Build(image.Options{
		Files: []image.File{
			{Path: "/containerdsnoop", Source: bin, Mode: 0o755},
			{Path: "/containerdsnoop-watchdog", Source: watchdog, Mode: 0o755},
		},
		Arch:       goarch(t),
		Epoch:      time.Unix(0, 0).UTC(),
		Entrypoint: []string{"/containerdsnoop"},
		Cmd:        []string{"trace", "--output", "json"},
	})
	if err != nil {
		t.Fatal(err)
	}
	archive := filepath.Join(dir, "image.tar")
	if err := image.Write(archive, ref, img); err != nil {
		t.Fatal(err)
	}
	if out, err := c.Ctr(t, "-n", containerdtest.CRINamespace, "images", "import", archive); err != nil {
		t.Fatalf("ctr images import: %v\n%s", err, out)
	}
	return ref
}

func goarch(t *testing.T) string {
	out, err := exec.Command("go", "env", "GOARCH").Output()
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(out))
}

// capBits are the capabilities the manifest may add.
var capBits = map[string]uint{"SYS_ADMIN": 21, "SYS_RESOURCE": 24, "PERFMON": 38, "BPF": 39}

// boundedCaps leaves out, and logs, capabilities outside this machine's
// own bounding set: no container here can have them (this CI host's
// sandbox withholds CAP_SYS_RESOURCE, which the tracer needs only on
// kernels before 5.11, for RLIMIT_MEMLOCK).
func boundedCaps(t *testing.T, caps []string) []string {
	t.Helper()
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	var bnd uint64
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "CapBnd:"); ok {
			bnd, err = strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			if err != nil {
				t.Fatal(err)
			}
		}
	}
	var out []string
	for _, c := range caps {
		bit, known := capBits[c]
		if !known {
			t.Fatalf("capability %s: add its number to capBits", c)
		}
		if bnd&(1<<bit) == 0 {
			t.Logf("CAP_%s is not in this machine's bounding set: left out", c)
			continue
		}
		out = append(out, c)
	}
	return out
}

// parseQuantity reads the binary-suffixed quantities the manifest uses.
func parseQuantity(t *testing.T, q string) int64 {
	t.Helper()
	for suffix, mult := range map[string]int64{"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30} {
		if n, ok := strings.CutSuffix(q, suffix); ok {
			var v int64
			for _, c := range n {
				if c < '0' || c > '9' {
					t.Fatalf("quantity %q", q)
				}
				v = v*10 + int64(c-'0')
			}
			return v * mult
		}
	}
	t.Fatalf("quantity %q: want Ki, Mi or Gi", q)
	return 0
}
