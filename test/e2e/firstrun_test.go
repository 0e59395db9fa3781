//go:build linux

package e2e

import (
	"context"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/containerdsnoop/containerdsnoop/internal/testutil/privileged"
)

// TestFirstRunWithoutTracefs is the README's first command on a fresh
// machine, where tracefs is not mounted: the tool must mount it before
// cilium/ebpf looks for it (and caches the answer), so that the first run
// attaches, with the default backend choice, and captures. tracefs and
// debugfs are unmounted in a private mount namespace, so the host keeps
// its own.
func TestFirstRunWithoutTracefs(t *testing.T) {
	privileged.Require(t)
	privileged.RequireBinary(t, "unshare")
	privileged.RequireBinary(t, "findmnt")
	helper := startHelperServer(t)
	before := hostTracefs()
	// Unmount deepest first (debugfs's tracing automount, then debugfs),
	// check nothing is left, then become the tracer (same pid, so the
	// harness signals the tool itself).
	script := `set -e
for m in $(findmnt -rn -t tracefs,debugfs -o TARGET | sort -r); do umount -l "$m"; done
if findmnt -rn -t tracefs,debugfs >/dev/null; then echo "tracefs still mounted" >&2; exit 99; fi
exec "$0" trace --output json --socket "$1"`
	cmd := exec.Command("unshare", "--mount", "--propagation", "private", "sh", "-c", script, snoopBinary(t), helper.socket)
	tr := startTracerCmd(t, cmd, nil)

	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	conn, err := grpc.NewClient("unix://"+helper.socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{Service: "C"}); err != nil {
		t.Fatalf("health check: %v", err)
	}
	self := os.Getpid()
	tr.waitRecords("the health check", func(recs []*record) bool {
		return countCalls(recs, healthCheck, self, helper.socket) == 1
	})
	stopJSON(t, tr, syscall.SIGINT)

	// The namespace's mounts went with it; the host's are untouched.
	if after := hostTracefs(); after != before {
		t.Errorf("host tracefs mounts changed: %q before, %q after", before, after)
	}
}

func hostTracefs() string {
	out, _ := exec.Command("findmnt", "-rn", "-t", "tracefs", "-o", "TARGET").Output()
	return strings.TrimSpace(string(out))
}
