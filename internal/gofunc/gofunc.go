// Package gofunc finds functions in Go executables, stripped or not, so
// that uprobes can be placed on them.
//
// # Why the pclntab and not the symbol table
//
// Distributions and release builds strip Go binaries (`-s -w`: no .symtab,
// no DWARF), and cilium/ebpf's link.Executable resolves symbols from .symtab
// only. Every Go binary still carries its function table, .gopclntab, which
// the runtime itself needs for stack traces and garbage collection. This
// package walks it by hand (table.go says why not debug/gosym: memory),
// in the layouts of Go 1.16, 1.18 and 1.20 (what the register-ABI binaries
// the probes read have; the tests check it against debug/gosym), through
// debug/elf's io.ReaderAt, and debug/buildinfo gives the Go version that
// decides the calling convention.
//
// # What it returns
//
// For a function name matched by a predicate: its entry address and the file
// offset of that entry (what a uprobe is placed at), computed from the
// program header of the executable segment that maps it.
package gofunc

import (
	"bytes"
	"debug/buildinfo"
	"debug/elf"
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// Func is one function found in an executable.
type Func struct {
	Name string
	// Entry is the function's virtual address; Offset the file offset of
	// its first instruction.
	Entry, Offset uint64
	// Prologue: the bytes at Entry are the stack-bound check every Go
	// function that may grow its stack starts with (amd64 and arm64).
	// A probe must never be placed at an address that is not an
	// instruction boundary: it would corrupt the program. This check
	// catches a table read with the wrong text start.
	Prologue bool
}

// Binary describes a Go executable.
type Binary struct {
	// GoVersion is the toolchain that built it ("go1.19.8"), "" when the
	// build information is missing.
	GoVersion string
	Arch      elf.Machine
	Funcs     []Func
}

// ErrNotGo says the file has no Go function table.
var ErrNotGo = errors.New("not a Go executable (no .gopclntab)")

// maxPclntab bounds each section read from a hostile or corrupt file:
// Debian's containerd's table is 12 MB, kubelet's about 20 MB.
const maxPclntab = 64 << 20

// Find opens the ELF executable at path and returns the functions whose
// names match want (at most limit of them).
func Find(path string, want func(name string) bool, limit int) (*Binary, error) {
	f, err := elf.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b := &Binary{Arch: f.Machine}
	if bi, err := buildinfo.ReadFile(path); err == nil {
		b.GoVersion = bi.GoVersion
	}
	var text uint64
	if t := f.Section(".text"); t != nil {
		text = t.Addr
	}
	tab, err := pclntab(f, text)
	if err != nil {
		return b, err
	}
	err = tab.each(func(name []byte, entry uint64) bool {
		if !want(string(name)) {
			return true
		}
		off, ok := fileOffset(f, entry)
		if !ok {
			return true
		}
		b.Funcs = append(b.Funcs, Func{Name: string(name), Entry: entry, Offset: off, Prologue: prologue(f, off)})
		return len(b.Funcs) < limit
	})
	if err != nil {
		return b, fmt.Errorf("read the function table: %w", err)
	}
	return b, nil
}

// pclntab finds the function table: the .gopclntab section, read through
// its io.ReaderAt, or, in binaries linked by an external linker (cgo,
// docker's builds), the table inside .data.rel.ro, found by its header.
//
// Since Go 1.18 the table holds function addresses as offsets from
// runtime.text. The .text section starts there when Go links the binary
// itself, but an external linker may put C code first (Debian's
// containerd: 0x100 bytes), so the table's own header is used when it
// holds an address in the executable segment (it is unrelocated, zero, in
// position-independent binaries).
func pclntab(f *elf.File, text uint64) (*table, error) {
	if sec := f.Section(".gopclntab"); sec != nil && sec.Type != elf.SHT_NOBITS {
		if sec.Size > maxPclntab {
			return nil, fmt.Errorf("%s of %d bytes is larger than %d", sec.Name, sec.Size, maxPclntab)
		}
		var hdr [32]byte
		n, _ := sec.ReadAt(hdr[:], 0)
		tab, err := newTable(sec, int64(sec.Size), textStart(f, hdr[:n], sec.Addr, text))
		if err != nil {
			return nil, fmt.Errorf("parse .gopclntab: %w", err)
		}
		return tab, nil
	}
	for _, name := range []string{".data.rel.ro", ".rodata"} {
		sec := f.Section(name)
		if sec == nil || sec.Type == elf.SHT_NOBITS {
			continue
		}
		data, err := sectionData(sec)
		if err != nil {
			return nil, err
		}
		if tab := searchTable(f, sec, data, text); tab != nil {
			return tab, nil
		}
	}
	return nil, ErrNotGo
}

func sectionData(sec *elf.Section) ([]byte, error) {
	if sec.Size > maxPclntab {
		return nil, fmt.Errorf("%s of %d bytes is larger than %d", sec.Name, sec.Size, maxPclntab)
	}
	data, err := sec.Data()
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", sec.Name, err)
	}
	return data, nil
}

