package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
)

// benchRecord is one line of the results file scripts/bench.sh writes: one
// measurement (a config, a mode, a round).
type benchRecord struct {
	Kind   string `json:"kind"`   // load, writeloop, conns, scale, info
	Config string `json:"config"` // untraced, json, table, strace; traced (writeloop)
	Mode   string `json:"mode"`   // full, rate (load)
	Round  int    `json:"round"`

	Client   *clientResult    `json:"client,omitempty"`
	Write    *writeLoopResult `json:"writeloop,omitempty"`
	ConnsRes *connsResult     `json:"conns,omitempty"`
	// The tracer's memory when the load was done (ring counted once).
	Mem *memResult `json:"tracer_mem,omitempty"`
	// scale: which axis this point is on (rate, size, conns) and where.
	// Rate 0 is full speed.
	Axis  string  `json:"axis,omitempty"`
	Value float64 `json:"value,omitempty"`

	ClkTck int `json:"clk_tck"`
	// The tracer (containerdsnoop or strace) over the load: CPU ticks from
	// just before the client started until it had drained, and that time.
	TracerTicks   int64   `json:"tracer_ticks"`
	TracerWindowS float64 `json:"tracer_window_s"`
	TracerHWMKB   int64   `json:"tracer_hwm_kb"`
	TracerRSSKB   int64   `json:"tracer_rss_kb"`
	TracerRSS0KB  int64   `json:"tracer_rss_before_kb"`
	// RssAnon, and the resident size of the BPF map mappings (the ring
	// buffer, whose data pages are mapped twice and so counted twice).
	TracerAnonKB   int64 `json:"tracer_anon_kb"`
	TracerBPFMapKB int64 `json:"tracer_bpfmap_kb"`
	// The server's CPU over the client's run: it includes the kernel time
	// of the BPF programs (or ptrace stops) its own writes trigger.
	ServerTicks int64 `json:"server_ticks"`
	// Decoded is how many ListContainers response lines the tracer wrote
	// (JSON runs only; -1 when not counted). Lost* are the tracer's exit
	// totals (-1 when not applicable).
	Decoded    int64 `json:"decoded"`
	LostEvents int64 `json:"lost_events"`
	LostBytes  int64 `json:"lost_bytes"`
	Faults     int64 `json:"faults"`

	// info
	Kernel  string `json:"kernel,omitempty"`
	CPUs    int    `json:"cpus,omitempty"`
	CPU     string `json:"cpu_model,omitempty"`
	Backend string `json:"backend,omitempty"`
	Server  string `json:"server,omitempty"`
	Go      string `json:"go,omitempty"`
	Params  string `json:"params,omitempty"`
}

func runReport(args []string) error {
	fs := flag.NewFlagSet("report", flag.ExitOnError)
	plotFile := fs.String("plot", "", "also draw how the tracer's cost grows (the scale records) into this PNG file")
	fs.Parse(args)
	if fs.NArg() != 1 {
		return errors.New("report: want one results file")
	}
	f, err := os.Open(fs.Arg(0))
	if err != nil {
		return err
	}
	defer f.Close()
	var recs []benchRecord
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		if strings.TrimSpace(sc.Text()) == "" {
			continue
		}
		var r benchRecord
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			return fmt.Errorf("report: %v: %s", err, sc.Text())
		}
		if r.ClkTck == 0 {
			r.ClkTck = 100
		}
		recs = append(recs, r)
	}
	if err := sc.Err(); err != nil {
		return err
	}
	if *plotFile != "" {
		if err := plotScale(*plotFile, recs); err != nil {
			return fmt.Errorf("plot: %w", err)
		}
	}
	if !report(os.Stdout, recs) {
		// The table is the product; a missed budget is its content, not
		// a failure of the run. Exit status 3 lets a caller tell.
		os.Exit(3)
	}
	return nil
}

