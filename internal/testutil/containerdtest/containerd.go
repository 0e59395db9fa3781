//go:build linux

package containerdtest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	namespacesapi "github.com/containerd/containerd/api/services/namespaces/v1"
	tasksapi "github.com/containerd/containerd/api/services/tasks/v1"
	versionapi "github.com/containerd/containerd/api/services/version/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/types/known/emptypb"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/containerdsnoop/containerdsnoop/internal/testutil/child"
	"github.com/containerdsnoop/containerdsnoop/internal/testutil/privileged"
)

const (
	// readyTimeout bounds start-up; a cold containerd 1.6 with CRI is ready
	// in well under a second here, but CI machines can be slow and loaded.
	readyTimeout = 60 * time.Second
	// probeTimeout bounds one readiness attempt so that a daemon that accepts
	// connections but never answers cannot eat the whole start-up budget.
	probeTimeout = 2 * time.Second
	// stopTimeout is how long containerd gets to exit after SIGTERM.
	stopTimeout = 10 * time.Second
	// reapTimeout bounds the best-effort removal of tasks left by a test.
	reapTimeout = 10 * time.Second
	// ctrTimeout keeps a wedged ctr from hanging the test binary until the
	// global go test timeout, which would skip every Cleanup.
	ctrTimeout = 2 * time.Minute
	// maxMsgSize matches containerd's default max_recv/max_send_message_size,
	// which is four times grpc-go's client default.
	maxMsgSize = 16 << 20
	// namespaceHeader is the gRPC metadata key containerd reads the
	// namespace from (github.com/containerd/containerd/namespaces).
	namespaceHeader = "containerd-namespace"
	// maxSocketPath is sizeof(sockaddr_un.sun_path) minus the NUL.
	maxSocketPath = 107
)

// Containerd is a running private containerd started by Start.
type Containerd struct {
	// Socket is the path of the gRPC unix socket.
	Socket string
	// Dir is the temporary directory holding the config, log, root, state
	// and every other path this containerd uses.
	Dir string
	// PID is the containerd process ID.
	PID int
	// V2 is set for containerd 2.x (Options.V2).
	V2 bool
	// MetricsURL is containerd's Prometheus metrics page, "" unless
	// Options.Metrics.
	MetricsURL string
	// Log is containerd's log file.
	Log string

	layout layout
	proc   *child.Proc
}

// Start launches a private containerd for t and waits until both its own API
// and the CRI answer on Socket. Everything is torn down in t's Cleanup: tasks
// left behind are killed, the daemon is stopped, mounts under Dir are removed
// and Dir is deleted. Start skips (or, with privileged.RequireEnv=1, fails)
// when not running as root.
func Start(t testing.TB) *Containerd {
	t.Helper()
	return StartWith(t, Options{})
}

// Options choose which containerd Start runs and what it exposes.
type Options struct {
	// V2 runs containerd 2.x and its runc shim, built by
	// scripts/deps/containerd2.sh into Containerd2Dir (config version 3),
	// instead of Debian's 1.6 from PATH.
	V2 bool
	// Metrics makes containerd serve its Prometheus metrics on an
	// ephemeral loopback port (Containerd.MetricsURL), e.g. for
	// grpc_server_handled_total, an oracle outside the tracer.
	Metrics bool
	// Debug sets containerd's log level to debug: its log (Containerd.Log)
	// then has a line for every event published, an oracle outside the
	// tracer for event streams.
	Debug bool
}

// Containerd2Version is the containerd 2.x that scripts/deps/containerd2.sh
// builds, and Containerd2Dir where it installs containerd and
// containerd-shim-runc-v2.
const (
	Containerd2Version = "v2.4.2"
	Containerd2Dir     = "/usr/local/lib/containerdsnoop-test/containerd-" + Containerd2Version
)

// StartWith is Start with options.
func StartWith(t testing.TB, opts Options) *Containerd {
	t.Helper()
	privileged.Require(t)
	var bin string
	if opts.V2 {
		const install = "run scripts/deps/containerd2.sh (make test-deps)"
		bin = privileged.RequireFile(t, filepath.Join(Containerd2Dir, "containerd"), install)
		privileged.RequireFile(t, filepath.Join(Containerd2Dir, "containerd-shim-runc-v2"), install)
	} else {
		bin = privileged.RequireBinary(t, "containerd")
	}

	// Not t.TempDir: its paths embed the test name and easily push the
	// socket path past the 107-byte sun_path limit.
	dir, err := os.MkdirTemp("/tmp", "cdsnoop-")
	if err != nil {
		t.Fatalf("create containerd dir: %v", err)
	}
	l := newLayout(dir)
	if opts.Metrics {
		if l.metrics, err = freeLoopbackPort(); err != nil {
			t.Fatalf("pick a metrics port: %v", err)
		}
	}
	if opts.Debug {
		l.level = "debug"
	}
	c := &Containerd{Socket: l.socket, Dir: dir, Log: l.log, layout: l, V2: opts.V2}
	if l.metrics != "" {
		c.MetricsURL = "http://" + l.metrics + "/v1/metrics"
	}
	// Registered before anything can fail so that a half-started instance is
	// still stopped, unmounted and removed.
	t.Cleanup(func() { c.cleanup(t) })

	if len(l.ttrpc) > maxSocketPath {
		t.Fatalf("socket path %s is longer than %d bytes", l.ttrpc, maxSocketPath)
	}
	if err := l.create(opts.V2); err != nil {
		t.Fatalf("prepare containerd dir: %v", err)
	}
	if err := c.start(bin); err != nil {
		t.Fatalf("start containerd: %v", err)
	}
	begin := time.Now()
	version, err := c.waitReady()
	if err != nil {
		t.Fatalf("wait for containerd: %v", err)
	}
	t.Logf("containerd %s (pid %d) ready on %s after %s", version, c.PID, c.Socket, time.Since(begin).Round(time.Millisecond))
	return c
}

