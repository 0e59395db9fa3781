package main

import (
	"bytes"
	"compress/gzip"
	"encoding/binary"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// fakeELF is the smallest ELF64 x86-64 file with one PT_NOTE segment
// holding a note of type typ named name.
func fakeELF(name string, typ uint32) []byte {
	var note bytes.Buffer
	le := binary.LittleEndian
	binary.Write(&note, le, []uint32{uint32(len(name) + 1), 4, typ})
	note.WriteString(name + "\x00")
	pad(&note)
	binary.Write(&note, le, uint32(0x1000000))

	const ehsize, phsize = 64, 56
	var f bytes.Buffer
	f.Write([]byte{0x7f, 'E', 'L', 'F', 2, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0})
	binary.Write(&f, le, uint16(2))         // ET_EXEC
	binary.Write(&f, le, uint16(62))        // EM_X86_64
	binary.Write(&f, le, uint32(1))         // version
	binary.Write(&f, le, uint64(0x1000000)) // entry
	binary.Write(&f, le, uint64(ehsize))    // phoff
	binary.Write(&f, le, uint64(0))         // shoff
	binary.Write(&f, le, uint32(0))         // flags
	binary.Write(&f, le, []uint16{ehsize, phsize, 1, 64, 0, 0})
	binary.Write(&f, le, []uint32{4, 4}) // PT_NOTE, PF_R
	off := uint64(ehsize + phsize)
	binary.Write(&f, le, []uint64{off, 0, 0, uint64(note.Len()), uint64(note.Len()), 4})
	f.Write(note.Bytes())
	return f.Bytes()
}

// fakeBzImage wraps kernel the way arch/x86/boot does: setup sectors with
// the header, then the gzip'd kernel and its size, at payload_offset.
func fakeBzImage(t *testing.T, kernel []byte) []byte {
	t.Helper()
	var z bytes.Buffer
	zw := gzip.NewWriter(&z)
	zw.Write(kernel)
	zw.Close()
	binary.Write(&z, binary.LittleEndian, uint32(len(kernel)))

	const setupSects = 3
	img := make([]byte, (setupSects+1)*512+300)
	img[0x1f1] = setupSects
	copy(img[0x202:], "HdrS")
	binary.LittleEndian.PutUint16(img[0x206:], 0x20f)
	binary.LittleEndian.PutUint32(img[0x248:], 300) // payload_offset
	binary.LittleEndian.PutUint32(img[0x24c:], uint32(z.Len()))
	img = append(img, z.Bytes()...)
	return append(img, make([]byte, 1000)...) // like a signature after it
}

func TestExtractVmlinux(t *testing.T) {
	kernel := fakeELF("Xen", 18)
	got, codec, err := extractVmlinux(fakeBzImage(t, kernel))
	if err != nil {
		t.Fatal(err)
	}
	if codec != "gzip" || !bytes.Equal(got, kernel) {
		t.Fatalf("codec %s, %d bytes; want gzip, the %d-byte kernel", codec, len(got), len(kernel))
	}
	if err := checkBootableELF(got); err != nil {
		t.Fatal(err)
	}
}

func TestExtractVmlinuxWithoutHeaderScans(t *testing.T) {
	kernel := fakeELF("Xen", 18)
	img := fakeBzImage(t, kernel)
	copy(img[0x202:], "XXXX")
	got, _, err := extractVmlinux(img)
	if err != nil || !bytes.Equal(got, kernel) {
		t.Fatalf("scan fallback: %d bytes, %v", len(got), err)
	}
}

func TestExtractVmlinuxErrors(t *testing.T) {
	img := fakeBzImage(t, []byte("not an elf file at all"))
	if _, _, err := extractVmlinux(img); err == nil || !strings.Contains(err.Error(), "not an ELF") {
		t.Fatalf("err = %v", err)
	}
	if err := checkBootableELF(fakeELF("GNU", 3)); err == nil || !strings.Contains(err.Error(), "CONFIG_PVH") {
		t.Fatalf("kernel without PVH note: err = %v", err)
	}
}

// readCpio parses a newc archive into name → (mode, data).
func readCpio(t *testing.T, r io.Reader) map[string][2]string {
	t.Helper()
	zr, err := gzip.NewReader(r)
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(zr)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][2]string{}
	for off := 0; ; {
		if string(b[off:off+6]) != "070701" {
			t.Fatalf("bad magic at %d", off)
		}
		field := func(i int) int {
			v, err := strconv.ParseUint(string(b[off+6+8*i:off+14+8*i]), 16, 32)
			if err != nil {
				t.Fatal(err)
			}
			return int(v)
		}
		mode, size, nameSize := field(1), field(6), field(11)
		name := string(b[off+110 : off+110+nameSize-1])
		dataOff := align4(off + 110 + nameSize)
		if name == "TRAILER!!!" {
			return out
		}
		out[name] = [2]string{strconv.FormatInt(int64(mode), 8), string(b[dataOff : dataOff+size])}
		off = align4(dataOff + size)
	}
}

