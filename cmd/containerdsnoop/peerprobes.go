package main

import (
	"fmt"
	"io"

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
func startPeerProbes(f traceFlags, t *bpf.Tracer, p *pipeline.Pipeline, logf func(string, ...any)) *peerProbes {
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
	return pp
}

// report stops the manager and, at -v, says what the probes did.
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
