#!/bin/busybox sh
# shellcheck shell=dash
# /init of the kernel-matrix guest (scripts/test-kernels.sh): mount what the
# capture tests need, run them, print a result marker, and end the VM.
/bin/busybox --install -s /bin
export PATH=/bin:/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
mount -t bpf bpf /sys/fs/bpf
mount -t tracefs tracefs /sys/kernel/tracing
mount -t debugfs debugfs /sys/kernel/debug
# Kernel messages on the console would split the test's output lines.
dmesg -n 1
# shellcheck disable=SC1091 # written by scripts/test-kernels.sh
. /kerneltest.env
echo "KERNELTEST-UNAME: $(uname -r)"
if [ -e /sys/kernel/btf/vmlinux ]; then echo "KERNELTEST-BTF: yes"; else echo "KERNELTEST-BTF: missing"; fi
echo "KERNELTEST-EXPECT: $CONTAINERDSNOOP_EXPECT_BACKENDS"
cd /tmp || exit 1
/bpf.test -test.v -test.count=1 -test.timeout="$KERNELTEST_GO_TIMEOUT" -test.run "$KERNELTEST_RUN"
rc=$?
# The result line also goes through the kernel log at emergency level: the
# console prints it synchronously, while what init writes to the console
# tty may still sit in its buffer when the reset below ends the VM.
# (printk.time=0 on the command line keeps the line's prefix intact.)
result() {
	echo "KERNELTEST-RESULT: $1"
	echo "<0>KERNELTEST-RESULT: $1" >/dev/kmsg
}
if [ "$rc" -eq 0 ]; then
	result PASS
else
	echo "KERNELTEST-DMESG-BEGIN"
	dmesg | tail -n 60
	echo "KERNELTEST-DMESG-END"
	result "FAIL rc=$rc"
fi
# The microvm runs without ACPI, so there is no power-off: reboot at once
# (reboot=t: triple fault), which qemu's -no-reboot turns into its exit.
echo b >/proc/sysrq-trigger
# Should that fail, exiting init panics, and panic=-1 reboots too.
exit "$rc"
