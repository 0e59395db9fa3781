// Command kerneltest is the Go half of scripts/test-kernels.sh, the kernel
// matrix: it turns a distribution's bzImage into the ELF vmlinux that qemu's
// microvm boots (and Debian's arm64 vmlinuz into the Image qemu's virt
// boots), packs the initramfs the capture tests run in, reads the guests'
// logs and verdicts into a pass/fail table, and keeps the README's kernel
// table equal to it.
//
//	kerneltest vmlinux BZIMAGE OUT
//	kerneltest initramfs OUT DEST=SRC...
//	kerneltest arm64image VMLINUZ OUT
//	kerneltest report MANIFEST
//	kerneltest table check|update README MANIFEST
package main

import (
	"fmt"
	"os"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: kerneltest vmlinux|arm64image|initramfs|report|table ARGS...")
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "vmlinux":
		err = cmdVmlinux(os.Args[2:])
	case "arm64image":
		err = cmdArm64Image(os.Args[2:])
	case "table":
		err = cmdTable(os.Stdout, os.Args[2:])
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