func TestInitramfs(t *testing.T) {
	dir := t.TempDir()
	script := filepath.Join(dir, "init.sh")
	os.WriteFile(script, []byte("#!/bin/sh\necho hi\n"), 0o644)
	env := filepath.Join(dir, "env")
	os.WriteFile(env, []byte("X=1\n"), 0o644)
	out := filepath.Join(dir, "initrd.gz")
	if err := cmdInitramfs([]string{out, "init=" + script, "/etc/kt/env=" + env}); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(out)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	got := readCpio(t, f)
	for name, want := range map[string][2]string{
		"init":        {"100755", "#!/bin/sh\necho hi\n"},
		"etc/kt/env":  {"100755", "X=1\n"},
		"etc":         {"40755", ""},
		"etc/kt":      {"40755", ""},
		"tmp":         {"40755", ""},
		"dev/console": {"20600", ""},
	} {
		if got[name] != want {
			t.Errorf("%s: got %q, want %q", name, got[name], want)
		}
	}
}

func TestInitramfsRefusesDynamicBinaries(t *testing.T) {
	// The test binary itself is dynamic unless built with CGO_ENABLED=0,
	// so use a system one that surely is.
	for _, p := range []string{"/bin/ls", "/usr/bin/ls"} {
		data, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		if err := checkStatic(p, data); err == nil || !strings.Contains(err.Error(), "dynamically linked") {
			t.Fatalf("%s: err = %v", p, err)
		}
		return
	}
	t.Skip("no /bin/ls to try")
}

const sampleLog = "[    5.0] Run /init as init process\r\n" +
	"KERNELTEST-UNAME: 6.1.0-56-amd64\r\n" +
	"KERNELTEST-BTF: yes\r\n" +
	"=== RUN   TestCaptureSyscallsByteExact\r\n" +
	"    capture_test.go:172: backend kprobe not available on this kernel: attach kretprobe: no such file\r\n" +
	"=== RUN   TestCaptureSyscallsByteExact/fentry\r\n" +
	"=== RUN   TestCaptureSyscallsByteExact/tracepoint\r\n" +
	"    capture_test.go:213: captured 5 bytes, sent 6; equal prefix 5\r\n" +
	"--- FAIL: TestCaptureSyscallsByteExact (1.00s)\r\n" +
	"    --- PASS: TestCaptureSyscallsByteExact/fentry (0.50s)\r\n" +
	"    --- FAIL: TestCaptureSyscallsByteExact/tracepoint (0.50s)\r\n" +
	"FAIL\r\n" +
	"KERNELTEST-RESULT: FAIL rc=1\r\n"

