// writeloop encodes a gRPC-like request header block N times with x/net's
// hpack encoder, as grpc-go does per call, after a line on stdin, and prints
// the CPU nanoseconds per field: what a peer probe adds is the difference
// between a probed and an unprobed run (BenchmarkPeerProbeCost).
package main

import (
	"bufio"
	"bytes"
	"flag"
	"fmt"
	"os"
	"syscall"
	"time"

	"golang.org/x/net/http2/hpack"
)

func main() {
	n := flag.Int("n", 100000, "blocks")
	flag.Parse()
	fields := []hpack.HeaderField{
		{Name: ":method", Value: "POST"}, {Name: ":scheme", Value: "http"},
		{Name: ":path", Value: "/runtime.v1.RuntimeService/ListPodSandbox"}, {Name: ":authority", Value: "localhost"},
		{Name: "content-type", Value: "application/grpc"}, {Name: "user-agent", Value: "grpc-go/1.58.3"},
		{Name: "te", Value: "trailers"}, {Name: "grpc-timeout", Value: "120000m"},
	}
	var buf bytes.Buffer
	enc := hpack.NewEncoder(&buf)
	fmt.Println("ready")
	bufio.NewScanner(os.Stdin).Scan()
	// CPU time, not wall time: on a busy machine every trap is a chance
	// for other threads to run, which is not the probe's cost.
	start := cpu()
	for i := 0; i < *n; i++ {
		buf.Reset()
		for _, f := range fields {
			enc.WriteField(f)
		}
	}
	fmt.Println((cpu() - start).Nanoseconds() / int64(*n*len(fields)))
}

func cpu() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
