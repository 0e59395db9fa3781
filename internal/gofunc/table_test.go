package gofunc

import (
	"bytes"
	"debug/elf"
	"debug/gosym"
	"os"
	"path/filepath"
	"runtime"
	"testing"
)

// largeGoBinary is Debian's containerd (installed by make test-deps, 48 MB,
// a 12 MB function table) when present, else this test binary.
func largeGoBinary(t *testing.T) string {
	t.Helper()
	if _, err := os.Stat("/usr/bin/containerd"); err == nil {
		return "/usr/bin/containerd"
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	return self
}

// TestTableMatchesGosym: walking the table names every function debug/gosym
// names, at the same entry (gosym, the standard library's reader, is the
// oracle), in this test binary and in Debian's containerd.
func TestTableMatchesGosym(t *testing.T) {
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	paths := []string{self}
	if p := largeGoBinary(t); p != self {
		paths = append(paths, p)
	}
	// Built by make test-deps (internal/testutil/kubelettest): ~100k
	// functions, Go 1.25's table.
	if m, _ := filepath.Glob("/usr/local/lib/containerdsnoop-test/kubelet-v*"); len(m) > 0 {
		paths = append(paths, m[0])
	}
	for _, path := range paths {
		f, err := elf.Open(path)
		if err != nil {
			t.Fatal(err)
		}
		var text uint64
		if s := f.Section(".text"); s != nil {
			text = s.Addr
		}
		tab, err := pclntab(f, text)
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		type fn struct {
			name  string
			entry uint64
		}
		got, ref := map[fn]int{}, map[fn]int{}
		if err := tab.each(func(name []byte, entry uint64) bool {
			got[fn{string(name), entry}]++
			return true
		}); err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		sec := f.Section(".gopclntab")
		data, err := sec.Data()
		if err != nil {
			t.Fatal(err)
		}
		var hdr [32]byte
		copy(hdr[:], data)
		gt, err := gosym.NewTable(nil, gosym.NewLineTable(data, textStart(f, hdr[:], sec.Addr, text)))
		if err != nil {
			t.Fatal(err)
		}
		for _, g := range gt.Funcs {
			ref[fn{g.Name, g.Entry}]++
		}
		for k, n := range ref {
			if got[k] != n {
				t.Errorf("%s: %s at %#x: walked %d times, gosym has it %d times", path, k.name, k.entry, got[k], n)
			}
		}
		if len(got) != len(ref) || len(gt.Funcs) < 1000 {
			t.Errorf("%s: %d functions walked, gosym has %d", path, len(got), len(ref))
		}
		t.Logf("%s: %d functions", path, len(gt.Funcs))
		f.Close()
	}
}

// TestFindMemory: examining a large Go binary allocates less than its
// function table (gosym read all of it and built every symbol: 47 MiB for
// Debian's containerd) and retains nothing but the result once collected.
func TestFindMemory(t *testing.T) {
	path := largeGoBinary(t)
	f, err := elf.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	table := f.Section(".gopclntab").Size
	f.Close()
	want := func(n string) bool { return n == "runtime.main" }
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	b, err := Find(path, want, 4)
	if err != nil {
		t.Fatal(err)
	}
	runtime.ReadMemStats(&after)
	allocated := after.TotalAlloc - before.TotalAlloc
	runtime.GC()
	runtime.ReadMemStats(&after)
	retained := int64(after.HeapAlloc) - int64(before.HeapAlloc)
	runtime.KeepAlive(b)
	t.Logf("%s (function table %d KiB): allocated %d KiB, retained %d KiB", path, table>>10, allocated>>10, retained>>10)
	if len(b.Funcs) != 1 {
		t.Fatalf("runtime.main: found %+v", b.Funcs)
	}
	if allocated > table/2 {
		t.Errorf("examining %s allocated %d KiB, more than half its %d KiB function table", path, allocated>>10, table>>10)
	}
	if retained > 256<<10 {
		t.Errorf("examining %s left %d KiB on the heap", path, retained>>10)
	}
}

// FuzzTable: any bytes where a function table is expected give an error or
// names, never a panic or an unbounded walk.
func FuzzTable(f *testing.F) {
	self, err := os.Executable()
	if err != nil {
		f.Fatal(err)
	}
	if ef, err := elf.Open(self); err == nil {
		if sec := ef.Section(".gopclntab"); sec != nil {
			b := make([]byte, 4096)
			if _, err := sec.ReadAt(b, 0); err == nil {
				f.Add(b)
			}
		}
		ef.Close()
	}
	f.Add([]byte{0xf1, 0xff, 0xff, 0xff, 0, 0, 1, 8})
	f.Fuzz(func(t *testing.T, data []byte) {
		tab, err := newTable(bytes.NewReader(data), int64(len(data)), 0x1000)
		if err != nil {
			return
		}
		n := 0
		tab.each(func(name []byte, _ uint64) bool {
			n++
			return true
		})
		if n > len(data)/8 {
			t.Fatalf("%d functions from %d bytes", n, len(data))
		}
	})
}