func (c *Containerd) start(bin string) error {
	logFile, err := os.OpenFile(c.layout.log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("open log: %w", err)
	}
	// The child holds its own descriptor; ours is only needed until fork.
	defer logFile.Close()

	cmd := exec.Command(bin, "--config", c.layout.config)
	cmd.Stdout = logFile
	cmd.Stderr = logFile
	cmd.Env = withoutContainerdEnv(os.Environ())
	if c.V2 {
		// containerd finds its shim in PATH: this one's own, not 1.6's.
		cmd.Env = append(cmd.Env, "PATH="+filepath.Dir(bin)+":"+os.Getenv("PATH"))
	}
	// If the test binary dies without running Cleanups (a go test -timeout
	// panic, SIGKILL), containerd still gets told to shut down instead of
	// lingering with our sockets and mounts.
	p, err := child.StartProc(cmd, syscall.SIGTERM)
	if err != nil {
		return err
	}
	c.proc = p
	c.PID = cmd.Process.Pid
	return nil
}

// waitReady polls until containerd's Version service and the CRI runtime
// service both answer. The CRI plugin registers its gRPC services before it
// has finished initialising and rejects calls until then, so a successful
// containerd Version call alone does not mean CRI tests can proceed.
func (c *Containerd) waitReady() (string, error) {
	conn, err := grpc.NewClient("unix://"+c.Socket,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		// grpc-go's default reconnect backoff starts at 1 s and grows to
		// 2 min; while the socket does not exist yet that would dominate
		// start-up time.
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff: backoff.Config{
				BaseDelay:  10 * time.Millisecond,
				Multiplier: 1.6,
				Jitter:     0.2,
				MaxDelay:   250 * time.Millisecond,
			},
			MinConnectTimeout: probeTimeout,
		}),
	)
	if err != nil {
		return "", fmt.Errorf("create readiness client: %w", err)
	}
	defer conn.Close()
	version := versionapi.NewVersionClient(conn)
	cri := runtimeapi.NewRuntimeServiceClient(conn)

	deadline := time.NewTimer(readyTimeout)
	defer deadline.Stop()
	delay := 10 * time.Millisecond
	for {
		v, err := probe(version, cri)
		if err == nil {
			return v, nil
		}
		select {
		case <-c.proc.Exited():
			return "", fmt.Errorf("containerd exited before becoming ready (%v); last probe error: %w", c.proc.Err(), err)
		case <-deadline.C:
			return "", fmt.Errorf("containerd not ready after %s: %w", readyTimeout, err)
		case <-time.After(delay):
		}
		delay = min(delay*2, 250*time.Millisecond)
	}
}

func probe(version versionapi.VersionClient, cri runtimeapi.RuntimeServiceClient) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), probeTimeout)
	defer cancel()
	v, err := version.Version(ctx, &emptypb.Empty{})
	if err != nil {
		return "", fmt.Errorf("containerd version: %w", err)
	}
	if _, err := cri.Version(ctx, &runtimeapi.VersionRequest{}); err != nil {
		return "", fmt.Errorf("cri version: %w", err)
	}
	return v.GetVersion(), nil
}