func TestReport(t *testing.T) {
	dir := t.TempDir()
	write := func(name, s string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	bad := write("bad.log", sampleLog)
	badRes := write("bad.result", "KERNELTEST-RESULT: FAIL rc=1\n")
	good := write("good.log", strings.ReplaceAll(strings.ReplaceAll(sampleLog,
		"FAIL: TestCaptureSyscallsByteExact/tracepoint", "PASS: TestCaptureSyscallsByteExact/tracepoint"),
		"KERNELTEST-RESULT: FAIL rc=1", "KERNELTEST-RESULT: PASS"))
	goodRes := write("good.result", "KERNELTEST-RESULT: PASS\n")
	// The console shows PASS, split by another writer; the result port,
	// which alone counts, has nothing: the guest never finished.
	garbled := write("garbled.log", strings.ReplaceAll(sampleLog, "KERNELTEST-RESULT: FAIL rc=1", "KERNELTEST-RESULKERNELTEST-RESULT: PASS"))
	noRes := filepath.Join(dir, "none.result")
	hung := write("hung.log", "[    5.0] Run /init as init process\r\nKERNELTEST-UNAME: 6.12.1\r\n"+
		"panic: test timed out after 2m30s\r\n\trunning tests:\r\n\t\tTestCaptureSyscallsByteExact/kprobe (2m0s)\r\n\r\n"+
		"goroutine 1 [running]:\r\n"+
		"[   20.757144] Oops: int3: 0000 [#1] PREEMPT SMP NOPTI\r\n"+
		"[   20.757144] RIP: 0010:syscall_trace_enter+0xd6/0x190\r\n")

	for _, tc := range []struct {
		name, manifest string
		ok             bool
		want           []string
	}{
		{"pass", "k\tfentry,tracepoint\t" + good + "\t" + goodRes + "\texited\t10.0\n", true,
			[]string{"kprobe           no        -", "unavailable (not expected)", "fentry           yes       PASS", "kernels: 2 passed, 0 failed"}},
		{"expected backend missing", "k\tfentry,kprobe,tracepoint\t" + good + "\t" + goodRes + "\texited\t10.0\n", false,
			[]string{"MISSING", "k: FAIL: expected backend kprobe: MISSING in TestCaptureSyscallsByteExact"}},
		{"subtest fails", "k\tfentry,tracepoint\t" + bad + "\t" + badRes + "\texited\t10.0\n", false,
			[]string{"k: FAIL: test binary: FAIL rc=1", "TestCaptureSyscallsByteExact/tracepoint: captured 5 bytes", "kernels: 1 passed, 1 failed"}},
		{"verdict only from the result port", "k\tfentry\t" + garbled + "\t" + noRes + "\texited\t10.0\n", false,
			[]string{"k: FAIL: no verdict on the result port"}},
		{"timeout", "k\tfentry\t" + hung + "\t" + noRes + "\ttimeout\t300.0\n", false,
			[]string{"k: FAIL: timed out", "no verdict on the result port",
				"k: FAIL: guest kernel: Oops: int3: 0000 [#1] PREEMPT SMP NOPTI",
				"k: FAIL: test binary panicked: test timed out after 2m30s | running tests: | TestCaptureSyscallsByteExact/kprobe (2m0s)", "guest kernel: RIP: 0010:syscall_trace_enter+0xd6/0x190"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out bytes.Buffer
			ok, err := cmdReport(&out, []string{write("manifest", tc.manifest)})
			if err != nil {
				t.Fatal(err)
			}
			if ok != tc.ok {
				t.Errorf("ok = %v, want %v", ok, tc.ok)
			}
			for _, w := range tc.want {
				if !strings.Contains(out.String(), w) {
					t.Errorf("report lacks %q:\n%s", w, out.String())
				}
			}
		})
	}
}

func TestArm64Image(t *testing.T) {
	img := make([]byte, 4096)
	copy(img[arm64MagicOff:], arm64Magic)
	img[100] = 42
	var z bytes.Buffer
	zw := gzip.NewWriter(&z)
	zw.Write(img)
	zw.Close()
	for name, in := range map[string][]byte{"plain": img, "gzip": z.Bytes()} {
		got, _, err := arm64Image(in)
		if err != nil || !bytes.Equal(got, img) {
			t.Errorf("%s: %d bytes, %v", name, len(got), err)
		}
	}
	if _, _, err := arm64Image([]byte("not a kernel at all, not even close to one, no magic anywhere here at all")); err == nil {
		t.Error("garbage accepted")
	}
}

func TestTable(t *testing.T) {
	dir := t.TempDir()
	write := func(name, s string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	log := write("k.log", "=== RUN   TestCaptureLargeSend/fentry\n    capture_test.go:1: large send: whole\n"+
		"--- PASS: TestCaptureLargeSend (1.00s)\n    --- PASS: TestCaptureLargeSend/fentry (0.50s)\n"+
		"    --- PASS: TestCaptureLargeSend/tracepoint (0.50s)\n")
	res := write("k.result", "KERNELTEST-RESULT: PASS\n")
	manifest := write("manifest", "arm64:trixie:6.12.118+deb13-arm64\tfentry,tracepoint\t"+log+"\t"+res+"\texited\t1\n"+
		"amd64:bookworm:6.1.0-57-rt-amd64\tfentry,tracepoint\t"+log+"\t"+res+"\texited\t1\n"+
		"host:6.18\ttracepoint\t"+log+"\t"+res+"\texited\t1\n")
	row := "| arm64 | 13 trixie | 6.12 | ✓ | no | no | ✓ | whole |"
	rt := "| amd64 | 12 bookworm | 6.1 rt | ✓ | no | no | ✓ | whole |"
	kept := "| amd64 | 11 bullseye | 5.10 | ✓ | ✓ | no | ✓ | first 1024 KiB, the rest reported lost |"
	readme := write("README.md", "intro\n"+tableBegin+"\n"+tableHead+"\n"+kept+"\n"+tableEnd+"\nrest\n")
	var out bytes.Buffer
	if err := cmdTable(&out, []string{"check", readme, manifest}); err == nil {
		t.Fatal("check passed with a row missing from the committed table")
	}
	if err := cmdTable(&out, []string{"update", readme, manifest}); err != nil {
		t.Fatal(err)
	}
	got, _ := os.ReadFile(readme)
	want := "intro\n" + tableBegin + "\n" + tableHead + "\n" + kept + "\n" + rt + "\n" + row + "\n" + tableEnd + "\nrest\n"
	if string(got) != want {
		t.Fatalf("updated README:\n%s\nwant:\n%s", got, want)
	}
	if err := cmdTable(&out, []string{"check", readme, manifest}); err != nil {
		t.Fatalf("check after update: %v\n%s", err, out.String())
	}
}
