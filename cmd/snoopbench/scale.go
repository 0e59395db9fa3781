package main

import (
	"fmt"
	"image/color"
	"io"
	"slices"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"
)

// How the tracer's cost grows: the "scale" records of scripts/bench.sh,
// one tracer (--output json) per point, along three axes: call rate (1 KiB
// calls; 0 is full speed), message size (request and response, full
// speed) and connections held open at once (one call each).

type scalePoint struct {
	axis         string
	value        float64
	calls        int64
	callsPerSec  float64
	wireMBps     float64 // request + response bytes per second, both directions
	cores        float64 // tracer CPU / (wall time of the load, or until the tracer had caught up)
	msPer1k      float64 // tracer CPU per 1000 calls
	memMiB       float64 // PSS: ring once
	ringMiB      float64
	anonMiB      float64
	hwmMiB       float64 // peak RSS (ring twice)
	decoded      int64
	lost, lostBy int64
}

var axisNames = map[string]string{
	"rate":  "call rate (1 KiB calls)",
	"size":  "message size (full speed)",
	"conns": "connections open at once",
}

func scalePoints(recs []benchRecord) []scalePoint {
	var pts []scalePoint
	for _, r := range recs {
		if r.Kind != "scale" {
			continue
		}
		p := scalePoint{axis: r.Axis, value: r.Value, decoded: r.Decoded, lost: r.LostEvents, lostBy: r.LostBytes, hwmMiB: float64(r.TracerHWMKB) / 1024}
		tick := 1000 / float64(r.ClkTck)
		switch {
		case r.Client != nil:
			p.calls = r.Client.CallsTotal
			p.callsPerSec = r.Client.CallsPerSec
			size := float64(r.Client.ReqBytes)
			if r.Axis == "size" {
				size = 2 * r.Value
			} else {
				size += 1232 // the response of the default server
			}
			p.wireMBps = p.callsPerSec * size / 1e6
		case r.ConnsRes != nil:
			p.calls = r.ConnsRes.Calls
		}
		if r.TracerWindowS > 0 {
			p.cores = float64(r.TracerTicks) / float64(r.ClkTck) / r.TracerWindowS
		}
		if p.calls > 0 {
			p.msPer1k = float64(r.TracerTicks) * tick / float64(p.calls) * 1000
		}
		m := r.Mem
		if m == nil && r.ConnsRes != nil {
			m = r.ConnsRes.Mem
		}
		if m != nil {
			p.memMiB, p.ringMiB, p.anonMiB = m.realMiB(), float64(m.RingPSSKB)/1024, float64(m.AnonKB)/1024
			p.hwmMiB = max(p.hwmMiB, float64(m.HWMKB)/1024)
		}
		pts = append(pts, p)
	}
	slices.SortStableFunc(pts, func(a, b scalePoint) int {
		if a.axis != b.axis {
			return slices.Index([]string{"rate", "size", "conns"}, a.axis) - slices.Index([]string{"rate", "size", "conns"}, b.axis)
		}
		return cmpValue(a, b)
	})
	return pts
}

// cmpValue orders points along an axis; full speed (rate 0) comes last.
func cmpValue(a, b scalePoint) int {
	av, bv := a.value, b.value
	if a.axis == "rate" {
		if av == 0 {
			av = 1e18
		}
		if bv == 0 {
			bv = 1e18
		}
	}
	switch {
	case av < bv:
		return -1
	case av > bv:
		return 1
	}
	return 0
}

func (p scalePoint) label() string {
	switch p.axis {
	case "rate":
		if p.value == 0 {
			return "full speed"
		}
		return fmt.Sprintf("%.0f/s", p.value)
	case "size":
		switch {
		case p.value >= 1<<20:
			return fmt.Sprintf("%.0f MiB", p.value/(1<<20))
		case p.value >= 1<<10:
			return fmt.Sprintf("%.0f KiB", p.value/(1<<10))
		}
		return fmt.Sprintf("%.0f B", p.value)
	}
	return fmt.Sprintf("%.0f", p.value)
}

