//go:build linux

package kubelettest

import (
	"maps"
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/containerdsnoop/containerdsnoop/internal/testutil/containerdtest"
)

func TestCanceledMethod(t *testing.T) {
	for line, want := range map[string]string{
		`E1129 23:53:07.848079   4242 remote_runtime.go:280] "Version from runtime service failed" err="rpc error: code = Canceled desc = context canceled"`:                    "/runtime.v1.RuntimeService/Version",
		`E1129 23:53:07.848079   4242 remote_runtime.go:444] "ListPodSandbox with filter from runtime service failed" err="rpc error: code = Canceled desc = context canceled"`: "/runtime.v1.RuntimeService/ListPodSandbox",
		`E1129 23:53:07.848079   4242 remote_runtime.go:280] "Version from runtime service failed" err="rpc error: code = Unavailable desc = x"`:                                "",
		`I1129 23:53:07.848079   4242 remote_runtime.go:280] "Version from runtime service failed" err="rpc error: code = Canceled desc = context canceled"`:                    "",
	} {
		if got := canceledMethod(line); got != want {
			t.Errorf("canceledMethod(%q) = %q, want %q", line, got, want)
		}
	}
}

func TestParseCallLine(t *testing.T) {
	for _, tc := range []struct {
		line, method string
	}{
		{`I1129 23:40:01.123456   4242 remote_runtime.go:419] "[RemoteRuntimeService] ListPodSandbox" filter="nil" timeout="2m0s"`, "/runtime.v1.RuntimeService/ListPodSandbox"},
		{`I1129 23:40:01.123456   4242 remote_runtime.go:252] "Validating the CRI v1 API runtime version"`, "/runtime.v1.RuntimeService/Version"},
		{`E1129 23:40:01.123456   4242 remote_runtime.go:1359] "RuntimeConfig from runtime service failed" err="rpc error: code = Unimplemented"`, "/runtime.v1.RuntimeService/RuntimeConfig"},
		{`I1129 23:40:01.123456   4242 remote_runtime.go:483] "[RemoteRuntimeService] CreateContainer" podSandboxID="abc" timeout="4m0s"`, "/runtime.v1.RuntimeService/CreateContainer"},
		{`I1129 23:40:01.123456   4242 remote_runtime.go:502] "[RemoteRuntimeService] CreateContainer" podSandboxID="abc" containerID="def"`, ""},
		{`I1129 23:40:01.123456   4242 remote_runtime.go:439] "[RemoteRuntimeService] ListPodSandbox Response" filter="nil" items=[]`, ""},
		{`E1129 23:40:01.123456   4242 remote_runtime.go:444] "ListPodSandbox with filter from runtime service failed" err="x"`, ""},
		{`I1129 23:40:01.123456   4242 kubelet.go:1] "Starting kubelet"`, ""},
		{`garbage`, ""},
	} {
		c, ok := parseCallLine(tc.line)
		if ok != (tc.method != "") || c.Method != tc.method {
			t.Errorf("parseCallLine(%q) = %q, %v; want %q", tc.line, c.Method, ok, tc.method)
		}
	}
}

// TestStaticPodLifecycle runs kubelet against a private containerd, adds a
// static pod and removes it, and checks that kubelet logged the CRI calls
// doing so and left the host alone: its sysctls, and the fixed paths
// kubelet writes to.
func TestStaticPodLifecycle(t *testing.T) {
	before := readSysctls(t)
	for _, p := range fixedPaths {
		if _, err := os.Lstat(p); err == nil {
			t.Logf("%s exists before the test; not checked", p)
		}
	}
	absent := map[string]bool{}
	for _, p := range fixedPaths {
		if _, err := os.Lstat(p); err != nil {
			absent[p] = true
		}
	}
	c := containerdtest.Start(t)
	k := Start(t, c)
	k.AddPod(t, "lifecycle")
	k.RemovePod(t, "lifecycle")
	calls, err := k.Calls()
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]int{}
	for _, c := range calls {
		seen[c.Method]++
	}
	for _, m := range []string{"RunPodSandbox", "CreateContainer", "StartContainer", "StopPodSandbox"} {
		if seen["/runtime.v1.RuntimeService/"+m] == 0 {
			t.Errorf("kubelet logged no %s call; logged: %v", m, seen)
		}
	}
	k.Stop(t)
	if after := readSysctls(t); after != before {
		t.Errorf("host sysctls changed while kubelet ran:\nbefore %s\nafter  %s", before, after)
	}
	for p := range absent {
		if _, err := os.Lstat(p); err == nil {
			t.Errorf("kubelet created %s on the host", p)
		}
	}
}

// fixedPaths are where kubelet writes whatever its configuration says.
var fixedPaths = []string{"/var/lib/kubelet", "/var/log/containers", "/var/log/pods", "/run/containerd/containerd.sock"}

func readSysctls(t *testing.T) string {
	var b strings.Builder
	for _, name := range slices.Sorted(maps.Keys(kernelDefaults)) {
		v, err := os.ReadFile("/proc/sys/" + name)
		if err != nil {
			t.Fatal(err)
		}
		b.WriteString(name + "=" + strings.TrimSpace(string(v)) + " ")
	}
	return b.String()
}
