package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log"
	"math"
	"os"
	"os/exec"
	"os/signal"
	"runtime/debug"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/containerdsnoop/containerdsnoop/internal/bpf"
	"github.com/containerdsnoop/containerdsnoop/internal/budget"
	"github.com/containerdsnoop/containerdsnoop/internal/capture"
	"github.com/containerdsnoop/containerdsnoop/internal/grpcdecode"
	"github.com/containerdsnoop/containerdsnoop/internal/metrics"
	"github.com/containerdsnoop/containerdsnoop/internal/pipeline"
	"github.com/containerdsnoop/containerdsnoop/internal/pods"
	"github.com/containerdsnoop/containerdsnoop/internal/spans"
	"github.com/containerdsnoop/containerdsnoop/internal/termsafe"
	"github.com/containerdsnoop/containerdsnoop/internal/watchdog"
)

type traceFlags struct {
	viewFlags   // filters, output, --pcap, --summary (view.go)
	record      string
	attach      string
	ringBufSize int
	memBudget   string
	// memBudgetBytes is memBudget parsed (by check).
	memBudgetBytes int64
	verbose        bool
	peerProbes     bool
	metricsAddr    string
	otlp           string
	otlpMsgs       bool
	listPods       bool
	yieldCPU       bool
}

func newTraceCommand() *cobra.Command {
	var f traceFlags
	cmd := &cobra.Command{
		Use:   "trace [flags] [-- COMMAND [ARGS...]]",
		Short: "Trace gRPC and ttrpc calls on unix sockets until interrupted, or for one command",
		Long: `Trace gRPC (containerd, CRI) and ttrpc (containerd's shims) calls on unix
sockets until Ctrl-C or SIGTERM.

The tracer can be started at any time: connections opened afterwards (crictl,
ctr, nerdctl) are decoded from their first byte; connections already open
(kubelet's) are decoded from the next call whose headers can be proved. To
prove them, the Go processes at either end get a uprobe on their HTTP/2
header encoder (peer probes; --peer-probes=false turns them off, -v says
which processes were probed).

With -- COMMAND, it starts the command, shows only the calls its process tree
makes and receives (children are followed from fork, in the kernel), stops
when it exits and exits with its exit code. The command's standard output
goes to the terminal with the trace, or, when the trace's standard output
is not a terminal (a pipe, a file: --output json | jq), to standard error,
so that the trace stays parseable.

Credentials in messages (registry passwords and tokens) are shown as
"[redacted]" unless --show-secrets.

A --pid that does not exist is an error (the number could only match an
unrelated process that reuses it later); a --socket path that does not exist
yet is a warning, since a tracer started at boot or as a DaemonSet may start
before containerd creates its socket.`,
		Example: `  # everything, as a table
  sudo containerdsnoop trace

  # what does crictl send?
  sudo containerdsnoop trace -- crictl ps

  # only calls made or served by kubelet, as JSON lines
  sudo containerdsnoop trace --pid $(pidof kubelet) --output json | jq .

  # failed or slow calls on containerd's socket, with their requests
  sudo containerdsnoop trace --socket /run/containerd/containerd.sock --errors
  sudo containerdsnoop trace --slow 500ms

  # who keeps calling ListContainers? counts per method on exit
  sudo containerdsnoop trace --method ListContainers --summary`,
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) > 0 && cmd.ArgsLenAtDash() != 0 {
				return fmt.Errorf("unexpected argument %q: to trace a command, put it after --, e.g. 'containerdsnoop trace -- crictl ps'", args[0])
			}
			return runTrace(cmd, f, args)
		},
	}
	fl := cmd.Flags()
	f.viewFlags.register(cmd)
	fl.StringVar(&f.record, "record", "", "also write every captured event to this file, for 'containerdsnoop decode' (raw payloads)")
	fl.StringVar(&f.attach, "attach", "auto", "capture backend: auto or "+strings.Join(bpf.Backends(), ", "))
	fl.IntVar(&f.ringBufSize, "ringbuf-size", bpf.DefaultRingBufSize, "bytes of kernel ring buffer between the capture and this process: a power of two from 4 KiB to 1 GiB")
	fl.StringVar(&f.memBudget, "memory-budget", fmt.Sprintf("%dMi", budget.DefaultMemory>>20), "memory this process aims to stay within, besides the kernel ring buffer (e.g. 160Mi, 1Gi; at least 64Mi): the Go runtime's soft limit; the decoders' own limits keep hostile input under it (docs/security.md)")
	fl.BoolVar(&f.yieldCPU, "yield-cpu", false, "run under SCHED_IDLE, given the starting priority back by "+watchdog.Name+" (beside the binary; needs CAP_SYS_NICE) whenever a quarter of the ring buffer is unread: the traced processes in the tracer's cgroup get the CPU first, and no call is lost on a saturated node")
	fl.BoolVarP(&f.verbose, "verbose", "v", false, "explain decisions (backend selection, peer probes) on stderr")
	fl.BoolVar(&f.peerProbes, "peer-probes", true, "read HTTP/2 header fields from the Go processes at either end (uprobes), so connections open before the tracer decode fully; see docs/attach.md")
	fl.StringVar(&f.metricsAddr, "metrics-addr", "", "serve Prometheus metrics of the calls shown at http://ADDR/metrics, e.g. :9520 (off by default)")
	fl.StringVar(&f.otlp, "otlp-endpoint", "", "export each call as an OpenTelemetry span over OTLP/HTTP to this collector, e.g. http://otel-collector:4318 (OTEL_EXPORTER_OTLP_* variables honoured)")
	fl.BoolVar(&f.otlpMsgs, "otlp-messages", false, "with --otlp-endpoint, attach each call's messages (redacted) to its span")
	fl.BoolVar(&f.listPods, "list-pods", false, "at start, ask the CRI runtime on --socket once, read-only, for its pods (ListPodSandbox, ListContainers), to name calls about pods from before the tracer (other tracers see these two calls)")
	return cmd
}

