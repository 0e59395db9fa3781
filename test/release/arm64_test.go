//go:build linux

package release

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// guestTimeout bounds the arm64 guest: booting under TCG, attaching, one
// call and the exit take about a minute.
const guestTimeout = 10 * time.Minute

// testArm64Guest boots Debian's newest arm64 kernel (sid) under qemu with
// the arm64 tarball's binary, as unpacked from the tarball, and a real
// grpc-go server and client (grpcpeer): the tracer must show the call,
// method and status, with both processes named. The kernel and an arm64
// busybox come from the kernel matrix's cache, filled by its own fetch
// code (scripts/test-kernels.sh, KERNEL_FETCH_ONLY=1).
func testArm64Guest(t *testing.T, root, binary string) {
	work := t.TempDir()
	fetch := exec.Command("bash", "scripts/test-kernels.sh")
	fetch.Dir = root
	fetch.Env = append(cleanEnv(), "KERNEL_FETCH_ONLY=1", "KERNEL_SLOW=1", "KERNEL_ROWS=^arm64 sid ")
	out, err := fetch.Output()
	if err != nil {
		t.Fatalf("fetch the arm64 kernel: %v\n%s", err, stderrOf(err))
	}
	var kernel, busybox, pkg string
	for _, line := range strings.Split(string(out), "\n") {
		if f := strings.Fields(line); len(f) == 5 && f[0] == "fetched" && f[1] == "arm64" {
			pkg, kernel, busybox = f[2], f[3], f[4]
		}
	}
	if kernel == "" {
		t.Fatalf("no arm64 kernel in the fetch output:\n%s", out)
	}

	peer := filepath.Join(work, "grpcpeer")
	build := exec.Command("go", "build", "-o", peer, "./test/release/grpcpeer")
	build.Dir = root
	build.Env = append(cleanEnv(), "CGO_ENABLED=0", "GOARCH=arm64")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build grpcpeer for arm64: %v\n%s", err, out)
	}
	initrd := filepath.Join(work, "initrd.gz")
	pack := exec.Command("go", "run", "./test/kernels", "initramfs", initrd,
		"init="+filepath.Join(root, "test/release/guest-init.sh"), "bin/busybox="+busybox,
		"containerdsnoop="+binary, "grpcpeer="+peer)
	pack.Dir = root
	pack.Env = cleanEnv()
	if out, err := pack.CombinedOutput(); err != nil {
		t.Fatalf("initramfs: %v\n%s", err, out)
	}

	result := filepath.Join(work, "result")
	console := filepath.Join(work, "console.log")
	ctx, cancel := context.WithTimeout(context.Background(), guestTimeout)
	defer cancel()
	// The same machine as the kernel matrix's arm64 rows.
	qemu := exec.CommandContext(ctx, "qemu-system-aarch64", "-M", "virt", "-accel", "tcg,thread=single",
		"-cpu", "max,pauth-impdef=on", "-smp", "2", "-m", "1024",
		"-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
		"-serial", "file:"+console, "-chardev", "file,id=result,path="+result, "-device", "pci-serial,chardev=result",
		"-kernel", kernel, "-initrd", initrd,
		"-append", "console=ttyAMA0 panic=-1 mitigations=off printk.time=0")
	start := time.Now()
	if out, err := qemu.CombinedOutput(); err != nil {
		t.Fatalf("qemu (%s): %v\n%s\nconsole: %s", pkg, err, out, tail(console))
	}
	t.Logf("arm64 guest (%s) ran in %v", pkg, time.Since(start).Round(time.Second))

	f, err := os.Open(result)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var lines []map[string]any
	fields := map[string]string{}
	var stderr []string
	ended := false
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := strings.TrimRight(sc.Text(), "\r")
		k, v, _ := strings.Cut(line, ": ")
		switch k {
		case "RELEASETEST-STDOUT":
			var obj map[string]any
			if err := json.Unmarshal([]byte(v), &obj); err != nil {
				t.Errorf("stdout line is not a JSON object: %v\n%s", err, v)
			}
			lines = append(lines, obj)
		case "RELEASETEST-STDERR":
			stderr = append(stderr, v)
		case "RELEASETEST-END":
			ended = true
		default:
			fields[k] = v
		}
	}
	if !ended {
		t.Fatalf("the guest never finished its report (%s); console:\n%s", pkg, tail(console))
	}
	t.Logf("guest: %s; server %q; call %q; tracer %q", fields["RELEASETEST-UNAME"], fields["RELEASETEST-SERVER"], fields["RELEASETEST-CALL"], fields["RELEASETEST-TRACER"])
	if !strings.HasSuffix(fields["RELEASETEST-UNAME"], "aarch64") {
		t.Errorf("guest is %q, want an aarch64 kernel", fields["RELEASETEST-UNAME"])
	}
	if fields["RELEASETEST-SERVER"] != "ready" || fields["RELEASETEST-CALL"] != "rc=0 SERVING" {
		t.Fatalf("the gRPC call itself failed: server %q, call %q", fields["RELEASETEST-SERVER"], fields["RELEASETEST-CALL"])
	}
	if fields["RELEASETEST-TRACER"] != "rc=0" {
		t.Errorf("tracer exit after Ctrl-C: %q, want rc=0; stderr:\n%s", fields["RELEASETEST-TRACER"], strings.Join(stderr, "\n"))
	}
	// Exactly one request and one response line for the call, the
	// response with status OK, both naming the two grpcpeer processes.
	const method = "/grpc.health.v1.Health/Check"
	got := map[string]int{}
	for _, l := range lines {
		if l["method"] != method {
			continue
		}
		typ, _ := l["type"].(string)
		got[typ]++
		if l["comm"] != "grpcpeer" || l["peer_comm"] != "grpcpeer" || l["protocol"] != "grpc" {
			t.Errorf("%s line: comm %v, peer_comm %v, protocol %v; want grpcpeer, grpcpeer, grpc", typ, l["comm"], l["peer_comm"], l["protocol"])
		}
		if typ == "response" {
			st, _ := l["status"].(map[string]any)
			if st == nil || st["code"] != float64(0) {
				t.Errorf("response status %v, want code 0", l["status"])
			}
		}
	}
	if got["request"] != 1 || got["response"] != 1 {
		t.Errorf("lines for %s: %v, want one request and one response; stdout:\n%s\nstderr:\n%s", method, got, fmt.Sprint(lines), strings.Join(stderr, "\n"))
	}
}

// cleanEnv is the environment without the outer make's flags.
func cleanEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if k, _, _ := strings.Cut(kv, "="); k != "MAKEFLAGS" && k != "MFLAGS" && k != "MAKELEVEL" {
			env = append(env, kv)
		}
	}
	return env
}

func stderrOf(err error) string {
	if ee, ok := err.(*exec.ExitError); ok {
		return string(ee.Stderr)
	}
	return ""
}

// tail is the end of a file, for failure messages.
func tail(path string) string {
	b, _ := os.ReadFile(path)
	if len(b) > 4000 {
		b = b[len(b)-4000:]
	}
	return string(b)
}
