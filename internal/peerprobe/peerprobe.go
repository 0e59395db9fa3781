// Package peerprobe decides which processes get a peer probe, a uprobe on
// hpack.(*Encoder).WriteField (see internal/peerfields for what it is for),
// and places it.
//
// The processes are those whose connections were open before the tracer
// started (kubelet, dockerd as clients; containerd as server): at startup
// the ones connected to runtime sockets (Connected), later any process that
// sends a header block referring to a table entry from before the attach.
// A connection opened after the tracer is decoded from its start and never
// needs a probe, so short-lived clients (crictl, ctr) and load generators
// are not probed and pay nothing. A uprobe belongs to an executable
// file, not a process: each binary (by device and inode) is examined and
// probed once, whatever number of processes run it, up to a limit.
//
// The functions are found through the Go function table (internal/gofunc),
// which stripped binaries keep: every copy of the encoder, x/net's and
// vendored ones. A binary is not probed when it is not Go, links no hpack
// encoder, or was built with a Go older than the register calling
// convention (1.17 on amd64, 1.18 on arm64), whose arguments the BPF program
// does not read; each such decision is said once through Logf.
package peerprobe

import (
	"debug/elf"
	"errors"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"

	"github.com/containerdsnoop/containerdsnoop/internal/gofunc"
)

// DefaultMaxBinaries bounds the executables probed: a node runs a handful
// of gRPC clients of containerd.
const DefaultMaxBinaries = 32

// maxFuncs bounds the encoder copies probed in one binary.
const maxFuncs = 8

// maxExamined bounds the executables read at all: any local process can
// make itself examined by sending a header block, and reading a binary's
// function table costs tens of megabytes and a fraction of a second.
const maxExamined = 256

// IsWriteField reports whether a Go function name is an hpack encoder's
// WriteField: x/net's, a module's vendored copy, or the standard library's.
func IsWriteField(name string) bool {
	const fn = "golang.org/x/net/http2/hpack.(*Encoder).WriteField"
	return name == fn || name == "vendor/"+fn || strings.HasSuffix(name, "/vendor/"+fn)
}

// Attacher places a probe at a file offset of an executable
// (bpf.Tracer.AttachPeerProbe).
type Attacher interface {
	AttachPeerProbe(path string, off uint64) error
}

// Manager examines processes in the background and probes their binaries.
type Manager struct {
	a     Attacher
	logf  func(format string, args ...any)
	limit int
	queue chan uint32
	done  chan struct{}
	wg    sync.WaitGroup

	mu       sync.Mutex
	binaries map[fileID]string // what was decided for each executable
	probed   int
}

type fileID struct{ dev, ino uint64 }

// New starts a Manager. logf may be nil; limit <= 0 means
// DefaultMaxBinaries.
func New(a Attacher, logf func(format string, args ...any), limit int) *Manager {
	if logf == nil {
		logf = func(string, ...any) {}
	}
	if limit <= 0 {
		limit = DefaultMaxBinaries
	}
	m := &Manager{a: a, logf: logf, limit: limit, queue: make(chan uint32, 256), done: make(chan struct{}), binaries: map[fileID]string{}}
	m.wg.Add(1)
	go m.run()
	return m
}

// Probe asks for pid's executable to be examined. It never blocks: when the
// queue is full the pid is dropped (and asked about again only if the
// caller asks again).
func (m *Manager) Probe(pid uint32) {
	select {
	case m.queue <- pid:
	default:
	}
}

// Close stops examining; probes already placed stay until the tracer closes.
func (m *Manager) Close() {
	select {
	case <-m.done:
	default:
		close(m.done)
	}
	m.wg.Wait()
}

// Probed is the number of executables probed.
func (m *Manager) Probed() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.probed
}

func (m *Manager) run() {
	defer m.wg.Done()
	for {
		select {
		case <-m.done:
			return
		case pid := <-m.queue:
			m.examine(pid)
		}
	}
}

