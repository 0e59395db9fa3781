//go:build linux

// Package kubelettest runs a real kubelet, standalone (no API server, static
// pods only), against a private containerd from containerdtest.
//
// kubelet is containerd's main client, and its connection lives as long as
// kubelet does: tests of what the tracer shows on such a connection need the
// real program, with its own grpc-go settings (deadlines, keepalives, header
// table use). The binary is built by scripts/deps/kubelet.sh from the version
// pinned in scripts/deps/kubelet/go.mod.
//
// kubelet is written to own a node: it sets kernel sysctls, creates cgroups
// and mount points, and writes symlinks under /var/log. Here it runs in a
// private mount namespace whose /proc/sys is read-only (with the six sysctls
// it insists on shown at the values it wants, so it has nothing to change),
// whose /run, /var/log and /var/lib are empty tmpfs (it writes to fixed paths
// in each), and with its own root, cert, log
// and manifest directories below one temporary directory. It serves no port
// (enableServer false, healthz and read-only ports 0). Pods use the host
// network: the test containerd has no CNI.
//
// The oracle is kubelet's own log: at -v=10 its CRI client (k8s.io/cri-client)
// logs every call before making it ("[RemoteRuntimeService] ListPodSandbox"),
// see Calls.
package kubelettest

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/containerdsnoop/containerdsnoop/internal/testutil/child"
	"github.com/containerdsnoop/containerdsnoop/internal/testutil/containerdtest"
	"github.com/containerdsnoop/containerdsnoop/internal/testutil/privileged"
)

const (
	// NodeName is the node name kubelet uses; static pod names end in it.
	NodeName = "containerdsnoop-test"
	// Image is the image every pod runs: containerdtest's busybox image,
	// imported by Start, which is also the sandbox (pause) image.
	Image = containerdtest.SandboxImage
	// libDirEnv overrides where scripts/deps/kubelet.sh installed kubelet.
	libDirEnv     = "CONTAINERDSNOOP_TEST_LIBDIR"
	defaultLibDir = "/usr/local/lib/containerdsnoop-test"
	// readyTimeout bounds kubelet's start-up and a pod's start or stop; a
	// pod starts within seconds, but kubelet syncs on its own schedule and
	// CI machines are slow.
	readyTimeout = 2 * time.Minute
	stopTimeout  = 20 * time.Second
)

// Kubelet is a running kubelet started by Start.
type Kubelet struct {
	// PID is kubelet's process id.
	PID int
	// Dir holds the config, manifests, log, root and cert directories.
	Dir string
	// Log is the path of kubelet's log (stderr, -v=10).
	Log string
	// Version is the kubelet version, e.g. "v1.37.2".
	Version string

	c         *containerdtest.Containerd
	rt        runtimeapi.RuntimeServiceClient
	manifests string
	proc      *child.Proc
}

// Binary returns the path of the kubelet built by scripts/deps/kubelet.sh
// and its version; t skips (or fails, see privileged) when it is missing.
func Binary(t testing.TB) (path, version string) {
	t.Helper()
	version, err := pinnedVersion()
	if err != nil {
		t.Fatalf("kubelet version: %v", err)
	}
	dir := os.Getenv(libDirEnv)
	if dir == "" {
		dir = defaultLibDir
	}
	path = filepath.Join(dir, "kubelet-"+version)
	if _, err := os.Stat(path); err != nil {
		msg := fmt.Sprintf("test needs kubelet %s at %s (%v); scripts/deps/kubelet.sh builds it", version, path, err)
		if os.Getenv(privileged.RequireEnv) == "1" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	return path, version
}

// pinnedVersion reads the k8s.io/kubernetes version from the wrapper module,
// so that the version is pinned in one place.
func pinnedVersion() (string, error) {
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		return "", errors.New("no caller information")
	}
	gomod := filepath.Join(filepath.Dir(file), "..", "..", "..", "scripts", "deps", "kubelet", "go.mod")
	b, err := os.ReadFile(gomod)
	if err != nil {
		return "", err
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(strings.TrimPrefix(strings.TrimSpace(line), "require "))
		if len(f) >= 2 && f[0] == "k8s.io/kubernetes" && strings.HasPrefix(f[1], "v") {
			return f[1], nil
		}
	}
	return "", fmt.Errorf("no k8s.io/kubernetes requirement in %s", gomod)
}

