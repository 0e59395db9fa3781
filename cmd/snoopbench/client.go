package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

type clientResult struct {
	Mode        string  `json:"mode"` // "full" or "rate"
	Rate        float64 `json:"rate,omitempty"`
	Concurrency int     `json:"concurrency"`
	Conns       int     `json:"conns"`
	DurationS   float64 `json:"duration_s"`
	WarmupS     float64 `json:"warmup_s"`
	ReqBytes    int     `json:"req_bytes"`
	// Calls are the calls completed in the measured window (after the
	// warmup); latencies and CallsPerSec are about them.
	Calls int64 `json:"calls"`
	// CallsTotal counts every ListContainers call that completed with OK,
	// warmup included: what a tracer running throughout must show.
	CallsTotal  int64   `json:"calls_total"`
	Errors      int64   `json:"errors"`
	CallsPerSec float64 `json:"calls_per_sec"`
	// Unsent (fixed rate only) are calls whose send time was due in the
	// window but that were still queued behind busy workers when the run
	// ended; they enter the percentiles with their waiting time so far.
	Unsent int64 `json:"unsent,omitempty"`
	// SendDelay (fixed rate only) is from when a call was due to when a
	// worker started it: pacing jitter plus queueing behind busy workers.
	// It is part of the latency.
	SendDelayP50us float64 `json:"send_delay_p50_us,omitempty"`
	SendDelayP99us float64 `json:"send_delay_p99_us,omitempty"`
	P50us          float64 `json:"p50_us"`
	P90us          float64 `json:"p90_us"`
	P99us          float64 `json:"p99_us"`
	MaxUs          float64 `json:"max_us"`
	// The client's own CPU, for scale.
	UserS float64 `json:"client_user_s"`
	SysS  float64 `json:"client_sys_s"`
}

func runClient(args []string) error {
	fs := flag.NewFlagSet("client", flag.ExitOnError)
	socket := fs.String("socket", "", "unix socket path of the server (required)")
	reqSize := fs.Int("req-size", 1024, "approximate ListContainers request size in bytes (a label selector grown to it)")
	concurrency := fs.Int("concurrency", 8, "calls in flight at most (workers)")
	nconns := fs.Int("conns", 1, "HTTP/2 connections the workers share (kubelet uses one)")
	duration := fs.Duration("duration", 5*time.Second, "measured time, after the warmup")
	warmup := fs.Duration("warmup", 500*time.Millisecond, "time before measuring: calls are made (and count in calls_total) but not timed")
	rate := fs.Float64("rate", 0, "calls per second on an open-loop schedule; 0 for full speed (closed loop)")
	grace := fs.Duration("grace", 2*time.Second, "fixed rate: how long queued calls may still be sent after the window")
	fs.Parse(args)
	if *socket == "" {
		return errors.New("client: -socket is required")
	}
	if *concurrency < 1 || *nconns < 1 {
		return errors.New("client: -concurrency and -conns must be at least 1")
	}

	req := listRequest(*reqSize)
	conns := make([]*grpc.ClientConn, *nconns)
	clients := make([]runtimeapi.RuntimeServiceClient, *nconns)
	for i := range conns {
		cc, err := grpc.NewClient("unix://"+*socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			return err
		}
		defer cc.Close()
		conns[i], clients[i] = cc, runtimeapi.NewRuntimeServiceClient(cc)
		// Connect before the clock starts (a Version call: not counted
		// as a ListContainers call by anyone).
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		_, err = clients[i].Version(ctx, &runtimeapi.VersionRequest{Version: "v1"})
		cancel()
		if err != nil {
			return fmt.Errorf("connect to %s: %w", *socket, err)
		}
	}

	res := clientResult{
		Mode: "full", Rate: *rate, Concurrency: *concurrency, Conns: *nconns,
		DurationS: duration.Seconds(), WarmupS: warmup.Seconds(), ReqBytes: proto.Size(req),
	}
	var lats []time.Duration
	var measured time.Duration
	if *rate > 0 {
		res.Mode = "rate"
		lats, measured = runFixedRate(clients, req, *concurrency, *rate, *warmup, *duration, *grace, &res)
	} else {
		lats, measured = runFullSpeed(clients, req, *concurrency, *warmup, *duration, &res)
	}
	res.CallsPerSec = float64(res.Calls) / measured.Seconds()
	if len(lats) > 0 {
		slices.Sort(lats)
		res.P50us = us(quantile(lats, 0.50))
		res.P90us = us(quantile(lats, 0.90))
		res.P99us = us(quantile(lats, 0.99))
		res.MaxUs = us(lats[len(lats)-1])
	}
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) == nil {
		res.UserS = time.Duration(ru.Utime.Nano()).Seconds()
		res.SysS = time.Duration(ru.Stime.Nano()).Seconds()
	}
	return json.NewEncoder(os.Stdout).Encode(res)
}

