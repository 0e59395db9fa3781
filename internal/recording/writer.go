package recording

import (
	"bufio"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/containerdsnoop/containerdsnoop/internal/capture"
	"github.com/containerdsnoop/containerdsnoop/internal/safefile"
)

// Writer writes a recording. Writes are buffered; Close flushes them and
// writes the trailer. Not safe for concurrent use.
type Writer struct {
	bw   *bufio.Writer
	file io.Closer
	dict map[string]uint64
	// dictBytes is the size of the strings in dict.
	dictBytes int
	last      int64
	events    uint64
	stats     capture.Stats
	known     bool
	body      []byte
	hdr       [1 + binary.MaxVarintLen64]byte
	err       error
	closed    bool
	// The previous event's strings and their indexes: most events repeat
	// them, and comparing is cheaper than a map lookup.
	lastComm, lastPath       string
	lastCommIdx, lastPathIdx uint64
}

// bufSize is the write buffer: a few hundred events between syscalls.
const bufSize = 256 << 10

// Create creates the file at path, new (an existing path is an error,
// see internal/safefile) and readable by its owner only (it holds
// whatever the traced processes sent), and starts a recording in it.
// Close closes the file.
func Create(path string, h Header) (*Writer, error) {
	f, err := safefile.Create(path)
	if err != nil {
		return nil, err
	}
	w, err := NewWriter(f, h)
	if err != nil {
		f.Close()
		return nil, err
	}
	w.file = f
	return w, nil
}

// NewWriter writes the magic, version and header to w and returns a Writer
// for the events. Close does not close w.
func NewWriter(w io.Writer, h Header) (*Writer, error) {
	hj, err := json.Marshal(h)
	if err != nil {
		return nil, fmt.Errorf("encode recording header: %w", err)
	}
	if len(hj) > MaxHeader {
		return nil, fmt.Errorf("recording header too large (%d bytes)", len(hj))
	}
	rw := &Writer{bw: bufio.NewWriterSize(w, bufSize), dict: map[string]uint64{"": 0}}
	var pre [len(Magic) + 2 + 4]byte
	copy(pre[:], Magic)
	binary.BigEndian.PutUint16(pre[len(Magic):], Version)
	binary.BigEndian.PutUint32(pre[len(Magic)+2:], uint32(len(hj)))
	rw.bw.Write(pre[:])
	if _, err := rw.bw.Write(hj); err != nil {
		return nil, err
	}
	return rw, nil
}

// Write appends one event. It keeps nothing of ev after it returns.
func (w *Writer) Write(ev *capture.Event) error {
	if w.err != nil {
		return w.err
	}
	if w.closed {
		return errors.New("recording: write after close")
	}
	if ev.Field != nil {
		w.writeField(ev)
		return w.err
	}
	if len(w.dict) > maxDict-2 || w.dictBytes > maxDictBytes-2*MaxString {
		// Start over, so that a reader's dictionary stays bounded.
		clear(w.dict)
		w.dict[""] = 0
		w.dictBytes = 0
		w.lastComm, w.lastCommIdx, w.lastPath, w.lastPathIdx = "", 0, "", 0
		w.record(recReset, nil, nil)
	}
	comm := w.lastCommIdx
	if ev.Comm != w.lastComm {
		comm = w.intern(ev.Comm)
		w.lastComm, w.lastCommIdx = ev.Comm, comm
	}
	path := w.lastPathIdx
	if ev.Path != w.lastPath {
		path = w.intern(ev.Path)
		w.lastPath, w.lastPathIdx = ev.Path, path
	}
	var flags byte
	if ev.Fault {
		flags |= flagFault
	}
	if ev.Restart {
		flags |= flagRestart
	}
	if ev.Bound {
		flags |= flagBound
	}
	if ev.Close {
		flags |= flagClose
	}
	if ev.Undecided {
		flags |= flagUndecided
	}
	if ev.SendTook > 0 {
		var took [binary.MaxVarintLen64]byte
		w.record(recSendTook, took[:binary.PutUvarint(took[:], uint64(ev.SendTook))], nil)
	}
	t := ev.Time.UnixNano()
	b := append(w.body[:0], flags)
	b = binary.AppendVarint(b, t-w.last)
	b = binary.LittleEndian.AppendUint64(b, ev.Sock)
	b = binary.LittleEndian.AppendUint64(b, ev.PeerSock)
	b = binary.AppendUvarint(b, ev.Ino)
	b = binary.AppendUvarint(b, ev.PeerIno)
	b = binary.AppendUvarint(b, ev.CgroupID)
	b = binary.AppendUvarint(b, ev.Offset)
	b = binary.AppendUvarint(b, uint64(ev.Len))
	b = binary.AppendUvarint(b, uint64(ev.SendLen))
	b = binary.AppendUvarint(b, uint64(ev.PID))
	b = binary.AppendUvarint(b, uint64(ev.TID))
	b = binary.AppendUvarint(b, uint64(ev.PeerPID))
	b = binary.AppendUvarint(b, comm)
	b = binary.AppendUvarint(b, path)
	w.body = b
	if len(b)+len(ev.Data) > MaxRecord {
		w.err = fmt.Errorf("recording: event of %d bytes is larger than a record may be", len(ev.Data))
		return w.err
	}
	w.last = t
	w.events++
	w.record(recEvent, b, ev.Data)
	return w.err
}

