package main

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"strings"
)

// arm64Magic is "ARMd" at offset 0x38 of an arm64 kernel Image
// (Documentation/arch/arm64/booting.rst), which qemu's -kernel boots.
const arm64MagicOff = 0x38

var arm64Magic = []byte("ARMd")

func isArm64Image(b []byte) bool {
	return len(b) > arm64MagicOff+4 && bytes.Equal(b[arm64MagicOff:arm64MagicOff+4], arm64Magic)
}

// arm64Image returns the plain Image inside what Debian ships as
// vmlinuz: the Image itself (7.x), a gzip'd Image (6.1, 6.12), or an EFI
// zboot image ("zimg" at offset 4), which QEMU 7.2 cannot boot directly.
func arm64Image(z []byte) ([]byte, string, error) {
	if isArm64Image(z) {
		return z, "none", nil
	}
	if len(z) > 32 && string(z[:2]) == "MZ" && string(z[4:8]) == "zimg" {
		off := int(binary.LittleEndian.Uint32(z[8:]))
		n := int(binary.LittleEndian.Uint32(z[12:]))
		typ := strings.TrimRight(string(z[24:32]), "\x00")
		if off+n > len(z) || n == 0 {
			return nil, "", fmt.Errorf("EFI zboot payload [%d, +%d) lies outside the %d-byte file", off, n, len(z))
		}
		c := codecOf(z[off:])
		if c == nil {
			return nil, "", fmt.Errorf("EFI zboot payload of type %q: unknown compression", typ)
		}
		out, err := decompress(c, z[off:off+n], -1)
		if err != nil && !isArm64Image(out) {
			return nil, "", fmt.Errorf("EFI zboot %s payload: %w", c.name, err)
		}
		if !isArm64Image(out) {
			return nil, "", fmt.Errorf("EFI zboot %s payload is not an arm64 Image", c.name)
		}
		return out, "zboot+" + c.name, nil
	}
	c := codecOf(z)
	if c == nil {
		return nil, "", errors.New("neither an arm64 Image, nor compressed, nor EFI zboot")
	}
	out, err := decompress(c, z, -1)
	if err != nil && !isArm64Image(out) {
		return nil, "", err
	}
	if !isArm64Image(out) {
		return nil, "", fmt.Errorf("%s payload is not an arm64 Image", c.name)
	}
	return out, c.name, nil
}

func cmdArm64Image(args []string) error {
	if len(args) != 2 {
		return errors.New("usage: arm64image VMLINUZ OUT")
	}
	z, err := os.ReadFile(args[0])
	if err != nil {
		return err
	}
	img, how, err := arm64Image(z)
	if err != nil {
		return fmt.Errorf("%s: %w", args[0], err)
	}
	tmp := args[1] + ".tmp"
	if err := os.WriteFile(tmp, img, 0o644); err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "arm64image: %s: compression %s, %d bytes of Image\n", args[0], how, len(img))
	return os.Rename(tmp, args[1])
}
