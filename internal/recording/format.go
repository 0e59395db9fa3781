// Package recording writes and reads containerdsnoop recordings: the raw
// capture events of a trace, as the ring buffer delivered them (before any
// filtering or decoding), so that `containerdsnoop decode` can replay them
// through the same pipeline later, on any machine, without root.
//
// # Format (version 1)
//
// docs/recording-format.md is the full description; in short:
//
//	file    := magic "\x89CDSNOOP" | version uint16 BE | hlen uint32 BE | header[hlen] (JSON)
//	           record* trailer-record
//	record  := type uint8 | blen uvarint | body[blen]
//
// Record types: 0x01 a string for the dictionary (comm and path are sent
// once and then referred to by index), 0x02 an event, 0x03 a dictionary
// reset, 0x04 the trailer (loss counters, written at Close; nothing may
// follow it). Types 0x80-0xff are optional: readers skip those they do not
// know. Integers in bodies are unsigned LEB128 varints unless said
// otherwise; the event's time is a zig-zag varint difference from the
// previous event's.
//
// A file without its trailer was not finished (the tracer was killed, the
// disk filled, the file was cut): Reader returns every complete event and
// then an error wrapping ErrTruncated.
//
// The reader's dec.uvarint and dec.varint look alike: they read the two
// varint kinds of encoding/binary, each with its own function. Create has
// the shape of pcapout.Create (an owner-only file around a writer, closed
// on error): three lines each, not worth a package of their own.
package recording

import (
	"errors"
	"fmt"
	"time"

	"github.com/containerdsnoop/containerdsnoop/internal/capture"
)

// Magic starts every recording. The first byte has the high bit set, so a
// transfer that strips it is noticed, and is not valid UTF-8, so the file
// is not mistaken for text.
const Magic = "\x89CDSNOOP"

// Version is the format version this package writes and reads.
const Version = 1

// Record types.
const (
	recString  = 0x01
	recEvent   = 0x02
	recReset   = 0x03
	recTrailer = 0x04
	// Types from recOptional up may be skipped by readers that do not
	// know them.
	recOptional = 0x80
	// recField is a peer probe's header field (capture.Event.Field):
	// optional, since a reader without it decodes as a trace without
	// peer probes.
	recField = 0x80
	// recSendTook is how long the send of the event record that follows
	// ran (capture.Event.SendTook), written only when known: optional,
	// since a reader without it measures a call from its request's end.
	recSendTook = 0x81
)

// Field flag bits, and the most of each string a field record may hold
// (what the probe reads).
const (
	fieldInserted   = 1 << 0
	fieldPrefix     = 1 << 1
	fieldSensitive  = 1 << 2
	fieldFault      = 1 << 3
	knownFieldFlags = fieldInserted | fieldPrefix | fieldSensitive | fieldFault

	maxFieldName   = 255
	maxFieldValue  = 1023
	maxFieldPrefix = 1023
)

// Event flag bits.
const (
	flagFault     = 1 << 0
	flagRestart   = 1 << 1
	flagBound     = 1 << 2
	flagClose     = 1 << 3
	flagUndecided = 1 << 4
	knownFlags    = flagFault | flagRestart | flagBound | flagClose | flagUndecided
)

// Limits: a reader refuses larger values, so that a corrupt length cannot
// make it allocate gigabytes.
const (
	// MaxHeader bounds the JSON header.
	MaxHeader = 1 << 20
	// MaxRecord bounds one record's body: an event's data is a chunk of
	// at most 16 KiB from the kernel, but events built elsewhere (tests,
	// other backends) may be larger.
	MaxRecord = 64 << 20
	// MaxString bounds a dictionary string (a comm is 16 bytes, a socket
	// path 108).
	MaxString = 4096
	// maxDict and maxDictBytes bound the dictionary (entries, including
	// the implicit "" at index 0, and bytes): the writer starts over with
	// a reset record before reaching either, and readers refuse more.
	maxDict      = 1 << 16
	maxDictBytes = 8 << 20
)

// Header describes the capture. It is JSON in the file; unknown keys are
// ignored, so later versions may add some without a version change.
type Header struct {
	// Tool is "containerdsnoop".
	Tool string `json:"tool"`
	// Version is the version of the tool that wrote the file.
	Version string `json:"version"`
	// Kernel is the release of the kernel traced (uname -r).
	Kernel string `json:"kernel"`
	// Backend is the capture backend, e.g. "tracepoint".
	Backend string `json:"backend"`
	// Start is when the recording started.
	Start time.Time `json:"start_time"`
	// Hostname is the traced machine's.
	Hostname string `json:"hostname"`
	// CommandLine is the tracer's argv.
	CommandLine []string `json:"command_line"`
	// KernelPIDs lists the --pid filter applied in the kernel: events of
	// other processes were never captured, so they are not in the file.
	KernelPIDs []uint32 `json:"kernel_pids,omitempty"`
}

// Trailer closes a finished recording.
type Trailer struct {
	// End is when the recording was closed.
	End time.Time
	// Events is how many event records the file holds.
	Events uint64
	// StatsKnown says whether Stats could be read from the capture.
	StatsKnown bool
	// Stats are the capture's counters at the end: what the kernel
	// submitted and what it lost (events the ring buffer had no room for
	// are in no recording).
	Stats capture.Stats
}

// ErrTruncated is wrapped by the errors for a file that ends early: in a
// record, in the header, or before the trailer.
var ErrTruncated = errors.New("truncated recording")

// ErrNotRecording is wrapped by the error for a file that does not start
// with Magic.
var ErrNotRecording = errors.New("not a containerdsnoop recording")

// ErrCorrupt is wrapped by the errors for a record that cannot be valid.
var ErrCorrupt = errors.New("corrupt recording")

// VersionError is returned for a recording of a version this build cannot
// read.
type VersionError struct{ Version uint16 }

func (e *VersionError) Error() string {
	return fmt.Sprintf("unsupported recording version %d (this build reads version %d)", e.Version, Version)
}

// Error is a problem at a place in the file.
type Error struct {
	// Offset is the position in the file of the record (or header) at
	// fault.
	Offset int64
	msg    string
	kind   error
}

func (e *Error) Error() string { return e.msg }

// Unwrap returns ErrTruncated, ErrNotRecording or ErrCorrupt.
func (e *Error) Unwrap() error { return e.kind }

func errorf(kind error, off int64, format string, args ...any) error {
	return &Error{Offset: off, kind: kind, msg: fmt.Sprintf(format, args...)}
}