// intern returns s's dictionary index, writing a string record for a new
// one.
func (w *Writer) intern(s string) uint64 {
	if i, ok := w.dict[s]; ok {
		return i
	}
	if len(s) > MaxString {
		s = s[:MaxString]
		if i, ok := w.dict[s]; ok {
			return i
		}
	}
	i := uint64(len(w.dict))
	w.dictBytes += len(s)
	w.dict[s] = i
	w.recordString(s)
	return i
}

func (w *Writer) record(typ byte, body, data []byte) {
	hdr := w.hdr[:]
	hdr[0] = typ
	n := 1 + binary.PutUvarint(hdr[1:], uint64(len(body)+len(data)))
	w.bw.Write(hdr[:n])
	w.bw.Write(body)
	if _, err := w.bw.Write(data); err != nil && w.err == nil {
		w.err = err
	}
}

func (w *Writer) recordString(s string) {
	hdr := w.hdr[:]
	hdr[0] = recString
	n := 1 + binary.PutUvarint(hdr[1:], uint64(len(s)))
	w.bw.Write(hdr[:n])
	if _, err := w.bw.WriteString(s); err != nil && w.err == nil {
		w.err = err
	}
}

// SetStats records the capture's loss counters, to be written in the
// trailer by Close.
func (w *Writer) SetStats(s capture.Stats) { w.stats, w.known = s, true }

// Flush writes buffered records to the file, e.g. while the capture is
// idle, so that a killed tracer leaves a recording decodable up to there.
func (w *Writer) Flush() error {
	if w.err != nil || w.closed {
		return w.err
	}
	if err := w.bw.Flush(); err != nil {
		w.err = err
	}
	return w.err
}

// Close writes the trailer, flushes, and closes the file if Create opened
// it. It may be called more than once.
func (w *Writer) Close() error {
	if w.closed {
		return w.err
	}
	w.closed = true
	if w.err == nil {
		var flags byte
		if w.known {
			flags = 1
		}
		b := append(w.body[:0], flags)
		b = binary.AppendVarint(b, time.Now().UnixNano())
		b = binary.AppendUvarint(b, w.events)
		// ShedBytes last: readers from before it stop after Faults.
		for _, v := range []uint64{w.stats.Events, w.stats.Bytes, w.stats.LostEvents, w.stats.LostBytes, w.stats.Faults, w.stats.ShedBytes} {
			b = binary.AppendUvarint(b, v)
		}
		w.record(recTrailer, b, nil)
		if err := w.bw.Flush(); err != nil && w.err == nil {
			w.err = err
		}
	}
	if w.file != nil {
		if err := w.file.Close(); err != nil && w.err == nil {
			w.err = err
		}
	}
	return w.err
}

// writeField writes a peer probe's header field. It is not an event: the
// trailer does not count it.
func (w *Writer) writeField(ev *capture.Event) {
	f := ev.Field
	var flags byte
	if f.HasInserted {
		flags |= fieldInserted
	}
	if f.HasPrefix {
		flags |= fieldPrefix
	}
	if f.Sensitive {
		flags |= fieldSensitive
	}
	if f.Fault {
		flags |= fieldFault
	}
	name, value, prefix := f.Name, f.Value, f.Prefix
	name = name[:min(len(name), maxFieldName)]
	value = value[:min(len(value), maxFieldValue)]
	prefix = prefix[:min(len(prefix), maxFieldPrefix)]
	b := append(w.body[:0], flags)
	b = binary.AppendVarint(b, ev.Time.UnixNano())
	b = binary.AppendUvarint(b, uint64(ev.PID))
	b = binary.AppendUvarint(b, uint64(ev.TID))
	b = binary.LittleEndian.AppendUint64(b, f.Encoder)
	b = binary.AppendUvarint(b, f.Inserted)
	b = binary.AppendUvarint(b, f.Seq)
	b = binary.AppendUvarint(b, uint64(max(f.NameLen, len(name))))
	b = binary.AppendUvarint(b, uint64(max(f.ValueLen, len(value))))
	b = binary.AppendUvarint(b, uint64(max(f.PrefixLen, len(prefix))))
	b = binary.AppendUvarint(b, uint64(len(name)))
	b = append(b, name...)
	b = binary.AppendUvarint(b, uint64(len(value)))
	b = append(b, value...)
	w.body = b
	w.record(recField, b, prefix)
}
