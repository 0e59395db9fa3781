package stream

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/containerdsnoop/containerdsnoop/internal/capture"
)

type logSink struct{ log []string }

func (l *logSink) Bytes(c *Conn, end int, ev *capture.Event, data []byte) {
	l.log = append(l.log, fmt.Sprintf("c%d e%d %q", c.ID, end, data))
}
func (l *logSink) Gap(c *Conn, end int, n uint64) {
	l.log = append(l.log, fmt.Sprintf("c%d e%d gap %d", c.ID, end, n))
}
func (l *logSink) Closed(c *Conn) {
	l.log = append(l.log, fmt.Sprintf("c%d closed %v", c.ID, c.Closed))
}

// expect fails t unless the sink saw exactly want, in order.
func (l *logSink) expect(t *testing.T, want ...string) {
	t.Helper()
	if got := strings.Join(l.log, "\n"); got != strings.Join(want, "\n") {
		t.Fatalf("got\n%s\nwant\n%s", got, strings.Join(want, "\n"))
	}
}

func ev(sock, peer, off uint64, data string) *capture.Event {
	return &capture.Event{Sock: sock, PeerSock: peer, Offset: off, Len: uint32(len(data)), Data: []byte(data)}
}

func TestAssembler(t *testing.T) {
	var l logSink
	a := New(&l)
	a.Feed(ev(1, 2, 0, "ab"))
	a.Feed(ev(2, 1, 0, "xy")) // the other end: same connection
	a.Feed(ev(1, 2, 2, "cd"))
	a.Feed(ev(1, 2, 10, "ef")) // 6 bytes never arrived
	fault := ev(1, 2, 12, "")
	fault.Len, fault.Fault = 3, true
	a.Feed(fault)
	a.Feed(ev(1, 2, 15, "gh"))
	a.Feed(ev(1, 2, 3, "zz")) // the kernel's counter restarted: unknown gap
	a.Feed(ev(3, 4, 0, "other"))
	restart := ev(1, 2, 0, "new")
	restart.Restart = true // a new socket at the old one's address
	a.Feed(restart)
	a.Feed(&capture.Event{Sock: 3, PeerSock: 4, Close: true})
	a.Feed(&capture.Event{Sock: 3, PeerSock: 4, Close: true}) // already gone: ignored
	want := []string{
		`c1 e0 "ab"`, `c1 e1 "xy"`, `c1 e0 "cd"`,
		`c1 e0 gap 6`, `c1 e0 "ef"`, `c1 e0 gap 3`, `c1 e0 "gh"`,
		`c1 e0 gap 0`, `c1 e0 "zz"`,
		`c2 e0 "other"`,
		`c1 closed false`, `c3 e0 "new"`,
		`c2 closed true`,
	}
	l.expect(t, want...)
	if a.Len() != 1 {
		t.Fatalf("%d connections tracked, want 1", a.Len())
	}
}

func TestAssemblerBoundsConnections(t *testing.T) {
	var l logSink
	a := New(&l)
	a.MaxConns = 3
	for i := uint64(0); i < 10; i++ {
		e := ev(100+2*i, 101+2*i, 0, "x")
		a.Feed(e)
	}
	if a.Len() != 3 {
		t.Fatalf("%d connections tracked, want 3", a.Len())
	}
}

// TestEvictionLRU: past MaxConns the least recently active connection goes,
// in O(1); Expire and Sweep walk from the oldest.
func TestEvictionLRU(t *testing.T) {
	var l logSink
	a := New(&l)
	a.MaxConns = 3
	t0 := time.Unix(1000, 0)
	feed := func(sock uint64, sec int) {
		e := ev(sock, sock+1, uint64(sec), "x")
		e.Time = t0.Add(time.Duration(sec) * time.Second)
		e.PID = uint32(sock)
		a.Feed(e)
	}
	feed(10, 0) // c1
	feed(20, 1) // c2
	feed(30, 2) // c3
	feed(10, 3) // c1 active again: c2 is now the oldest
	feed(40, 4) // c4 evicts c2
	if a.Len() != 3 || !strings.Contains(strings.Join(l.log, "\n"), "c2 closed false") {
		t.Fatalf("%d conns, log:\n%s", a.Len(), strings.Join(l.log, "\n"))
	}
	l.log = nil
	// Sweep: idle before t0+3.5s (only c3) and dead.
	a.Sweep(t0.Add(3500*time.Millisecond), func(c *Conn) bool { return c.Ends[0].PID == 30 })
	if a.Len() != 2 || strings.Join(l.log, "\n") != "c3 closed true" {
		t.Fatalf("after the sweep %d conns, log %q", a.Len(), l.log)
	}
	a.Expire(t0.Add(time.Hour))
	if a.Len() != 0 {
		t.Fatalf("%d conns after expiry", a.Len())
	}
}

// BenchmarkManyConns: a new connection past MaxConns costs O(1).
func BenchmarkManyConns(b *testing.B) {
	a := New(&logSink{})
	for i := range b.N {
		e := ev(uint64(2*i+10), uint64(2*i+11), 0, "x")
		a.Feed(e)
	}
}