func us(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }

// quantile of sorted values, nearest rank.
func quantile(sorted []time.Duration, q float64) time.Duration {
	i := int(q*float64(len(sorted))+0.5) - 1
	return sorted[min(max(i, 0), len(sorted)-1)]
}

func call(c runtimeapi.RuntimeServiceClient, req *runtimeapi.ListContainersRequest) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := c.ListContainers(ctx, req)
	return err
}

// runFullSpeed is a closed loop: each worker sends its next call as soon as
// the previous one returns. Latency is the call's own duration.
func runFullSpeed(clients []runtimeapi.RuntimeServiceClient, req *runtimeapi.ListContainersRequest,
	workers int, warmup, duration time.Duration, res *clientResult) ([]time.Duration, time.Duration) {
	start := time.Now()
	measureFrom := start.Add(warmup)
	end := measureFrom.Add(duration)
	var total, calls, errs atomic.Int64
	per := make([][]time.Duration, workers)
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			c := clients[w%len(clients)]
			lat := make([]time.Duration, 0, 1<<14)
			for {
				t0 := time.Now()
				if !t0.Before(end) {
					break
				}
				err := call(c, req)
				if err != nil {
					errs.Add(1)
					continue
				}
				total.Add(1)
				if !t0.Before(measureFrom) {
					t1 := time.Now()
					if t1.Before(end) {
						calls.Add(1)
						lat = append(lat, t1.Sub(t0))
					}
				}
			}
			per[w] = lat
		}(w)
	}
	wg.Wait()
	res.Calls, res.CallsTotal, res.Errors = calls.Load(), total.Load(), errs.Load()
	return slices.Concat(per...), duration
}

// runFixedRate is an open loop (as wrk2 does it): call i is due at
// start + i/rate whatever happened to the calls before it, and its latency
// is counted from when it was due, not from when a worker got to it. A slow
// server therefore shows as latency, not as a lower rate that hides it
// (coordinated omission).
//
// Go's timers have about 1 ms of slack for short sleeps, much more than the
// 200 µs between calls at 5000/s, so the schedule is kept by one locked OS
// thread with clock_nanosleep(TIMER_ABSTIME) and a 1 µs timer slack; it
// hands each due time to a pool of workers.
func runFixedRate(clients []runtimeapi.RuntimeServiceClient, req *runtimeapi.ListContainersRequest,
	workers int, rate float64, warmup, duration, grace time.Duration, res *clientResult) ([]time.Duration, time.Duration) {
	interval := time.Duration(float64(time.Second) / rate)
	slots := int((warmup + duration) / interval)
	due := make(chan time.Time, min(slots+1, 1<<22))

	var kstart unix.Timespec
	unix.ClockGettime(unix.CLOCK_MONOTONIC, &kstart)
	start := time.Now()
	measureFrom := start.Add(warmup)
	end := measureFrom.Add(duration)
	hardStop := end.Add(grace)

	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		unix.Prctl(unix.PR_SET_TIMERSLACK, 1000, 0, 0, 0)
		k0 := kstart.Nano()
		for i := 0; i < slots; i++ {
			off := time.Duration(i) * interval
			ts := unix.NsecToTimespec(k0 + int64(off))
			for {
				err := unix.ClockNanosleep(unix.CLOCK_MONOTONIC, unix.TIMER_ABSTIME, &ts, nil)
				if err != unix.EINTR {
					break
				}
			}
			due <- start.Add(off)
		}
		close(due)
	}()

	var total, calls, errs, unsent atomic.Int64
	per := make([][]time.Duration, workers)
	perDelay := make([][]time.Duration, workers)
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			c := clients[w%len(clients)]
			lat := make([]time.Duration, 0, 1<<14)
			var delays []time.Duration
			for t := range due {
				measured := !t.Before(measureFrom)
				if now := time.Now(); now.After(hardStop) {
					// Never sent: counted with what it waited so far.
					if measured {
						unsent.Add(1)
						lat = append(lat, now.Sub(t))
					}
					continue
				}
				if measured {
					delays = append(delays, time.Since(t))
				}
				err := call(c, req)
				if err != nil {
					errs.Add(1)
					continue
				}
				total.Add(1)
				if measured {
					calls.Add(1)
					lat = append(lat, time.Since(t))
				}
			}
			per[w] = lat
			perDelay[w] = delays
		}(w)
	}
	wg.Wait()
	res.Calls, res.CallsTotal, res.Errors, res.Unsent = calls.Load(), total.Load(), errs.Load(), unsent.Load()
	if d := slices.Concat(perDelay...); len(d) > 0 {
		slices.Sort(d)
		res.SendDelayP50us, res.SendDelayP99us = us(quantile(d, 0.5)), us(quantile(d, 0.99))
	}
	return slices.Concat(per...), duration
}
