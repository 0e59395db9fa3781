//go:build linux

// Package release checks what `make release` ships: both tarballs with the
// layout the README promises, checksums that verify, and a binary from the
// tarball that runs as a user would run it.
package release

import (
	"archive/tar"
	"bufio"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"debug/elf"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containerdsnoop/containerdsnoop/internal/testutil/child"
	"github.com/containerdsnoop/containerdsnoop/internal/testutil/privileged"
)

const (
	// version is stamped by the release under test; nothing else uses it.
	version = "v0.0.0-releasetest+1"
	// readyLine starts the line the tracer prints on stderr once attached.
	readyLine = "containerdsnoop: tracing gRPC on unix sockets"
	// readyTimeout bounds loading and attaching the BPF programs.
	readyTimeout = 60 * time.Second
	// stopTimeout bounds the exit after SIGINT.
	stopTimeout = 30 * time.Second
)

var arches = []struct {
	goarch  string
	machine elf.Machine
}{
	{"amd64", elf.EM_X86_64},
	{"arm64", elf.EM_AARCH64},
}

func tarballName(goarch string) string {
	return fmt.Sprintf("containerdsnoop-%s-linux-%s", version, goarch)
}

func TestRelease(t *testing.T) {
	root := moduleRoot(t)
	dist := t.TempDir()

	cmd := exec.Command("make", "release", "VERSION="+version, "DIST="+dist)
	cmd.Dir = root
	// Under `make test`, the outer make's flags (jobserver, variables) are
	// in the environment: this make is a fresh one.
	for _, kv := range os.Environ() {
		if k, _, _ := strings.Cut(kv, "="); k != "MAKEFLAGS" && k != "MFLAGS" && k != "MAKELEVEL" {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("make release: %v\n%s", err, out)
	}

	// Exactly the two tarballs and the checksums, nothing else.
	var names []string
	entries, err := os.ReadDir(dist)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		names = append(names, e.Name())
	}
	want := []string{tarballName("amd64") + ".tar.gz", tarballName("arm64") + ".tar.gz", "sha256sums.txt"}
	sort.Strings(want)
	if strings.Join(names, " ") != strings.Join(want, " ") {
		t.Fatalf("dist holds %q, want %q", names, want)
	}

	// The checksums verify with the tool a user runs, and cover both.
	check := exec.Command("sha256sum", "-c", "sha256sums.txt")
	check.Dir = dist
	if out, err := check.CombinedOutput(); err != nil {
		t.Fatalf("sha256sum -c sha256sums.txt: %v\n%s", err, out)
	}
	sums, err := os.ReadFile(filepath.Join(dist, "sha256sums.txt"))
	if err != nil {
		t.Fatal(err)
	}
	var lines []string
	for _, a := range arches {
		b, err := os.ReadFile(filepath.Join(dist, tarballName(a.goarch)+".tar.gz"))
		if err != nil {
			t.Fatal(err)
		}
		sum := sha256.Sum256(b)
		lines = append(lines, hex.EncodeToString(sum[:])+"  "+tarballName(a.goarch)+".tar.gz")
	}
	if got, want := string(sums), strings.Join(lines, "\n")+"\n"; got != want {
		t.Fatalf("sha256sums.txt:\n%s\nwant:\n%s", got, want)
	}

	readme, err := os.ReadFile(filepath.Join(root, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	license, err := os.ReadFile(filepath.Join(root, "LICENSE"))
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range arches {
		t.Run("contents-"+a.goarch, func(t *testing.T) {
			checkTarball(t, filepath.Join(dist, tarballName(a.goarch)+".tar.gz"), tarballName(a.goarch), a.machine, readme, license)
		})
	}

	// The arm64 tarball's binary, unpacked as a user would, traces a real
	// gRPC call on an arm64 kernel (under qemu).
	t.Run("arm64-guest", func(t *testing.T) {
		privileged.Require(t)
		unpacked := t.TempDir()
		untar := exec.Command("tar", "xzf", filepath.Join(dist, tarballName("arm64")+".tar.gz"))
		untar.Dir = unpacked
		if out, err := untar.CombinedOutput(); err != nil {
			t.Fatalf("tar xzf: %v\n%s", err, out)
		}
		testArm64Guest(t, root, filepath.Join(unpacked, tarballName("arm64"), "containerdsnoop"))
	})

	// Unpack the tarball for this machine as the README says and run it.
	if runtime.GOARCH != "amd64" && runtime.GOARCH != "arm64" {
		t.Skipf("no release tarball runs on %s", runtime.GOARCH)
	}
	unpacked := t.TempDir()
	untar := exec.Command("tar", "xzf", filepath.Join(dist, tarballName(runtime.GOARCH)+".tar.gz"))
	untar.Dir = unpacked
	if out, err := untar.CombinedOutput(); err != nil {
		t.Fatalf("tar xzf: %v\n%s", err, out)
	}
	dir := filepath.Join(unpacked, tarballName(runtime.GOARCH))

	t.Run("version", func(t *testing.T) {
		out, err := run(dir, "version")
		if err != nil {
			t.Fatalf("./containerdsnoop version: %v\n%s", err, out)
		}
		if got, want := string(out), "containerdsnoop "+version+"\n"; got != want {
			t.Fatalf("./containerdsnoop version printed %q, want %q", got, want)
		}
	})

	t.Run("completion", func(t *testing.T) {
		for _, shell := range []string{"bash", "zsh", "fish"} {
			out, err := run(dir, "completion", shell)
			if err != nil {
				t.Fatalf("./containerdsnoop completion %s: %v\n%s", shell, err, out)
			}
			if !bytes.Contains(out, []byte("containerdsnoop")) {
				t.Fatalf("./containerdsnoop completion %s printed no completion script:\n%s", shell, out)
			}
		}
		if _, err := exec.LookPath("bash"); err == nil {
			// The bash script must at least parse.
			script := filepath.Join(t.TempDir(), "completion.bash")
			out, _ := run(dir, "completion", "bash")
			if err := os.WriteFile(script, out, 0o644); err != nil {
				t.Fatal(err)
			}
			if out, err := exec.Command("bash", "-n", script).CombinedOutput(); err != nil {
				t.Fatalf("bash -n on the completion script: %v\n%s", err, out)
			}
		}
	})

	t.Run("trace", func(t *testing.T) {
		privileged.Require(t)
		traceUntilReady(t, dir)
	})
}

// run runs ./containerdsnoop args... in dir, as from the unpacked tarball.
func run(dir string, args ...string) ([]byte, error) {
	cmd := exec.Command("./containerdsnoop", args...)
	cmd.Dir = dir
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return append(out, stderr.Bytes()...), err
	}
	return out, nil
}

// checkTarball checks the layout and contents of one release tarball.
func checkTarball(t *testing.T, path, top string, machine elf.Machine, readme, license []byte) {
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(zr)
	files := map[string][]byte{}
	modes := map[string]int64{}
	var order []string
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		order = append(order, h.Name)
		modes[h.Name] = h.Mode
		if h.Uid != 0 || h.Gid != 0 {
			t.Errorf("%s: owned by %d:%d, want 0:0", h.Name, h.Uid, h.Gid)
		}
		if h.Typeflag == tar.TypeReg {
			b, err := io.ReadAll(tr)
			if err != nil {
				t.Fatal(err)
			}
			files[h.Name] = b
		}
	}
	wantOrder := []string{top + "/", top + "/LICENSE", top + "/README.md", top + "/containerdsnoop", top + "/containerdsnoop-watchdog"}
	if strings.Join(order, " ") != strings.Join(wantOrder, " ") {
		t.Fatalf("%s holds %q, want %q", filepath.Base(path), order, wantOrder)
	}
	if !bytes.Equal(files[top+"/README.md"], readme) {
		t.Errorf("README.md in the tarball differs from the repository's")
	}
	if !bytes.Equal(files[top+"/LICENSE"], license) {
		t.Errorf("LICENSE in the tarball differs from the repository's")
	}
	for _, name := range []string{"containerdsnoop", "containerdsnoop-watchdog"} {
		if m := modes[top+"/"+name]; m&0o111 != 0o111 || m&0o022 != 0 {
			// Writable by others, the tracer would refuse to run the watchdog.
			t.Errorf("%s has mode %o, want it executable by all and writable by its owner only", name, m)
		}
		checkStaticBinary(t, name, files[top+"/"+name], machine)
	}
	// The version is stamped into the binary for every architecture, not
	// only the one that can be run here.
	if !bytes.Contains(files[top+"/containerdsnoop"], []byte(version)) {
		t.Errorf("containerdsnoop does not contain its version %q", version)
	}
}

