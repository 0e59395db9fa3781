package recording

import (
	"bufio"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"slices"
	"time"

	"github.com/containerdsnoop/containerdsnoop/internal/capture"
)

// Reader reads a recording. Not safe for concurrent use.
type Reader struct {
	br        *bufio.Reader
	file      io.Closer
	off       int64
	header    Header
	dict      []string
	dictBytes int
	last      int64
	events    uint64
	trailer   *Trailer
	// took is the duration of the next event's send, from the record
	// just before it (at offset tookAt); 0 when there was none.
	took   time.Duration
	tookAt int64
	buf    []byte
	err    error
}

// Open opens the recording at path and reads its header.
func Open(path string) (*Reader, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	r, err := NewReader(f)
	if err != nil {
		f.Close()
		return nil, err
	}
	r.file = f
	return r, nil
}

// NewReader reads the magic, version and header from rd.
func NewReader(rd io.Reader) (*Reader, error) {
	r := &Reader{br: bufio.NewReaderSize(rd, 64<<10), dict: []string{""}}
	var pre [len(Magic) + 2 + 4]byte
	n, err := io.ReadFull(r.br, pre[:len(Magic)])
	switch {
	case n == 0 && errors.Is(err, io.EOF):
		return nil, errorf(ErrNotRecording, 0, "empty file: not a containerdsnoop recording")
	case string(pre[:n]) != Magic[:n]:
		return nil, errorf(ErrNotRecording, 0, "not a containerdsnoop recording (no %q magic at the start)", Magic[1:])
	case err != nil:
		return nil, r.readErr(err, 0, "recording header")
	}
	if _, err := io.ReadFull(r.br, pre[len(Magic):]); err != nil {
		return nil, r.readErr(err, 0, "recording header")
	}
	if v := binary.BigEndian.Uint16(pre[len(Magic):]); v != Version {
		return nil, &VersionError{Version: v}
	}
	hlen := binary.BigEndian.Uint32(pre[len(Magic)+2:])
	if hlen > MaxHeader {
		return nil, errorf(ErrCorrupt, 0, "corrupt recording header: %d bytes long", hlen)
	}
	hj := make([]byte, hlen)
	if _, err := io.ReadFull(r.br, hj); err != nil {
		return nil, r.readErr(err, 0, "recording header")
	}
	if err := json.Unmarshal(hj, &r.header); err != nil {
		return nil, errorf(ErrCorrupt, 0, "corrupt recording header: %v", err)
	}
	r.off = int64(len(pre)) + int64(hlen)
	return r, nil
}

// readErr turns a short read at off into a truncation error.
func (r *Reader) readErr(err error, off int64, what string) error {
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		if what == "record" {
			return errorf(ErrTruncated, off, "truncated record at offset %d", off)
		}
		return errorf(ErrTruncated, off, "truncated %s at offset %d", what, off)
	}
	return err
}

// Header is the recording's header.
func (r *Reader) Header() Header { return r.header }

// Trailer is the recording's trailer, once Next has reached it (that is,
// after Next returned io.EOF).
func (r *Reader) Trailer() (Trailer, bool) {
	if r.trailer == nil {
		return Trailer{}, false
	}
	return *r.trailer, true
}

// Offset is the position in the file of the next record.
func (r *Reader) Offset() int64 { return r.off }

// Close closes the file if Open opened it.
func (r *Reader) Close() error {
	if r.file != nil {
		return r.file.Close()
	}
	return nil
}

// Next reads the next event into ev. ev.Data aliases a buffer that the
// next call overwrites. An event with Field set is a peer probe's header
// field, not traffic. It returns io.EOF after the trailer of a complete
// recording, and an *Error otherwise: wrapping ErrTruncated when the file
// ends early (also when it ends between records but before the trailer),
// ErrCorrupt when a record cannot be valid. Once it has returned an error
// it returns the same one.
func (r *Reader) Next(ev *capture.Event) error {
	if r.err != nil {
		return r.err
	}
	if err := r.next(ev); err != nil {
		r.err = err
		return err
	}
	return nil
}

