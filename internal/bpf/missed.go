package bpf

import "strings"

// The kernel skips a tracing program's run when the same program is
// already running on that CPU, which on a preemptible kernel happens
// whenever a run is preempted and another task sends on the same CPU
// (bpf/snoop.bpf.c, SEND_MISSED). It counts the skips per program
// (bpf_prog_info.recursion_misses, 5.12+); nothing else tells. A skipped
// send program is a send not captured, a skipped close program a close
// not reported: both are lost events.

// Programs by what a skipped run of them loses (the _bounded twins
// alike). An entry program skipped loses the whole send; so does an exit
// program, but the kernel side also counts those it can prove (a thread's
// entry left without its exit: stats.missed_exits), so the larger of the
// two counts is taken, never their sum. The syscall tracepoints run on
// every write, writev, sendto and sendmsg on the node, so their skips
// may also be of sends to files or other sockets: then the count is an
// upper bound.
var (
	// The fentry backend's and the socket tracepoint's programs have
	// spares that take most of the runs the first is skipped for
	// (bpf/snoop.bpf.c), but which skips a spare took cannot be told, and
	// Debian's 7.2 once skipped the socket tracepoint's program for 219
	// sends its spare never saw: so the first program's skips are
	// counted, an upper bound on what is lost, never less.
	sendEntryPrograms = []string{"fentry_unix_stream_sendmsg", "kprobe_unix_stream_sendmsg",
		"tp_enter_write", "tp_enter_writev", "tp_enter_sendto", "tp_enter_sendmsg",
		"socktp_send_length"} // one program per send
	sendExitPrograms = []string{"fexit_unix_stream_sendmsg", "kretprobe_unix_stream_sendmsg",
		"tp_exit_write", "tp_exit_writev", "tp_exit_sendto", "tp_exit_sendmsg"}
	// A skipped end-of-file read may be a close not reported.
	closePrograms = []string{"tp_enter_close", "fentry_unix_release", "kprobe_unix_release", "socktp_recv_length"}
)

// skippedRuns sums the kernel's skip counters of the loaded programs
// named in names. Kernels before 5.12 have none: 0.
func (t *Tracer) skippedRuns(names []string) uint64 {
	var n uint64
	for name, p := range t.progs {
		if p == nil {
			continue
		}
		base := strings.TrimSuffix(name, "_bounded")
		for _, want := range names {
			if base != want {
				continue
			}
			if st, err := p.Stats(); err == nil {
				n += st.RecursionMisses
			}
		}
	}
	return n
}

// lostToSkips is how many sends and closes the kernel skipped, given the
// exits the programs proved skipped.
func (t *Tracer) lostToSkips(missedExits uint64) uint64 {
	return t.skippedRuns(sendEntryPrograms) + max(missedExits, t.skippedRuns(sendExitPrograms)) +
		t.skippedRuns(closePrograms)
}
