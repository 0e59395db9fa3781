package wirerec

import (
	"time"

	"github.com/containerdsnoop/containerdsnoop/internal/capture"
)

// Events turns records into what the kernel would have delivered, as
// internal/pipeline's replay test does: one socket per connection end
// (client 2*conn, server 2*conn+1; inodes those plus 1000), offsets
// counting each end's bytes, the client pid 100 "client", the server pid
// 200 "server" (its socket Bound), path /run/test.sock, a millisecond
// between events from t0.
func Events(recs []Record, t0 time.Time) []capture.Event {
	var out []capture.Event
	offsets := map[uint64]uint64{}
	for i, r := range recs {
		client, server := uint64(r.Conn)*2, uint64(r.Conn)*2+1
		sock, peer := client, server
		pid, comm := uint32(100), "client"
		if r.FromServer {
			sock, peer = server, client
			pid, comm = 200, "server"
		}
		out = append(out, capture.Event{
			Time: t0.Add(time.Duration(i) * time.Millisecond),
			Sock: sock, PeerSock: peer, Ino: sock + 1000, PeerIno: peer + 1000,
			CgroupID: 4242,
			Offset:   offsets[sock], Len: uint32(len(r.Data)), SendLen: uint32(len(r.Data)),
			PID: pid, TID: pid, PeerPID: 300 - pid, Comm: comm, Path: "/run/test.sock",
			Bound: r.FromServer, Data: r.Data,
		})
		offsets[sock] += uint64(len(r.Data))
	}
	return out
}

// ShiftConns returns recs with every connection number raised by n, so
// that replaying a recording again yields connections of their own.
func ShiftConns(recs []Record, n uint32) []Record {
	out := make([]Record, len(recs))
	for i, r := range recs {
		r.Conn += n
		out[i] = r
	}
	return out
}

// AnswersFirst moves each server write that directly follows a client
// write on its connection ahead of it, as the ring buffer delivers them
// when the client is preempted between queueing its bytes and their
// capture. Each direction's order is kept. It works on events numbered as
// Events numbers them (a connection's client socket 2n, its server 2n+1),
// and returns how many writes it moved.
func AnswersFirst(evs []capture.Event) (moved int) {
	for i := 0; i+1 < len(evs); i++ {
		a, b := evs[i], evs[i+1]
		if a.Sock%2 == 0 && b.Sock == a.Sock+1 {
			evs[i], evs[i+1] = b, a
			moved++
			i++
		}
	}
	return moved
}