func (r *Reader) next(ev *capture.Event) error {
	for {
		start := r.off
		typ, err := r.br.ReadByte()
		if err != nil {
			if errors.Is(err, io.EOF) {
				return errorf(ErrTruncated, start, "truncated recording: it ends at offset %d without its trailer (the tracer did not finish it)", start)
			}
			return err
		}
		size, err := binary.ReadUvarint(r.br)
		if err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
				return r.readErr(err, start, "record")
			}
			return errorf(ErrCorrupt, start, "corrupt record at offset %d: bad length", start)
		}
		if size > MaxRecord {
			return errorf(ErrCorrupt, start, "corrupt record at offset %d: %d bytes long", start, size)
		}
		hdrLen := int64(1 + uvarintLen(size))
		if typ == recString && size > MaxString {
			return errorf(ErrCorrupt, start, "corrupt record at offset %d: string of %d bytes", start, size)
		}
		body, err := r.body(int(size))
		if err != nil {
			return r.readErr(err, start, "record")
		}
		r.off = start + hdrLen + int64(size)
		if r.took > 0 && typ != recEvent {
			return errorf(ErrCorrupt, r.tookAt, "corrupt record at offset %d: a send duration not followed by its event", r.tookAt)
		}
		switch typ {
		case recString:
			if len(r.dict) >= maxDict || r.dictBytes+len(body) > maxDictBytes {
				return errorf(ErrCorrupt, start, "corrupt record at offset %d: string dictionary over its limit", start)
			}
			r.dict = append(r.dict, string(body))
			r.dictBytes += len(body)
		case recReset:
			clear(r.dict[1:])
			r.dict = r.dict[:1]
			r.dictBytes = 0
		case recEvent:
			if err := r.event(body, ev); err != nil {
				return errorf(ErrCorrupt, start, "corrupt record at offset %d: %v", start, err)
			}
			ev.SendTook, r.took = r.took, 0
			r.events++
			return nil
		case recSendTook:
			d := dec{b: body}
			took := d.uvarint()
			if d.err != nil || len(d.b) != 0 || took == 0 || took > math.MaxInt64 {
				return errorf(ErrCorrupt, start, "corrupt record at offset %d: bad send duration", start)
			}
			r.took, r.tookAt = time.Duration(took), start
		case recTrailer:
			t, err := parseTrailer(body)
			if err != nil {
				return errorf(ErrCorrupt, start, "corrupt record at offset %d: %v", start, err)
			}
			if t.Events != r.events {
				return errorf(ErrCorrupt, start, "corrupt recording: its trailer counts %d events, the file holds %d", t.Events, r.events)
			}
			if _, err := r.br.ReadByte(); err == nil {
				return errorf(ErrCorrupt, r.off, "corrupt recording: data after the trailer at offset %d", r.off)
			} else if !errors.Is(err, io.EOF) {
				return err
			}
			r.trailer = &t
			return io.EOF
		case recField:
			if err := r.field(body, ev); err != nil {
				return errorf(ErrCorrupt, start, "corrupt record at offset %d: %v", start, err)
			}
			return nil
		default:
			if typ < recOptional {
				return errorf(ErrCorrupt, start, "corrupt record at offset %d: unknown type 0x%02x", start, typ)
			}
		}
	}
}

// body reads n bytes into the reused buffer, growing it only as data
// arrives: a corrupt length in a short file costs no big allocation.
func (r *Reader) body(n int) ([]byte, error) {
	b := r.buf[:0]
	for len(b) < n {
		k := min(n-len(b), 1<<20)
		b = slices.Grow(b, k)
		got, err := io.ReadFull(r.br, b[len(b):len(b)+k])
		b = b[:len(b)+got]
		if err != nil {
			r.buf = b[:0]
			return nil, err
		}
	}
	r.buf = b[:0]
	return b, nil
}

func uvarintLen(v uint64) int {
	n := 1
	for v >= 0x80 {
		v >>= 7
		n++
	}
	return n
}

// dec reads the fields of a body in order; the first failure sticks.
type dec struct {
	b   []byte
	err error
}

var errShort = errors.New("event fields cut short")

func (d *dec) uvarint() uint64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.err = errShort
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *dec) varint() int64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Varint(d.b)
	if n <= 0 {
		d.err = errShort
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *dec) u32() uint32 {
	v := d.uvarint()
	if v > 1<<32-1 && d.err == nil {
		d.err = errors.New("32-bit field out of range")
	}
	return uint32(v)
}

func (d *dec) u64le() uint64 {
	if d.err != nil {
		return 0
	}
	if len(d.b) < 8 {
		d.err = errShort
		return 0
	}
	v := binary.LittleEndian.Uint64(d.b)
	d.b = d.b[8:]
	return v
}

// bytes reads a uvarint length of at most max and that many bytes.
func (d *dec) bytes(max uint64) []byte {
	n := d.uvarint()
	if d.err != nil {
		return nil
	}
	if n > max || n > uint64(len(d.b)) {
		d.err = errors.New("string cut short or too long")
		return nil
	}
	b := d.b[:n]
	d.b = d.b[n:]
	return b
}