// Start imports the pod image into c and starts kubelet against c's socket.
// It returns once kubelet has made its first CRI calls (its Version call is
// in the log); Cleanup stops it.
func Start(t testing.TB, c *containerdtest.Containerd) *Kubelet {
	t.Helper()
	privileged.Require(t)
	privileged.RequireBinary(t, "mount")
	privileged.RequireBinary(t, "runc")
	bin, version := Binary(t)
	containerdtest.ImportBusyboxImage(t, c, Image)

	dir, err := os.MkdirTemp("/tmp", "kubelet-")
	if err != nil {
		t.Fatal(err)
	}
	k := &Kubelet{Dir: dir, Log: filepath.Join(dir, "kubelet.log"), Version: version, c: c, manifests: filepath.Join(dir, "manifests")}
	t.Cleanup(func() { k.cleanup(t) })
	if err := k.prepare(); err != nil {
		t.Fatalf("prepare kubelet dir: %v", err)
	}
	if err := k.start(bin); err != nil {
		t.Fatalf("start kubelet: %v", err)
	}
	if err := k.waitFor("its first CRI call", func() bool {
		calls, _ := k.Calls()
		return len(calls) > 0
	}); err != nil {
		t.Fatal(err)
	}
	t.Logf("kubelet %s (pid %d) running against %s", version, k.PID, c.Socket)
	return k
}

// kernelDefaults are the sysctls kubelet sets unless they already hold these
// values (k8s.io/component-helpers/node/util/sysctl, setupKernelTunables).
// The private /proc/sys shows exactly these values, so kubelet writes none.
var kernelDefaults = map[string]string{
	"vm/overcommit_memory":      "1",
	"vm/panic_on_oom":           "0",
	"kernel/panic":              "10",
	"kernel/panic_on_oops":      "1",
	"kernel/keys/root_maxkeys":  "1000000",
	"kernel/keys/root_maxbytes": "25000000",
}

func (k *Kubelet) prepare() error {
	for _, d := range []string{k.manifests, filepath.Join(k.Dir, "root"), filepath.Join(k.Dir, "certs"), filepath.Join(k.Dir, "pod-logs"), filepath.Join(k.Dir, "sysctl")} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return err
		}
	}
	for name, v := range kernelDefaults {
		if err := os.WriteFile(filepath.Join(k.Dir, "sysctl", strings.ReplaceAll(name, "/", ".")), []byte(v+"\n"), 0o444); err != nil {
			return err
		}
	}
	return os.WriteFile(filepath.Join(k.Dir, "config.yaml"), []byte(k.config()), 0o600)
}

// config is the KubeletConfiguration. Only what a standalone kubelet on a
// shared test machine needs differently from the defaults is set.
func (k *Kubelet) config() string {
	q := strconv.Quote
	return `apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
staticPodPath: ` + q(k.manifests) + `
# Notice manifest changes within a second instead of 20 s.
fileCheckFrequency: 1s
containerRuntimeEndpoint: ` + q("unix://"+k.c.Socket) + `
podLogsDir: ` + q(filepath.Join(k.Dir, "pod-logs")) + `
# No QoS or node-allocatable cgroups of kubelet's own on the host; the test
# machines run cgroup v1, which kubelet refuses by default.
cgroupDriver: cgroupfs
cgroupsPerQOS: false
enforceNodeAllocatable: []
failCgroupV1: false
failSwapOn: false
# No listening ports: several kubelets may run, and nothing scrapes them.
enableServer: false
readOnlyPort: 0
healthzPort: 0
authentication:
  anonymous:
    enabled: true
  webhook:
    enabled: false
authorization:
  mode: AlwaysAllow
resolvConf: ""
# Never delete the imported image or evict the pods of a test because the
# shared disk is fuller than a node's would be.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard:
  memory.available: "1Mi"
`
}

// setupScript runs as kubelet's parent shell inside the private mount
// namespace (all mounts private, see start) and then execs kubelet.
// $1 directory, $2 containerd socket, then kubelet and its arguments.
const setupScript = `set -eu
dir=$1 sock=$2
shift 2
# Every sysctl read-only, the ones kubelet checks shown at its values.
mount --bind /proc/sys /proc/sys
mount -o remount,bind,ro /proc/sys
for f in "$dir"/sysctl/*; do
	mount --bind "$f" "/proc/sys/$(basename "$f" | tr . /)"
done
# cadvisor looks for containerd at the fixed path; /run is otherwise empty.
mount -t tmpfs -o mode=0755 tmpfs /run
mkdir /run/containerd
ln -s "$sock" /run/containerd/containerd.sock
# kubelet links container logs into /var/log/containers, and serves the
# device plugin registry at the fixed /var/lib/kubelet/device-plugins.
mount -t tmpfs -o mode=0755 tmpfs /var/log
mount -t tmpfs -o mode=0755 tmpfs /var/lib
exec "$@"
`