// Examine decides about one process now, and returns what was decided (for
// tests and Logf).
func (m *Manager) Examine(pid uint32) string { return m.examine(pid) }

func (m *Manager) examine(pid uint32) (verdict string) {
	exe := "/proc/" + strconv.FormatUint(uint64(pid), 10) + "/exe"
	comm := readComm(pid)
	defer func() {
		// The file is any executable on the machine, possibly crafted.
		if r := recover(); r != nil {
			verdict = fmt.Sprintf("not probed: reading its executable failed: %v", r)
			m.logf("peer probe: pid %d (%s): %s", pid, comm, verdict)
		}
	}()
	var st syscall.Stat_t
	if err := syscall.Stat(exe, &st); err != nil {
		return "not probed: " + err.Error()
	}
	id := fileID{uint64(st.Dev), st.Ino}
	m.mu.Lock()
	if v, ok := m.binaries[id]; ok {
		m.mu.Unlock()
		return v
	}
	if m.probed >= m.limit || len(m.binaries) >= maxExamined {
		v := fmt.Sprintf("not probed: already %d binaries probed and %d examined (the limits are %d and %d)", m.probed, len(m.binaries), m.limit, maxExamined)
		m.mu.Unlock()
		m.logf("peer probe: pid %d (%s): %s", pid, comm, v)
		return v
	}
	// Examine (startup) and the background worker may meet the same
	// binary: the first one decides.
	m.binaries[id] = "being examined"
	m.mu.Unlock()

	v, ok := m.probe(exe)
	m.mu.Lock()
	m.binaries[id] = v
	if ok {
		m.probed++
	}
	m.mu.Unlock()
	m.logf("peer probe: pid %d (%s): %s", pid, comm, v)
	return v
}

// probe examines and probes one executable.
func (m *Manager) probe(exe string) (string, bool) {
	b, err := gofunc.Find(exe, IsWriteField, maxFuncs)
	switch {
	case errors.Is(err, gofunc.ErrNotGo):
		return "not probed: not a Go program", false
	case err != nil:
		return "not probed: " + err.Error(), false
	case len(b.Funcs) == 0:
		return fmt.Sprintf("not probed: Go program (%s) without an HPACK encoder", version(b)), false
	}
	if want := archOf(runtime.GOARCH); b.Arch != want {
		return fmt.Sprintf("not probed: built for %v, the tracer runs on %v", b.Arch, want), false
	}
	regs, known := gofunc.RegisterABI(b.GoVersion, b.Arch)
	switch {
	case !known:
		return fmt.Sprintf("not probed: unknown Go version %q, calling convention unknown", b.GoVersion), false
	case !regs:
		return fmt.Sprintf("not probed: built with %s, whose stack-based calling convention the probe does not read", b.GoVersion), false
	}
	n := 0
	var errs []string
	for _, f := range b.Funcs {
		if !f.Prologue {
			// Never probe an address that may not start an
			// instruction: the process would crash.
			errs = append(errs, fmt.Sprintf("%s at %#x does not start like a Go function", f.Name, f.Entry))
			continue
		}
		if err := m.a.AttachPeerProbe(exe, f.Offset); err != nil {
			errs = append(errs, err.Error())
			continue
		}
		n++
	}
	if n == 0 {
		return "not probed: " + strings.Join(errs, "; "), false
	}
	return fmt.Sprintf("probed %d HPACK encoder(s) (%s)", n, version(b)), true
}

func version(b *gofunc.Binary) string {
	if b.GoVersion == "" {
		return "Go version unknown"
	}
	return b.GoVersion
}

func archOf(goarch string) elf.Machine {
	switch goarch {
	case "amd64":
		return elf.EM_X86_64
	case "arm64":
		return elf.EM_AARCH64
	}
	return elf.EM_NONE
}

func readComm(pid uint32) string {
	b, _ := os.ReadFile("/proc/" + strconv.FormatUint(uint64(pid), 10) + "/comm")
	return strconv.QuoteToASCII(strings.TrimSpace(string(b)))
}
