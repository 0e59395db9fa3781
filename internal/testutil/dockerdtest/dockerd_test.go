//go:build linux

package dockerdtest

import (
	"strings"
	"testing"

	"github.com/containerdsnoop/containerdsnoop/internal/testutil/containerdtest"
)

// TestContainerLifecycle runs a container through the private dockerd and
// checks it ran as a task of the private containerd.
func TestContainerLifecycle(t *testing.T) {
	c := containerdtest.Start(t)
	d := Start(t, c)
	id := d.Docker(t, "run", "-d", "--network", "none", Image, "sleep", "600")
	if got := d.Docker(t, "inspect", "--format", "{{.State.Running}}", id); got != "true" {
		t.Fatalf("container %s running = %q", id, got)
	}
	tasks, err := c.Ctr(t, "-n", "moby", "tasks", "ls")
	if err != nil || !strings.Contains(tasks, id) {
		t.Errorf("containerd tasks in moby: %q, %v; want %s", tasks, err, id)
	}
	d.Docker(t, "stop", "-t", "1", id)
	d.Docker(t, "rm", id)
}
