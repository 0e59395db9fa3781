package bpf

import (
	"fmt"
	"strings"

	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/link"
)

// A backend is one way of seeing sends on unix sockets. All of them feed
// emit_send() in snoop.bpf.c, so events look the same whichever is used.
type backend struct {
	name     string
	prefixes []string // of its programs' names in snoop.bpf.c
	// check, when set, says before loading why the kernel cannot run
	// this backend, in words a load error would not give.
	check  func() error
	attach func(*Tracer) error
}

func (b backend) owns(program string) bool {
	if strings.HasPrefix(program, "any_") {
		return true // shared by every backend
	}
	for _, p := range b.prefixes {
		if strings.HasPrefix(program, p) {
			return true
		}
	}
	return false
}

// backends in the order auto-selection tries them: the probes on the unix
// socket send path see every send (io_uring included) and cost nothing on
// other syscalls; the socket tracepoints (6.3+) cost other syscalls
// nothing either, where fentry and kprobes are not allowed; the syscall
// tracepoints work wherever BPF does.
var backends = []backend{
	{name: "fentry", prefixes: []string{"fentry_", "fexit_"}, attach: attachFentry},
	{name: "kprobe", prefixes: []string{"kprobe_", "kretprobe_"}, attach: attachKprobes},
	{name: "sock-tracepoint", prefixes: []string{"socktp_"}, check: haveSockTracepoints, attach: attachSockTracepoints},
	{name: "tracepoint", prefixes: []string{"tp_"}, attach: attachTracepoints},
}

// Backends lists the names accepted by Options.Attach besides "auto".
func Backends() []string {
	names := make([]string, len(backends))
	for i, b := range backends {
		names[i] = b.name
	}
	return names
}

func backendsFor(attach string) ([]backend, error) {
	if attach == "auto" {
		return backends, nil
	}
	for _, b := range backends {
		if b.name == attach {
			return []backend{b}, nil
		}
	}
	return nil, fmt.Errorf("unknown capture backend %q: want auto or %s", attach, strings.Join(Backends(), ", "))
}

// attachTracepoints hooks entry and exit of each syscall that can send on a
// stream socket (entry notes where the bytes are, exit copies as many as
// the kernel accepted), closes (to free decoder state) and accepts (to
// know which process holds the server end). One perf tracepoint per
// syscall: a syscall none of these hooks returns after a bitmap test,
// where a program on the raw sys_enter tracepoint would run for each
// (docs/performance.md).
func attachTracepoints(t *Tracer) error {
	// Exits first, so no entry is recorded that no exit consumes.
	for _, name := range []string{
		"exit_write", "exit_writev", "exit_sendto", "exit_sendmsg",
		"enter_write", "enter_writev", "enter_sendto", "enter_sendmsg",
		"enter_close",
		"exit_accept4", "exit_accept", "enter_accept4", "enter_accept",
	} {
		l, err := link.Tracepoint("syscalls", "sys_"+name, t.progs["tp_"+name], nil)
		if err != nil {
			return fmt.Errorf("attach tracepoint syscalls:sys_%s: %w", name, err)
		}
		t.links = append(t.links, l)
	}
	return nil
}

// attachSockTracepoints takes sends at sock:sock_send_length and reads at
// sock:sock_recv_length (bpf/snoop.bpf.c says how the bytes, closes and
// owners are found there). No syscall is hooked: other syscalls keep the
// kernel's fast path.
func attachSockTracepoints(t *Tracer) error {
	return attachTracingPrograms(t, "socktp_recv_length", "socktp_send_length", "socktp_send_length_spare")
}

// haveSockTracepoints: both tracepoints exist from 6.3; their BTF types
// say so (tp_btf programs attach by them).
func haveSockTracepoints() error {
	spec, err := btf.LoadKernelSpec()
	if err != nil {
		return fmt.Errorf("read kernel BTF: %w", err)
	}
	for _, tp := range []string{"sock_send_length", "sock_recv_length"} {
		if _, err := spec.AnyTypeByName("btf_trace_" + tp); err != nil {
			return fmt.Errorf("the kernel has no sock:%s tracepoint (added in 6.3)", tp)
		}
	}
	return nil
}

// attachFentry uses BPF trampolines (5.5+, x86 and arm64 6.0+). It hooks
// only unix socket functions: other syscalls pay nothing.
func attachFentry(t *Tracer) error {
	return attachTracingPrograms(t,
		"fexit_unix_stream_sendmsg", "fexit_unix_stream_sendmsg_spare",
		"fentry_unix_stream_sendmsg", "fentry_unix_stream_sendmsg_spare",
		"fentry_unix_release", "fentry_unix_accept", "fexit_unix_accept")
}

func attachTracingPrograms(t *Tracer, names ...string) error {
	for _, name := range names {
		l, err := link.AttachTracing(link.TracingOptions{Program: t.progs[name]})
		if err != nil {
			return fmt.Errorf("attach %s: %w", name, err)
		}
		t.links = append(t.links, l)
	}
	return nil
}

// retprobeMaxActive is how many calls of a function a kretprobe follows
// at once (the kernel's maximum). A return past that is skipped, and a
// send's exit lost (bpf/snoop.bpf.c, SEND_MISSED); the kernel's default
// is the number of CPUs on kernels without CONFIG_PREEMPTION (Debian's
// 5.10: 2 on a two-CPU machine, fewer than the sends a busy containerd
// has blocked at once), else max(10, 2 x CPUs). Each costs a few dozen
// bytes of kernel memory.
const retprobeMaxActive = 4096

// attachKprobes is for kernels without trampolines.
func attachKprobes(t *Tracer) error {
	for _, p := range []struct {
		fn, prog string
		ret      bool
	}{
		{"unix_stream_sendmsg", "kretprobe_unix_stream_sendmsg", true},
		{"unix_stream_sendmsg", "kprobe_unix_stream_sendmsg", false},
		{"unix_release", "kprobe_unix_release", false},
		{"unix_accept", "kretprobe_unix_accept", true},
		{"unix_accept", "kprobe_unix_accept", false},
	} {
		attach, kind := link.Kprobe, "kprobe"
		// Named after this process where it takes tracefs (probegroups.go).
		opts := link.KprobeOptions{TraceFSPrefix: probeGroupPrefix}
		if p.ret {
			attach, kind = link.Kretprobe, "kretprobe"
			opts.RetprobeMaxActive = retprobeMaxActive
		}
		l, err := attach(p.fn, t.progs[p.prog], &opts)
		if err != nil && p.ret {
			// Setting maxactive takes tracefs's kprobe_events; without
			// it, the kernel's default, and skips are counted.
			opts.RetprobeMaxActive = 0
			l, err = attach(p.fn, t.progs[p.prog], &opts)
		}
		if err != nil {
			return fmt.Errorf("attach %s %s: %w", kind, p.fn, err)
		}
		t.links = append(t.links, l)
	}
	return nil
}

// attachShared hooks what every backend shares: process exits and execs
// (after which what was known about a process's sockets is stale).
// Tracepoints exist wherever BPF does.
func attachShared(t *Tracer) error {
	for _, tp := range []struct{ group, name, prog string }{
		{"sched", "sched_process_exit", "any_sched_exit"},
		{"sched", "sched_process_exec", "any_sched_exec"},
	} {
		l, err := link.Tracepoint(tp.group, tp.name, t.progs[tp.prog], nil)
		if err != nil {
			return fmt.Errorf("attach tracepoint %s:%s: %w", tp.group, tp.name, err)
		}
		t.links = append(t.links, l)
	}
	return nil
}