func runTrace(cmd *cobra.Command, f traceFlags, command []string) error {
	stderr := cmd.ErrOrStderr()
	if f.otlpMsgs && f.otlp == "" {
		return errors.New("--otlp-messages needs --otlp-endpoint")
	}
	if f.listPods && f.socket == "" {
		return errors.New("--list-pods needs --socket, the CRI socket to ask")
	}
	filter, err := f.filter()
	if err != nil {
		return err
	}
	if err := f.check(stderr); err != nil {
		return err
	}
	out, err := f.newOutput(cmd)
	if err != nil {
		return err
	}
	// --socket is decided in the kernel too, so other unix traffic is never
	// copied; the pipeline still checks each event's path.
	opts := bpf.Options{Attach: f.attach, RingBufSize: f.ringBufSize, PIDs: filter.PIDs, Socket: filter.Socket, PollInterval: pollInterval, PeerProbes: f.peerProbes,
		SpoolBytes: spoolShare(f.memBudgetBytes)}
	if len(command) > 0 {
		// Fail before attaching anything when the command cannot run.
		if _, err := exec.LookPath(command[0]); err != nil {
			return fmt.Errorf("cannot run %s: %w", command[0], err)
		}
		// This process is the root of the followed tree: what it forks
		// (the command) joins the filter in the kernel before it runs.
		// Its own sends are never traced.
		opts.PIDs = append(opts.PIDs, uint32(os.Getpid()))
		opts.FollowChildren = true
		filter.PIDs = nil // the kernel filter is exact; the tree grows there
	}
	if f.verbose {
		opts.Logf = func(format string, args ...any) {
			fmt.Fprintln(stderr, "containerdsnoop: "+termsafe.Escape(fmt.Sprintf(format, args...)))
		}
	}
	// Before attaching: containerd's answers to this process would
	// otherwise be traced, as calls whose requests were never seen.
	var known podList
	if f.listPods {
		known = listPods(f.socket, opts.Logf)
	}
	started := batchScheduling() // before Open and the watchdog: what they start inherits it
	tracer, err := bpf.Open(opts)
	if err != nil {
		return err
	}
	defer tracer.Close()
	wd := startWatchdog(f.yieldCPU, tracer, stderr, opts.Logf)
	if wd != nil {
		defer wd.Close() // first: the tracer's ring goes with tracer.Close
	}

	p := pipeline.New(out, filter)
	p.CommOf = procComms()
	p.SweepDead = pipeline.InitPIDNamespace()
	p.Pods().Learn(known.sandboxes, known.containers)
	var exp *spans.Exporter
	if f.otlp != "" {
		exp, err = spans.New(context.Background(), spans.Options{Endpoint: f.otlp, Messages: f.otlpMsgs, Version: version, Stderr: stderr})
		if err != nil {
			return err
		}
		// Spans still queued get a few seconds at exit, never more.
		defer exp.Close(5 * time.Second)
		p.AddRecordSink(exp)
	}
	if f.metricsAddr != "" {
		m := metrics.New(version)
		m.CaptureStats(tracer.Stats)
		for _, c := range budget.All() {
			m.AddDropCounter(c.Reason(), c.Load)
		}
		if wd != nil {
			m.AddCounterFunc("watchdog_raises", "Times the watchdog raised the yielding tracer to its starting priority: a quarter of its ring buffer was unread.", wd.Raises)
		}
		m.AddCounterFunc("inferred_wrong", "Inferred methods or statuses that a later fact contradicted (docs/attach.md).", grpcdecode.InferredWrong)
		p.AddRecordSink(m)
		p.AddSink(m)
		if exp != nil {
			m.AddCounterFunc("otlp_spans_exported", "Spans the OTLP collector accepted.", func() uint64 { return exp.Stats().Exported })
			m.AddCounterFunc("otlp_spans_failed", "Spans lost in exports that failed (collector down or refusing).", func() uint64 { return exp.Stats().Failed })
			m.AddDropCounter("otlp_queue_full", func() uint64 { return exp.Stats().Dropped })
			m.AddDropCounter("otlp_messages_not_attached", func() uint64 { return exp.Stats().HeldDropped })
		}
		srv, err := m.Serve(f.metricsAddr, log.New(stderr, "containerdsnoop: metrics: ", 0))
		if err != nil {
			return err
		}
		defer srv.Close()
		fmt.Fprintf(stderr, "containerdsnoop: serving metrics on http://%s/metrics\n", srv.Addr())
	}
	if probes := startPeerProbes(f, filter.Socket, len(command) == 0, tracer, p, opts.Logf); probes != nil {
		defer probes.report(stderr, tracer)
	}
	files, err := openTraceFiles(f, tracer, p, opts.PIDs)
	if err != nil {
		return err
	}
	defer files.close(tracer)

	// A signal or the command's exit asks the loop to stop: the probes
	// come off at once, then the loop reads what was already captured
	// and ends. Only the loop closes the tracer.
	var stopping atomic.Bool
	stop := func() {
		stopping.Store(true)
		tracer.Detach()
		tracer.Drain()
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
	defer signal.Stop(sig)
	go func() {
		if _, ok := <-sig; ok {
			stop()
		}
	}()
	// Loading the programs parsed the kernel's BTF (megabytes of it, garbage
	// now): give it back before tracing, without counting it as the last
	// give-back below, so that the first burst of traffic is not kept
	// for ten seconds after it.
	debug.FreeOSMemory()
	loss := startLossWatch(tracer, stderr)
	defer loss.stop()

	// Tests and scripts wait for this line before driving traffic.
	fmt.Fprintf(stderr, "containerdsnoop: tracing gRPC on unix sockets (backend %s); Ctrl-C to stop\n", tracer.Backend())

	var child *exec.Cmd
	childDone := make(chan error, 1)
	if len(command) > 0 {
		child = exec.Command(command[0], command[1:]...)
		child.Stdin, child.Stdout, child.Stderr = os.Stdin, os.Stdout, os.Stderr
		if !isTerminal(os.Stdout) {
			// The trace is going to a pipe or a file, for a program to
			// read: the command's own output must not break it.
			child.Stdout = os.Stderr
		}
		if err := startAsStarted(child, started); err != nil {
			return fmt.Errorf("start %s: %w", command[0], err)
		}
		signal.Ignore(os.Interrupt) // Ctrl-C is for the command; we stop when it exits
		go func() {
			childDone <- child.Wait()
			stop()
		}()
	}

	// flush writes what is decoded and recorded so far.
	flush := func() error {
		if err := p.Flush(); err != nil {
			return fmt.Errorf("write output: %w", err)
		}
		return files.flush()
	}
	// With -v, say when the state of exited processes' connections is
	// freed, and what --errors/--slow still hold: what an operator (or a
	// test) checks to see that nothing is kept for the dead.
	var swept uint64
	logSwept := func() {
		if opts.Logf == nil || p.Swept == swept {
			return
		}
		held := ""
		if filter.Calls.Errors || filter.Calls.Slow > 0 {
			held = fmt.Sprintf("; %d calls held for --errors/--slow", p.HeldCalls())
		}
		opts.Logf("freed the state of %d connections of processes that exited without closing them%s", p.Swept-swept, held)
		swept = p.Swept
	}
	// Once a sweep has freed connections of exited processes (an
	// attacker's state among them, perhaps), or a burst of traffic has
	// left a heap larger than what is live, the memory goes back to the
	// system when the capture has been idle for a second, at most every
	// 10 s: left to itself, an idle runtime would run no collection and
	// keep it (docs/security.md, docs/performance.md). Not sooner: at a
	// steady 5,000 calls/s the reader still finds a poll without a record
	// now and then, and a loaded tracer would force a collection and
	// regrow its heap every 10 s.
	var freedSwept uint64
	var lastFree, lastEvent time.Time
	giveBack := func() {
		if time.Since(lastFree) < 10*time.Second || time.Since(lastEvent) < time.Second {
			return
		}
		if p.Swept != freedSwept || budget.Reclaimable() >= budget.ReclaimThreshold {
			debug.FreeOSMemory()
			freedSwept, lastFree = p.Swept, time.Now()
		}
	}
	// Sweeping frees the state of connections whose processes are gone
	// and delivers events held for peer fields that are due. It runs when
	// the capture is idle, and on a node whose unix traffic never lets it
	// be idle (other daemons' sockets keep the reader busy) every
	// sweepEvery events at most every sweepBusy: otherwise an exited
	// process's connections would never be freed there.
	const sweepEvery, sweepBusy = 256, 100 * time.Millisecond
	var sinceSweep int
	var lastSweep time.Time
	sweep := func(now time.Time) {
		p.Sweep(now)
		logSwept()
		sinceSweep, lastSweep = 0, now
	}
	const flushEvery = pollInterval
	// A capture quiet for a second has nothing due on the poll timer: no
	// buffered line (flushed at the first idle poll), held lines due
	// seconds later at the earliest, the sweep and the memory given back
	// on second scales. It waits quietWait instead (a record still ends
	// the wait at once), so an idle tracer wakes 4 times a second, not 10.
	const quietAfter, quietWait = time.Second, 250 * time.Millisecond
	var lastFlush time.Time
	var ev capture.Event
	wait := quietWait // decided at each idle poll: no clock read per event
	for {
		err := tracer.ReadWithin(&ev, wait)
		if errors.Is(err, bpf.ErrIdle) || errors.Is(err, bpf.ErrDrained) || errors.Is(err, bpf.ErrClosed) {
			quiet := time.Since(lastEvent) >= quietAfter
			if quiet {
				wait = quietWait
			}
			// Stopping ends only at ErrDrained (or ErrClosed): a poll
			// that found nothing, while stop() is still detaching, says
			// nothing about what the ring buffer and the spool hold, and
			// the last calls of a command that just exited are exactly
			// there.
			if stopping.Load() && !errors.Is(err, bpf.ErrIdle) {
				break
			}
			if quiet {
				// At rest the output's buffer (1 MiB) is not kept.
				if err := p.Release(); err != nil {
					return fmt.Errorf("write output: %w", err)
				}
			}
			sweep(time.Now())
			giveBack()
			if err := flush(); err != nil {
				return err
			}
			continue
		}
		if err != nil {
			return err
		}
		lastEvent, wait = ev.Time, flushEvery
		if err := files.write(&ev); err != nil {
			return err
		}
		if ev.Field != nil {
			p.Field(&ev) // a peer probe's header field: not traffic
			continue
		}
		p.Feed(&ev)
		if err := p.Err(); err != nil {
			return fmt.Errorf("write output: %w", err)
		}
		if sinceSweep++; sinceSweep >= sweepEvery {
			if now := time.Now(); now.Sub(lastSweep) >= sweepBusy {
				sweep(now)
			} else {
				sinceSweep = 0
			}
		}
		if tracer.Pending() == 0 {
			// Caught up: show what was decoded now rather than when the
			// buffer fills, but at most every flushEvery: at thousands
			// of calls a second the reader is caught up after nearly
			// every event, which made a write(2) per line. A quiet
			// capture is flushed by the idle branch above within one
			// poll interval, so a line is shown at most ~100 ms late.
			if now := time.Now(); now.Sub(lastFlush) >= flushEvery {
				if err := flush(); err != nil {
					return err
				}
				lastFlush = now
			}
		}
	}
	if err := p.Close(); err != nil {
		return fmt.Errorf("write output: %w", err)
	}
	if err := f.writeSummary(cmd); err != nil {
		return err
	}
	if err := files.close(tracer); err != nil {
		return err
	}
	loss.stop()
	if p.HeldDropped > 0 {
		fmt.Fprintf(stderr, "containerdsnoop: dropped %d bytes of connections whose other end was not known yet (over the bound on what is held); calls in them are not shown\n", p.HeldDropped)
	}
	if child != nil {
		return exitStatus(<-childDone)
	}
	return nil
}

type podList struct {
	sandboxes  *runtimeapi.ListPodSandboxResponse
	containers *runtimeapi.ListContainersResponse
}

// listPods asks the CRI runtime on socket for its pods once, so calls
// about pods that exist already are named. Not every socket is a CRI
// socket; failing says so with -v and changes nothing else.
func listPods(socket string, logf func(string, ...any)) podList {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	sb, cs, err := pods.Query(ctx, socket)
	if logf != nil {
		if err != nil {
			logf("pod names: no start-up query (%v); pods are learnt from the CRI calls seen", err)
		} else {
			logf("pod names: %d sandboxes and %d containers listed by %s", len(sb.GetItems()), len(cs.GetContainers()), socket)
		}
	}
	return podList{sb, cs}
}

// pollInterval is how long the reader lets records gather in the ring
// buffer before it looks (and how late a line may be shown). Each look
// costs a chain of wakeups (the spool's thread, the decoder, the Go
// runtime's monitor after the output's write(2)s), nearly the same for 1
// record as for 100, so on a node's usual traffic (tens to hundreds of
// calls a second) the tracer's CPU is almost all looks: at 100 calls/s,
// 0.017 core at 20 ms, 0.005 at 100 ms. Busy traffic does not wait for
// the timer: the kernel wakes the reader once a thirty-second of the ring
// is unread (internal/bpf), so the decoder's bursts, which delay calls
// on a loaded node (the p99), stay as short as before
// (docs/performance.md, "A longer poll").
const pollInterval = 100 * time.Millisecond

// Ring buffer bounds: the kernel wants a power of two of at least a page
// (a tiny one only loses data: the overflow tests use 8 KiB on purpose);
// above 1 GiB it is locked kernel memory no node should give a tracer.
const (
	minRingBufSize = 4 << 10
	maxRingBufSize = 1 << 30
)

const minMemBudget = 64 << 20

// parseSize reads a byte count with an optional suffix: Ki, Mi, Gi (powers
// of 1024) or K, M, G (powers of 1000).
func parseSize(s string) (int64, error) {
	mult := int64(1)
	for _, u := range []struct {
		suffix string
		mult   int64
	}{{"Ki", 1 << 10}, {"Mi", 1 << 20}, {"Gi", 1 << 30}, {"K", 1e3}, {"M", 1e6}, {"G", 1e9}} {
		if strings.HasSuffix(s, u.suffix) {
			s, mult = strings.TrimSuffix(s, u.suffix), u.mult
			break
		}
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n < 0 || n > math.MaxInt64/mult {
		return 0, fmt.Errorf("invalid size %q", s)
	}
	return n * mult, nil
}

// check validates what trace alone is given against this machine, before
// anything is attached. A --pid that does not exist is an error: the
// filter is by number, so it could only ever match an unrelated process
// that later reuses it. A --socket path that does not exist is only a
// warning: a DaemonSet's tracer may well start before containerd has
// created its socket, and the filter matches the path once it is bound.
func (f *traceFlags) check(stderr io.Writer) error {
	b, err := parseSize(f.memBudget)
	if err != nil || b < minMemBudget {
		return fmt.Errorf("invalid --memory-budget %q: want a size of at least 64Mi, e.g. 160Mi or 1Gi", f.memBudget)
	}
	f.memBudgetBytes = b
	// A soft limit: the runtime collects harder as it nears it. The hard
	// bounds are the decoders' limits (internal/budget), sized so that
	// hostile input stays under the default.
	debug.SetMemoryLimit(b)
	if n := f.ringBufSize; n < minRingBufSize || n > maxRingBufSize || n&(n-1) != 0 {
		return fmt.Errorf("invalid --ringbuf-size %d: must be a power of two from %d (4 KiB) to %d (1 GiB)", n, minRingBufSize, maxRingBufSize)
	}
	for _, pid := range f.pids {
		if err := unix.Kill(int(pid), 0); errors.Is(err, unix.ESRCH) {
			return fmt.Errorf("--pid %d: no such process", pid)
		}
	}
	if s := f.socket; s != "" && !strings.HasPrefix(s, "@") {
		if _, err := os.Stat(s); errors.Is(err, fs.ErrNotExist) {
			fmt.Fprintf(stderr, "containerdsnoop: warning: --socket %s does not exist (yet); its connections are shown once something binds it\n", termsafe.Escape(s))
		}
	}
	return nil
}

// exitStatus passes on the traced command's exit status.
// procComms names live processes from /proc/PID/comm, for the pipeline's
// peers that have sent nothing yet. Answers are cached (a pid is looked up
// once per 4096 distinct pids), so a busy node costs a map lookup per call.
func procComms() func(pid uint32) string {
	comms := map[uint32]string{}
	return func(pid uint32) string {
		if c, ok := comms[pid]; ok {
			return c
		}
		b, _ := os.ReadFile("/proc/" + strconv.FormatUint(uint64(pid), 10) + "/comm")
		c := strings.TrimSpace(string(b))
		if len(comms) > 4096 {
			clear(comms)
		}
		comms[pid] = c
		return c
	}
}

func exitStatus(err error) error {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			return exitError(128 + int(ws.Signal())) // as shells report it
		}
		return exitError(ee.ExitCode())
	}
	return err
}

// isTerminal reports whether f is a terminal.
func isTerminal(f *os.File) bool {
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}

func terminalWidth(fd int) int {
	ws, err := unix.IoctlGetWinsize(fd, unix.TIOCGWINSZ)
	if err != nil || ws.Col == 0 {
		return 0
	}
	return int(ws.Col)
}

// spoolShare is the part of the memory budget the capture's spool may hold
// while the decoder is behind (bpf.DefaultSpoolBytes, 48 MiB, at the
// default 160 MiB budget): records waiting there are Go heap like the
// decoders' state, so they count inside the runtime's soft limit rather
// than beside it.
func spoolShare(memBudget int64) int {
	return int(memBudget * 3 / 10)
}
