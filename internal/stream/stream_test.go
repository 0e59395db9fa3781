package stream

import (
	"fmt"
	"strings"
	"testing"

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
	if got := strings.Join(l.log, "\n"); got != strings.Join(want, "\n") {
		t.Fatalf("got\n%s\nwant\n%s", got, strings.Join(want, "\n"))
	}
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
