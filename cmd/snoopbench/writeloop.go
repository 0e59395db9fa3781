package main

import (
	"encoding/json"
	"flag"
	"os"
	"runtime"
	"time"

	"golang.org/x/sys/unix"
)

// writeLoopResult: rates and costs are per second of the writing thread's own
// CPU time (see loopCalls).
type writeLoopResult struct {
	Mode        string  `json:"mode"`
	DurationS   float64 `json:"duration_s"`
	DevNullWPS  float64 `json:"devnull_writes_per_sec"`
	PipeWPS     float64 `json:"pipe_writes_per_sec"`
	WriteBytes  int     `json:"write_bytes"`
	DevNullNsOp float64 `json:"devnull_ns_per_write"`
	PipeNsOp    float64 `json:"pipe_ns_per_write"`
	// A syscall that is not a write: what a hook on every syscall (raw
	// syscall tracepoints) would add to all other work on the node.
	GetppidNsOp float64 `json:"getppid_ns_per_call"`
}

// runWriteLoop measures what a tracer hooked on write(2) costs work that
// has nothing to do with unix sockets: every write still enters the
// tracepoint program, which must find out it is not a socket send.
func runWriteLoop(args []string) error {
	fs := flag.NewFlagSet("writeloop", flag.ExitOnError)
	duration := fs.Duration("duration", 3*time.Second, "time for each of the two loops")
	size := fs.Int("size", 64, "bytes per write")
	fs.Parse(args)

	runtime.LockOSThread()
	buf := make([]byte, *size)
	res := writeLoopResult{Mode: "writeloop", DurationS: duration.Seconds(), WriteBytes: *size}

	null, err := unix.Open("/dev/null", unix.O_WRONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	n, el := loop(null, buf, *duration)
	unix.Close(null)
	res.DevNullWPS = float64(n) / el.Seconds()
	res.DevNullNsOp = float64(el.Nanoseconds()) / float64(n)

	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
		return err
	}
	done := make(chan struct{})
	go func() {
		// Drain in big reads, on another thread.
		runtime.LockOSThread()
		rb := make([]byte, 1<<16)
		for {
			if n, err := unix.Read(p[0], rb); n <= 0 && err != unix.EINTR {
				close(done)
				return
			}
		}
	}()
	n, el = loop(p[1], buf, *duration)
	unix.Close(p[1])
	<-done
	unix.Close(p[0])
	res.PipeWPS = float64(n) / el.Seconds()
	res.PipeNsOp = float64(el.Nanoseconds()) / float64(n)

	n, el = loopCalls(func() { unix.Getppid() }, *duration)
	res.GetppidNsOp = float64(el.Nanoseconds()) / float64(n)
	return json.NewEncoder(os.Stdout).Encode(res)
}

func loop(fd int, buf []byte, d time.Duration) (int64, time.Duration) {
	var n int64
	_, el := loopCalls(func() {
		if _, err := unix.Write(fd, buf); err == nil {
			n++
		}
	}, d)
	return n, el
}

// loopCalls calls f in batches of 1024 until d has passed, and returns how
// many calls it made and the CPU time the calling thread spent on them (its
// own time, user and kernel, which includes any BPF program the syscall
// ran): on a shared machine, wall time would also count the time the
// thread waited for a CPU, which says nothing about the tracer's cost.
// The caller has locked the goroutine to its thread.
func loopCalls(f func(), d time.Duration) (int64, time.Duration) {
	end := time.Now().Add(d)
	start := threadCPU()
	var n int64
	for {
		for i := 0; i < 1024; i++ {
			f()
		}
		n += 1024
		if !time.Now().Before(end) {
			return n, threadCPU() - start
		}
	}
}

func threadCPU() time.Duration {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_THREAD_CPUTIME_ID, &ts); err != nil {
		panic(err) // Linux has had this clock since 2.6.12
	}
	return time.Duration(ts.Nano())
}
