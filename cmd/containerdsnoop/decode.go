package main

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/containerdsnoop/containerdsnoop/internal/capture"
	"github.com/containerdsnoop/containerdsnoop/internal/pipeline"
	"github.com/containerdsnoop/containerdsnoop/internal/recording"
	"github.com/containerdsnoop/containerdsnoop/internal/termsafe"
)

type decodeFlags struct {
	viewFlags
	verbose bool
}

func newDecodeCommand() *cobra.Command {
	var f decodeFlags
	cmd := &cobra.Command{
		Use:   "decode FILE",
		Short: "Decode a recording made with trace --record",
		Long: `Decode a recording made with 'trace --record FILE' as trace would have shown it,
with the same output and filter flags. Needs no privileges and no kernel support;
FILE may be "-" for standard input.

A truncated or corrupt recording is decoded up to the damage, then the error is
printed and the exit status is 1.`,
		Example: `  # record on the node, decode anywhere
  sudo containerdsnoop trace --record /tmp/cri.cdsnoop
  containerdsnoop decode /tmp/cri.cdsnoop --output json

  # only what kubelet did, and a pcap for Wireshark
  containerdsnoop decode /tmp/cri.cdsnoop --pid 1234 --pcap /tmp/cri.pcapng`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error { return runDecode(cmd, f, args[0]) },
	}
	f.viewFlags.register(cmd)
	cmd.Flags().BoolVarP(&f.verbose, "verbose", "v", false, "describe the recording (host, kernel, command line) on stderr")
	return cmd
}

func runDecode(cmd *cobra.Command, f decodeFlags, path string) error {
	stderr := cmd.ErrOrStderr()
	filter, err := f.filter()
	if err != nil {
		return err
	}
	out, err := f.newOutput(cmd)
	if err != nil {
		return err
	}
	var r *recording.Reader
	if path == "-" {
		r, err = recording.NewReader(cmd.InOrStdin())
	} else {
		r, err = recording.Open(path)
	}
	if err != nil {
		return fileError(path, err)
	}
	defer r.Close()

	h := r.Header()
	about := fmt.Sprintf("recorded on %s (kernel %s, backend %s) from %s by %s %s: %s",
		orUnknown(h.Hostname), orUnknown(h.Kernel), orUnknown(h.Backend), h.Start.Format(time.RFC3339), h.Tool, h.Version, strings.Join(h.CommandLine, " "))
	if f.verbose {
		// The header's strings are whatever the file holds: escaped.
		fmt.Fprintf(stderr, "containerdsnoop: %s\n", termsafe.Escape(path+": "+about))
	}

	p := pipeline.New(out, filter)
	// Peer-probe fields in the recording name what the live trace named.
	p.EnablePeerFields()
	// p.CommOf stays nil: this machine's /proc says nothing about recorded processes.
	pc, err := f.startPcap(p, fmt.Sprintf("containerdsnoop %s decode of a recording %s. %s", version, about, pcapNote))
	if err != nil {
		return err
	}
	defer func() {
		if pc != nil {
			pc.Close()
		}
	}()

	var ev capture.Event
	var readErr error
	for {
		if err := r.Next(&ev); err != nil {
			if err != io.EOF {
				readErr = err
			}
			break
		}
		if ev.Field != nil {
			p.Field(&ev)
			continue
		}
		p.Feed(&ev)
		if err := p.Err(); err != nil {
			return fmt.Errorf("write output: %w", err)
		}
	}
	// Show what the calls in progress hold, also when the file is cut.
	if err := p.Close(); err != nil {
		return fmt.Errorf("write output: %w", err)
	}
	if pc != nil {
		err := pc.Close()
		pc = nil
		if err != nil {
			return err
		}
	}
	if err := f.writeSummary(cmd); err != nil {
		return err
	}
	reportDrops(stderr, nil, "in total")
	reportInferredWrong(stderr)
	if t, ok := r.Trailer(); ok && t.StatsKnown && t.Stats.Lost() {
		fmt.Fprintf(stderr, "containerdsnoop: the live capture lost %d events (%d bytes%s) and %d unreadable chunks; calls in them are not shown\n",
			t.Stats.LostEvents, t.Stats.LostBytes, shedClause(t.Stats.ShedBytes), t.Stats.Faults)
	}
	if readErr != nil {
		return fileError(path, readErr)
	}
	return nil
}

// fileError names the file in a recording error; errors that name it
// already (open: no such file) are left alone.
func fileError(path string, err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return err
	}
	if path == "-" {
		path = "standard input"
	}
	return fmt.Errorf("%s: %w", path, err)
}

func orUnknown(s string) string {
	if s == "" {
		return "?"
	}
	return s
}
