package main

import (
	"encoding/json"
	"errors"
	"flag"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

type connsResult struct {
	Mode     string  `json:"mode"`
	Conns    int     `json:"conns"`
	Parallel int     `json:"parallel"`
	Calls    int64   `json:"calls_total"`
	Errors   int64   `json:"errors"`
	Seconds  float64 `json:"seconds"`
	// Held: every connection stayed open until all had made their call;
	// Mem is the tracer's memory then (after it went idle).
	Held bool       `json:"held,omitempty"`
	Mem  *memResult `json:"tracer_mem,omitempty"`
}

// runConns opens and closes n connections, each making one ListContainers
// call, the way crictl and ctr do (one connection per run): what a tracer
// must keep, or forget, per connection.
func runConns(args []string) error {
	fs := flag.NewFlagSet("conns", flag.ExitOnError)
	socket := fs.String("socket", "", "unix socket path of the server (required)")
	n := fs.Int("n", 10000, "connections to open and close")
	parallel := fs.Int("parallel", 4, "connections open at once")
	reqSize := fs.Int("req-size", 1024, "approximate request size in bytes")
	hold := fs.Bool("hold", false, "keep every connection open until all have made their call (n connections open at once)")
	tracerPID := fs.Int("tracer-pid", 0, "with -hold: measure this process's memory while all connections are open, once it is idle")
	fs.Parse(args)
	if *socket == "" {
		return errors.New("conns: -socket is required")
	}
	req := listRequest(*reqSize)
	var next, calls, errs atomic.Int64
	var mu sync.Mutex
	var held []*grpc.ClientConn
	start := time.Now()
	var wg sync.WaitGroup
	for w := 0; w < *parallel; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for next.Add(1) <= int64(*n) {
				cc, err := grpc.NewClient("unix://"+*socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
				if err != nil {
					errs.Add(1)
					continue
				}
				if err := call(runtimeapi.NewRuntimeServiceClient(cc), req); err != nil {
					errs.Add(1)
				} else {
					calls.Add(1)
				}
				if *hold {
					mu.Lock()
					held = append(held, cc)
					mu.Unlock()
				} else {
					cc.Close()
				}
			}
		}()
	}
	wg.Wait()
	res := connsResult{
		Mode: "conns", Conns: *n, Parallel: *parallel, Calls: calls.Load(), Errors: errs.Load(),
		Seconds: time.Since(start).Seconds(), Held: *hold,
	}
	if *hold && *tracerPID > 0 {
		waitIdle(*tracerPID, time.Minute)
		m, err := readMem(*tracerPID)
		if err != nil {
			return err
		}
		res.Mem = &m
	}
	for _, cc := range held {
		cc.Close()
	}
	return json.NewEncoder(os.Stdout).Encode(res)
}