// checkStaticBinary: an ELF executable for machine, static, stripped.
func checkStaticBinary(t *testing.T, name string, bin []byte, machine elf.Machine) {
	ef, err := elf.NewFile(bytes.NewReader(bin))
	if err != nil {
		t.Fatalf("%s is not ELF: %v", name, err)
	}
	if ef.Machine != machine {
		t.Errorf("%s is for %v, want %v", name, ef.Machine, machine)
	}
	for _, p := range ef.Progs {
		if p.Type == elf.PT_INTERP || p.Type == elf.PT_DYNAMIC {
			t.Errorf("%s is dynamically linked (%v): want a static CGO_ENABLED=0 binary", name, p.Type)
		}
	}
	if ef.Section(".symtab") != nil {
		t.Errorf("%s has a symbol table: want it stripped (-s -w)", name)
	}
}

// traceUntilReady runs `./containerdsnoop trace --output json` from the
// unpacked tarball, waits for its readiness line on stderr, interrupts it
// and expects a clean exit.
func traceUntilReady(t *testing.T, dir string) {
	cmd := exec.Command("./containerdsnoop", "trace", "--output", "json", "-v", "--yield-cpu")
	cmd.Dir = dir
	stdoutPath := filepath.Join(t.TempDir(), "stdout")
	stdout, err := os.Create(stdoutPath)
	if err != nil {
		t.Fatal(err)
	}
	defer stdout.Close()
	cmd.Stdout = stdout
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	// The tracer must not outlive a test binary killed by -timeout.
	exited, err := child.Start(cmd, syscall.SIGKILL)
	if err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()

	// Every stderr line, and the moment the readiness line arrives.
	ready := make(chan struct{})
	stderrDone := make(chan struct{})
	var stderrLines []string
	go func() {
		defer close(stderrDone)
		sc := bufio.NewScanner(stderr)
		seen := false
		for sc.Scan() {
			stderrLines = append(stderrLines, sc.Text())
			if !seen && strings.HasPrefix(sc.Text(), readyLine) {
				seen = true
				close(ready)
			}
		}
	}()

	select {
	case <-ready:
	case <-stderrDone:
		err := <-exited
		t.Fatalf("trace exited (%v) before printing %q; stderr:\n%s", err, readyLine, strings.Join(stderrLines, "\n"))
	case <-time.After(readyTimeout):
		cmd.Process.Kill()
		<-stderrDone
		t.Fatalf("trace printed no %q within %v; stderr:\n%s", readyLine, readyTimeout, strings.Join(stderrLines, "\n"))
	}

	// Unpacked, the tracer finds its watchdog beside it and, asked to,
	// yields the CPU (internal/watchdog).
	if !slices.ContainsFunc(stderrLines, func(l string) bool {
		return strings.HasPrefix(l, "containerdsnoop: yielding the CPU: SCHED_IDLE; containerdsnoop-watchdog (pid ")
	}) && startedAtNice0(t) {
		t.Errorf("the unpacked tracer does not yield the CPU under its watchdog; stderr:\n%s", strings.Join(stderrLines, "\n"))
	}

	if err := cmd.Process.Signal(os.Interrupt); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-exited:
		<-stderrDone
		if err != nil {
			t.Fatalf("trace after SIGINT: %v, want exit status 0; stderr:\n%s", err, strings.Join(stderrLines, "\n"))
		}
	case <-time.After(stopTimeout):
		cmd.Process.Kill()
		<-stderrDone
		t.Fatalf("trace did not exit within %v of SIGINT; stderr:\n%s", stopTimeout, strings.Join(stderrLines, "\n"))
	}

	// Whatever it captured meanwhile (other processes' unix-socket gRPC)
	// is one JSON object per line.
	out, err := os.ReadFile(stdoutPath)
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if line == "" {
			continue
		}
		var obj map[string]any
		if err := json.Unmarshal([]byte(line), &obj); err != nil {
			t.Errorf("stdout line is not a JSON object: %v\n%s", err, line)
		}
	}
}

// startedAtNice0: the tests run at nice 0, where the tracer yields (under
// nice(1) it keeps the priority it was given).
func startedAtNice0(t *testing.T) bool {
	stat, err := os.ReadFile("/proc/self/stat")
	if err != nil {
		t.Fatal(err)
	}
	s := string(stat)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	return len(f) > 16 && f[16] == "0" // proc(5) field 19
}

// moduleRoot walks up from the package directory to this module's go.mod.
func moduleRoot(t *testing.T) string {
	const module = "module github.com/containerdsnoop/containerdsnoop"
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if b, err := os.ReadFile(filepath.Join(dir, "go.mod")); err == nil {
			for _, line := range strings.Split(string(b), "\n") {
				if strings.TrimSpace(line) == module {
					return dir
				}
			}
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("no go.mod of github.com/containerdsnoop/containerdsnoop above the working directory")
		}
		dir = parent
	}
}
