// Command kerneltest is the Go half of scripts/test-kernels.sh, the kernel
// matrix: it turns a distribution's bzImage into the ELF vmlinux that qemu's
// microvm boots, packs the initramfs the capture tests run in, and reads the
// guests' serial logs into a pass/fail table.
//
//	kerneltest vmlinux BZIMAGE OUT
//	kerneltest initramfs OUT DEST=SRC...
//	kerneltest report MANIFEST
package main

import (
	"fmt"
	"os"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: kerneltest vmlinux|initramfs|report ARGS...")
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "vmlinux":
		err = cmdVmlinux(os.Args[2:])
	case "initramfs":
		err = cmdInitramfs(os.Args[2:])
	case "report":
		var ok bool
		ok, err = cmdReport(os.Stdout, os.Args[2:])
		if err == nil && !ok {
			os.Exit(1)
		}
	default:
		err = fmt.Errorf("unknown command %q", os.Args[1])
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "kerneltest %s: %v\n", os.Args[1], err)
		os.Exit(2)
	}
}