// Ctr runs `ctr --address <Socket> args...` and returns its standard output.
// Global flags such as `-n <namespace>` go first in args. The error includes
// ctr's standard error.
//
// `ctr run` keeps runc state in /run/containerd/runc and I/O fifos in
// /run/containerd/fifo unless told otherwise, paths shared with every other
// containerd on the machine; pass --runc-root and --fifo-dir (or --null-io)
// pointing under Dir.
func (c *Containerd) Ctr(t testing.TB, args ...string) (string, error) {
	t.Helper()
	bin := privileged.RequireBinary(t, "ctr")
	// Not t.Context: it is already cancelled while Cleanups run, and tests
	// may well want ctr there.
	ctx, cancel := context.WithTimeout(context.Background(), ctrTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, append([]string{"--address", c.Socket}, args...)...)
	// CONTAINERD_NAMESPACE from the developer's shell would silently change
	// which namespace a bare command acts on.
	cmd.Env = withoutContainerdEnv(os.Environ())
	if c.V2 {
		// containerd finds its shim in PATH: this one's own, not 1.6's.
		cmd.Env = append(cmd.Env, "PATH="+filepath.Dir(bin)+":"+os.Getenv("PATH"))
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout = &stdout
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("ctr %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return stdout.String(), nil
}

// Dial returns a gRPC client connection to Socket, closed in t's Cleanup.
func (c *Containerd) Dial(t testing.TB) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient("unix://"+c.Socket,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(maxMsgSize), grpc.MaxCallSendMsgSize(maxMsgSize)),
	)
	if err != nil {
		t.Fatalf("dial containerd: %v", err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return conn
}

// CRI returns CRI v1 runtime and image clients sharing one connection from
// Dial.
func (c *Containerd) CRI(t testing.TB) (runtimeapi.RuntimeServiceClient, runtimeapi.ImageServiceClient) {
	t.Helper()
	conn := c.Dial(t)
	return runtimeapi.NewRuntimeServiceClient(conn), runtimeapi.NewImageServiceClient(conn)
}

// LogTail returns at most the last n lines of containerd's log.
func (c *Containerd) LogTail(n int) string { return child.LogTail(c.layout.log, n) }

func (c *Containerd) cleanup(t testing.TB) {
	if c.proc != nil {
		c.stop(t)
	}
	if t.Failed() {
		t.Logf("last lines of %s:\n%s", c.layout.log, c.LogTail(60))
	}
	// Shims are separate daemons that outlive containerd; any still
	// registered with this instance would keep mounts busy and leak.
	killShims(t, c.Socket)
	if err := UnmountUnder(c.Dir); err != nil {
		t.Errorf("unmount leftovers of containerd: %v", err)
	}
	if err := os.RemoveAll(c.Dir); err != nil {
		t.Errorf("remove containerd dir: %v", err)
	}
}

func (c *Containerd) stop(t testing.TB) {
	select {
	case <-c.proc.Exited():
		t.Logf("containerd (pid %d) had already exited: %v", c.PID, c.proc.Err())
		return
	default:
	}
	c.reapTasks(t)
	if err := c.proc.Cmd.Process.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
		t.Logf("send SIGTERM to containerd: %v", err)
	}
	select {
	case <-c.proc.Exited():
	case <-time.After(stopTimeout):
		t.Logf("containerd (pid %d) still running %s after SIGTERM; killing it", c.PID, stopTimeout)
		if err := c.proc.Cmd.Process.Kill(); err != nil && !errors.Is(err, os.ErrProcessDone) {
			t.Errorf("kill containerd: %v", err)
		}
		<-c.proc.Exited()
	}
}

// reapTasks kills and deletes tasks a test left behind, in every namespace.
// Deleting a task is what makes its shim unmount the rootfs and exit;
// stopping containerd alone would leave both behind.
func (c *Containerd) reapTasks(t testing.TB) {
	conn, err := grpc.NewClient("unix://"+c.Socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Logf("reap tasks: %v", err)
		return
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), reapTimeout)
	defer cancel()

	nss, err := namespacesapi.NewNamespacesClient(conn).List(ctx, &namespacesapi.ListNamespacesRequest{})
	if err != nil {
		t.Logf("reap tasks: list namespaces: %v", err)
		return
	}
	tasks := tasksapi.NewTasksClient(conn)
	for _, ns := range nss.GetNamespaces() {
		nsCtx := metadata.AppendToOutgoingContext(ctx, namespaceHeader, ns.GetName())
		list, err := tasks.List(nsCtx, &tasksapi.ListTasksRequest{})
		if err != nil {
			t.Logf("reap tasks: list tasks in namespace %s: %v", ns.GetName(), err)
			continue
		}
		for _, task := range list.GetTasks() {
			id := task.GetID()
			// Kill fails for tasks that are not running, which is fine: Wait
			// then returns at once and Delete still applies.
			_, _ = tasks.Kill(nsCtx, &tasksapi.KillRequest{ContainerID: id, Signal: uint32(syscall.SIGKILL), All: true})
			if _, err := tasks.Wait(nsCtx, &tasksapi.WaitRequest{ContainerID: id}); err != nil {
				t.Logf("reap tasks: wait for %s/%s: %v", ns.GetName(), id, err)
			}
			if _, err := tasks.Delete(nsCtx, &tasksapi.DeleteTaskRequest{ContainerID: id}); err != nil {
				t.Logf("reap tasks: delete %s/%s: %v", ns.GetName(), id, err)
				continue
			}
			t.Logf("reaped task %s/%s left running by the test", ns.GetName(), id)
		}
	}
}

// withoutContainerdEnv drops CONTAINERD_* variables so that a developer's
// shell settings cannot redirect the daemon or ctr.
func withoutContainerdEnv(env []string) []string {
	out := env[:0:0]
	for _, kv := range env {
		if !strings.HasPrefix(kv, "CONTAINERD_") {
			out = append(out, kv)
		}
	}
	return out
}
