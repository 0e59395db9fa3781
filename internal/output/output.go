// Package output renders decoded calls as a table or as JSON lines. It
// knows nothing of capture or BPF: it takes call.Records.
package output

import (
	"bufio"
	"fmt"
	"io"

	"github.com/containerdsnoop/containerdsnoop/internal/call"
)

// Writer renders records.
type Writer interface {
	Write(r *call.Record) error
	// Flush writes what is buffered.
	Flush() error
	// Release writes what is buffered and lets go of the buffer, for a
	// capture at rest; the next line takes a new one.
	Release() error
}

// Options shape the rendering.
type Options struct {
	// Width cuts table messages to fit; 0 means no cut.
	Width int
}

// New returns a Writer for format "table" or "json".
func New(format string, w io.Writer, opts Options) (Writer, error) {
	switch format {
	case "table":
		return newTable(w, opts), nil
	case "json":
		return newJSON(w), nil
	}
	return nil, fmt.Errorf("unknown output format %q: want table or json", format)
}

// bufferBytes is the buffer lines are written from: a write(2) when it is
// full, and at each flush (trace flushes at least every poll interval, so
// a line still shows within ~100 ms). It was 64 KiB: at 5,000 calls/s of
// JSON (17 MB/s) that was ~270 writes a second, and a system call made
// after the process was idle wakes the Go runtime's monitor thread
// (sysmon) into polling every 20 µs for a millisecond or more. With 1 MiB
// the monitor woke half as often and the tracer took ~5 % less CPU
// (docs/performance.md, "Fewer writes"). A tracer at rest does not keep
// it (Release).
const bufferBytes = 1 << 20

// lineBuffer is a writer's buffer in front of its destination, taken at
// the first line and let go of by Release.
type lineBuffer struct {
	dst io.Writer
	bw  *bufio.Writer
}

func (l *lineBuffer) buffer() *bufio.Writer {
	if l.bw == nil {
		l.bw = bufio.NewWriterSize(l.dst, bufferBytes)
	}
	return l.bw
}

func (l *lineBuffer) Flush() error {
	if l.bw == nil {
		return nil
	}
	return l.bw.Flush()
}

func (l *lineBuffer) Release() error {
	err := l.Flush()
	if err == nil {
		l.bw = nil
	}
	return err
}

// keepLine is what a writer keeps of the buffer it built a line in: reused
// for the next line, unless one huge message grew it past 64 KiB, which
// must not stay pinned for the rest of the capture.
func keepLine(b []byte) []byte {
	if cap(b) > 64<<10 {
		return nil
	}
	return b[:0]
}