// pcHeader magics of the 64-bit little-endian tables table reads: Go 1.16,
// 1.18 and 1.20 (each followed by two zero bytes).
var magics = [][]byte{
	{0xf1, 0xff, 0xff, 0xff, 0, 0},
	{0xf0, 0xff, 0xff, 0xff, 0, 0},
	{0xfa, 0xff, 0xff, 0xff, 0, 0},
}

// searchTable looks for a pcHeader in data and takes the first candidate
// that parses into a table holding runtime.main.
func searchTable(f *elf.File, sec *elf.Section, data []byte, text uint64) *table {
	for _, m := range magics {
		for off := 0; off < len(data); {
			i := bytes.Index(data[off:], m)
			if i < 0 {
				break
			}
			at := off + i
			off = at + 1
			if at%8 != 0 || at+8 > len(data) {
				continue
			}
			if minLC, ptr := data[at+6], data[at+7]; (minLC != 1 && minLC != 2 && minLC != 4) || ptr != 8 {
				continue
			}
			tab, err := newTable(bytes.NewReader(data[at:]), int64(len(data)-at), textStart(f, data[at:], sec.Addr+uint64(at), text))
			if err != nil {
				continue
			}
			found := false
			if err := tab.each(func(name []byte, _ uint64) bool {
				found = string(name) == "runtime.main"
				return !found
			}); err == nil && found {
				return tab
			}
		}
	}
	return nil
}

// textStart returns runtime.text for a Go 1.18+ table whose header is
// data at address addr: the header's own field, else the module data's
// minpc (runtime.firstmoduledata points at the header; its minpc is the
// first function), else text (the .text section).
func textStart(f *elf.File, data []byte, addr, text uint64) uint64 {
	if len(data) < 32 || data[1] != 0xff || data[2] != 0xff || data[3] != 0xff || (data[0] != 0xf0 && data[0] != 0xf1) || data[7] != 8 {
		return text
	}
	if v := f.ByteOrder.Uint64(data[24:32]); v != 0 {
		if _, ok := fileOffset(f, v); ok {
			return v
		}
	}
	// moduledata: pcHeader, then six slices, findfunctab, minpc.
	const minpcOff = 8 + 6*24 + 8
	var ptr [8]byte
	f.ByteOrder.PutUint64(ptr[:], addr)
	for _, name := range []string{".go.module", ".noptrdata", ".data", ".data.rel.ro"} {
		sec := f.Section(name)
		if sec == nil || sec.Type == elf.SHT_NOBITS || sec.Size > maxPclntab {
			continue
		}
		d, err := sec.Data()
		if err != nil {
			continue
		}
		for off := 0; ; {
			i := bytes.Index(d[off:], ptr[:])
			if i < 0 {
				break
			}
			at := off + i
			off = at + 1
			if at%8 != 0 || at+minpcOff+8 > len(d) {
				continue
			}
			if v := f.ByteOrder.Uint64(d[at+minpcOff:]); v != 0 {
				if _, ok := fileOffset(f, v); ok {
					return v
				}
			}
		}
	}
	return text
}