func (k *Kubelet) start(bin string) error {
	log, err := os.OpenFile(k.Log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	defer log.Close()
	cmd := exec.Command("/bin/sh", "-c", setupScript, "sh", k.Dir, k.c.Socket,
		bin,
		"--config", filepath.Join(k.Dir, "config.yaml"),
		"--root-dir", filepath.Join(k.Dir, "root"),
		"--cert-dir", filepath.Join(k.Dir, "certs"),
		"--hostname-override", NodeName,
		"--v", "10",
	)
	cmd.Stdout, cmd.Stderr = log, log
	// Unshareflags CLONE_NEWNS: the Go runtime also makes every mount in
	// the new namespace private before exec, so nothing propagates back.
	// Parent-death signal: a test binary killed without Cleanup takes
	// kubelet along.
	cmd.SysProcAttr = &syscall.SysProcAttr{Unshareflags: syscall.CLONE_NEWNS}
	p, err := child.StartProc(cmd, syscall.SIGKILL)
	if err != nil {
		return err
	}
	k.proc = p
	k.PID = cmd.Process.Pid
	return nil
}

// waitFor polls cond (cheap: a log read or a CRI list) until it holds,
// kubelet exits or readyTimeout passes.
func (k *Kubelet) waitFor(what string, cond func() bool) error {
	deadline := time.Now().Add(readyTimeout)
	for !cond() {
		select {
		case <-k.proc.Exited():
			return fmt.Errorf("kubelet exited (%v) while waiting for %s; log tail:\n%s", k.proc.Err(), what, k.LogTail(40))
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("kubelet: no %s within %s; log tail:\n%s", what, readyTimeout, k.LogTail(40))
		}
	}
	return nil
}

// Exited is closed when kubelet has exited.
func (k *Kubelet) Exited() <-chan struct{} { return k.proc.Exited() }

// Stop sends SIGTERM and waits for kubelet to exit. Pods keep running
// (kubelet leaves them to the runtime); containerdtest's Cleanup reaps them.
func (k *Kubelet) Stop(t testing.TB) {
	t.Helper()
	k.proc.Stop(t, "kubelet", stopTimeout)
}

func (k *Kubelet) cleanup(t testing.TB) {
	if k.proc != nil {
		k.Stop(t)
	}
	if t.Failed() {
		t.Logf("last lines of %s:\n%s", k.Log, k.LogTail(40))
	}
	// kubelet's mounts were in its own namespace and died with it; the pod
	// files it wrote are plain files.
	if err := os.RemoveAll(k.Dir); err != nil {
		t.Errorf("remove kubelet dir: %v", err)
	}
}

// LogTail returns at most the last n lines of kubelet's log.
func (k *Kubelet) LogTail(n int) string { return child.LogTail(k.Log, n) }

// Call is one CRI call kubelet logged.
type Call struct {
	// Time is klog's timestamp (local time, microseconds; no year).
	Time time.Time
	// Method is the full gRPC method, e.g. "/runtime.v1.RuntimeService/Version".
	Method string
	// Canceled: kubelet logged a call of this method as failed with code
	// Canceled, whose context may have ended before grpc-go sent anything.
	// With concurrent calls of one method, the log does not say which one
	// failed: the latest not yet marked is marked, so only the number of
	// marked calls per method is exact.
	Canceled bool
}

// Calls parses kubelet's log for the RuntimeService calls it made, in
// order. k8s.io/cri-client logs each before making it at -v=10
// ("[RemoteRuntimeService] ListPodSandbox"; "... Response" lines after it),
// except three: the Version call that validates the connection, logged as
// "Validating the CRI v1 API runtime version"; RuntimeConfig, logged only
// after it returns; and CreateContainer, whose response line carries the
// same text plus the new containerID. ImageService calls are not logged per
// call at all, so they are not in the result.
func (k *Kubelet) Calls() ([]Call, error) {
	f, err := os.Open(k.Log)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var calls []Call
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 0, 1<<20), 64<<20)
	for sc.Scan() {
		line := sc.Text()
		if c, ok := parseCallLine(line); ok {
			calls = append(calls, c)
		} else if m := canceledMethod(line); m != "" {
			// The latest call of that method not yet marked.
			for i := len(calls) - 1; i >= 0; i-- {
				if calls[i].Method == m && !calls[i].Canceled {
					calls[i].Canceled = true
					break
				}
			}
		}
	}
	return calls, sc.Err()
}

const runtimeService = "/runtime.v1.RuntimeService/"