// TestAssemblerReusedPair: a new socket pair at both addresses of an old
// connection whose one end never sent (a client that exited before its
// server answered) is a new connection, told by the inodes: the old end
// never started, so the kernel's restart alone could not say so.
func TestAssemblerReusedPair(t *testing.T) {
	var l logSink
	a := New(&l)
	old := ev(1, 2, 0, "preface")
	old.Ino, old.PeerIno = 11, 12
	a.Feed(old)
	// Socket 2 never sent. A new pair takes both addresses; its end at
	// socket 2's address sends first.
	fresh := ev(2, 1, 0, "ttrpc")
	fresh.Ino, fresh.PeerIno, fresh.Restart = 22, 21, true
	a.Feed(fresh)
	// Other inodes prove the old sockets gone: the old connection ends
	// as by a close (its open calls get their closing line).
	want := []string{`c1 e0 "preface"`, `c1 closed true`, `c2 e0 "ttrpc"`}
	l.expect(t, want...)
}

// TestAssemblerReusedPairNotAccepted: a client that exited without a close
// the syscall backend sees leaves its connection; a new pair takes its
// two addresses the other way round, and the new client's first send goes
// to a socket not accepted yet (inode 0). That receiver is not the old
// client, which had sent: a new connection, so that the new server's
// answer continues the new client's call (containerd → a new shim, after
// a docker CLI that had exited: the Task/Create answer was lost).
func TestAssemblerReusedPairNotAccepted(t *testing.T) {
	var l logSink
	a := New(&l)
	t0 := time.Unix(1000, 0)
	old := ev(1, 2, 0, "cli")
	old.Ino, old.PID, old.Time = 11, 100, t0
	a.Feed(old)
	req := ev(2, 1, 0, "create")
	req.Ino, req.PID, req.Restart, req.Time = 22, 200, true, t0.Add(time.Millisecond)
	a.Feed(req)
	// Its peer is not known yet: not the old client.
	if c := a.conns[keyOf(req)]; c.Ends[Peer(c.endIndex(c.endOf(2)))].PID != 0 {
		t.Errorf("the new client's peer is the old client: %+v", c.Ends)
	}
	resp := ev(1, 2, 0, "created")
	resp.Ino, resp.PeerIno, resp.Restart, resp.Time = 21, 22, true, t0.Add(2*time.Millisecond)
	a.Feed(resp)
	want := []string{`c1 e0 "cli"`, `c1 closed true`, `c2 e0 "create"`, `c2 e1 "created"`}
	l.expect(t, want...)
}

// A server accepted and answering right after its client's first send
// read the server's inode as 0 (the client's event is the later one in
// the ring): the same connection.
func TestAssemblerAcceptedDuringFirstSend(t *testing.T) {
	var l logSink
	a := New(&l)
	t0 := time.Unix(1000, 0)
	settings := ev(1, 2, 0, "settings")
	settings.Ino, settings.PeerIno, settings.Restart, settings.Time = 11, 12, true, t0.Add(time.Microsecond)
	a.Feed(settings)
	preface := ev(2, 1, 0, "preface")
	preface.Ino, preface.Restart, preface.Time = 12, true, t0
	a.Feed(preface)
	want := []string{`c1 e0 "settings"`, `c1 e1 "preface"`}
	l.expect(t, want...)
}

// A receiver released just after a send that reached it, before the
// sender's exit program read its inode: the same connection still.
func TestAssemblerPeerReleasedAfterSend(t *testing.T) {
	var l logSink
	a := New(&l)
	t0 := time.Unix(1000, 0)
	req := ev(2, 1, 0, "req")
	req.Ino, req.PeerIno, req.Time = 22, 11, t0
	a.Feed(req)
	resp := ev(1, 2, 0, "resp")
	resp.Ino, resp.PeerIno, resp.Time = 11, 22, t0.Add(time.Millisecond)
	a.Feed(resp)
	bye := ev(2, 1, 3, "bye")
	bye.Ino, bye.Time = 22, t0.Add(2*time.Millisecond)
	a.Feed(bye)
	want := []string{`c1 e0 "req"`, `c1 e1 "resp"`, `c1 e0 "bye"`}
	l.expect(t, want...)
}

// A restart of the same socket's counter (the kernel evicted it; same
// inode) starts the connection over but claims no close.
func TestAssemblerRestartSameSocket(t *testing.T) {
	var l logSink
	a := New(&l)
	first := ev(1, 2, 0, "first")
	first.Ino, first.PeerIno = 11, 12
	a.Feed(first)
	again := ev(1, 2, 0, "again")
	again.Ino, again.PeerIno, again.Restart = 11, 12, true
	a.Feed(again)
	want := []string{`c1 e0 "first"`, `c1 closed false`, `c2 e0 "again"`}
	l.expect(t, want...)
}

// TestCloseInOrderSeen: at Close the connections are let go in the order
// they were first seen, whatever the map holding them says, so the lines
// their decoders give as they close come the same way at every run.
func TestCloseInOrderSeen(t *testing.T) {
	var l logSink
	a := New(&l)
	var want []string
	for i := range uint64(50) {
		a.Feed(ev(2*i+1, 2*i+2, 0, "x"))
		want = append(want, fmt.Sprintf("c%d closed false", i+1))
	}
	// The oldest seen is used last: order by first sight, not by use.
	a.Feed(ev(1, 2, 1, "y"))
	l.log = nil
	a.Close()
	l.expect(t, want...)
}
