//go:build linux

package containerdtest

import (
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/containerdsnoop/containerdsnoop/internal/testutil/privileged"
)

// TestCRIPodLifecycle proves the generated config lets CRI run real pods on
// the test machines, which is what the end-to-end tests build on.
func TestCRIPodLifecycle(t *testing.T) {
	privileged.Require(t)
	privileged.RequireBinary(t, "runc")
	c := Start(t)
	if _, err := c.Ctr(t, "-n", "k8s.io", "images", "import", WriteBusyboxImage(t, SandboxImage, "/bin/busybox", "sleep", "2147483647")); err != nil {
		t.Fatalf("import sandbox image: %v", err)
	}
	ctx := testContext(t)
	rt, img := c.CRI(t)

	is, err := img.ImageStatus(ctx, &runtimeapi.ImageStatusRequest{Image: &runtimeapi.ImageSpec{Image: SandboxImage}})
	if err != nil || is.GetImage() == nil {
		t.Fatalf("ImageStatus(%s) = %v, %v; want the imported image", SandboxImage, is, err)
	}

	// Host networking: there is no CNI plugin for pod networks.
	podConfig := &runtimeapi.PodSandboxConfig{
		Metadata: &runtimeapi.PodSandboxMetadata{Name: "pod", Uid: "containerdtest-uid", Namespace: "containerdtest"},
		Linux: &runtimeapi.LinuxPodSandboxConfig{
			SecurityContext: &runtimeapi.LinuxSandboxSecurityContext{
				NamespaceOptions: &runtimeapi.NamespaceOption{Network: runtimeapi.NamespaceMode_NODE},
			},
		},
	}
	pod, err := rt.RunPodSandbox(ctx, &runtimeapi.RunPodSandboxRequest{Config: podConfig})
	if err != nil {
		t.Fatalf("RunPodSandbox: %v", err)
	}
	created, err := rt.CreateContainer(ctx, &runtimeapi.CreateContainerRequest{
		PodSandboxId: pod.GetPodSandboxId(),
		Config: &runtimeapi.ContainerConfig{
			Metadata: &runtimeapi.ContainerMetadata{Name: "sleeper"},
			Image:    &runtimeapi.ImageSpec{Image: SandboxImage},
			Command:  []string{"/bin/busybox", "sleep", "600"},
		},
		SandboxConfig: podConfig,
	})
	if err != nil {
		t.Fatalf("CreateContainer: %v", err)
	}
	id := created.GetContainerId()
	if _, err := rt.StartContainer(ctx, &runtimeapi.StartContainerRequest{ContainerId: id}); err != nil {
		t.Fatalf("StartContainer: %v", err)
	}
	st, err := rt.ContainerStatus(ctx, &runtimeapi.ContainerStatusRequest{ContainerId: id})
	if err != nil {
		t.Fatalf("ContainerStatus: %v", err)
	}
	if got := st.GetStatus().GetState(); got != runtimeapi.ContainerState_CONTAINER_RUNNING {
		t.Errorf("container state = %v, want running", got)
	}
	if _, err := rt.StopContainer(ctx, &runtimeapi.StopContainerRequest{ContainerId: id}); err != nil {
		t.Errorf("StopContainer: %v", err)
	}
	if _, err := rt.RemoveContainer(ctx, &runtimeapi.RemoveContainerRequest{ContainerId: id}); err != nil {
		t.Errorf("RemoveContainer: %v", err)
	}
	if _, err := rt.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: pod.GetPodSandboxId()}); err != nil {
		t.Errorf("StopPodSandbox: %v", err)
	}
	if _, err := rt.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: pod.GetPodSandboxId()}); err != nil {
		t.Errorf("RemovePodSandbox: %v", err)
	}
}

// TestCleanupReapsLeftoverContainers checks that a container a test forgot
// to remove does not outlive the instance: not its process, not its shim,
// not its rootfs mount.
func TestCleanupReapsLeftoverContainers(t *testing.T) {
	// Checked here too: a skip inside the subtest would not stop this test.
	privileged.Require(t)
	privileged.RequireBinary(t, "runc")
	const image = "localhost/containerdsnoop/busybox:test"
	var c *Containerd
	var taskPID int
	t.Run("instance", func(t *testing.T) {
		c = Start(t)
		ctr := func(args ...string) string {
			t.Helper()
			out, err := c.Ctr(t, args...)
			if err != nil {
				t.Fatal(err)
			}
			return out
		}
		ctr("-n", "containerdtest", "images", "import", WriteBusyboxImage(t, image, "/bin/busybox", "sleep", "600"))
		// ctr defaults to the shared /run/containerd/runc and
		// /run/containerd/fifo; keep this instance's runc state private.
		ctr("-n", "containerdtest", "run", "-d", "--null-io",
			"--runc-root", filepath.Join(c.Dir, "ctr-runc"), "--fifo-dir", filepath.Join(c.Dir, "fifo"),
			image, "sleeper")
		m := regexp.MustCompile(`(?m)^sleeper\s+(\d+)\s+RUNNING`).FindStringSubmatch(ctr("-n", "containerdtest", "tasks", "ls"))
		if m == nil {
			t.Fatal("task sleeper is not running")
		}
		taskPID, _ = strconv.Atoi(m[1])
		if shims, err := findShims(c.Socket); err != nil || len(shims) == 0 {
			t.Errorf("findShims = %v, %v; want the shim of sleeper", shims, err)
		}
		points, err := mountPointsUnder(c.Dir)
		if err != nil || !strings.Contains(strings.Join(points, "\n"), "/sleeper/rootfs") {
			t.Errorf("mounts under %s = %v, %v; want the rootfs of sleeper", c.Dir, points, err)
		}
	})
	if c == nil || taskPID == 0 {
		t.Fatal("subtest did not start a container")
	}
	if err := syscall.Kill(taskPID, 0); !errors.Is(err, syscall.ESRCH) {
		t.Errorf("container process %d survived Cleanup (kill -0: %v)", taskPID, err)
	}
	if shims, err := findShims(c.Socket); err != nil || len(shims) != 0 {
		t.Errorf("shims survived Cleanup: %v (%v)", shims, err)
	}
	if _, err := os.Stat(c.Dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Dir %s still exists after Cleanup (stat: %v)", c.Dir, err)
	}
}
