package wirerec

import (
	"context"
	"net"
	"strings"
	"sync"
)

// Recorder records every Write made on both ends of the unix-socket
// connections that its dialer opens to its listener.
//
// Use one Recorder per listener, and open every connection to that listener
// through Recorder.Dial: the Recorder pairs the client end and the server end
// of a connection by order (the k-th connection dialled is the k-th
// accepted), which holds because dials are serialized and a unix socket's
// accept queue is first-in, first-out.
//
// A Write is appended as a Record before the bytes are handed to the socket,
// so that a peer's reaction to those bytes can never be recorded ahead of
// them; if the socket then accepts fewer bytes, the record is cut to what was
// accepted (and dropped from Records if nothing was).
type Recorder struct {
	mu   sync.Mutex
	recs []Record

	dialMu   sync.Mutex
	qmu      sync.Mutex
	nextConn uint32
	pending  []uint32 // numbers reserved by Dial, not yet taken by Accept
}

// NewRecorder returns an empty Recorder.
func NewRecorder() *Recorder { return &Recorder{} }

// Records returns a copy of the records so far, in write order.
func (r *Recorder) Records() []Record {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]Record, 0, len(r.recs))
	for _, rec := range r.recs {
		if len(rec.Data) == 0 {
			continue
		}
		out = append(out, Record{Conn: rec.Conn, FromServer: rec.FromServer, Data: append([]byte(nil), rec.Data...)})
	}
	return out
}

func (r *Recorder) add(conn uint32, fromServer bool, p []byte) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.recs = append(r.recs, Record{Conn: conn, FromServer: fromServer, Data: append([]byte(nil), p...)})
	return len(r.recs) - 1
}

func (r *Recorder) cut(i, n int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.recs[i].Data = r.recs[i].Data[:n]
}

// Listen opens a unix listener at path whose accepted connections are
// recorded as the server side.
func (r *Recorder) Listen(path string) (net.Listener, error) {
	l, err := net.Listen("unix", path)
	if err != nil {
		return nil, err
	}
	return r.WrapListener(l), nil
}

// WrapListener returns l with its accepted connections recorded as the
// server side.
func (r *Recorder) WrapListener(l net.Listener) net.Listener {
	return &listener{Listener: l, r: r}
}

// Dial connects to the unix socket at addr and returns the client side of
// the connection, recorded. addr is a filesystem path, optionally prefixed
// "unix://" or "unix:" (with a "unix:///path" target and a custom dialer,
// grpc-go passes "unix:///path"). Its signature fits grpc.WithContextDialer.
func (r *Recorder) Dial(ctx context.Context, addr string) (net.Conn, error) {
	if p, ok := strings.CutPrefix(addr, "unix://"); ok {
		addr = p
	} else if p, ok := strings.CutPrefix(addr, "unix:"); ok {
		addr = p
	}
	r.dialMu.Lock()
	defer r.dialMu.Unlock()

	// Reserve the number before connecting: once connect returns, the
	// server may accept the connection before this goroutine runs again.
	r.qmu.Lock()
	r.nextConn++
	n := r.nextConn
	r.pending = append(r.pending, n)
	r.qmu.Unlock()

	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", addr)
	if err != nil {
		r.qmu.Lock()
		for i := len(r.pending) - 1; i >= 0; i-- {
			if r.pending[i] == n {
				r.pending = append(r.pending[:i], r.pending[i+1:]...)
				break
			}
		}
		r.qmu.Unlock()
		return nil, err
	}
	return &Conn{Conn: c, r: r, num: n, fromServer: false}, nil
}

type listener struct {
	net.Listener
	r *Recorder
}

func (l *listener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	r := l.r
	r.qmu.Lock()
	var n uint32
	if len(r.pending) > 0 {
		n = r.pending[0]
		r.pending = r.pending[1:]
	} else {
		// Not dialled through the Recorder: give it a number of its own;
		// its client side is not recorded.
		r.nextConn++
		n = r.nextConn
	}
	r.qmu.Unlock()
	return &Conn{Conn: c, r: r, num: n, fromServer: true}, nil
}

// Conn is one recorded end of a connection.
type Conn struct {
	net.Conn
	r          *Recorder
	num        uint32
	fromServer bool
}

// Num is the connection's number in the recording (from 1).
func (c *Conn) Num() uint32 { return c.num }

// FromServer reports whether this is the server end.
func (c *Conn) FromServer() bool { return c.fromServer }

// Write records p, then writes it.
func (c *Conn) Write(p []byte) (int, error) {
	if len(p) == 0 {
		return c.Conn.Write(p)
	}
	i := c.r.add(c.num, c.fromServer, p)
	n, err := c.Conn.Write(p)
	if n < len(p) {
		if n < 0 {
			n = 0
		}
		c.r.cut(i, n)
	}
	return n, err
}
