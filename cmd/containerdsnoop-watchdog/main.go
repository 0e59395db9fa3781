// Command containerdsnoop-watchdog raises a yielding containerdsnoop when
// its ring buffer fills (internal/watchdog). containerdsnoop starts it; it
// is not meant to be run by hand.
package main

import (
	"fmt"
	"os"

	"github.com/containerdsnoop/containerdsnoop/internal/watchdog"
)

func main() {
	if err := watchdog.Main(os.Args[1:]); err != nil {
		// Read by the tracer, which escapes it for the terminal.
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
