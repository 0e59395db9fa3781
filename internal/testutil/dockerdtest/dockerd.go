//go:build linux

// Package dockerdtest runs Debian's dockerd against a private containerd
// from containerdtest, with everything of its own (data root, exec root,
// pid file, API socket, daemon.json) below one temporary directory, no
// iptables rules, no bridge and no listening port.
//
// dockerd keeps one gRPC connection to containerd for its whole life, with an
// Events/Subscribe stream open on it from the start: the other kind of
// long-lived connection the tracer must decode when it attaches late.
//
// Unlike kubelet (kubelettest), dockerd runs in the host's mount namespace:
// it mounts each container's root filesystem itself and hands the path to
// containerd, which must see that mount. So two fixed paths of its own are
// left on the host, as by a package install: /etc/docker/key.json (its
// identity key, created once) and /run/docker (plugin sockets).
package dockerdtest

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containerdsnoop/containerdsnoop/internal/testutil/child"
	"github.com/containerdsnoop/containerdsnoop/internal/testutil/containerdtest"
	"github.com/containerdsnoop/containerdsnoop/internal/testutil/privileged"
)

const (
	// Image is the busybox image Start imports; its containers need a
	// command, e.g. `sleep 600`.
	Image        = "containerdsnoop/busybox:test"
	readyTimeout = 2 * time.Minute
	stopTimeout  = 20 * time.Second
	cliTimeout   = 2 * time.Minute
)

// Dockerd is a running dockerd started by Start.
type Dockerd struct {
	PID int
	// Host is the DOCKER_HOST of its API socket.
	Host string
	Dir  string
	Log  string

	cli  string
	proc *child.Proc
}

// Start starts dockerd against c's socket, waits until its API answers and
// imports Image.
func Start(t testing.TB, c *containerdtest.Containerd) *Dockerd {
	t.Helper()
	privileged.Require(t)
	bin := privileged.RequireBinary(t, "dockerd")
	cli := privileged.RequireBinary(t, "docker")
	// Not t.TempDir: the API socket path must fit in sun_path.
	dir, err := os.MkdirTemp("/tmp", "dockerd-")
	if err != nil {
		t.Fatal(err)
	}
	d := &Dockerd{Dir: dir, Log: filepath.Join(dir, "dockerd.log"), Host: "unix://" + filepath.Join(dir, "docker.sock"), cli: cli}
	t.Cleanup(func() { d.cleanup(t) })
	if err := os.WriteFile(filepath.Join(dir, "daemon.json"), []byte("{}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := d.start(bin, c.Socket); err != nil {
		t.Fatalf("start dockerd: %v", err)
	}
	deadline := time.Now().Add(readyTimeout)
	for {
		if _, err := d.run("version", "--format", "{{.Server.Version}}"); err == nil {
			break
		} else if time.Now().After(deadline) {
			t.Fatalf("dockerd not ready after %s: %v; log tail:\n%s", readyTimeout, err, d.LogTail(30))
		}
		select {
		case <-d.proc.Exited():
			t.Fatalf("dockerd exited (%v); log tail:\n%s", d.proc.Err(), d.LogTail(30))
		case <-time.After(50 * time.Millisecond):
		}
	}
	if _, err := d.run("import", "--change", "ENV PATH=/bin", containerdtest.WriteBusyboxRootfs(t), Image); err != nil {
		t.Fatalf("import %s: %v", Image, err)
	}
	t.Logf("dockerd (pid %d) running against %s", d.PID, c.Socket)
	return d
}

func (d *Dockerd) start(bin, containerdSock string) error {
	log, err := os.OpenFile(d.Log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	defer log.Close()
	cmd := exec.Command(bin,
		"--containerd", containerdSock,
		"--config-file", filepath.Join(d.Dir, "daemon.json"),
		"--data-root", filepath.Join(d.Dir, "data"),
		"--exec-root", filepath.Join(d.Dir, "exec"),
		"--pidfile", filepath.Join(d.Dir, "docker.pid"),
		"--host", d.Host,
		// No host network changes: no NAT or filter rules, no docker0.
		"--iptables=false", "--ip6tables=false", "--ip-forward=false", "--ip-masq=false",
		"--bridge=none", "--userland-proxy=false",
		"--debug",
	)
	cmd.Stdout, cmd.Stderr = log, log
	// DOCKER_* from the developer's shell must not redirect it.
	for _, e := range os.Environ() {
		if !strings.HasPrefix(e, "DOCKER_") {
			cmd.Env = append(cmd.Env, e)
		}
	}
	p, err := child.StartProc(cmd, syscall.SIGTERM)
	if err != nil {
		return err
	}
	d.proc = p
	d.PID = cmd.Process.Pid
	return nil
}

// Docker runs the docker CLI against this dockerd and returns its output;
// t fails if it fails.
func (d *Dockerd) Docker(t testing.TB, args ...string) string {
	t.Helper()
	out, err := d.run(args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func (d *Dockerd) run(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), cliTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, d.cli, append([]string{"--host", d.Host}, args...)...)
	cmd.Env = append(os.Environ(), "DOCKER_CONFIG="+filepath.Join(d.Dir, "cli"))
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("docker %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return strings.TrimSpace(stdout.String()), nil
}

// Stop removes every container, then stops dockerd.
func (d *Dockerd) Stop(t testing.TB) {
	t.Helper()
	select {
	case <-d.proc.Exited():
		return
	default:
	}
	if ids, err := d.run("ps", "-aq"); err == nil && ids != "" {
		if _, err := d.run(append([]string{"rm", "-f"}, strings.Fields(ids)...)...); err != nil {
			t.Logf("remove containers: %v", err)
		}
	}
	d.proc.Stop(t, "dockerd", stopTimeout)
}

func (d *Dockerd) cleanup(t testing.TB) {
	if d.proc != nil {
		d.Stop(t)
	}
	if t.Failed() {
		t.Logf("last lines of %s:\n%s", d.Log, d.LogTail(30))
	}
	// The overlay mounts of containers are gone with them; anything left
	// under the data root would make RemoveAll fail loudly below.
	if err := containerdtest.UnmountUnder(d.Dir); err != nil {
		t.Errorf("unmount leftovers of dockerd: %v", err)
	}
	if err := os.RemoveAll(d.Dir); err != nil {
		t.Errorf("remove dockerd dir: %v", err)
	}
}

// LogTail returns at most the last n lines of dockerd's log.
func (d *Dockerd) LogTail(n int) string { return child.LogTail(d.Log, n) }