func median(xs []float64) float64 {
	if len(xs) == 0 {
		return nan
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

var nan = func() float64 { var z float64; return z / z }()

func isNaN(x float64) bool { return x != x }

func fmtF(format string, x float64) string {
	if isNaN(x) {
		return "—"
	}
	return fmt.Sprintf(format, x)
}

// The budgets of issue 13, as ratios to the untraced run of the same round
// where they are ratios.
const (
	budgetWrites     = 1.05 // unrelated write(2), traced / untraced
	budgetP50        = 1.05 // fixed rate
	budgetP99        = 1.10
	budgetCores      = 0.05 // tracer CPU at a fixed rate (JSON)
	budgetThroughput = 0.90 // full speed, with 100% decoded and zero loss
	budgetMemMiB     = 48.0 // tracer memory after the short connections, ring counted once
)

var configNames = map[string]string{
	"untraced": "(a) untraced",
	"json":     "(b) containerdsnoop --output json",
	"table":    "(c) containerdsnoop table",
	"strace":   "(d) strace -f -e write,writev,sendmsg -s 65536 -xx",
}

// loadKey names a load: "full" or a fixed rate.
type loadKey struct {
	mode string
	rate float64
}

func (k loadKey) String() string {
	if k.mode == "full" {
		return "full speed"
	}
	return fmt.Sprintf("fixed %.0f/s", k.rate)
}

func keyOf(r benchRecord) loadKey {
	if r.Mode == "full" {
		return loadKey{mode: "full"}
	}
	return loadKey{mode: "rate", rate: r.Client.Rate}
}

// loadKeys lists the loads present, fixed rates ascending, then full speed.
func loadKeys(recs []benchRecord) []loadKey {
	var keys []loadKey
	for _, r := range recs {
		if r.Kind == "load" && r.Client != nil && !slices.Contains(keys, keyOf(r)) {
			keys = append(keys, keyOf(r))
		}
	}
	slices.SortFunc(keys, func(a, b loadKey) int {
		if a.mode != b.mode {
			return strings.Compare(b.mode, a.mode) // rate before full
		}
		return int(a.rate - b.rate)
	})
	return keys
}

type row struct {
	load                           loadKey
	config                         string
	rounds, used                   int     // rounds measured, rounds in the ratios
	cps, p50, p99                  float64 // medians, absolute
	cpsR, p50R, p99R               float64 // medians of per-round ratios to untraced
	cpuPer1k, cores                float64 // tracer
	hwmMiB                         float64 // max over rounds
	srvPer1k, srvR                 float64 // server CPU ms per 1000 calls, ratio
	decoded, total                 int64
	lostEvents, lostBytes, faults  int64
	hasDecoded, hasLoss, hasTracer bool
	unsent, errors                 int64
}

func (r row) completeness() float64 {
	if !r.hasDecoded || r.total == 0 {
		return nan
	}
	return 100 * float64(r.decoded) / float64(r.total)
}

func (r row) lossFree() bool { return r.lostEvents == 0 && r.lostBytes == 0 && r.faults == 0 }

// sustained tells, per round, whether the untraced run of a fixed-rate
// load kept up: all calls sent, the rate reached, and a median latency
// within 5x of the best untraced round. A round where the machine could not
// carry the load even without a tracer (other work on a shared machine)
// says nothing about the tracer's latency cost: its latency ratios are left
// out (and counted in the "rounds" column).
func sustained(base map[int]benchRecord, k loadKey) map[int]bool {
	ok := map[int]bool{}
	best := 0.0
	for _, b := range base {
		if best == 0 || b.Client.P50us < best {
			best = b.Client.P50us
		}
	}
	for round, b := range base {
		c := b.Client
		ok[round] = k.mode == "full" ||
			c.Unsent == 0 && c.CallsPerSec >= 0.97*k.rate && c.P50us <= 5*best
	}
	return ok
}

func buildRows(recs []benchRecord) []row {
	type key struct {
		load   loadKey
		config string
	}
	by := map[key][]benchRecord{}
	for _, r := range recs {
		if r.Kind == "load" && r.Client != nil {
			k := key{keyOf(r), r.Config}
			by[k] = append(by[k], r)
		}
	}
	var rows []row
	for _, lk := range loadKeys(recs) {
		base := map[int]benchRecord{}
		for _, r := range by[key{lk, "untraced"}] {
			base[r.Round] = r
		}
		valid := sustained(base, lk)
		for _, cfg := range []string{"untraced", "json", "table", "strace"} {
			rs := by[key{lk, cfg}]
			if len(rs) == 0 {
				continue
			}
			out := row{load: lk, config: cfg, rounds: len(rs)}
			var cps, p50, p99, cpsR, p50R, p99R, cpu, cores, srv, srvR []float64
			for _, r := range rs {
				c := r.Client
				tick := 1000 / float64(r.ClkTck) // ms per tick
				cps = append(cps, c.CallsPerSec)
				p50 = append(p50, c.P50us)
				p99 = append(p99, c.P99us)
				out.unsent += c.Unsent
				out.errors += c.Errors
				calls := float64(c.CallsTotal)
				if calls > 0 {
					srv = append(srv, float64(r.ServerTicks)*tick/calls*1000)
				}
				if b, ok := base[r.Round]; ok && valid[r.Round] && b.Client.CallsTotal > 0 {
					out.used++
					cpsR = append(cpsR, c.CallsPerSec/b.Client.CallsPerSec)
					p50R = append(p50R, c.P50us/b.Client.P50us)
					p99R = append(p99R, c.P99us/b.Client.P99us)
					bs := float64(b.ServerTicks) / float64(b.Client.CallsTotal)
					if bs > 0 && calls > 0 {
						srvR = append(srvR, float64(r.ServerTicks)/calls/bs)
					}
				}
				if cfg != "untraced" {
					out.hasTracer = true
					if calls > 0 {
						cpu = append(cpu, float64(r.TracerTicks)*tick/calls*1000)
					}
					if r.TracerWindowS > 0 {
						cores = append(cores, float64(r.TracerTicks)/float64(r.ClkTck)/r.TracerWindowS)
					}
					out.hwmMiB = max(out.hwmMiB, float64(r.TracerHWMKB)/1024)
				}
				if r.Decoded >= 0 && cfg != "untraced" && cfg != "strace" {
					out.hasDecoded = true
					out.decoded += r.Decoded
					out.total += c.CallsTotal
				}
				if r.LostEvents >= 0 && cfg != "untraced" && cfg != "strace" {
					out.hasLoss = true
					out.lostEvents += r.LostEvents
					out.lostBytes += r.LostBytes
					out.faults += r.Faults
				}
			}
			out.cps, out.p50, out.p99 = median(cps), median(p50), median(p99)
			out.cpsR, out.p50R, out.p99R = median(cpsR), median(p50R), median(p99R)
			out.cpuPer1k, out.cores = median(cpu), median(cores)
			out.srvPer1k, out.srvR = median(srv), median(srvR)
			if !out.hasTracer {
				out.cpuPer1k, out.cores = nan, nan
			}
			rows = append(rows, out)
		}
	}
	return rows
}

// report prints the tables and the verdicts; it returns false when a
// budget was missed.
func report(w io.Writer, recs []benchRecord) bool {
	for _, r := range recs {
		if r.Kind == "info" {
			fmt.Fprintf(w, "machine: %d CPUs (%s), kernel %s, %s; backend %s\n", r.CPUs, r.CPU, r.Kernel, r.Go, r.Backend)
			fmt.Fprintf(w, "load:    %s\n", r.Server)
			fmt.Fprintf(w, "run:     %s\n\n", r.Params)
		}
	}
	rows := buildRows(recs)
	fmt.Fprintln(w, "Medians over rounds; ×untraced are medians of per-round ratios to the untraced run of the same round")
	fmt.Fprintln(w, "(rounds = rounds measured / rounds whose untraced run sustained the fixed rate, used in the ratios).")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "| load | config | rounds | calls/s | ×untraced | p50 µs | ×untraced | p99 µs | ×untraced | tracer CPU ms/1k calls | tracer cores | tracer peak RSS MiB | server CPU ms/1k calls (×untraced) | decoded/calls | lost events (bytes) |")
	fmt.Fprintln(w, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
	for _, r := range rows {
		hwm, compl, lost := "—", "—", "—"
		if r.hasTracer {
			hwm = fmt.Sprintf("%.1f", r.hwmMiB)
		}
		if r.hasDecoded {
			compl = fmt.Sprintf("%.2f%% (%d/%d)", r.completeness(), r.decoded, r.total)
		}
		if r.hasLoss {
			lost = fmt.Sprintf("%d (%d)", r.lostEvents, r.lostBytes)
			if r.faults > 0 {
				lost += fmt.Sprintf(", %d faults", r.faults)
			}
		}
		cfg := configNames[r.config]
		if r.unsent > 0 {
			cfg += fmt.Sprintf(" [%d calls never sent]", r.unsent)
		}
		if r.errors > 0 {
			cfg += fmt.Sprintf(" [%d errors]", r.errors)
		}
		fmt.Fprintf(w, "| %s | %s | %d/%d | %.0f | %s | %.0f | %s | %.0f | %s | %s | %s | %s | %s (%s) | %s | %s |\n",
			r.load, cfg, r.rounds, r.used, r.cps, fmtF("%.2fx", r.cpsR), r.p50, fmtF("%.2fx", r.p50R), r.p99, fmtF("%.2fx", r.p99R),
			fmtF("%.1f", r.cpuPer1k), fmtF("%.3f", r.cores), hwm, fmtF("%.1f", r.srvPer1k), fmtF("%.2fx", r.srvR), compl, lost)
	}

	// Every round, for the record: a shared machine is noisy.
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Every round (calls/s, p50 µs, p99 µs; * = the untraced run of that round did not sustain the fixed rate):")
	fmt.Fprintln(w)
	maxRound := 0
	for _, r := range recs {
		maxRound = max(maxRound, r.Round)
	}
	fmt.Fprint(w, "| load | config |")
	for i := 1; i <= maxRound; i++ {
		fmt.Fprintf(w, " round %d |", i)
	}
	fmt.Fprint(w, "\n|---|---|")
	for i := 1; i <= maxRound; i++ {
		fmt.Fprint(w, "---:|")
	}
	fmt.Fprintln(w)
	for _, lk := range loadKeys(recs) {
		base := map[int]benchRecord{}
		for _, r := range recs {
			if r.Kind == "load" && r.Client != nil && keyOf(r) == lk && r.Config == "untraced" {
				base[r.Round] = r
			}
		}
		valid := sustained(base, lk)
		for _, cfg := range []string{"untraced", "json", "table", "strace"} {
			cells := make([]string, maxRound+1)
			any := false
			for _, r := range recs {
				if r.Kind == "load" && r.Client != nil && keyOf(r) == lk && r.Config == cfg && r.Round <= maxRound {
					c := r.Client
					mark := ""
					if !valid[r.Round] {
						mark = "*"
					}
					cells[r.Round] = fmt.Sprintf("%.0f, %.0f, %.0f%s", c.CallsPerSec, c.P50us, c.P99us, mark)
					any = true
				}
			}
			if !any {
				continue
			}
			fmt.Fprintf(w, "| %s | %s |", lk, configNames[cfg])
			for i := 1; i <= maxRound; i++ {
				fmt.Fprintf(w, " %s |", cells[i])
			}
			fmt.Fprintln(w)
		}
	}

	var wl struct{ base, traced map[int]*writeLoopResult }
	wl.base, wl.traced = map[int]*writeLoopResult{}, map[int]*writeLoopResult{}
	for _, r := range recs {
		if r.Kind == "writeloop" && r.Write != nil {
			if r.Config == "untraced" {
				wl.base[r.Round] = r.Write
			} else {
				wl.traced[r.Round] = r.Write
			}
		}
	}
	var nullR, pipeR, nullB, nullT, pipeB, pipeT, ppidB, ppidT, ppidR []float64
	for round, t := range wl.traced {
		b, ok := wl.base[round]
		if !ok {
			continue
		}
		nullB, nullT = append(nullB, b.DevNullNsOp), append(nullT, t.DevNullNsOp)
		pipeB, pipeT = append(pipeB, b.PipeNsOp), append(pipeT, t.PipeNsOp)
		nullR = append(nullR, t.DevNullNsOp/b.DevNullNsOp)
		pipeR = append(pipeR, t.PipeNsOp/b.PipeNsOp)
		if b.GetppidNsOp > 0 && t.GetppidNsOp > 0 {
			ppidB, ppidT = append(ppidB, b.GetppidNsOp), append(ppidT, t.GetppidNsOp)
			ppidR = append(ppidR, t.GetppidNsOp/b.GetppidNsOp)
		}
	}
	if len(nullR) > 0 {
		fmt.Fprintln(w)
		fmt.Fprintln(w, "Unrelated work: write(2) of 64 bytes in a tight loop, time per write, medians over rounds (tracer attached, --output json --socket <bench socket>).")
		fmt.Fprintln(w)
		fmt.Fprintln(w, "| target | untraced ns/write | traced ns/write | ×untraced (median of per-round ratios) |")
		fmt.Fprintln(w, "|---|---:|---:|---:|")
		fmt.Fprintf(w, "| /dev/null | %.0f | %.0f | %.2fx |\n", median(nullB), median(nullT), median(nullR))
		fmt.Fprintf(w, "| pipe | %.0f | %.0f | %.2fx |\n", median(pipeB), median(pipeT), median(pipeR))
		if len(ppidR) > 0 {
			fmt.Fprintf(w, "| getppid(2), not a write | %.0f | %.0f | %.2fx |\n", median(ppidB), median(ppidT), median(ppidR))
		}
	}

	var conns *benchRecord
	for i := range recs {
		if recs[i].Kind == "conns" {
			conns = &recs[i]
		}
	}
	if conns != nil {
		fmt.Fprintln(w)
		fmt.Fprintln(w, "Memory: tracer (--output json) before and after short connections, each making one call.")
		fmt.Fprintln(w)
		fmt.Fprintln(w, "| connections | calls | tracer RSS before MiB | RSS after MiB | of which ring-buffer mapping MiB | of which anonymous (heap) MiB | peak RSS (VmHWM) MiB | decoded/calls | lost events (bytes) |")
		fmt.Fprintln(w, "|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
		c := conns.ConnsRes
		fmt.Fprintf(w, "| %d | %d | %.1f | %.1f | %.1f | %.1f | %.1f | %d/%d | %d (%d) |\n", c.Conns, c.Calls,
			float64(conns.TracerRSS0KB)/1024, float64(conns.TracerRSSKB)/1024, float64(conns.TracerBPFMapKB)/1024,
			float64(conns.TracerAnonKB)/1024, float64(conns.TracerHWMKB)/1024,
			conns.Decoded, c.Calls, conns.LostEvents, conns.LostBytes)
		if m := conns.Mem; m != nil {
			fmt.Fprintf(w, "\nAfter them, counting the ring buffer once (PSS): %.1f MiB, of which the ring buffer %.1f MiB and anonymous memory (heap) %.1f MiB; RSS %.1f MiB counts the ring's %.1f MiB twice.\n",
				m.realMiB(), float64(m.RingPSSKB)/1024, float64(m.AnonKB)/1024, float64(m.RSSKB)/1024, float64(m.RingPSSKB)/1024)
		}
	}
	reportScale(w, recs)

	// Verdicts.
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Budgets:")
	ok := true
	verdict := func(pass bool, format string, args ...any) {
		mark := "PASS"
		if !pass {
			mark, ok = "FAIL", false
		}
		fmt.Fprintf(w, "- %s  %s\n", mark, fmt.Sprintf(format, args...))
	}
	find := func(lk loadKey, cfg string) *row {
		for i := range rows {
			if rows[i].load == lk && rows[i].config == cfg {
				return &rows[i]
			}
		}
		return nil
	}
	for _, lk := range loadKeys(recs) {
		for _, cfg := range []string{"json", "table"} {
			r := find(lk, cfg)
			if r == nil {
				continue
			}
			name := configNames[cfg] + ", " + lk.String()
			if lk.mode == "rate" {
				if r.used == 0 {
					verdict(false, "%s: no round whose untraced run sustained the rate: latency not measurable on this machine now", name)
				} else {
					verdict(r.p50R <= budgetP50, "%s: p50 %s ≤ %.2fx", name, fmtF("%.2fx", r.p50R), budgetP50)
					verdict(r.p99R <= budgetP99, "%s: p99 %s ≤ %.2fx", name, fmtF("%.2fx", r.p99R), budgetP99)
				}
				if cfg == "json" {
					verdict(r.cores <= budgetCores, "%s: tracer CPU %s cores ≤ %.2f", name, fmtF("%.3f", r.cores), budgetCores)
					verdict(r.hasDecoded && r.decoded == r.total, "%s: completeness %s = 100%%", name, fmtF("%.2f%%", r.completeness()))
				}
				if r.hasLoss {
					verdict(r.lossFree(), "%s: zero loss (lost %d events, %d bytes)", name, r.lostEvents, r.lostBytes)
				}
				continue
			}
			verdict(r.cpsR >= budgetThroughput, "%s: throughput %s ≥ %.2fx", name, fmtF("%.2fx", r.cpsR), budgetThroughput)
			if cfg == "json" {
				complete := r.hasDecoded && r.decoded == r.total
				switch {
				case complete && r.lossFree():
					verdict(true, "%s: completeness 100%% and zero loss", name)
				case !complete && !r.lossFree():
					verdict(false, "%s: completeness %s, shortfall of %d calls reported as loss (%d events, %d bytes)",
						name, fmtF("%.2f%%", r.completeness()), r.total-r.decoded, r.lostEvents, r.lostBytes)
				case !complete:
					verdict(false, "%s: completeness %s with NO loss reported (%d calls silently missing)",
						name, fmtF("%.2f%%", r.completeness()), r.total-r.decoded)
				default:
					verdict(false, "%s: complete output but loss reported (%d events)", name, r.lostEvents)
				}
			} else if r.hasLoss {
				verdict(r.lossFree(), "%s: zero loss (lost %d events, %d bytes)", name, r.lostEvents, r.lostBytes)
			}
		}
	}
	if len(nullR) > 0 {
		verdict(median(nullR) <= budgetWrites && median(pipeR) <= budgetWrites, "unrelated writes: /dev/null %.2fx, pipe %.2fx ≤ %.2fx", median(nullR), median(pipeR), budgetWrites)
	}
	if conns != nil {
		if m := conns.Mem; m != nil {
			verdict(m.realMiB() <= budgetMemMiB, "tracer memory after %d connections: %.1f MiB ≤ %.0f MiB (PSS: the ring buffer counted once, %.1f MiB of it; RSS counts it twice: %.1f MiB)",
				conns.ConnsRes.Conns, m.realMiB(), budgetMemMiB, float64(m.RingPSSKB)/1024, float64(m.RSSKB)/1024)
		} else {
			mib := float64(conns.TracerRSSKB) / 1024
			verdict(mib <= budgetMemMiB, "tracer RSS after %d connections: %.1f MiB ≤ %.0f MiB (peak %.1f MiB; %.1f MiB of it is the ring-buffer mapping)",
				conns.ConnsRes.Conns, mib, budgetMemMiB, float64(conns.TracerHWMKB)/1024, float64(conns.TracerBPFMapKB)/1024)
		}
		switch c := conns.ConnsRes; {
		case conns.Decoded == c.Calls && conns.LostEvents == 0 && conns.LostBytes == 0:
			verdict(true, "short connections: all %d calls decoded, zero loss", c.Calls)
		case conns.LostEvents > 0 || conns.LostBytes > 0:
			verdict(false, "short connections: %d of %d calls decoded; the tracer reported the loss (%d events, %d bytes, counted host-wide)",
				conns.Decoded, c.Calls, conns.LostEvents, conns.LostBytes)
		default:
			verdict(false, "short connections: %d of %d calls decoded with NO loss reported", conns.Decoded, c.Calls)
		}
	}

	// The summary in the form of issue 13's table.
	fmt.Fprintln(w)
	fmt.Fprintln(w, "| figure | this run | target | verdict |")
	fmt.Fprintln(w, "|---|---|---|---|")
	pf := func(pass bool) string {
		if pass {
			return "PASS"
		}
		return "**FAIL**"
	}
	if len(nullR) > 0 {
		fmt.Fprintf(w, "| unrelated `write(2)` to /dev/null, pipe | %.2fx, %.2fx | ≤ %.2fx | %s |\n", median(nullR), median(pipeR), budgetWrites, pf(median(nullR) <= budgetWrites && median(pipeR) <= budgetWrites))
	}
	rate5k := loadKey{mode: "rate", rate: 5000}
	if r := find(rate5k, "json"); r != nil {
		fmt.Fprintf(w, "| fixed 5,000 calls/s, p50 / p99 vs untraced (JSON) | %s / %s | ≤ %.2fx / ≤ %.2fx | %s |\n", fmtF("%.2fx", r.p50R), fmtF("%.2fx", r.p99R), budgetP50, budgetP99, pf(r.p50R <= budgetP50 && r.p99R <= budgetP99))
		fmt.Fprintf(w, "| tracer CPU at 5,000 calls/s | %s core | ≤ %.2f core | %s |\n", fmtF("%.3f", r.cores), budgetCores, pf(r.cores <= budgetCores))
	}
	if r := find(loadKey{mode: "full"}, "json"); r != nil {
		fmt.Fprintf(w, "| full speed, throughput vs untraced, decoded | %s, %s, lost %d events | ≥ %.2fx, 100%%, zero loss | %s |\n", fmtF("%.2fx", r.cpsR), fmtF("%.2f%%", r.completeness()), r.lostEvents, budgetThroughput,
			pf(r.cpsR >= budgetThroughput && r.hasDecoded && r.decoded == r.total && r.lossFree()))
	}
	if conns != nil && conns.Mem != nil {
		m := conns.Mem
		fmt.Fprintf(w, "| tracer memory after %d connections (ring counted once) | %.1f MiB (ring %.1f, heap %.1f; RSS %.1f) | ≤ %.0f MiB | %s |\n", conns.ConnsRes.Conns, m.realMiB(), float64(m.RingPSSKB)/1024, float64(m.AnonKB)/1024, float64(m.RSSKB)/1024, budgetMemMiB, pf(m.realMiB() <= budgetMemMiB))
	}
	if full, r5 := find(loadKey{mode: "full"}, "strace"), find(rate5k, "strace"); full != nil || r5 != nil {
		a, b := "—", "—"
		if full != nil {
			a = fmtF("%.2fx", full.cpsR)
		}
		if r5 != nil {
			b = fmtF("%.2fx", r5.p99R)
		}
		fmt.Fprintf(w, "| strace in the same table | %s full speed, p99 %s at 5k/s | the peer | — |\n", a, b)
	}
	return ok
}
