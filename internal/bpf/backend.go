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
	name   string
	prefix string // of its programs' names in snoop.bpf.c
	attach func(*Tracer) error
}

func (b backend) owns(program string) bool { return strings.HasPrefix(program, b.prefix) }

// backends in the order auto-selection tries them.
var backends = []backend{
	{name: "tracepoint", prefix: "tp_", attach: attachTracepoints},
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
	if err := ensureTracefs(); err != nil {
		return err
	}
	p := &t.objs.snoopPrograms
	for _, tp := range []struct {
		name string
		prog *ebpf.Program
	}{
		{"sys_enter_write", p.TpEnterWrite},
		{"sys_exit_write", p.TpExitWrite},
		{"sys_enter_writev", p.TpEnterWritev},
		{"sys_exit_writev", p.TpExitWritev},
		{"sys_enter_sendto", p.TpEnterSendto},
		{"sys_exit_sendto", p.TpExitSendto},
		{"sys_enter_sendmsg", p.TpEnterSendmsg},
		{"sys_exit_sendmsg", p.TpExitSendmsg},
	} {
		l, err := link.Tracepoint("syscalls", tp.name, tp.prog, nil)
		if err != nil {
			return fmt.Errorf("attach tracepoint syscalls:%s: %w", tp.name, err)
		}
		t.links = append(t.links, l)
	}
	return nil
}