func reportScale(w io.Writer, recs []benchRecord) {
	pts := scalePoints(recs)
	if len(pts) == 0 {
		return
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "How the tracer's cost grows (containerdsnoop --output json, one run per point; memory is PSS, the ring buffer counted once; peak RSS counts it twice):")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "| axis | point | calls | calls/s | wire MB/s | tracer cores | tracer CPU ms/1k calls | tracer memory MiB | of which ring MiB | of which heap (anon) MiB | peak RSS MiB | decoded/calls | lost events (bytes) |")
	fmt.Fprintln(w, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
	for _, p := range pts {
		cps, mbps, cores := "—", "—", "—"
		if p.callsPerSec > 0 {
			cps, mbps = fmt.Sprintf("%.0f", p.callsPerSec), fmt.Sprintf("%.1f", p.wireMBps)
		}
		if p.cores > 0 || p.axis != "conns" {
			cores = fmt.Sprintf("%.3f", p.cores)
		}
		fmt.Fprintf(w, "| %s | %s | %d | %s | %s | %s | %.1f | %.1f | %.1f | %.1f | %.1f | %d/%d | %d (%d) |\n",
			axisNames[p.axis], p.label(), p.calls, cps, mbps, cores, p.msPer1k, p.memMiB, p.ringMiB, p.anonMiB, p.hwmMiB, p.decoded, p.calls, p.lost, p.lostBy)
	}
}

// plotScale draws one panel per axis: tracer CPU (cores) and memory (MiB)
// against the axis's points, which are drawn evenly spaced and labelled
// (full speed is not a number, and sizes and connection counts span three
// orders of magnitude).
func plotScale(file string, recs []benchRecord) error {
	pts := scalePoints(recs)
	if len(pts) == 0 {
		return fmt.Errorf("no scale records in the results")
	}
	var panels [][]*plot.Plot
	for _, axis := range []string{"rate", "size", "conns"} {
		var on []scalePoint
		for _, p := range pts {
			if p.axis == axis {
				on = append(on, p)
			}
		}
		if len(on) == 0 {
			continue
		}
		cpu, mem := plot.New(), plot.New()
		cpu.Title.Text = "tracer CPU vs " + axisNames[axis]
		cpu.Y.Label.Text = "cores"
		mem.Title.Text = "tracer memory vs " + axisNames[axis]
		mem.Y.Label.Text = "MiB"
		var cpuXY, memXY, ringXY, heapXY plotter.XYs
		var ticks []plot.Tick
		for i, p := range on {
			x := float64(i)
			cpuXY = append(cpuXY, plotter.XY{X: x, Y: p.cores})
			memXY = append(memXY, plotter.XY{X: x, Y: p.memMiB})
			ringXY = append(ringXY, plotter.XY{X: x, Y: p.ringMiB})
			heapXY = append(heapXY, plotter.XY{X: x, Y: p.anonMiB})
			ticks = append(ticks, plot.Tick{Value: x, Label: p.label()})
		}
		for _, pl := range []*plot.Plot{cpu, mem} {
			pl.X.Tick.Marker = plot.ConstantTicks(ticks)
			pl.X.Min, pl.X.Max = -0.3, float64(len(on))-0.7
			pl.Y.Min = 0
			pl.Add(plotter.NewGrid())
		}
		if err := addLine(cpu, "tracer CPU (cores)", cpuXY, color.RGBA{R: 200, A: 255}); err != nil {
			return err
		}
		if err := addLine(mem, "total (PSS)", memXY, color.RGBA{B: 200, A: 255}); err != nil {
			return err
		}
		if err := addLine(mem, "ring buffer", ringXY, color.RGBA{G: 150, A: 255}); err != nil {
			return err
		}
		if err := addLine(mem, "heap (anon)", heapXY, color.RGBA{R: 150, B: 150, A: 255}); err != nil {
			return err
		}
		mem.Legend.Top, mem.Legend.Left = true, true
		panels = append(panels, []*plot.Plot{cpu, mem})
	}
	const rowH, width = 3.2 * vg.Inch, 11 * vg.Inch
	img := vgimg.New(width, rowH*vg.Length(len(panels)))
	dc := draw.New(img)
	t := draw.Tiles{Rows: len(panels), Cols: 2, PadX: vg.Millimeter * 4, PadY: vg.Millimeter * 4, PadTop: vg.Millimeter * 2, PadBottom: vg.Millimeter * 2, PadLeft: vg.Millimeter * 2, PadRight: vg.Millimeter * 2}
	canvases := plot.Align(panels, t, dc)
	for i := range panels {
		for j := range panels[i] {
			panels[i][j].Draw(canvases[i][j])
		}
	}
	f, err := createFile(file)
	if err != nil {
		return err
	}
	if _, err := (vgimg.PngCanvas{Canvas: img}).WriteTo(f); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func addLine(p *plot.Plot, name string, xy plotter.XYs, c color.Color) error {
	l, s, err := plotter.NewLinePoints(xy)
	if err != nil {
		return err
	}
	l.Color, s.Color = c, c
	p.Add(l, s)
	p.Legend.Add(name, l, s)
	return nil
}
