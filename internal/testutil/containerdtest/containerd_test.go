//go:build linux

package containerdtest

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"syscall"
	"testing"
	"time"

	versionapi "github.com/containerd/containerd/api/services/version/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/emptypb"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/containerdsnoop/containerdsnoop/internal/testutil/privileged"
)

func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestStartServesCRI(t *testing.T) {
	c := Start(t)
	ctx := testContext(t)
	rt, img := c.CRI(t)

	v, err := rt.Version(ctx, &runtimeapi.VersionRequest{})
	if err != nil {
		t.Fatalf("Version: %v", err)
	}
	if v.GetRuntimeName() != "containerd" || v.GetRuntimeApiVersion() != "v1" {
		t.Errorf("Version = name %q, API %q; want containerd, v1", v.GetRuntimeName(), v.GetRuntimeApiVersion())
	}

	st, err := rt.Status(ctx, &runtimeapi.StatusRequest{})
	if err != nil {
		t.Fatalf("Status: %v", err)
	}
	var runtimeReady bool
	for _, cond := range st.GetStatus().GetConditions() {
		if cond.GetType() == runtimeapi.RuntimeReady {
			runtimeReady = cond.GetStatus()
		}
	}
	if !runtimeReady {
		t.Errorf("Status conditions %v lack RuntimeReady=true", st.GetStatus().GetConditions())
	}

	cs, err := rt.ListContainers(ctx, &runtimeapi.ListContainersRequest{})
	if err != nil {
		t.Fatalf("ListContainers: %v", err)
	}
	if n := len(cs.GetContainers()); n != 0 {
		t.Errorf("ListContainers returned %d containers on a fresh daemon, want 0", n)
	}

	is, err := img.ImageStatus(ctx, &runtimeapi.ImageStatusRequest{Image: &runtimeapi.ImageSpec{Image: "localhost/containerdsnoop/missing:latest"}})
	if err != nil {
		t.Fatalf("ImageStatus of a missing image: %v", err)
	}
	if is.GetImage() != nil {
		t.Errorf("ImageStatus of a missing image = %v, want nil", is.GetImage())
	}

	_, err = rt.ContainerStatus(ctx, &runtimeapi.ContainerStatusRequest{ContainerId: "containerdsnoop-missing"})
	if code := status.Code(err); code != codes.NotFound {
		t.Errorf("ContainerStatus of a missing container: code %v (%v), want NotFound", code, err)
	}

	out, err := c.Ctr(t, "version")
	if err != nil {
		t.Fatalf("ctr version: %v", err)
	}
	if !regexp.MustCompile(`(?m)^Server:\s*\n\s+Version:\s+\S+`).MatchString(out) {
		t.Errorf("ctr version printed no server version:\n%s", out)
	}
}

func TestStartTwiceDoesNotCollide(t *testing.T) {
	a := Start(t)
	b := Start(t)
	if a.Dir == b.Dir || a.Socket == b.Socket || a.PID == b.PID {
		t.Fatalf("instances share state: (%s, %s, %d) and (%s, %s, %d)", a.Dir, a.Socket, a.PID, b.Dir, b.Socket, b.PID)
	}
	for _, c := range []*Containerd{a, b} {
		resp, err := versionapi.NewVersionClient(c.Dial(t)).Version(testContext(t), &emptypb.Empty{})
		if err != nil {
			t.Errorf("Version on %s: %v", c.Socket, err)
			continue
		}
		if resp.GetVersion() == "" {
			t.Errorf("Version on %s is empty", c.Socket)
		}
	}
	if _, err := a.Ctr(t, "-n", "only-in-a", "namespaces", "create", "only-in-a"); err != nil {
		t.Fatalf("create namespace: %v", err)
	}
	out, err := b.Ctr(t, "namespaces", "list", "-q")
	if err != nil {
		t.Fatalf("list namespaces: %v", err)
	}
	if regexp.MustCompile(`(?m)^only-in-a$`).MatchString(out) {
		t.Errorf("namespace created in one instance is visible in the other:\n%s", out)
	}
}

func TestCleanupRemovesEverything(t *testing.T) {
	// Checked here too: a skip inside the subtest would not stop this test.
	privileged.Require(t)
	var c *Containerd
	var leftover string
	t.Run("instance", func(t *testing.T) {
		c = Start(t)
		// Stand-in for the overlay and shm mounts a crashed test leaves.
		leftover = filepath.Join(c.Dir, "root", "leftover")
		if err := os.MkdirAll(leftover, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := syscall.Mount("tmpfs", leftover, "tmpfs", 0, "size=1m"); err != nil {
			t.Fatalf("mount tmpfs: %v", err)
		}
		if points, err := mountPointsUnder(c.Dir); err != nil || len(points) != 1 {
			t.Fatalf("mountPointsUnder = %v, %v; want the one tmpfs", points, err)
		}
	})
	if c == nil {
		t.Fatal("subtest did not start containerd")
	}
	if _, err := os.Stat(c.Dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Dir %s still exists after Cleanup (stat: %v)", c.Dir, err)
	}
	if err := syscall.Kill(c.PID, 0); !errors.Is(err, syscall.ESRCH) {
		t.Errorf("containerd pid %d still exists after Cleanup (kill -0: %v)", c.PID, err)
	}
	if points, err := mountPointsUnder(c.Dir); err != nil || len(points) != 0 {
		t.Errorf("mounts under %s after Cleanup: %v (%v)", c.Dir, points, err)
	}
}

// TestStartContainerd2WithMetrics: containerd 2.x (config version 3) serves
// CRI, and its grpc_server_handled_total counts the calls it answered, by
// method and code; so does 1.6's.
func TestStartContainerd2WithMetrics(t *testing.T) {
	for _, v2 := range []bool{false, true} {
		t.Run(map[bool]string{false: "1.6", true: "2.x"}[v2], func(t *testing.T) {
			c := StartWith(t, Options{V2: v2, Metrics: true})
			ctx := testContext(t)
			v, err := versionapi.NewVersionClient(c.Dial(t)).Version(ctx, &emptypb.Empty{})
			if err != nil {
				t.Fatal(err)
			}
			if v2 != (v.GetVersion() == Containerd2Version) {
				t.Errorf("containerd version %s (V2 %v)", v.GetVersion(), v2)
			}
			rt, _ := c.CRI(t)
			if _, err := rt.ContainerStatus(ctx, &runtimeapi.ContainerStatusRequest{ContainerId: "missing"}); status.Code(err) != codes.NotFound {
				t.Fatalf("ContainerStatus: %v", err)
			}
			h := c.Handled(t)
			if h[HandledKey{"/runtime.v1.RuntimeService/ContainerStatus", "NotFound"}] != 1 {
				t.Errorf("grpc_server_handled_total has no NotFound ContainerStatus: %v", h)
			}
			if h[HandledKey{"/containerd.services.version.v1.Version/Version", "OK"}] < 2 {
				t.Errorf("grpc_server_handled_total lacks the Version calls (readiness probe and this test): %v", h)
			}
		})
	}
}
