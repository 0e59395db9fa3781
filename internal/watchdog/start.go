package watchdog

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Name is the watchdog's file name, beside the tracer's executable.
const Name = "containerdsnoop-watchdog"

// Options tell Start about the tracer's ring buffer.
type Options struct {
	RingFD   int // the BPF ring buffer map
	RingSize int // its data bytes: a quarter of it unread raises the tracer
	// Path of the watchdog; empty: Name beside os.Executable().
	Path string
}

// Watchdog is a running containerdsnoop-watchdog.
type Watchdog struct {
	cmd       *exec.Cmd
	status    *os.File
	start     sched
	raises    atomic.Uint64
	closing   atomic.Bool
	done      chan struct{}
	stderr    *capped
	closeOnce sync.Once
	// Lost is called once if the watchdog ends while the tracer still
	// runs (the tracer is then set back to its starting scheduling).
	lost func(error)
}

// ErrNotYielding is wrapped by Start's errors that say why the tracer
// keeps its priority (no watchdog installed beside it or not a trusted
// one, no CAP_SYS_NICE, a priority the tracer was started with) rather
// than that something broke.
var ErrNotYielding = errors.New("the tracer keeps its priority")

// Start runs the watchdog beside the tracer and returns once it has set
// every tracer thread to SCHED_IDLE. The tracer must be at the scheduling
// it was started with (not yet lowered); the watchdog inherits it, so it
// runs at that priority. lost is called (once, from another goroutine) if
// the watchdog ends before Close: every tracer thread is back at its
// starting scheduling by then.
func Start(o Options, lost func(error)) (*Watchdog, error) {
	attr, err := unix.SchedGetAttr(0, 0)
	if err != nil {
		return nil, fmt.Errorf("%w: read its scheduling: %v", ErrNotYielding, err)
	}
	start := sched{policy: attr.Policy, nice: int(attr.Nice)}
	if start.nice < 0 || (start.policy != unix.SCHED_NORMAL && start.policy != unix.SCHED_BATCH) {
		// Started under nice(1) or chrt(1) with a priority of its own:
		// the operator chose it.
		return nil, fmt.Errorf("%w: started at %v", ErrNotYielding, start)
	}
	if o.RingSize <= 0 {
		return nil, errors.New("watchdog: no ring buffer size")
	}
	path := o.Path
	if path == "" {
		exe, err := os.Executable()
		if err != nil {
			return nil, fmt.Errorf("%w: %v", ErrNotYielding, err)
		}
		path = filepath.Join(filepath.Dir(exe), Name)
	}
	if err := trusted(path); err != nil {
		return nil, err
	}
	ring, err := dupFile(o.RingFD, "ring")
	if err != nil {
		return nil, err
	}
	defer ring.Close()
	statusR, statusW, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("watchdog: %w", err)
	}
	defer statusW.Close()
	c := config{
		pid:      os.Getpid(),
		start:    start,
		mark:     uint64(o.RingSize / 4),
		interval: 5 * time.Millisecond,
	}
	w := &Watchdog{
		status: statusR,
		start:  start,
		done:   make(chan struct{}),
		stderr: &capped{max: 512},
		lost:   lost,
	}
	w.cmd = exec.Command(path, c.args()...)
	w.cmd.Args[0] = Name
	w.cmd.ExtraFiles = []*os.File{ring, statusW} // fds 3 and 4
	w.cmd.Stderr = w.stderr
	w.cmd.Env = []string{"GOGC=50", "GOMAXPROCS=1"} // a loop with no garbage
	// A process group of its own: the terminal's ^C is for the tracer,
	// which drains its ring and stops the watchdog itself.
	w.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := w.cmd.Start(); err != nil {
		statusR.Close()
		return nil, fmt.Errorf("watchdog: %w", err)
	}
	statusW.Close()
	if err := w.waitReady(10 * time.Second); err != nil {
		w.cmd.Process.Kill()
		w.cmd.Wait()
		statusR.Close()
		// It may have lowered some threads before failing.
		setThreads(os.Getpid(), start)
		return nil, fmt.Errorf("%w: %s: %v%s", ErrNotYielding, Name, err, w.stderr.line())
	}
	go w.follow()
	return w, nil
}

