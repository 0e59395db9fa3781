package main

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"sort"
	"strings"
)

// cpioWriter writes the "newc" format the kernel unpacks an initramfs from.
type cpioWriter struct {
	w   io.Writer
	ino uint32
	err error
}

const (
	modeDir  = 0o040000
	modeFile = 0o100000
	modeChr  = 0o020000
)

func (c *cpioWriter) entry(name string, mode uint32, rdevMajor, rdevMinor uint32, data []byte) {
	if c.err != nil {
		return
	}
	c.ino++
	nlink := uint32(1)
	if mode&0o170000 == modeDir {
		nlink = 2
	}
	hdr := fmt.Sprintf("070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
		c.ino, mode, 0, 0, nlink, 0, len(data), 0, 0, rdevMajor, rdevMinor, len(name)+1, 0)
	var b bytes.Buffer
	b.WriteString(hdr)
	b.WriteString(name)
	b.WriteByte(0)
	pad(&b)
	b.Write(data)
	pad(&b)
	_, c.err = c.w.Write(b.Bytes())
}

func pad(b *bytes.Buffer) {
	for b.Len()%4 != 0 {
		b.WriteByte(0)
	}
}

func (c *cpioWriter) close() error {
	c.entry("TRAILER!!!", 0, 0, 0, nil)
	return c.err
}

// initramfsFile is one regular file of the image: where it goes, and its
// bytes. Every file is executable: the image holds /init, programs and the
// small files they read.
type initramfsFile struct {
	dest string
	data []byte
	mode uint32
}

// writeInitramfs writes a gzip'd newc archive with the given files, every
// directory above them, the usual mount points, and /dev/console (without
// which the kernel starts init with no stdin, stdout or stderr).
func writeInitramfs(w io.Writer, files []initramfsFile) error {
	dirs := map[string]bool{}
	for _, d := range []string{"dev", "proc", "sys", "tmp", "run", "bin", "sbin", "usr/bin", "usr/sbin"} {
		dirs[d] = true
	}
	for _, f := range files {
		for d := path.Dir(f.dest); d != "." && d != "/"; d = path.Dir(d) {
			dirs[d] = true
		}
	}
	var names []string
	for d := range dirs {
		names = append(names, d)
	}
	sort.Strings(names) // parents before children

	zw, err := gzip.NewWriterLevel(w, gzip.BestSpeed)
	if err != nil {
		return err
	}
	c := &cpioWriter{w: zw}
	for _, d := range names {
		c.entry(d, modeDir|0o755, 0, 0, nil)
	}
	c.entry("dev/console", modeChr|0o600, 5, 1, nil)
	for _, f := range files {
		c.entry(f.dest, modeFile|f.mode, 0, 0, f.data)
	}
	if err := c.close(); err != nil {
		return err
	}
	return zw.Close()
}

// checkStatic fails for a dynamically linked ELF file: the initramfs has no
// libraries. Files that are not ELF (scripts) pass.
func checkStatic(name string, data []byte) error {
	if !bytes.HasPrefix(data, []byte(elf.ELFMAG)) {
		return nil
	}
	f, err := elf.NewFile(bytes.NewReader(data))
	if err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return fmt.Errorf("%s is dynamically linked; the initramfs needs static binaries (busybox-static, CGO_ENABLED=0)", name)
		}
	}
	return nil
}

func cmdInitramfs(args []string) error {
	if len(args) < 2 {
		return errors.New("usage: initramfs OUT DEST=SRC [DEST=SRC ...]")
	}
	var files []initramfsFile
	for _, a := range args[1:] {
		dest, src, ok := strings.Cut(a, "=")
		dest = strings.TrimPrefix(dest, "/")
		if !ok || dest == "" || src == "" {
			return fmt.Errorf("bad entry %q: want DEST=SRC", a)
		}
		data, err := os.ReadFile(src)
		if err != nil {
			return err
		}
		if err := checkStatic(src, data); err != nil {
			return err
		}
		files = append(files, initramfsFile{dest: dest, data: data, mode: 0o755})
	}
	tmp := args[0] + ".tmp"
	f, err := os.Create(tmp)
	if err != nil {
		return err
	}
	bw := bufio.NewWriter(f)
	err = writeInitramfs(bw, files)
	if err == nil {
		err = bw.Flush()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(tmp)
		return err
	}
	return os.Rename(tmp, args[0])
}
