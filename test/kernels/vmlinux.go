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
	"os/exec"
)

// A compression the kernel's boot code can unpack, as it appears at the
// start of a bzImage's payload.
type codec struct {
	name  string
	magic []byte
	// tool decompresses stdin to stdout; nil means Go's own gzip.
	tool []string
	pkg  string // Debian package of tool, for the error message
}

var codecs = []codec{
	{name: "gzip", magic: []byte{0x1f, 0x8b, 0x08}},
	{name: "xz", magic: []byte{0xfd, '7', 'z', 'X', 'Z', 0x00}, tool: []string{"xz", "-dc", "--single-stream"}, pkg: "xz-utils"},
	{name: "zstd", magic: []byte{0x28, 0xb5, 0x2f, 0xfd}, tool: []string{"zstd", "-dcq"}, pkg: "zstd"},
	{name: "lz4", magic: []byte{0x02, 0x21, 0x4c, 0x18}, tool: []string{"lz4", "-dcq"}, pkg: "lz4"},
	{name: "bzip2", magic: []byte{'B', 'Z', 'h'}, tool: []string{"bzip2", "-dc"}, pkg: "bzip2"},
	{name: "lzma", magic: []byte{0x5d, 0x00, 0x00}, tool: []string{"xz", "-dc", "--format=lzma", "--single-stream"}, pkg: "xz-utils"},
	{name: "lzo", magic: []byte{0x89, 'L', 'Z', 'O'}, tool: []string{"lzop", "-dc"}, pkg: "lzop"},
}

func codecOf(b []byte) *codec {
	for i := range codecs {
		if bytes.HasPrefix(b, codecs[i].magic) {
			return &codecs[i]
		}
	}
	return nil
}

// payload returns the compressed kernel inside a bzImage, as the boot
// protocol (2.08+) locates it: payload_offset and payload_length in the
// setup header, relative to the protected-mode code after the setup sectors.
func payload(img []byte) ([]byte, error) {
	if len(img) < 0x250 || string(img[0x202:0x206]) != "HdrS" {
		return nil, errors.New("no bzImage setup header (HdrS magic at 0x202)")
	}
	if v := binary.LittleEndian.Uint16(img[0x206:]); v < 0x208 {
		return nil, fmt.Errorf("boot protocol %#x has no payload fields (needs 2.08+)", v)
	}
	setupSects := int(img[0x1f1])
	if setupSects == 0 {
		setupSects = 4
	}
	start := (setupSects + 1) * 512
	off := int(binary.LittleEndian.Uint32(img[0x248:]))
	n := int(binary.LittleEndian.Uint32(img[0x24c:]))
	if start+off+n > len(img) || n == 0 {
		return nil, fmt.Errorf("payload [%d, +%d) lies outside the %d-byte image", start+off, n, len(img))
	}
	return img[start+off : start+off+n], nil
}

// decompress unpacks data with c. The kernel's build appends the unpacked
// size as 4 little-endian bytes to every compressed payload; want, when not
// negative, is checked against the result.
func decompress(c *codec, data []byte, want int) ([]byte, error) {
	var out []byte
	if c.tool == nil {
		zr, err := gzip.NewReader(bytes.NewReader(data))
		if err != nil {
			return nil, err
		}
		zr.Multistream(false)
		if out, err = io.ReadAll(zr); err != nil {
			return nil, err
		}
	} else {
		if _, err := exec.LookPath(c.tool[0]); err != nil {
			return nil, fmt.Errorf("%s payload needs %s (apt-get install %s)", c.name, c.tool[0], c.pkg)
		}
		cmd := exec.Command(c.tool[0], c.tool[1:]...)
		cmd.Stdin = bytes.NewReader(data)
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		if err := cmd.Run(); err != nil {
			return nil, fmt.Errorf("%s: %v: %s", c.tool[0], err, bytes.TrimSpace(stderr.Bytes()))
		}
		out = stdout.Bytes()
	}
	if want >= 0 && len(out) != want {
		return nil, fmt.Errorf("%s payload unpacked to %d bytes, the image says %d", c.name, len(out), want)
	}
	return out, nil
}

