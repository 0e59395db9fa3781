package main

import (
	"fmt"
	"os"
	"path"
	"regexp"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/containerdsnoop/containerdsnoop/internal/callfilter"
	"github.com/containerdsnoop/containerdsnoop/internal/output"
	"github.com/containerdsnoop/containerdsnoop/internal/pcapout"
	"github.com/containerdsnoop/containerdsnoop/internal/pipeline"
	"github.com/containerdsnoop/containerdsnoop/internal/summary"
)

// viewFlags are what trace and decode share: which connections to show,
// how, and the pcap copy.
type viewFlags struct {
	pids        []uint
	socket      string
	protocol    string
	output      string
	full        bool
	pcap        string
	comm        string
	method      string
	namespace   string
	pod         string
	errors      bool
	slow        time.Duration
	showSecrets bool
	summary     bool
	summaryOnly bool
	sum         *summary.Summary
}

func (v *viewFlags) register(cmd *cobra.Command) {
	fl := cmd.Flags()
	fl.UintSliceVar(&v.pids, "pid", nil, "only connections whose sender or peer is this process (repeatable)")
	fl.StringVar(&v.socket, "socket", "", "only connections on this socket path (as bound; symlinks resolved; @name for abstract)")
	fl.StringVar(&v.protocol, "protocol", "all", "only connections of this protocol: grpc, ttrpc or all")
	fl.StringVarP(&v.output, "output", "o", "table", "output format: table or json")
	fl.BoolVar(&v.full, "full", false, "do not cut table messages to the terminal width")
	fl.StringVar(&v.comm, "comm", "", "only calls whose sender or peer has this command name (e.g. kubelet, crictl)")
	fl.StringVar(&v.method, "method", "", "only calls whose method matches this regular expression (e.g. 'ListContainers$', 'runtime\\.v1\\.')")
	fl.StringVar(&v.namespace, "namespace", "", "only calls with this containerd namespace (containerd-namespace header), e.g. k8s.io")
	fl.StringVar(&v.pod, "pod", "", "only calls about this Kubernetes pod, NAMESPACE/NAME, globs allowed (e.g. 'default/web-*', '*/nginx')")
	fl.BoolVar(&v.errors, "errors", false, "only calls that ended with a non-OK status (each printed with its request when it ends)")
	fl.DurationVar(&v.slow, "slow", 0, "only calls that took at least this long, e.g. 500ms (each printed with its request when it ends)")
	fl.BoolVar(&v.showSecrets, "show-secrets", false, "do not redact credentials (registry passwords, tokens, auth headers) in messages")
	fl.BoolVar(&v.summary, "summary", false, "on exit, print calls, errors, latency percentiles and bytes per method")
	fl.BoolVar(&v.summaryOnly, "summary-only", false, "print only the per-method summary on exit, no calls")
	fl.StringVar(&v.pcap, "pcap", "", fmt.Sprintf("also write the connections to this pcapng file for Wireshark (synthetic TCP; decode port %d as HTTP/2; raw payloads)", pcapout.ServerPort))
}

// filter checks the filter flags and turns them into the pipeline's
// Filter; with --summary or --summary-only it also creates the summary the
// filter counts into (v.sum, printed by writeSummary).
func (v *viewFlags) filter() (pipeline.Filter, error) {
	protocol, err := pipeline.ParseProtocol(v.protocol)
	if err != nil {
		return pipeline.Filter{}, err
	}
	f := pipeline.Filter{Socket: v.socket, Protocol: protocol, ShowSecrets: v.showSecrets, SummaryOnly: v.summaryOnly}
	f.Calls = callfilter.Options{Namespace: v.namespace, Comm: v.comm, Pod: v.pod, Errors: v.errors, Slow: v.slow}
	if v.pod != "" {
		if _, err := path.Match(v.pod, ""); err != nil || !strings.Contains(v.pod, "/") {
			return pipeline.Filter{}, fmt.Errorf("invalid --pod %q: want NAMESPACE/NAME, globs allowed", v.pod)
		}
	}
	if v.method != "" {
		re, err := regexp.Compile(v.method)
		if err != nil {
			return pipeline.Filter{}, fmt.Errorf("invalid --method regular expression: %w", err)
		}
		f.Calls.Method = re
	}
	if v.slow < 0 {
		return pipeline.Filter{}, fmt.Errorf("invalid --slow %s: must be positive", v.slow)
	}
	if v.summary || v.summaryOnly {
		v.sum = summary.New()
		f.Summary = v.sum
	}
	for _, pid := range v.pids {
		if pid == 0 || pid > 1<<22 {
			return pipeline.Filter{}, fmt.Errorf("invalid --pid %d", pid)
		}
		f.PIDs = append(f.PIDs, uint32(pid))
	}
	return f, nil
}

// newOutput returns the writer for --output, as wide as the terminal
// unless --full.
func (v *viewFlags) newOutput(cmd *cobra.Command) (output.Writer, error) {
	width := 0
	if !v.full {
		width = terminalWidth(int(os.Stdout.Fd()))
	}
	return output.New(v.output, cmd.OutOrStdout(), output.Options{Width: width})
}

// writeSummary prints the --summary table, or with --output json one final
// object with "type": "summary".
func (v *viewFlags) writeSummary(cmd *cobra.Command) error {
	if v.sum == nil {
		return nil
	}
	w := cmd.OutOrStdout()
	var err error
	if v.output == "json" {
		err = v.sum.WriteJSON(w)
	} else {
		if !v.summaryOnly {
			fmt.Fprintln(w)
		}
		err = v.sum.WriteTable(w)
	}
	if err != nil {
		return fmt.Errorf("write summary: %w", err)
	}
	return nil
}

// startPcap creates the --pcap file, if any, and hands it p's connections.
// It returns nil without --pcap.
func (v *viewFlags) startPcap(p *pipeline.Pipeline, comment string) (*pcapout.Writer, error) {
	if v.pcap == "" {
		return nil, nil
	}
	w, err := pcapout.Create(v.pcap, pcapout.Options{Comment: comment, Version: version})
	if err != nil {
		return nil, fmt.Errorf("--pcap: %w", err)
	}
	p.AddSink(w)
	return w, nil
}

// pcapNote ends every pcap's section comment.
var pcapNote = fmt.Sprintf("Each unix connection is a TCP flow from 127.1.x.y to 127.2.x.y:%d (x.y: the connection number); decode port %d as HTTP/2. Each connection is an interface whose comment names its socket, processes and inodes. Payloads are the raw bytes sent, not redacted.",
	pcapout.ServerPort, pcapout.ServerPort)
