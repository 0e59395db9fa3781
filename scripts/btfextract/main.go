// Command btfextract copies the raw kernel BTF blob out of a kernel image, so
// that `bpftool btf dump file BLOB format c` can turn it into a vmlinux.h for
// an architecture other than the host's. scripts/gen-vmlinux.sh uses it.
//
//	go run ./scripts/btfextract IMAGE OUT
//
// IMAGE is an arm64 Image (plain or wrapped in an EFI PE header, as Debian's
// vmlinuz is), a gzip-compressed Image, an EFI zboot image with a gzip
// payload, or an ELF vmlinux. The kernel links its BTF in uncompressed, so
// the blob is found by its header: magic 0xeB9F (bytes 9f eb 01 00, little
// endian), then hdr_len, type_off, type_len, str_off, str_len; the blob is
// hdr_len + max(type_off+type_len, str_off+str_len) bytes long. Every
// candidate is parsed in full, and the largest that parses is the kernel's.
package main

import (
	"bytes"
	"compress/gzip"
	"debug/elf"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/cilium/ebpf/btf"
)

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: btfextract IMAGE OUT")
		os.Exit(2)
	}
	if err := run(os.Args[1], os.Args[2]); err != nil {
		fmt.Fprintln(os.Stderr, "btfextract: "+err.Error())
		os.Exit(1)
	}
}

func run(in, out string) error {
	img, err := os.ReadFile(in)
	if err != nil {
		return err
	}
	img, how, err := unpack(img)
	if err != nil {
		return fmt.Errorf("%s: %w", in, err)
	}
	blob, off, err := find(img)
	if err != nil {
		return fmt.Errorf("%s (%s): %w", in, how, err)
	}
	spec, err := btf.LoadSpecFromReader(bytes.NewReader(blob))
	if err != nil {
		return fmt.Errorf("%s: BTF at %#x does not parse: %w", in, off, err)
	}
	n := 0
	for range spec.All() {
		n++
	}
	if err := os.WriteFile(out, blob, 0o644); err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "btfextract: %s (%s): BTF at offset %#x, %d bytes, %d types -> %s\n", in, how, off, len(blob), n, out)
	return nil
}

// unpack returns the bytes the BTF blob is to be searched in.
func unpack(img []byte) ([]byte, string, error) {
	switch {
	case bytes.HasPrefix(img, []byte{0x1f, 0x8b}):
		b, err := gunzip(img)
		return b, "gzip", err
	case len(img) >= 0x20 && string(img[0:2]) == "MZ" && string(img[4:8]) == "zimg":
		// EFI zboot (CONFIG_EFI_ZBOOT): payload offset and size at 8 and
		// 12, compression name at 24.
		start := binary.LittleEndian.Uint32(img[8:])
		size := binary.LittleEndian.Uint32(img[12:])
		comp := string(bytes.TrimRight(img[24:32], "\x00"))
		if uint64(start)+uint64(size) > uint64(len(img)) {
			return nil, "", errors.New("EFI zboot payload runs past the end of the file")
		}
		if comp != "gzip" {
			return nil, "", fmt.Errorf("EFI zboot payload is %s-compressed: decompress it first (only gzip is built in)", comp)
		}
		b, err := gunzip(img[start : start+size])
		return b, "EFI zboot, gzip", err
	case bytes.HasPrefix(img, []byte(elf.ELFMAG)):
		f, err := elf.NewFile(bytes.NewReader(img))
		if err != nil {
			return nil, "", err
		}
		if s := f.Section(".BTF"); s != nil {
			b, err := s.Data()
			return b, "ELF .BTF section", err
		}
		return img, "ELF", nil
	case len(img) >= 0x40 && string(img[0x38:0x3c]) == "ARMd":
		return img, "arm64 Image", nil
	}
	return img, "raw", nil
}

func gunzip(b []byte) ([]byte, error) {
	zr, err := gzip.NewReader(bytes.NewReader(b))
	if err != nil {
		return nil, err
	}
	zr.Multistream(false)
	return io.ReadAll(zr)
}

var magic = []byte{0x9f, 0xeb, 0x01, 0x00} // 0xeB9F, version 1, flags 0

// find returns the largest BTF blob in img that parses, and its offset.
func find(img []byte) ([]byte, int, error) {
	var best []byte
	bestOff, seen := -1, 0
	for i := 0; ; {
		j := bytes.Index(img[i:], magic)
		if j < 0 {
			break
		}
		off := i + j
		i = off + 1
		blob, ok := candidate(img[off:])
		if !ok {
			continue
		}
		seen++
		if len(blob) <= len(best) {
			continue
		}
		if _, err := btf.LoadSpecFromReader(bytes.NewReader(blob)); err != nil {
			continue
		}
		best, bestOff = blob, off
	}
	if best == nil {
		return nil, 0, fmt.Errorf("no BTF blob found (%d header candidates; is the kernel built with CONFIG_DEBUG_INFO_BTF=y?)", seen)
	}
	return best, bestOff, nil
}

// candidate checks the header at the start of b and returns the blob it
// describes, if the header is plausible.
func candidate(b []byte) ([]byte, bool) {
	if len(b) < 24 {
		return nil, false
	}
	le := binary.LittleEndian
	hdrLen := uint64(le.Uint32(b[4:]))
	typeOff := uint64(le.Uint32(b[8:]))
	typeLen := uint64(le.Uint32(b[12:]))
	strOff := uint64(le.Uint32(b[16:]))
	strLen := uint64(le.Uint32(b[20:]))
	if hdrLen < 24 || hdrLen > 256 || hdrLen%4 != 0 || typeLen == 0 || typeLen%4 != 0 || strLen == 0 {
		return nil, false
	}
	end := max(typeOff+typeLen, strOff+strLen)
	total := hdrLen + end
	if total > uint64(len(b)) {
		return nil, false
	}
	// The string section starts with the empty string and ends with a NUL.
	strs := b[hdrLen+strOff : hdrLen+strOff+strLen]
	if strs[0] != 0 || strs[len(strs)-1] != 0 {
		return nil, false
	}
	return b[:total], true
}