// extractVmlinux returns the ELF kernel inside a bzImage, and the name of
// the compression it was stored with.
func extractVmlinux(img []byte) ([]byte, string, error) {
	p, err := payload(img)
	if err == nil {
		c := codecOf(p)
		if c == nil {
			return nil, "", fmt.Errorf("payload starts with % x: unknown compression", p[:min(8, len(p))])
		}
		if len(p) < 8 {
			return nil, "", errors.New("payload too short")
		}
		size := int(binary.LittleEndian.Uint32(p[len(p)-4:]))
		out, err := decompress(c, p[:len(p)-4], size)
		if err != nil {
			return nil, c.name, err
		}
		if !bytes.HasPrefix(out, []byte(elf.ELFMAG)) {
			return nil, c.name, fmt.Errorf("%s payload is not an ELF file", c.name)
		}
		return out, c.name, nil
	}
	// An image without usable header fields: try every compressed stream
	// found in it until one unpacks to an ELF file.
	tries := 0
	for i := 0; i < len(img) && tries < 64; i++ {
		c := codecOf(img[i:])
		if c == nil {
			continue
		}
		tries++
		out, derr := decompress(c, img[i:], -1)
		if len(out) > 0 && bytes.HasPrefix(out, []byte(elf.ELFMAG)) {
			_ = derr // trailing bytes after the stream are expected
			return out, c.name, nil
		}
	}
	return nil, "", fmt.Errorf("%v, and no compressed ELF found by scanning", err)
}

// checkBootableELF tells whether qemu can start k directly: x86-64 ELF with
// the PVH entry note (CONFIG_PVH).
func checkBootableELF(k []byte) error {
	f, err := elf.NewFile(bytes.NewReader(k))
	if err != nil {
		return err
	}
	if f.Class != elf.ELFCLASS64 || f.Machine != elf.EM_X86_64 {
		return fmt.Errorf("not an x86-64 ELF64 kernel (%v %v)", f.Class, f.Machine)
	}
	const xenElfnotePhys32Entry = 18
	for _, p := range f.Progs {
		if p.Type != elf.PT_NOTE {
			continue
		}
		notes, err := io.ReadAll(p.Open())
		if err != nil {
			return err
		}
		for len(notes) >= 12 {
			nameSz := int(binary.LittleEndian.Uint32(notes))
			descSz := int(binary.LittleEndian.Uint32(notes[4:]))
			typ := binary.LittleEndian.Uint32(notes[8:])
			name := notes[12:min(len(notes), 12+nameSz)]
			if typ == xenElfnotePhys32Entry && bytes.Equal(bytes.TrimRight(name, "\x00"), []byte("Xen")) {
				return nil
			}
			adv := 12 + align4(nameSz) + align4(descSz)
			if adv > len(notes) {
				break
			}
			notes = notes[adv:]
		}
	}
	return errors.New("no PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY): the kernel lacks CONFIG_PVH, so qemu cannot boot its vmlinux")
}

func align4(n int) int { return (n + 3) &^ 3 }

func cmdVmlinux(args []string) error {
	if len(args) != 2 {
		return errors.New("usage: vmlinux BZIMAGE OUT")
	}
	img, err := os.ReadFile(args[0])
	if err != nil {
		return err
	}
	k, codec, err := extractVmlinux(img)
	if err != nil {
		return fmt.Errorf("%s: %w", args[0], err)
	}
	if err := checkBootableELF(k); err != nil {
		return fmt.Errorf("%s: %w", args[0], err)
	}
	tmp := args[1] + ".tmp"
	if err := os.WriteFile(tmp, k, 0o644); err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "vmlinux: %s: %s payload, %d bytes of ELF\n", args[0], codec, len(k))
	return os.Rename(tmp, args[1])
}
