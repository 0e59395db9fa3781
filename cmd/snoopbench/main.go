// Command snoopbench is the load generator of the cost benchmark
// (scripts/bench.sh, docs/performance.md). It plays both ends of a CRI
// connection over a unix socket, the traffic containerdsnoop exists to show,
// and measures what a tracer costs the traced processes and unrelated work.
//
//	snoopbench server    -socket PATH [-resp-size 1024]
//	snoopbench client    -socket PATH [-req-size 1024] [-concurrency 8] [-duration 5s] [-rate 5000]
//	snoopbench conns     -socket PATH [-n 10000] [-parallel 4] [-hold -tracer-pid PID]
//	snoopbench mem       -pid PID
//	snoopbench writeloop [-duration 3s]
//	snoopbench report    [-plot FILE.png] results.jsonl
//
// Every measuring mode prints one JSON object on stdout. The server prints
// "snoopbench: server ready ..." on stdout once it accepts connections.
package main

import (
	"fmt"
	"os"
)

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	var err error
	args := os.Args[2:]
	switch os.Args[1] {
	case "server":
		err = runServer(args)
	case "client":
		err = runClient(args)
	case "conns":
		err = runConns(args)
	case "writeloop":
		err = runWriteLoop(args)
	case "mem":
		err = runMem(args)
	case "report":
		err = runReport(args)
	case "-h", "-help", "--help", "help":
		usage()
	default:
		fmt.Fprintf(os.Stderr, "snoopbench: unknown mode %q\n", os.Args[1])
		usage()
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "snoopbench:", err)
		os.Exit(1)
	}
}

func usage() {
	fmt.Fprint(os.Stderr, `usage: snoopbench MODE [flags]

modes:
  server     serve CRI RuntimeService/ListContainers on a unix socket
  client     make unary ListContainers calls, at full speed or a fixed rate
  conns      open N short connections, one call each
  writeloop  write(2) 64 bytes to /dev/null and to a pipe in a tight loop, and getppid(2)
  mem        a process's memory, the ring buffer counted once
  report     aggregate scripts/bench.sh results into the table

Run "snoopbench MODE -h" for the flags of a mode.
`)
	os.Exit(2)
}
