package gofunc

import (
	"debug/elf"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

const writeField = "golang.org/x/net/http2/hpack.(*Encoder).WriteField"

func isWriteField(n string) bool { return n == writeField }

// build compiles testdata/hpackprog with extra go build flags.
func build(t *testing.T, name string, flags ...string) string {
	t.Helper()
	out := filepath.Join(t.TempDir(), name)
	args := append([]string{"build", "-o", out}, flags...)
	args = append(args, "./testdata/hpackprog")
	cmd := exec.Command("go", args...)
	cmd.Env = append(os.Environ(), "GOFLAGS=-mod=mod")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Skipf("go build %v: %v\n%s", flags, err, b)
	}
	return out
}

// symtabOffset is the file offset of sym from the ELF symbol table of an
// unstripped build: the answer Find must give without it.
func symtabOffset(t *testing.T, path, sym string) uint64 {
	t.Helper()
	f, err := elf.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	syms, err := f.Symbols()
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range syms {
		if s.Name == sym {
			off, ok := fileOffset(f, s.Value)
			if !ok {
				t.Fatalf("%s at %#x is in no executable segment", sym, s.Value)
			}
			return off
		}
	}
	t.Fatalf("%s not in the symbol table of %s", sym, path)
	return 0
}

// TestStrippedBinary: a -s -w build has no symbol table and no DWARF, and
// Find still gives the same entry as the unstripped build's symbol table.
func TestStrippedBinary(t *testing.T) {
	full := build(t, "full")
	want := symtabOffset(t, full, writeField)
	for _, tc := range []struct {
		name  string
		flags []string
	}{
		{"stripped", []string{"-ldflags=-s -w"}},
		{"stripped-pie", []string{"-buildmode=pie", "-ldflags=-s -w"}},
		{"unstripped", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := full
			if tc.flags != nil {
				path = build(t, tc.name, tc.flags...)
			}
			if tc.name == "stripped" {
				if f, err := elf.Open(path); err == nil {
					if _, err := f.Symbols(); err == nil {
						t.Fatal("stripped build still has a symbol table")
					}
					f.Close()
				}
			}
			b, err := Find(path, isWriteField, 4)
			if err != nil {
				t.Fatal(err)
			}
			if len(b.Funcs) != 1 || !b.Funcs[0].Prologue {
				t.Fatalf("found %+v", b.Funcs)
			}
			if tc.name != "stripped-pie" && b.Funcs[0].Offset != want {
				t.Fatalf("offset %#x, symbol table says %#x", b.Funcs[0].Offset, want)
			}
			if !strings.HasPrefix(b.GoVersion, "go1.") {
				t.Fatalf("Go version %q", b.GoVersion)
			}
			if regs, ok := RegisterABI(b.GoVersion, b.Arch); !ok || !regs {
				t.Fatalf("current toolchain %s: register ABI %v %v", b.GoVersion, regs, ok)
			}
		})
	}
}

// TestExternalLinking: built by the C linker, the table is not a section of
// its own but sits in .data.rel.ro.
func TestExternalLinking(t *testing.T) {
	if _, err := exec.LookPath("gcc"); err != nil {
		t.Skip("no C linker")
	}
	path := build(t, "external", "-ldflags=-s -w -linkmode=external")
	b, err := Find(path, isWriteField, 4)
	if err != nil {
		t.Fatal(err)
	}
	if len(b.Funcs) != 1 || !b.Funcs[0].Prologue {
		t.Fatalf("found %+v", b.Funcs)
	}
}

// TestDebianContainerd: Debian 12's containerd 1.6.20 is stripped and built
// with go1.19 (the 1.18 table layout) and links two hpack copies: x/net's
// (grpc-go) and the standard library's vendored one (net/http).
func TestDebianContainerd(t *testing.T) {
	const path = "/usr/bin/containerd"
	if _, err := os.Stat(path); err != nil {
		t.Skip("containerd not installed (make test-deps)")
	}
	b, err := Find(path, func(n string) bool { return strings.HasSuffix(n, "http2/hpack.(*Encoder).WriteField") }, 8)
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]bool{}
	dyn, _ := elfDynamic(path)
	for _, f := range b.Funcs {
		names[f.Name] = true
		if !f.Prologue {
			t.Errorf("%s at %#x: not a Go function prologue", f.Name, f.Entry)
		}
		// Its linker (external: C code before runtime.text) exported
		// the Go symbols: the table must agree with them.
		if a, ok := dyn[f.Name]; ok && a != f.Entry {
			t.Errorf("%s: entry %#x, the dynamic symbol table says %#x", f.Name, f.Entry, a)
		}
	}
	if !names[writeField] || !names["vendor/"+writeField] {
		t.Fatalf("found %v in %s (%s)", names, path, b.GoVersion)
	}
	if regs, ok := RegisterABI(b.GoVersion, b.Arch); !ok || !regs {
		t.Fatalf("%s: register ABI %v %v", b.GoVersion, regs, ok)
	}
}

func elfDynamic(path string) (map[string]uint64, error) {
	f, err := elf.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	syms, err := f.DynamicSymbols()
	if err != nil {
		return nil, err
	}
	m := map[string]uint64{}
	for _, s := range syms {
		m[s.Name] = s.Value
	}
	return m, nil
}

func TestNotGo(t *testing.T) {
	for _, p := range []string{"/bin/sh", "/usr/bin/env"} {
		if _, err := os.Stat(p); err != nil {
			continue
		}
		if _, err := Find(p, isWriteField, 1); err != ErrNotGo {
			t.Errorf("%s: %v, want ErrNotGo", p, err)
		}
	}
	if _, err := Find("/proc/self/status", isWriteField, 1); err == nil {
		t.Error("not an ELF file: no error")
	}
}

func TestRegisterABI(t *testing.T) {
	for _, tc := range []struct {
		v        string
		arch     elf.Machine
		regs, ok bool
	}{
		{"go1.16.15", elf.EM_X86_64, false, true},
		{"go1.17", elf.EM_X86_64, true, true},
		{"go1.17.3", elf.EM_AARCH64, false, true},
		{"go1.18beta1", elf.EM_AARCH64, true, true},
		{"go1.19.8", elf.EM_X86_64, true, true},
		{"go1.26.8 X:nocoverageredesign", elf.EM_X86_64, true, true},
		{"devel +abc", elf.EM_X86_64, false, false},
		{"", elf.EM_X86_64, false, false},
		{"go1.20", elf.EM_386, false, false},
	} {
		regs, ok := RegisterABI(tc.v, tc.arch)
		if regs != tc.regs || ok != tc.ok {
			t.Errorf("%q %v: %v %v, want %v %v", tc.v, tc.arch, regs, ok, tc.regs, tc.ok)
		}
	}
}
