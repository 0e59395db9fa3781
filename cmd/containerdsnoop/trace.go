package main

import (
	"errors"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/containerdsnoop/containerdsnoop/internal/bpf"
	"github.com/containerdsnoop/containerdsnoop/internal/capture"
	"github.com/containerdsnoop/containerdsnoop/internal/output"
	"github.com/containerdsnoop/containerdsnoop/internal/pipeline"
)

type traceFlags struct {
	pids        []uint
	socket      string
	output      string
	full        bool
	attach      string
	ringBufSize int
	verbose     bool
}

func newTraceCommand() *cobra.Command {
	var f traceFlags
	cmd := &cobra.Command{
		Use:   "trace",
		Short: "Trace gRPC calls on unix sockets until interrupted",
		Long: `Trace gRPC calls on unix sockets (containerd, CRI) until Ctrl-C or SIGTERM.

The tracer can be started at any time: connections opened afterwards (crictl,
ctr, nerdctl) are decoded from their first byte.`,
		Example: `  # everything, as a table
  sudo containerdsnoop trace

  # only calls made or served by kubelet, as JSON lines
  sudo containerdsnoop trace --pid $(pidof kubelet) --output json | jq .

  # only containerd's socket
  sudo containerdsnoop trace --socket /run/containerd/containerd.sock`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return runTrace(cmd, f) },
	}
	fl := cmd.Flags()
	fl.UintSliceVar(&f.pids, "pid", nil, "only connections whose sender or peer is this process (repeatable)")
	fl.StringVar(&f.socket, "socket", "", "only connections on this socket path (as bound; symlinks resolved; @name for abstract)")
	fl.StringVarP(&f.output, "output", "o", "table", "output format: table or json")
	fl.BoolVar(&f.full, "full", false, "do not cut table messages to the terminal width")
	fl.StringVar(&f.attach, "attach", "auto", "capture backend: auto or "+strings.Join(bpf.Backends(), ", "))
	fl.IntVar(&f.ringBufSize, "ringbuf-size", bpf.DefaultRingBufSize, "bytes of kernel ring buffer between the capture and this process")
	fl.BoolVarP(&f.verbose, "verbose", "v", false, "explain decisions (backend selection) on stderr")
	return cmd
}

func runTrace(cmd *cobra.Command, f traceFlags) error {
	stderr := cmd.ErrOrStderr()
	width := 0
	if !f.full {
		width = terminalWidth(int(os.Stdout.Fd()))
	}
	out, err := output.New(f.output, cmd.OutOrStdout(), output.Options{Width: width})
	if err != nil {
		return err
	}
	opts := bpf.Options{Attach: f.attach, RingBufSize: f.ringBufSize}
	for _, pid := range f.pids {
		if pid == 0 || pid > 1<<22 {
			return fmt.Errorf("invalid --pid %d", pid)
		}
		opts.PIDs = append(opts.PIDs, uint32(pid))
	}
	if f.verbose {
		opts.Logf = func(format string, args ...any) { fmt.Fprintf(stderr, "containerdsnoop: "+format+"\n", args...) }
	}
	tracer, err := bpf.Open(opts)
	if err != nil {
		return err
	}
	defer tracer.Close()

	p := pipeline.New(out, pipeline.Filter{Socket: f.socket})
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, os.Interrupt, syscall.SIGTERM)
	defer signal.Stop(stop)
	go func() {
		<-stop
		tracer.Close()
	}()
	loss := startLossWatch(tracer, stderr)
	defer loss.stop()

	// Tests and scripts wait for this line before driving traffic.
	fmt.Fprintf(stderr, "containerdsnoop: tracing gRPC on unix sockets (backend %s); Ctrl-C to stop\n", tracer.Backend())

	var ev capture.Event
	for {
		err := tracer.Read(&ev)
		if errors.Is(err, bpf.ErrClosed) {
			break
		}
		if err != nil {
			return err
		}
		p.Feed(&ev)
		if err := p.Err(); err != nil {
			return fmt.Errorf("write output: %w", err)
		}
		if tracer.Pending() == 0 {
			// Caught up: show what was decoded now rather than when the
			// buffer fills.
			if err := p.Flush(); err != nil {
				return fmt.Errorf("write output: %w", err)
			}
		}
	}
	if err := p.Close(); err != nil {
		return fmt.Errorf("write output: %w", err)
	}
	loss.stop()
	return nil
}

// lossWatch prints a line when the capture starts losing data and a total
// on exit: numbers the user needs to trust what is not shown.
type lossWatch struct {
	done    chan struct{}
	stopped chan struct{}
}

func startLossWatch(t *bpf.Tracer, w interface{ Write([]byte) (int, error) }) *lossWatch {
	l := &lossWatch{done: make(chan struct{}), stopped: make(chan struct{})}
	go func() {
		defer close(l.stopped)
		var last capture.Stats
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		report := func(final bool) {
			s, err := t.Stats()
			if err != nil {
				return
			}
			if final {
				if s.Lost() {
					fmt.Fprintf(w, "containerdsnoop: lost %d events (%d bytes) and %d unreadable chunks in total; calls in them are not shown\n", s.LostEvents, s.LostBytes, s.Faults)
				}
				return
			}
			if s.LostEvents > last.LostEvents || s.LostBytes > last.LostBytes || s.Faults > last.Faults {
				fmt.Fprintf(w, "containerdsnoop: warning: capture lost %d events (%d bytes) in the last second; raise --ringbuf-size or filter with --pid/--socket\n",
					s.LostEvents-last.LostEvents, s.LostBytes-last.LostBytes)
			}
			last = s
		}
		for {
			select {
			case <-tick.C:
				report(false)
			case <-l.done:
				report(true)
				return
			}
		}
	}()
	return l
}

func (l *lossWatch) stop() {
	select {
	case <-l.done:
	default:
		close(l.done)
	}
	<-l.stopped
}

func terminalWidth(fd int) int {
	ws, err := unix.IoctlGetWinsize(fd, unix.TIOCGWINSZ)
	if err != nil || ws.Col == 0 {
		return 0
	}
	return int(ws.Col)
}