// waitReady waits for the watchdog's first status byte.
func (w *Watchdog) waitReady(limit time.Duration) error {
	w.status.SetReadDeadline(time.Now().Add(limit))
	defer w.status.SetReadDeadline(time.Time{})
	var b [1]byte
	if _, err := io.ReadFull(w.status, b[:]); err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return errors.New("exited before it was ready")
		}
		return err
	}
	if b[0] != msgReady {
		return fmt.Errorf("unexpected status %q", b[0])
	}
	return nil
}

// follow counts the watchdog's changes until its pipe closes.
func (w *Watchdog) follow() {
	defer close(w.done)
	buf := make([]byte, 64)
	for {
		n, err := w.status.Read(buf)
		for _, b := range buf[:n] {
			switch b {
			case msgRaised:
				w.raises.Add(1)
			}
		}
		if err != nil {
			break
		}
	}
	werr := w.cmd.Wait()
	w.status.Close()
	if w.closing.Load() {
		return
	}
	// Gone while the tracer runs (killed, say): the tracer takes its
	// priority back rather than stay idle unwatched.
	err := setThreads(os.Getpid(), w.start)
	if w.lost != nil {
		if werr == nil {
			werr = errors.New("exited")
		}
		msg := fmt.Errorf("%s: %v%s; the tracer is back at %v", Name, werr, w.stderr.line(), w.start)
		if err != nil {
			msg = fmt.Errorf("%w (some threads not: %v)", msg, err)
		}
		w.lost(msg)
	}
}

// Raises is how many times the watchdog raised the tracer.
func (w *Watchdog) Raises() uint64 { return w.raises.Load() }

// Raised is the scheduling the watchdog raises the tracer to, its
// starting one, as text ("SCHED_BATCH at nice 0").
func (w *Watchdog) Raised() string { return w.start.String() }

// Pid is the watchdog's process id.
func (w *Watchdog) Pid() int { return w.cmd.Process.Pid }

// Close stops the watchdog and waits for it. The tracer's threads keep
// the scheduling they have: it is exiting.
func (w *Watchdog) Close() {
	w.closeOnce.Do(func() {
		w.closing.Store(true)
		w.cmd.Process.Kill()
		<-w.done
	})
}

// trusted refuses a watchdog that anyone but root or this process's user
// could have replaced: the tracer runs as root and executes it.
func trusted(path string) error {
	for _, p := range []string{filepath.Dir(path), path} {
		fi, err := os.Lstat(p)
		if errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("%w: no %s beside the executable (%s)", ErrNotYielding, Name, path)
		}
		if err != nil {
			return fmt.Errorf("%w: %v", ErrNotYielding, err)
		}
		st, ok := fi.Sys().(*syscall.Stat_t)
		switch {
		case !ok:
			return fmt.Errorf("%w: %s: no owner", ErrNotYielding, p)
		case p == path && !fi.Mode().IsRegular():
			return fmt.Errorf("%w: %s is not a regular file", ErrNotYielding, p)
		case st.Uid != 0 && int(st.Uid) != os.Geteuid():
			return fmt.Errorf("%w: %s is owned by uid %d, not root", ErrNotYielding, p, st.Uid)
		case fi.Mode().Perm()&0o022 != 0:
			return fmt.Errorf("%w: %s is writable by group or others (%v)", ErrNotYielding, p, fi.Mode().Perm())
		}
	}
	return nil
}

// dupFile duplicates fd as an *os.File (close-on-exec here; exec.Cmd
// gives the child its own copy).
func dupFile(fd int, name string) (*os.File, error) {
	dup, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("watchdog: duplicate the %s fd: %w", name, err)
	}
	return os.NewFile(uintptr(dup), name), nil
}

// capped keeps the first max bytes written to it: the watchdog's error.
type capped struct {
	mu  sync.Mutex
	buf bytes.Buffer
	max int
}

func (c *capped) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if room := c.max - c.buf.Len(); room > 0 {
		c.buf.Write(p[:min(len(p), room)])
	}
	return len(p), nil
}

// line is the watchdog's message, if any, as ": message".
func (c *capped) line() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := strings.TrimSpace(c.buf.String())
	if s == "" {
		return ""
	}
	return ": " + s
}