// parseCallLine reads a klog line such as
//
//	I1129 23:40:01.123456   4242 remote_runtime.go:419] "[RemoteRuntimeService] ListPodSandbox" filter="nil" timeout="2m0s"
func parseCallLine(line string) (Call, bool) {
	i := strings.Index(line, `] "`)
	if i < 0 || len(line) < 21 || (line[0] != 'I' && line[0] != 'E') {
		return Call{}, false
	}
	msg, rest, ok := strings.Cut(line[i+3:], `"`)
	if !ok {
		return Call{}, false
	}
	method := ""
	switch {
	case msg == "Validating the CRI v1 API runtime version":
		method = "Version"
	case msg == "RuntimeConfig from runtime service failed", msg == "[RemoteRuntimeService] RuntimeConfigResponse":
		method = "RuntimeConfig"
	case strings.HasPrefix(msg, "[RemoteRuntimeService] "):
		name := strings.TrimPrefix(msg, "[RemoteRuntimeService] ")
		if name == "" || strings.Contains(name, " ") || name == "RuntimeConfigResponse" {
			return Call{}, false // "X Response"
		}
		if name == "CreateContainer" && strings.Contains(rest, " containerID=") {
			return Call{}, false // its response
		}
		method = name
	default:
		return Call{}, false
	}
	ts, err := time.ParseInLocation("0102 15:04:05.000000", line[1:21], time.Local)
	if err != nil {
		return Call{}, false
	}
	ts = ts.AddDate(time.Now().Year(), 0, 0)
	return Call{Time: ts, Method: runtimeService + method}, true
}

// canceledMethod returns the method of a line such as
//
//	E1129 23:53:07.848079   4242 remote_runtime.go:280] "Version from runtime service failed" err="rpc error: code = Canceled desc = context canceled"
func canceledMethod(line string) string {
	if len(line) == 0 || line[0] != 'E' || !strings.Contains(line, "code = Canceled") {
		return ""
	}
	i := strings.Index(line, `] "`)
	if i < 0 {
		return ""
	}
	msg, _, _ := strings.Cut(line[i+3:], `"`)
	if !strings.HasSuffix(msg, " from runtime service failed") {
		return ""
	}
	name, _, _ := strings.Cut(msg, " ")
	return runtimeService + name
}

// PodManifest is a static pod with one container that sleeps.
func PodManifest(name string) string {
	return `apiVersion: v1
kind: Pod
metadata:
  name: ` + name + `
  namespace: default
spec:
  hostNetwork: true
  dnsPolicy: Default
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: ` + Image + `
    imagePullPolicy: Never
    command: ["/bin/sleep", "3600"]
`
}

// AddPod writes a static pod manifest and waits until its container runs.
func (k *Kubelet) AddPod(t testing.TB, name string) {
	t.Helper()
	path := filepath.Join(k.manifests, name+".yaml")
	// Written aside and renamed: kubelet must never read half a file.
	tmp := filepath.Join(k.Dir, "."+name+".yaml")
	if err := os.WriteFile(tmp, []byte(PodManifest(name)), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
	if err := k.waitFor("running container of pod "+name, func() bool { return k.podRunning(t, name) }); err != nil {
		t.Fatal(err)
	}
}

// RemovePod deletes a static pod manifest and waits until kubelet has
// stopped the pod's sandbox.
func (k *Kubelet) RemovePod(t testing.TB, name string) {
	t.Helper()
	if err := os.Remove(filepath.Join(k.manifests, name+".yaml")); err != nil {
		t.Fatal(err)
	}
	if err := k.waitFor("stopped sandbox of pod "+name, func() bool { return !k.sandboxReady(t, name) }); err != nil {
		t.Fatal(err)
	}
}

// podName is the name kubelet gives a static pod.
func podName(name string) string { return name + "-" + NodeName }

func (k *Kubelet) podRunning(t testing.TB, name string) bool {
	rt := k.runtime(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := rt.ListContainers(ctx, &runtimeapi.ListContainersRequest{Filter: &runtimeapi.ContainerFilter{
		State:         &runtimeapi.ContainerStateValue{State: runtimeapi.ContainerState_CONTAINER_RUNNING},
		LabelSelector: map[string]string{"io.kubernetes.pod.name": podName(name)},
	}})
	return err == nil && len(resp.GetContainers()) > 0
}

func (k *Kubelet) sandboxReady(t testing.TB, name string) bool {
	rt := k.runtime(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := rt.ListPodSandbox(ctx, &runtimeapi.ListPodSandboxRequest{Filter: &runtimeapi.PodSandboxFilter{
		State:         &runtimeapi.PodSandboxStateValue{State: runtimeapi.PodSandboxState_SANDBOX_READY},
		LabelSelector: map[string]string{"io.kubernetes.pod.name": podName(name)},
	}})
	return err != nil || len(resp.GetItems()) > 0
}

// runtime is the test's own CRI client (one connection per Kubelet); its
// calls come from the test process, never from kubelet.
func (k *Kubelet) runtime(t testing.TB) runtimeapi.RuntimeServiceClient {
	if k.rt == nil {
		k.rt, _ = k.c.CRI(t)
	}
	return k.rt
}
