package main

import (
	"fmt"
	"os"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/containerdsnoop/containerdsnoop/internal/bpf"
	"github.com/containerdsnoop/containerdsnoop/internal/capture"
	"github.com/containerdsnoop/containerdsnoop/internal/pcapout"
	"github.com/containerdsnoop/containerdsnoop/internal/pipeline"
	"github.com/containerdsnoop/containerdsnoop/internal/recording"
)

// traceFiles are what trace writes besides its output: the recording of
// every event (--record) and the pcap (--pcap).
type traceFiles struct {
	rec    *recording.Writer
	pcap   *pcapout.Writer
	closed bool
}

func openTraceFiles(f traceFlags, tracer *bpf.Tracer, p *pipeline.Pipeline, kernelPIDs []uint32) (*traceFiles, error) {
	tf := &traceFiles{}
	host, _ := os.Hostname()
	h := recording.Header{
		Tool:        "containerdsnoop",
		Version:     version,
		Kernel:      kernelRelease(),
		Backend:     tracer.Backend(),
		Start:       time.Now(),
		Hostname:    host,
		CommandLine: os.Args,
		KernelPIDs:  kernelPIDs,
	}
	if f.record != "" {
		w, err := recording.Create(f.record, h)
		if err != nil {
			return nil, fmt.Errorf("--record: %w", err)
		}
		tf.rec = w
	}
	comment := fmt.Sprintf("containerdsnoop %s trace on %s (kernel %s, backend %s), started %s: %s. %s",
		version, host, h.Kernel, h.Backend, h.Start.Format(time.RFC3339), strings.Join(os.Args, " "), pcapNote)
	pc, err := f.startPcap(p, comment)
	if err != nil {
		if tf.rec != nil {
			tf.rec.Close()
		}
		return nil, err
	}
	tf.pcap = pc
	return tf, nil
}

// write records ev, as read from the ring buffer.
func (tf *traceFiles) write(ev *capture.Event) error {
	if tf.rec == nil {
		return nil
	}
	if err := tf.rec.Write(ev); err != nil {
		return fmt.Errorf("write recording: %w", err)
	}
	return nil
}

// flush writes what is buffered, while the capture is idle.
func (tf *traceFiles) flush() error {
	if tf.rec != nil {
		if err := tf.rec.Flush(); err != nil {
			return fmt.Errorf("write recording: %w", err)
		}
	}
	if tf.pcap != nil {
		if err := tf.pcap.Flush(); err != nil {
			return err
		}
	}
	return nil
}

// close ends the recording with the capture's loss counters, and the
// pcap; close the pipeline first so that it hands over every connection.
// It may be called more than once.
func (tf *traceFiles) close(tracer *bpf.Tracer) error {
	if tf.closed {
		return nil
	}
	tf.closed = true
	var first error
	if tf.rec != nil {
		if s, err := tracer.Stats(); err == nil {
			tf.rec.SetStats(s)
		}
		if err := tf.rec.Close(); err != nil {
			first = fmt.Errorf("write recording: %w", err)
		}
	}
	if tf.pcap != nil {
		if err := tf.pcap.Close(); err != nil && first == nil {
			first = err
		}
	}
	return first
}

func kernelRelease() string {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return ""
	}
	return unix.ByteSliceToString(u.Release[:])
}
