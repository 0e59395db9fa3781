package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// memResult is a process's memory, split so that the ring buffer is counted
// once: the kernel maps its data pages twice (records can wrap), so RSS
// counts them twice although they are the same memory. PSS divides a page
// among its mappings, so the ring's PSS is its real size.
type memResult struct {
	Mode      string `json:"mode"`
	RSSKB     int64  `json:"rss_kb"`      // VmRSS
	HWMKB     int64  `json:"hwm_kb"`      // VmHWM: peak RSS
	PSSKB     int64  `json:"pss_kb"`      // the process's memory, each page once
	AnonKB    int64  `json:"anon_kb"`     // RssAnon: the Go heap, stacks, runtime
	RingRSSKB int64  `json:"ring_rss_kb"` // the BPF map mappings (the ring buffer), as RSS counts them
	RingPSSKB int64  `json:"ring_pss_kb"` // the same, each page once
	// The tracer's children (its watchdog, internal/watchdog), counted in
	// PSSKB too: the tracer's cost is both processes'.
	ChildPSSKB int64 `json:"child_pss_kb"`
}

// MiB of the process's memory with the ring counted once.
func (m memResult) realMiB() float64 { return float64(m.PSSKB) / 1024 }

func runMem(args []string) error {
	fs := flag.NewFlagSet("mem", flag.ExitOnError)
	pid := fs.Int("pid", 0, "process to measure (required)")
	fs.Parse(args)
	if *pid <= 0 {
		return errors.New("mem: -pid is required")
	}
	m, err := readMem(*pid)
	if err != nil {
		return err
	}
	return json.NewEncoder(os.Stdout).Encode(m)
}

func readMem(pid int) (memResult, error) {
	m, err := readProcMem(pid)
	if err != nil {
		return m, err
	}
	lists, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/children", pid))
	for _, l := range lists {
		b, _ := os.ReadFile(l)
		for _, f := range strings.Fields(string(b)) {
			child, err := strconv.Atoi(f)
			if err != nil {
				continue
			}
			if c, err := readProcMem(child); err == nil { // gone meanwhile: not counted
				m.ChildPSSKB += c.PSSKB
			}
		}
	}
	m.PSSKB += m.ChildPSSKB
	return m, nil
}

// readProcMem is readMem for pid alone.
func readProcMem(pid int) (memResult, error) {
	m := memResult{Mode: "mem"}
	st, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return m, err
	}
	for _, line := range strings.Split(string(st), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		v, _ := strconv.ParseInt(f[1], 10, 64)
		switch f[0] {
		case "VmRSS:":
			m.RSSKB = v
		case "VmHWM:":
			m.HWMKB = v
		case "RssAnon:":
			m.AnonKB = v
		}
	}
	f, err := os.Open(fmt.Sprintf("/proc/%d/smaps", pid))
	if err != nil {
		return m, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	ring := false
	for sc.Scan() {
		fl := strings.Fields(sc.Text())
		if len(fl) == 0 {
			continue
		}
		if !strings.HasSuffix(fl[0], ":") { // a mapping's header line
			ring = len(fl) >= 6 && fl[5] == "anon_inode:bpf-map"
			continue
		}
		if len(fl) < 2 {
			continue
		}
		v, _ := strconv.ParseInt(fl[1], 10, 64)
		switch fl[0] {
		case "Pss:":
			m.PSSKB += v
			if ring {
				m.RingPSSKB += v
			}
		case "Rss:":
			if ring {
				m.RingRSSKB += v
			}
		}
	}
	return m, sc.Err()
}

// waitIdle waits until pid has used at most one clock tick in 200 ms (a
// tracer that has drained its ring buffer), at most limit.
func waitIdle(pid int, limit time.Duration) {
	ticks := func() int64 {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			return -1
		}
		s := string(b)
		if i := strings.LastIndexByte(s, ')'); i >= 0 {
			s = s[i+2:]
		}
		f := strings.Fields(s)
		if len(f) < 13 {
			return -1
		}
		u, _ := strconv.ParseInt(f[11], 10, 64)
		k, _ := strconv.ParseInt(f[12], 10, 64)
		return u + k
	}
	deadline := time.Now().Add(limit)
	prev := ticks()
	for time.Now().Before(deadline) {
		time.Sleep(200 * time.Millisecond)
		cur := ticks()
		if cur < 0 || cur-prev <= 1 {
			return
		}
		prev = cur
	}
}

// createFile creates (or truncates) a regular file, refusing to follow a
// symlink planted at its name: the benchmark runs as root.
func createFile(name string) (*os.File, error) {
	return os.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_TRUNC|syscall.O_NOFOLLOW, 0o644)
}
