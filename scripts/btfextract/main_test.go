package main

import (
	"bytes"
	"compress/gzip"
	"encoding/binary"
	"os"
	"path/filepath"
	"testing"

	"github.com/cilium/ebpf/btf"
)

// blob marshals a BTF with an integer type per name, so that blobs of
// different sizes can be told apart.
func blob(t *testing.T, names ...string) []byte {
	t.Helper()
	b, err := btf.NewBuilder(nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range names {
		if _, err := b.Add(&btf.Int{Name: n, Size: 8}); err != nil {
			t.Fatal(err)
		}
	}
	raw, err := b.Marshal(nil, &btf.MarshalOptions{Order: binary.LittleEndian})
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

func TestFindLargestValidBlob(t *testing.T) {
	small := blob(t, "a")
	kernel := blob(t, "user_pt_regs_word", "another", "third")
	// A header that claims more than the file has, and a lone magic.
	bogus := append(append([]byte{}, magic...), 24, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0x7f, 0, 0, 0, 0, 1, 0, 0, 0)
	var img []byte
	img = append(img, bytes.Repeat([]byte{0xaa}, 100)...)
	img = append(img, small...)
	img = append(img, magic...)
	img = append(img, bytes.Repeat([]byte{0x55}, 37)...)
	off := len(img)
	img = append(img, kernel...)
	img = append(img, bogus...)
	img = append(img, bytes.Repeat([]byte{0}, 64)...)

	got, gotOff, err := find(img)
	if err != nil {
		t.Fatal(err)
	}
	if gotOff != off || !bytes.Equal(got, kernel) {
		t.Fatalf("found %d bytes at %d, want %d bytes at %d", len(got), gotOff, len(kernel), off)
	}
	if _, _, err := find(bytes.Repeat([]byte{0xaa}, 4096)); err == nil {
		t.Fatal("found BTF in an image without any")
	}
}

func TestRunGzipImage(t *testing.T) {
	kernel := blob(t, "x", "y")
	var z bytes.Buffer
	zw := gzip.NewWriter(&z)
	zw.Write(bytes.Repeat([]byte{1}, 1000))
	zw.Write(kernel)
	zw.Write(bytes.Repeat([]byte{2}, 1000))
	zw.Close()
	dir := t.TempDir()
	in, out := filepath.Join(dir, "vmlinuz"), filepath.Join(dir, "btf")
	if err := os.WriteFile(in, z.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := run(in, out); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, kernel) {
		t.Fatalf("extracted %d bytes, want the %d-byte blob", len(got), len(kernel))
	}
}
