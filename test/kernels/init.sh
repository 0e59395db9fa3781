#!/bin/busybox sh
# shellcheck shell=dash
# /init of the kernel-matrix guest (scripts/test-kernels.sh): mount what the
# capture tests need, run them, write the verdict on the result port, and
# end the VM.
/bin/busybox --install -s /bin
export PATH=/bin:/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
mount -t bpf bpf /sys/fs/bpf
# tracefs and debugfs are left unmounted: the tool must mount tracefs
# itself, as on a minimal host at its first run (TestCaptureFirstRun).
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
# Benchmarks (scripts/bench.sh): their output is read from the console log.
if [ "$rc" -eq 0 ] && [ -n "$KERNELTEST_BENCH" ]; then
	/bpf.test -test.run '^$' -test.bench "$KERNELTEST_BENCH" -test.benchtime 300000x -test.count 1 || rc=$?
fi
if [ "$rc" -eq 0 ]; then
	verdict=PASS
else
	echo "KERNELTEST-DMESG-BEGIN"
	dmesg | tail -n 60
	echo "KERNELTEST-DMESG-END"
	verdict="FAIL rc=$rc"
fi
# The verdict goes to a serial port nothing else writes to (the console
# has other writers, which can split a line), as a raw tty; closing it
# waits until the bytes have left, so the reset below cannot cut them.
echo "KERNELTEST-RESULT: $verdict"
stty -F "$KERNELTEST_RESULT_TTY" raw -echo 2>/dev/null
echo "KERNELTEST-RESULT: $verdict" >"$KERNELTEST_RESULT_TTY"
# The microvm runs without ACPI, so there is no power-off: reboot at once
# (x86: reboot=t, a triple fault; arm64: PSCI), which qemu's -no-reboot
# turns into its exit.
echo b >/proc/sysrq-trigger
# Should that fail, exiting init panics, and panic=-1 reboots too.
exit "$rc"
