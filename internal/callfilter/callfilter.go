// Package callfilter selects which decoded calls are printed. Filters on
// what a line already says (method, namespace, comm) pass or drop lines at
// once; filters on how a call ended (--errors, --slow) hold a call's lines
// until its end and print them together, request first.
package callfilter

import (
	"path"
	"regexp"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/containerdsnoop/containerdsnoop/internal/call"
)

// Options are the filters; zero values filter nothing.
type Options struct {
	// Method keeps calls whose method matches; calls whose method is
	// unknown never match.
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

// maxHeld bounds the lines held for one unfinished call (a long stream).
const maxHeld = 256

// Filter passes the lines of selected calls to next.
type Filter struct {
	opts Options
	next func(*call.Record)
	held map[key][]*call.Record
}

type key struct {
	conn   uint64
	stream uint32
	proto  string
}

// New returns a Filter; when opts filter nothing it is a plain pass-through.
func New(opts Options, next func(*call.Record)) *Filter {
	return &Filter{opts: opts, next: next, held: map[key][]*call.Record{}}
}

// Add takes the next line. Records are retained while their call is held.
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
		if h := f.held[k]; len(h) < maxHeld {
			f.held[k] = append(h, r)
		}
		return
	}
	held := f.held[k]
	delete(f.held, k)
	if !f.endMatches(r) {
		return
	}
	for _, h := range held {
		f.next(h)
	}
	f.next(r)
}

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
