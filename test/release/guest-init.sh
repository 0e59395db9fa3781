#!/bin/busybox sh
# shellcheck shell=dash
# /init of the arm64 guest of test/release (arm64_test.go): run the release
# tarball's binary as a user would, make one real gRPC call for it to show,
# stop it with Ctrl-C, and write everything on the result port (ttyS0, a
# serial port nothing else writes to). Readiness is each program's own
# line, read from a fifo as it is written.
/bin/busybox --install -s /bin
export PATH=/bin:/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
dmesg -n 1
cd /tmp || exit 1
mkfifo /tmp/err.fifo /tmp/serve.fifo

/containerdsnoop trace --output json >/tmp/out 2>/tmp/err.fifo &
tracer=$!
exec 3</tmp/err.fifo
while IFS= read -r line <&3; do
	echo "$line" >>/tmp/err
	case $line in *"tracing gRPC on unix sockets"*) break ;; esac
done
cat <&3 >>/tmp/err &

/grpcpeer serve /tmp/grpc.sock >/tmp/serve.fifo 2>&1 &
server=$!
exec 4</tmp/serve.fifo
read -r served <&4
/grpcpeer call /tmp/grpc.sock >/tmp/call 2>&1
callrc=$?

kill -INT "$tracer"
wait "$tracer"
tracerc=$?
kill "$server"

result=/dev/ttyS0
stty -F "$result" raw -echo 2>/dev/null
{
	echo "RELEASETEST-UNAME: $(uname -r -m)"
	echo "RELEASETEST-SERVER: $served"
	echo "RELEASETEST-CALL: rc=$callrc $(cat /tmp/call)"
	echo "RELEASETEST-TRACER: rc=$tracerc"
	sed 's/^/RELEASETEST-STDERR: /' /tmp/err
	sed 's/^/RELEASETEST-STDOUT: /' /tmp/out
	echo "RELEASETEST-END"
} >"$result"
echo b >/proc/sysrq-trigger
