// Package callfilter selects which decoded calls are printed. Filters on
// what a line already says (method, namespace, comm) pass or drop lines at
// once; filters on how a call ended (--errors, --slow) hold a call's lines
// until its end and print them together, request first.
package callfilter

import (
	"container/list"
	"path"
	"regexp"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"

	"github.com/containerdsnoop/containerdsnoop/internal/budget"
	"github.com/containerdsnoop/containerdsnoop/internal/call"
)

// Options are the filters; zero values filter nothing.
type Options struct {
	// Method keeps calls whose method matches; calls whose method is
	// unknown never match. An inferred method (call.SourceInferred) is
	// matched as shown, labelled: a user asking for PullImage wants the
	// calls that are probably PullImage too. A line whose inference was
	// dropped (its note says so) no longer has the method and is not kept.
	Method *regexp.Regexp
	// Namespace keeps calls with this containerd-namespace header.
	Namespace string
	// Comm keeps lines whose sender or peer has this command name.
	Comm string
	// Pod keeps calls about a pod whose "namespace/name" matches this
	// glob (path.Match); calls about no known pod never match.
	Pod string
	// Errors keeps calls that ended with a non-OK status.
	Errors bool
	// Slow keeps calls that took at least this long.
	Slow time.Duration
}

// Bounds on what --errors and --slow hold, since any process can open
// calls and never end them (or close the connection, or just exit): the
// lines of one unfinished call (a long stream), the calls held at once
// and the bytes their lines stand for. Past a bound the oldest held call's
// lines are dropped (counted in budget.HeldCalls); if that call ends and
// matches, its end line is still printed. A connection's held calls are
// released when it closes: their ends will never come.
const (
	maxHeld      = 256
	maxHeldCalls = 4096
	maxHeldBytes = 32 << 20
)

// Filter passes the lines of selected calls to next.
type Filter struct {
	opts   Options
	next   func(*call.Record)
	held   map[key]*heldCall
	byConn map[uint64]map[key]*heldCall
	order  list.List // of *heldCall, oldest first
	bytes  int
}

type heldCall struct {
	k     key
	recs  []*call.Record
	bytes int
	first time.Time
	el    *list.Element
}

type key struct {
	conn   uint64
	stream uint32
	proto  string
}

// New returns a Filter; when opts filter nothing it is a plain pass-through.
func New(opts Options, next func(*call.Record)) *Filter {
	return &Filter{opts: opts, next: next, held: map[key]*heldCall{}, byConn: map[uint64]map[key]*heldCall{}}
}

// Add takes the next line. r is valid only during the call (decoders
// reuse theirs): a line held for its call's end is copied.
func (f *Filter) Add(r *call.Record) {
	if !f.lineMatches(r) {
		return
	}
	if !f.opts.Errors && f.opts.Slow == 0 {
		f.next(r)
		return
	}
	k := key{r.Conn, r.Stream, r.Protocol}
	if !r.Final {
		f.hold(k, r)
		return
	}
	var held []*call.Record
	if h := f.held[k]; h != nil {
		held = h.recs
		f.release(h)
	}
	if !f.endMatches(r) {
		return
	}
	for _, h := range held {
		f.next(h)
	}
	f.next(r)
}

func (f *Filter) hold(k key, r *call.Record) {
	h := f.held[k]
	if h == nil {
		h = &heldCall{k: k, first: r.Time}
		h.el = f.order.PushBack(h)
		f.held[k] = h
		if f.byConn[k.conn] == nil {
			f.byConn[k.conn] = map[key]*heldCall{}
		}
		f.byConn[k.conn][k] = h
	}
	if len(h.recs) >= maxHeld {
		return
	}
	n := heldSize(r)
	cp := *r
	h.recs = append(h.recs, &cp)
	h.bytes += n
	f.bytes += n
	for (len(f.held) > maxHeldCalls || f.bytes > maxHeldBytes) && f.order.Len() > 1 {
		f.release(f.order.Front().Value.(*heldCall))
		budget.HeldCalls.Add(1)
	}
}

// heldSize is what a held line counts against maxHeldBytes: its size on
// the wire, or, for a record that does not carry it (one no bytes made,
// such as a call ended by its connection closing), what it holds (its raw
// bytes and its decoded message, encoded). Counting ttrpc lines (which
// carried no size before) as one byte let --errors hold 4,096 calls of up
// to 4 MiB each.
func heldSize(r *call.Record) int {
	n := r.WireBytes
	if n == 0 {
		n = len(r.Raw)
		if r.Message != nil {
			n += proto.Size(r.Message)
		}
	}
	return max(n, 1)
}

func (f *Filter) release(h *heldCall) {
	f.order.Remove(h.el)
	delete(f.held, h.k)
	if m := f.byConn[h.k.conn]; m != nil {
		delete(m, h.k)
		if len(m) == 0 {
			delete(f.byConn, h.k.conn)
		}
	}
	f.bytes -= h.bytes
}

// ConnClosed releases what is held for the calls of a connection that has
// closed: their ends will never be seen.
func (f *Filter) ConnClosed(conn uint64) {
	for _, h := range f.byConn[conn] {
		f.release(h)
	}
}

// Expire drops the held lines of calls that started before t, counted in
// budget.HeldCalls; an end that comes later is still printed alone.
func (f *Filter) Expire(t time.Time) {
	for f.order.Len() > 0 {
		h := f.order.Front().Value.(*heldCall)
		if !h.first.Before(t) {
			return
		}
		f.release(h)
		budget.HeldCalls.Add(1)
	}
}

// Held is how many calls are held, for tests.
func (f *Filter) Held() int { return len(f.held) }

func (f *Filter) lineMatches(r *call.Record) bool {
	o := &f.opts
	if o.Method != nil && (r.Method == "" || !o.Method.MatchString(r.Method)) {
		return false
	}
	if o.Namespace != "" && r.Namespace != o.Namespace {
		return false
	}
	if o.Comm != "" && r.Comm != o.Comm && r.PeerComm != o.Comm {
		return false
	}
	if o.Pod != "" {
		if r.Pod.Name == "" {
			return false
		}
		if ok, _ := path.Match(o.Pod, r.Pod.Namespace+"/"+r.Pod.Name); !ok {
			return false
		}
	}
	return true
}

func (f *Filter) endMatches(r *call.Record) bool {
	if f.opts.Errors && (r.Status == nil || r.Status.Code == codes.OK) {
		return false
	}
	if f.opts.Slow > 0 && r.Latency < f.opts.Slow {
		return false
	}
	return true
}
