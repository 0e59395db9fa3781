// Package summary counts calls per method for --summary: how many, how
// they ended, how long they took and how many bytes they moved.
package summary

import (
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/containerdsnoop/containerdsnoop/internal/budget"
	"github.com/containerdsnoop/containerdsnoop/internal/call"
	"github.com/containerdsnoop/containerdsnoop/internal/termsafe"
)

// Summary accumulates records. Not safe for concurrent use.
type Summary struct {
	methods map[string]*method
	start   time.Time
	end     time.Time
	rng     *rand.Rand
}

// Bounds: a method name is whatever a process sends as :path or ttrpc
// names, so distinct names past MaxMethods are counted under one row,
// OtherMethods; and latencies past maxLatencies per method are kept as a
// uniform sample (reservoir), so a trace running for days holds a bounded
// amount and p50/p99 become estimates from 65,536 calls (max stays exact).
const (
	MaxMethods   = 1000
	OtherMethods = "(other methods)"
	maxLatencies = 1 << 16
)

type method struct {
	name       string
	calls      int
	statuses   map[string]int
	latencies  []time.Duration
	timed      int // calls with a latency, sampled or not
	maxLatency time.Duration
	reqBytes   int64
	respBytes  int64
	unfinished int
}

// New returns an empty Summary.
func New() *Summary {
	return &Summary{methods: map[string]*method{}, rng: rand.New(rand.NewPCG(1, 2))}
}

// Add counts one record. Every record adds its bytes; the line that ends a
// call counts the call, its status and latency.
func (s *Summary) Add(r *call.Record) {
	if s.start.IsZero() || r.Time.Before(s.start) {
		s.start = r.Time
	}
	if r.Time.After(s.end) {
		s.end = r.Time
	}
	name := r.Method
	if name == "" {
		name = "?"
	} else if r.MethodInferred() {
		// Kept apart from the proven calls, and marked as the table does.
		name = "~" + name
	}
	m := s.methods[name]
	if m == nil && len(s.methods) >= MaxMethods {
		name = OtherMethods
		m = s.methods[name]
	}
	if m == nil {
		m = &method{name: name, statuses: map[string]int{}}
		s.methods[name] = m
	}
	if r.Type == call.Request {
		m.reqBytes += int64(r.WireBytes)
	} else {
		m.respBytes += int64(r.WireBytes)
	}
	if !r.Final {
		return
	}
	m.calls++
	switch {
	case r.Status != nil && r.StatusSource == call.SourceInferred:
		m.statuses["~"+r.Status.Name()]++
	case r.Status != nil:
		m.statuses[r.Status.Name()]++
	default:
		m.unfinished++
	}
	if r.Latency > 0 {
		m.timed++
		m.maxLatency = max(m.maxLatency, r.Latency)
		if len(m.latencies) < maxLatencies {
			m.latencies = append(m.latencies, r.Latency)
		} else if i := s.rng.IntN(m.timed); i < maxLatencies {
			m.latencies[i] = r.Latency
		}
	}
}

// Row is one method's figures.
type Row struct {
	Method    string         `json:"method"`
	Calls     int            `json:"calls"`
	Errors    int            `json:"errors"`
	Statuses  map[string]int `json:"statuses"`
	Unknown   int            `json:"status_unknown,omitempty"`
	P50NS     int64          `json:"p50_ns"`
	P99NS     int64          `json:"p99_ns"`
	MaxNS     int64          `json:"max_ns"`
	ReqBytes  int64          `json:"request_bytes"`
	RespBytes int64          `json:"response_bytes"`
}

// Rows returns the methods, most called first.
func (s *Summary) Rows() []Row {
	rows := make([]Row, 0, len(s.methods))
	for _, m := range s.methods {
		r := Row{Method: m.name, Calls: m.calls, Statuses: m.statuses, Unknown: m.unfinished, ReqBytes: m.reqBytes, RespBytes: m.respBytes}
		for st, n := range m.statuses {
			if st != "OK" && st != "~OK" {
				r.Errors += n
			}
		}
		if len(m.latencies) > 0 {
			l := slices.Clone(m.latencies)
			slices.Sort(l)
			r.P50NS, r.P99NS, r.MaxNS = int64(quantile(l, 0.50)), int64(quantile(l, 0.99)), int64(m.maxLatency)
		}
		rows = append(rows, r)
	}
	sort.Slice(rows, func(i, j int) bool {
		if rows[i].Calls != rows[j].Calls {
			return rows[i].Calls > rows[j].Calls
		}
		return rows[i].Method < rows[j].Method
	})
	return rows
}

// quantile is the nearest-rank quantile of sorted values.
func quantile(sorted []time.Duration, q float64) time.Duration {
	i := int(q*float64(len(sorted))+0.999999) - 1
	return sorted[max(0, min(i, len(sorted)-1))]
}

// WriteTable prints the summary for people.
func (s *Summary) WriteTable(w io.Writer) error {
	rows := s.Rows()
	fmt.Fprintf(w, "%-60s %7s %7s %10s %10s %10s %10s %10s  %s\n", "METHOD", "CALLS", "ERRORS", "P50", "P99", "MAX", "REQ_BYTES", "RESP_BYTES", "STATUSES")
	for _, r := range rows {
		var st []string
		for name, n := range r.Statuses {
			st = append(st, fmt.Sprintf("%s=%d", name, n))
		}
		if r.Unknown > 0 {
			st = append(st, fmt.Sprintf("unknown=%d", r.Unknown))
		}
		sort.Strings(st)
		// Method and status names come from the wire (a ttrpc name is any
		// string a process sends): escaped for the terminal.
		_, err := fmt.Fprintf(w, "%-60s %7d %7d %10s %10s %10s %10d %10d  %s\n", termsafe.Escape(r.Method), r.Calls, r.Errors,
			dur(r.P50NS), dur(r.P99NS), dur(r.MaxNS), r.ReqBytes, r.RespBytes, termsafe.Escape(strings.Join(st, " ")))
		if err != nil {
			return err
		}
	}
	for _, d := range budget.Drops() {
		if _, err := fmt.Fprintf(w, "DROPPED %d %s\n", d.Count, d.What); err != nil {
			return err
		}
	}
	return nil
}

func dur(ns int64) string {
	if ns == 0 {
		return "-"
	}
	return time.Duration(ns).Round(time.Microsecond).String()
}

// WriteJSON prints the summary as one object with "type": "summary".
func (s *Summary) WriteJSON(w io.Writer) error {
	out := struct {
		Type    string `json:"type"`
		Start   string `json:"start,omitempty"`
		End     string `json:"end,omitempty"`
		Methods []Row  `json:"methods"`
		// Dropped: what the decoders dropped to stay within their limits.
		Dropped []budget.Drop `json:"dropped,omitempty"`
	}{Type: "summary", Methods: s.Rows(), Dropped: budget.Drops()}
	if !s.start.IsZero() {
		out.Start, out.End = s.start.Format(time.RFC3339Nano), s.end.Format(time.RFC3339Nano)
	}
	b, err := json.Marshal(out)
	if err != nil {
		return err
	}
	_, err = w.Write(append(b, '\n'))
	return err
}