// prologue reports whether the code at file offset off starts with Go's
// stack-bound check: on amd64 (register ABI, g in R14) CMPQ SP, 16(R14)
// or, for large frames, LEAQ -n(SP), R12 then CMPQ R12, 16(R14); on arm64
// MOVD 16(g), R16 (g is R28).
func prologue(f *elf.File, off uint64) bool {
	var b [16]byte
	if !readAt(f, off, b[:]) {
		return false
	}
	switch f.Machine {
	case elf.EM_X86_64:
		cmp := []byte{0x49, 0x3b, 0x66, 0x10}
		cmp12 := []byte{0x4d, 0x3b, 0x66, 0x10}
		switch {
		case bytes.HasPrefix(b[:], cmp):
			return true
		case bytes.HasPrefix(b[:], []byte{0x4c, 0x8d, 0x64, 0x24}): // LEAQ disp8(SP), R12
			return bytes.Equal(b[5:9], cmp12)
		case bytes.HasPrefix(b[:], []byte{0x4d, 0x8d, 0xa4, 0x24}), bytes.HasPrefix(b[:], []byte{0x4c, 0x8d, 0xa4, 0x24}): // LEAQ disp32(SP), R12
			return bytes.Equal(b[8:12], cmp12)
		}
	case elf.EM_AARCH64:
		return f.ByteOrder.Uint32(b[:4]) == 0xf9400b90
	}
	return false
}

// readAt reads len(b) bytes at file offset off of an executable segment.
func readAt(f *elf.File, off uint64, b []byte) bool {
	for _, p := range f.Progs {
		if p.Type != elf.PT_LOAD || p.Flags&elf.PF_X == 0 || off < p.Off || off+uint64(len(b)) > p.Off+p.Filesz {
			continue
		}
		_, err := p.ReadAt(b, int64(off-p.Off))
		return err == nil
	}
	return false
}

// fileOffset maps a virtual address to its offset in the file through the
// executable PT_LOAD segment that contains it.
func fileOffset(f *elf.File, addr uint64) (uint64, bool) {
	for _, p := range f.Progs {
		if p.Type != elf.PT_LOAD || p.Flags&elf.PF_X == 0 {
			continue
		}
		if addr >= p.Vaddr && addr < p.Vaddr+p.Filesz {
			return addr - p.Vaddr + p.Off, true
		}
	}
	return 0, false
}

// RegisterABI reports whether functions of a binary built by goVersion take
// their arguments in registers (ABIInternal): Go 1.17 on amd64, 1.18 on
// arm64. ok is false when the version cannot be told.
func RegisterABI(goVersion string, arch elf.Machine) (regs, ok bool) {
	major, minor, ok := parseVersion(goVersion)
	if !ok {
		return false, false
	}
	if major > 1 {
		return true, true
	}
	switch arch {
	case elf.EM_X86_64:
		return minor >= 17, true
	case elf.EM_AARCH64:
		return minor >= 18, true
	}
	return false, false
}

// parseVersion reads "go1.19.8", "go1.21rc2", "go1.26.8 X:nocoverageredesign".
func parseVersion(v string) (major, minor int, ok bool) {
	v, found := strings.CutPrefix(v, "go")
	if !found {
		return 0, 0, false
	}
	majS, rest, found := strings.Cut(v, ".")
	if !found {
		return 0, 0, false
	}
	end := 0
	for end < len(rest) && rest[end] >= '0' && rest[end] <= '9' {
		end++
	}
	maj, err1 := strconv.Atoi(majS)
	min, err2 := strconv.Atoi(rest[:end])
	if err1 != nil || err2 != nil {
		return 0, 0, false
	}
	return maj, min, true
}
