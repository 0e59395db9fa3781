package gofunc

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// table is a Go function table (pclntab, Go 1.16 and later, 64-bit little
// endian) read through an io.ReaderAt.
//
// Why not debug/gosym: gosym.NewTable materializes every function and
// symbol of the binary (kubelet: ~100k, Debian's containerd ~50k) and
// needs the whole table in memory (12 MB for containerd, 35 MB for
// kubelet): examining containerd then kubelet allocated ~200 MiB, which
// the Go runtime then kept from the OS, for the few offsets the probes
// need. each reads the header, then walks the function index, the
// functions' records and their names a window at a time, in file order,
// so an examination allocates a few hundred KiB whatever the binary.
type table struct {
	r    io.ReaderAt
	size int64
	// go116: the index holds addresses and offsets as pointers (Go
	// 1.16-1.17); later ones hold 32-bit offsets from text.
	go116            bool
	nfunc            uint64
	nameOff, pclnOff uint64
	text             uint64
}

var errCorrupt = errors.New("corrupt function table")

// newTable reads the header of the table of size bytes in r; text is
// runtime.text (used by Go 1.18 and later tables).
func newTable(r io.ReaderAt, size int64, text uint64) (*table, error) {
	var h [72]byte
	if size < int64(len(h)) {
		return nil, errCorrupt
	}
	if _, err := r.ReadAt(h[:], 0); err != nil {
		return nil, err
	}
	if h[1] != 0xff || h[2] != 0xff || h[3] != 0xff || h[4] != 0 || h[5] != 0 || h[7] != 8 {
		return nil, fmt.Errorf("%w: header % x", errCorrupt, h[:8])
	}
	le := binary.LittleEndian
	t := &table{r: r, size: size, text: text, nfunc: le.Uint64(h[8:])}
	switch h[0] {
	case 0xf0, 0xf1: // Go 1.18, 1.20: nfunc, nfiles, textStart, funcnametab, cutab, filetab, pctab, pclntab
		t.nameOff, t.pclnOff = le.Uint64(h[32:]), le.Uint64(h[64:])
	case 0xfa: // Go 1.16: nfunc, nfiles, funcnametab, cutab, filetab, pctab, pclntab
		t.go116 = true
		t.nameOff, t.pclnOff = le.Uint64(h[24:]), le.Uint64(h[56:])
	case 0xfb:
		return nil, errors.New("function table of Go 1.2-1.15 (stack-based calling convention) not read")
	default:
		return nil, fmt.Errorf("%w: magic % x", errCorrupt, h[:4])
	}
	if t.nameOff >= uint64(size) || t.pclnOff >= uint64(size) || t.nfunc > uint64(size)/8 {
		return nil, errCorrupt
	}
	return t, nil
}

// maxName bounds a function name; longer ones (deeply generic
// instantiations) are passed over: no function the probes want is one.
const maxName = 4096

// each calls fn with the name and entry address of every function until
// fn returns false. name is only valid during the call.
func (t *table) each(fn func(name []byte, entry uint64) bool) error {
	index := window{r: t.r, size: t.size}
	funcs := window{r: t.r, size: t.size}
	names := window{r: t.r, size: t.size}
	le := binary.LittleEndian
	field := int64(4)
	if t.go116 {
		field = 8
	}
	for i := uint64(0); i < t.nfunc; i++ {
		e, err := index.at(int64(t.pclnOff)+int64(i)*2*field, int(2*field))
		if err != nil {
			return err
		}
		var entry, funcOff uint64
		if t.go116 {
			entry, funcOff = le.Uint64(e), le.Uint64(e[8:])
		} else {
			entry, funcOff = t.text+uint64(le.Uint32(e)), uint64(le.Uint32(e[4:]))
		}
		if funcOff >= uint64(t.size) {
			return errCorrupt
		}
		// _func: entry (pointer before Go 1.18, else a 32-bit
		// offset), then the int32 offset of its name.
		rec, err := funcs.at(int64(t.pclnOff+funcOff), int(field)+4)
		if err != nil {
			return err
		}
		nameOff := int64(int32(le.Uint32(rec[field:])))
		at := int64(t.nameOff) + nameOff
		if nameOff < 0 || at >= t.size {
			return errCorrupt
		}
		s, err := names.at(at, int(min(maxName, t.size-at)))
		if err != nil {
			return err
		}
		end := bytes.IndexByte(s, 0)
		if end < 0 {
			continue
		}
		if !fn(s[:end], entry) {
			return nil
		}
	}
	return nil
}

// window serves small reads at increasing offsets from one buffer,
// refilled with one ReadAt when a read leaves it.
type window struct {
	r    io.ReaderAt
	size int64
	off  int64
	buf  []byte
	mem  []byte
}

const windowSize = 64 << 10

func (w *window) at(off int64, n int) ([]byte, error) {
	if off < 0 || n < 0 || n > windowSize || off+int64(n) > w.size {
		return nil, errCorrupt
	}
	if off >= w.off && off+int64(n) <= w.off+int64(len(w.buf)) {
		return w.buf[off-w.off:][:n], nil
	}
	if w.mem == nil {
		w.mem = make([]byte, windowSize)
	}
	k, err := w.r.ReadAt(w.mem[:min(windowSize, w.size-off)], off)
	if k < n {
		if err == nil {
			err = io.ErrUnexpectedEOF
		}
		return nil, err
	}
	w.off, w.buf = off, w.mem[:k]
	return w.buf[:n], nil
}
