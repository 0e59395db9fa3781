package main

import (
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/containerdsnoop/containerdsnoop/internal/bpf"
	"github.com/containerdsnoop/containerdsnoop/internal/peerfields"
	"github.com/containerdsnoop/containerdsnoop/internal/peerprobe"
	"github.com/containerdsnoop/containerdsnoop/internal/pipeline"
)

// peerProbes ties the probe manager (which binaries get a uprobe) to the
// pipeline's store of probed header fields.
type peerProbes struct {
	m       *peerprobe.Manager
	store   *peerfields.Store
	verbose bool
}

// startPeerProbes turns the peer probes on when asked for and the kernel
// loaded the program; otherwise the trace works as without them.
//
// startup probes, before the tracer says it is ready, the processes already
// connected to the traced socket; `trace -- CMD` does not ask for it: the
// command's connections are all new.
func startPeerProbes(f traceFlags, socket string, startup bool, t *bpf.Tracer, p *pipeline.Pipeline, logf func(string, ...any)) *peerProbes {
	if !f.peerProbes {
		return nil
	}
	if !t.PeerProbes() {
		if logf != nil {
			logf("peer probes off: the kernel did not load the uprobe program; connections open before the tracer decode as without them")
		}
		return nil
	}
	pp := &peerProbes{m: peerprobe.New(t, logf, 0), store: p.EnablePeerFields(), verbose: f.verbose}
	pp.store.Notify = pp.m.Probe
	if !startup {
		return pp
	}
	// Processes already connected are probed before the tracer says it
	// is ready, so that their first calls after it are named too.
	want := runtimeSocket
	if socket != "" {
		socket = pipeline.CanonicalPath(socket)
		want = func(path string) bool { return pipeline.CanonicalPath(path) == socket }
	}
	pids, err := peerprobe.Connected(want)
	if err != nil && logf != nil {
		logf("peer probes: cannot list connected processes (%v); they are probed when they next send headers", err)
	}
	deadline := time.Now().Add(startupProbeTime)
	for _, pid := range pids {
		if time.Now().After(deadline) {
			pp.m.Probe(pid) // the rest in the background
			continue
		}
		pp.m.Examine(pid)
	}
	return pp
}

// startupProbeTime bounds the examination of connected binaries before the
// tracer is ready (reading kubelet's function table takes about a second).
const startupProbeTime = 10 * time.Second

// runtimeSocket selects, without --socket, the sockets whose processes are
// probed at startup: those of container runtimes and their clients.
func runtimeSocket(path string) bool {
	for _, s := range []string{"containerd", "docker", "cri", "buildkit", "kubelet"} {
		if strings.Contains(path, s) {
			return true
		}
	}
	return false
}

// report stops the manager and, at -v, says what the probes did, lost
// records included: they are not traffic, only names that stay unknown.
func (pp *peerProbes) report(w io.Writer, t *bpf.Tracer) {
	pp.m.Close()
	if !pp.verbose {
		return
	}
	s := pp.store.Stats
	st, _ := t.Stats()
	fmt.Fprintf(w, "containerdsnoop: peer probes: %d binaries probed, %d header fields read (%d lost), %d proved, %d entries named, %d connection directions tied; %d unproved, %d ambiguous, %d refused\n",
		pp.m.Probed(), s.Fields, st.LostHeaderFields, s.Proved, s.Pinned, s.Ties, s.Unmatched, s.Ambiguous, s.Refused)
}
