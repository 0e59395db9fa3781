// Package pipeline connects the stages: capture events → per-connection
// byte streams (stream) → HTTP/2 (h2) → gRPC calls (grpcdecode) → output.
// It is the same for a live trace and for a replayed recording.
package pipeline

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/containerdsnoop/containerdsnoop/internal/capture"
	"github.com/containerdsnoop/containerdsnoop/internal/grpcdecode"
	"github.com/containerdsnoop/containerdsnoop/internal/h2"
	"github.com/containerdsnoop/containerdsnoop/internal/output"
	"github.com/containerdsnoop/containerdsnoop/internal/stream"
)

// Filter selects what is shown.
type Filter struct {
	// Socket keeps connections whose bound path is this one, also when
	// it was given through a symlink (/var/run → /run) or as @abstract.
	Socket string
}

// Pipeline decodes events and writes records. Not safe for concurrent use.
type Pipeline struct {
	out        output.Writer
	asm        *stream.Assembler
	socket     string
	socketOK   map[string]bool
	comms      map[uint32]string
	lastExpiry time.Time
	err        error
	// Records counts what was written.
	Records uint64
}

// IdleTimeout is how long a silent connection is kept. Its HTTP/2 state
// (header tables) is what makes later calls decodable, so it is generous.
const IdleTimeout = 15 * time.Minute

// New returns a Pipeline writing to out.
func New(out output.Writer, f Filter) *Pipeline {
	p := &Pipeline{out: out, socketOK: map[string]bool{}, comms: map[uint32]string{}}
	if f.Socket != "" {
		p.socket = canonicalPath(f.Socket)
	}
	grpc := grpcdecode.New(p.write)
	p.asm = stream.New(h2.NewDecoder(grpc))
	return p
}

// Feed takes the next capture event.
func (p *Pipeline) Feed(ev *capture.Event) {
	if p.socket != "" && !p.socketMatches(ev.Path) {
		return
	}
	p.asm.Feed(ev)
	if ev.Time.Sub(p.lastExpiry) > time.Minute {
		p.lastExpiry = ev.Time
		p.asm.Expire(ev.Time.Add(-IdleTimeout))
	}
}

// Err is the first error writing output.
func (p *Pipeline) Err() error { return p.err }

// Close flushes the output.
func (p *Pipeline) Close() error {
	p.asm.Close()
	if err := p.out.Flush(); err != nil && p.err == nil {
		p.err = err
	}
	return p.err
}

// Flush writes buffered output, e.g. when the capture is idle.
func (p *Pipeline) Flush() error { return p.out.Flush() }

func (p *Pipeline) write(r *grpcdecode.Record) {
	if r.PeerComm == "" && r.PeerPID != 0 {
		r.PeerComm = p.comm(r.PeerPID)
	}
	p.Records++
	if err := p.out.Write(r); err != nil && p.err == nil {
		p.err = err
	}
}

// comm names a process that has not sent anything yet, from /proc.
func (p *Pipeline) comm(pid uint32) string {
	if c, ok := p.comms[pid]; ok {
		return c
	}
	b, _ := os.ReadFile("/proc/" + strconv.FormatUint(uint64(pid), 10) + "/comm")
	c := strings.TrimSpace(string(b))
	if len(p.comms) > 4096 {
		clear(p.comms)
	}
	p.comms[pid] = c
	return c
}

func (p *Pipeline) socketMatches(path string) bool {
	ok, seen := p.socketOK[path]
	if !seen {
		ok = path != "" && canonicalPath(path) == p.socket
		p.socketOK[path] = ok
	}
	return ok
}

// canonicalPath resolves symlinks in the directory part, so /var/run/x and
// /run/x compare equal; abstract names are kept as they are.
func canonicalPath(path string) string {
	if strings.HasPrefix(path, "@") {
		return path
	}
	dir, base := filepath.Split(filepath.Clean(path))
	if real, err := filepath.EvalSymlinks(dir); err == nil {
		return filepath.Join(real, base)
	}
	return filepath.Clean(path)
}