func (d *dec) byte1() byte {
	if d.err != nil {
		return 0
	}
	if len(d.b) < 1 {
		d.err = errShort
		return 0
	}
	v := d.b[0]
	d.b = d.b[1:]
	return v
}

func (r *Reader) event(body []byte, ev *capture.Event) error {
	d := dec{b: body}
	flags := d.byte1()
	t := r.last + d.varint()
	*ev = capture.Event{
		Sock:     d.u64le(),
		PeerSock: d.u64le(),
		Ino:      d.uvarint(),
		PeerIno:  d.uvarint(),
		CgroupID: d.uvarint(),
		Offset:   d.uvarint(),
		Len:      d.u32(),
		SendLen:  d.u32(),
		PID:      d.u32(),
		TID:      d.u32(),
		PeerPID:  d.u32(),
		Fault:    flags&flagFault != 0,
		Restart:  flags&flagRestart != 0,
		Bound:    flags&flagBound != 0,
		Close:    flags&flagClose != 0,

		Undecided: flags&flagUndecided != 0,
	}
	comm, path := d.uvarint(), d.uvarint()
	if d.err != nil {
		return d.err
	}
	if flags&^knownFlags != 0 {
		return errors.New("unknown event flags")
	}
	if comm >= uint64(len(r.dict)) || path >= uint64(len(r.dict)) {
		return errors.New("string index not in the dictionary")
	}
	// The data must be exactly what Len says (none for a fault or a
	// close): a record that disagrees is damage, never decoded, or the
	// stream offsets after it would be wrong.
	want := uint64(ev.Len)
	if ev.Fault || ev.Close {
		want = 0
	}
	if uint64(len(d.b)) != want {
		return fmt.Errorf("event of %d bytes holds %d bytes of data", ev.Len, len(d.b))
	}
	ev.Comm, ev.Path = r.dict[comm], r.dict[path]
	ev.Time = time.Unix(0, t)
	if len(d.b) > 0 {
		ev.Data = d.b
	}
	r.last = t
	return nil
}

// field reads a peer probe's header field into ev (ev.Field set, no Data).
func (r *Reader) field(body []byte, ev *capture.Event) error {
	d := dec{b: body}
	flags := d.byte1()
	t := d.varint()
	pid, tid := d.u32(), d.u32()
	f := &capture.HeaderField{
		Encoder:     d.u64le(),
		Inserted:    d.uvarint(),
		Seq:         d.uvarint(),
		HasInserted: flags&fieldInserted != 0,
		HasPrefix:   flags&fieldPrefix != 0,
		Sensitive:   flags&fieldSensitive != 0,
		Fault:       flags&fieldFault != 0,
	}
	nameLen, valueLen, prefixLen := d.u32(), d.u32(), d.u32()
	name := d.bytes(maxFieldName)
	value := d.bytes(maxFieldValue)
	if d.err != nil {
		return d.err
	}
	if flags&^knownFieldFlags != 0 {
		return errors.New("unknown header field flags")
	}
	prefix := d.b
	if len(prefix) > maxFieldPrefix || uint32(len(name)) > nameLen || uint32(len(value)) > valueLen || uint32(len(prefix)) > prefixLen {
		return errors.New("header field longer than it says")
	}
	f.Name, f.Value = string(name), string(value)
	f.NameLen, f.ValueLen, f.PrefixLen = int(nameLen), int(valueLen), int(prefixLen)
	if f.HasPrefix {
		f.Prefix = append([]byte(nil), prefix...)
	}
	*ev = capture.Event{Time: time.Unix(0, t), PID: pid, TID: tid, Field: f}
	return nil
}

func parseTrailer(body []byte) (Trailer, error) {
	d := dec{b: body}
	var t Trailer
	flags := d.byte1()
	end := d.varint()
	t.Events = d.uvarint()
	t.Stats.Events = d.uvarint()
	t.Stats.Bytes = d.uvarint()
	t.Stats.LostEvents = d.uvarint()
	t.Stats.LostBytes = d.uvarint()
	t.Stats.Faults = d.uvarint()
	if d.err != nil {
		return t, errors.New("trailer cut short")
	}
	// The shed part of the lost bytes came later: a recording made
	// before it ends here, and its loss is reported as plain loss.
	if len(d.b) > 0 {
		t.Stats.ShedBytes = d.uvarint()
		if d.err != nil {
			return t, errors.New("trailer cut short")
		}
		if t.Stats.ShedBytes > t.Stats.LostBytes {
			return t, fmt.Errorf("trailer counts %d bytes shed of %d lost", t.Stats.ShedBytes, t.Stats.LostBytes)
		}
	}
	t.StatsKnown = flags&1 != 0
	t.End = time.Unix(0, end)
	return t, nil
}
