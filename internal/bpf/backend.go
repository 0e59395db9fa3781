package bpf

import (
	"fmt"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
)

// A backend is one way of seeing sends on unix sockets. All of them feed
// emit_send() in snoop.bpf.c, so events look the same whichever is used.
type backend struct {
	name     string
	prefixes []string // of its programs' names in snoop.bpf.c
	attach   func(*Tracer) error
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
// other writes; the syscall tracepoints work where neither is allowed.
var backends = []backend{
	{name: "fentry", prefixes: []string{"fentry_", "fexit_"}, attach: attachFentry},
	{name: "kprobe", prefixes: []string{"kprobe_", "kretprobe_"}, attach: attachKprobes},
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
// stream socket: entry notes where the bytes are, exit copies as many as
// the kernel accepted.
func attachTracepoints(t *Tracer) error {
	// Exits first, so no entry is recorded that no exit consumes.
	for _, tp := range []struct {
		name string
		prog *ebpf.Program
	}{
		{"sys_exit_write", t.progs["tp_exit_write"]},
		{"sys_exit_writev", t.progs["tp_exit_writev"]},
		{"sys_exit_sendto", t.progs["tp_exit_sendto"]},
		{"sys_exit_sendmsg", t.progs["tp_exit_sendmsg"]},
		{"sys_enter_write", t.progs["tp_enter_write"]},
		{"sys_enter_writev", t.progs["tp_enter_writev"]},
		{"sys_enter_sendto", t.progs["tp_enter_sendto"]},
		{"sys_enter_sendmsg", t.progs["tp_enter_sendmsg"]},
	} {
		l, err := link.Tracepoint("syscalls", tp.name, tp.prog, nil)
		if err != nil {
			return fmt.Errorf("attach tracepoint syscalls:%s: %w", tp.name, err)
		}
		t.links = append(t.links, l)
	}
	return nil
}

// attachFentry uses BPF trampolines (5.5+, x86 and arm64 6.0+).
func attachFentry(t *Tracer) error {
	for _, prog := range []*ebpf.Program{t.progs["fexit_unix_stream_sendmsg"], t.progs["fentry_unix_stream_sendmsg"]} {
		l, err := link.AttachTracing(link.TracingOptions{Program: prog})
		if err != nil {
			return fmt.Errorf("attach %s: %w", prog, err)
		}
		t.links = append(t.links, l)
	}
	return nil
}

// attachKprobes is for kernels without trampolines.
func attachKprobes(t *Tracer) error {
	l, err := link.Kretprobe("unix_stream_sendmsg", t.progs["kretprobe_unix_stream_sendmsg"], nil)
	if err != nil {
		return fmt.Errorf("attach kretprobe unix_stream_sendmsg: %w", err)
	}
	t.links = append(t.links, l)
	if l, err = link.Kprobe("unix_stream_sendmsg", t.progs["kprobe_unix_stream_sendmsg"], nil); err != nil {
		return fmt.Errorf("attach kprobe unix_stream_sendmsg: %w", err)
	}
	t.links = append(t.links, l)
	return nil
}

// attachClose hooks what every backend shares: closes of traced sockets
// (to free decoder state), accepts (to know which process holds the
// server end), and process exits and execs (after which what was known
// about a process's sockets is stale). Tracepoints exist wherever BPF does.
func attachClose(t *Tracer) error {
	for _, tp := range []struct{ group, name, prog string }{
		{"sched", "sched_process_exit", "any_sched_exit"},
		{"sched", "sched_process_exec", "any_sched_exec"},
		{"syscalls", "sys_enter_close", "any_enter_close"},
		{"syscalls", "sys_exit_accept4", "any_exit_accept4"},
		{"syscalls", "sys_exit_accept", "any_exit_accept"},
		{"syscalls", "sys_enter_accept4", "any_enter_accept4"},
		{"syscalls", "sys_enter_accept", "any_enter_accept"},
	} {
		l, err := link.Tracepoint(tp.group, tp.name, t.progs[tp.prog], nil)
		if err != nil {
			return fmt.Errorf("attach tracepoint %s:%s: %w", tp.group, tp.name, err)
		}
		t.links = append(t.links, l)
	}
	return nil
}
