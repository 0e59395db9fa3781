package bpf

import (
	"errors"
	"fmt"
	"unsafe"

	"github.com/cilium/ebpf/link"

	"github.com/containerdsnoop/containerdsnoop/internal/capture"
)

// Peer probes: a uprobe at the entry of hpack.(*Encoder).WriteField in a Go
// executable (peer_hpack_write_field in snoop.bpf.c). Which executables and
// where is internal/peerprobe's business; this file only attaches and
// decodes.

func withoutPeerProbes(o Options) Options {
	o.PeerProbes = false
	return o
}

// ErrNoPeerProbes says the tracer was opened without the peer-probe program
// (Options.PeerProbes off, or the kernel refused it).
var ErrNoPeerProbes = errors.New("peer probes not loaded")

// PeerProbes reports whether AttachPeerProbe can work.
func (t *Tracer) PeerProbes() bool { return t.progs["peer_hpack_write_field"] != nil }

// AttachPeerProbe places the WriteField probe at file offset off of the
// executable at path (/proc/PID/exe works, also for a replaced binary). A
// uprobe belongs to the file: every process running it is probed. The
// probe stays until Detach or Close.
func (t *Tracer) AttachPeerProbe(path string, off uint64) error {
	prog := t.progs["peer_hpack_write_field"]
	if prog == nil {
		return ErrNoPeerProbes
	}
	ex, err := link.OpenExecutable(path)
	if err != nil {
		return err
	}
	t.uprobeMu.Lock()
	defer t.uprobeMu.Unlock()
	if t.closed {
		return ErrClosed
	}
	l, err := ex.Uprobe("", prog, &link.UprobeOptions{Address: off, TraceFSPrefix: probeGroupPrefix})
	if err != nil {
		return fmt.Errorf("attach uprobe at %s+%#x: %w", path, off, err)
	}
	t.uprobes = append(t.uprobes, l)
	return nil
}

func (t *Tracer) closeUprobes() {
	t.uprobeMu.Lock()
	defer t.uprobeMu.Unlock()
	t.closed = true
	for _, l := range t.uprobes {
		l.Close()
	}
	t.uprobes = nil
}

var fieldSize = int(unsafe.Sizeof(snoopHpackField{}))

// decodeField turns a peer-probe record into an event carrying a
// HeaderField. Everything is copied: the field outlives the record.
func (t *Tracer) decodeField(k *snoopEvent, raw []byte, ev *capture.Event) bool {
	if len(raw) < eventSize+fieldSize {
		return false
	}
	h := (*snoopHpackField)(unsafe.Pointer(&raw[eventSize]))
	data := raw[eventSize+fieldSize:]
	nc, vc, pc := int(h.NameCap), int(h.ValueCap), int(h.PrefixCap)
	if nc+vc+pc > len(data) {
		return false
	}
	f := &capture.HeaderField{
		Encoder:     h.Encoder,
		Inserted:    h.Inserted,
		HasInserted: h.Flags&uint8(snoopHpackFlagHPACK_F_NO_COUNT) == 0,
		Seq:         h.Seq,
		Name:        string(data[:nc]),
		Value:       string(data[nc : nc+vc]),
		NameLen:     int(h.NameLen),
		ValueLen:    int(h.ValueLen),
		Sensitive:   h.Sensitive != 0,
		Fault:       h.Flags&uint8(snoopHpackFlagHPACK_F_FAULT) != 0,
		HasPrefix:   h.Flags&uint8(snoopHpackFlagHPACK_F_NO_PREFIX) == 0,
		PrefixLen:   int(h.PrefixLen),
	}
	if f.HasPrefix {
		f.Prefix = append([]byte(nil), data[nc+vc:nc+vc+pc]...)
	}
	*ev = capture.Event{
		Time:     t.clock.wallTime(k.TsNs),
		CgroupID: k.CgroupId,
		PID:      k.Pid,
		TID:      k.Tid,
		Comm:     t.comm(&k.Comm),
		Field:    f,
	}
	return true
}
