#!/usr/bin/env bash
# Kernel matrix: run the capture tests (internal/bpf, TestCapture*) on the
# kernels users run, not only on this machine's. Each kernel is Debian's own
# build, booted under qemu (TCG, microvm) from an initramfs that holds
# busybox and the static test binary; the test must find every backend the
# kernel is expected to support working and byte-exact. The host kernel is a
# row too (the same binary, run directly).
#
#   sudo scripts/test-kernels.sh            (make test-kernels)
#
# Environment:
#   KERNEL_PACKAGES   space-separated linux-image packages to test instead of
#                     the newest Debian 12 6.1 and 6.12 of each flavor (each
#                     expects KERNEL_EXPECT_BACKENDS)
#   KERNEL_FLAVORS    Debian kernel flavors of the default matrix (default
#                     "amd64 cloud-amd64"; rt-amd64 exists too)
#   KERNEL_EXPECT_BACKENDS  backends that must work in the guests
#                     (default fentry,kprobe,tracepoint)
#   HOST_EXPECT_BACKENDS    backends that must work on the host (default
#                     $CONTAINERDSNOOP_EXPECT_BACKENDS, else tracepoint)
#   KERNEL_SKIP_HOST=1      no host row
#   KERNEL_TIMEOUT    seconds per guest (default 300; a run takes ~1-2 min)
#   KERNEL_ACCEL      qemu accelerator (default tcg; kvm where it works)
#   KERNEL_SMP        guest CPUs (default 2)
#   KERNEL_JOBS       guests run at once (default: the host's CPUs; each
#                     guest is one host thread)
#   KERNEL_CACHE      where kernels are kept between runs (default
#                     ${XDG_CACHE_HOME:-/var/cache}/containerdsnoop/kernels)
#   KERNEL_TEST_RUN   -test.run pattern (default TestCapture)
#   GO                the go command (default go)
#
# Exits 0 only when every expected backend passed every test on every
# kernel; a guest that times out or crashes fails the run.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD

log() { printf 'test-kernels: %s\n' "$*" >&2; }
die() { printf 'test-kernels: error: %s\n' "$*" >&2; exit 1; }

[[ $(id -u) -eq 0 ]] || die "must run as root (installs packages, loads eBPF programs); try: sudo $0"

GO=${GO:-go}
timeout_s=${KERNEL_TIMEOUT:-300}
accel=${KERNEL_ACCEL:-tcg}
smp=${KERNEL_SMP:-2}
# Two vCPUs, emulated by one host thread. Multi-threaded TCG (thread=multi)
# is faster but races with the kernel's live code patching (text_poke_bp,
# which attaching fentry, kprobes and tracepoints does): the other vCPU
# can run the stale int3, and the guest dies with "Oops: int3" in
# syscall_trace_enter or syscall_exit_to_user_mode_prepare.
accel_opt=$accel
[[ $accel == tcg ]] && accel_opt=tcg,thread=single
guest_expect=${KERNEL_EXPECT_BACKENDS:-fentry,kprobe,tracepoint}
host_expect=${HOST_EXPECT_BACKENDS:-${CONTAINERDSNOOP_EXPECT_BACKENDS:-tracepoint}}
test_run=${KERNEL_TEST_RUN:-TestCapture}
cache=${KERNEL_CACHE:-${XDG_CACHE_HOME:-/var/cache}/containerdsnoop/kernels}
logdir=$cache/logs

# The kernels tested by default: the newest of each series apt offers, in
# each flavor, so the matrix follows Debian's updates. Version patterns (ERE).
versions=(
	'6\.1\.0-[0-9]+'          # Debian 12's own kernel
	'6\.12\.[0-9]+\+deb12'    # 6.12, Debian 13's series, as built for Debian 12
)
# cloud-amd64 is what Debian's cloud images boot. rt-amd64 is left out: on
# 6.1-rt, struct trace_entry is 12 bytes, and the syscall tracepoint
# programs (written against trace_event_raw_sys_{enter,exit}) are refused.
read -r -a flavors <<<"${KERNEL_FLAVORS:-amd64 cloud-amd64}"
series=()
for v in "${versions[@]}"; do
	for f in "${flavors[@]}"; do
		series+=("^linux-image-$v-$f\$")
	done
done

command -v "$GO" >/dev/null 2>&1 || die "$GO not found in PATH (run with GO=/path/to/go)"
[[ $timeout_s =~ ^[0-9]+$ ]] || die "KERNEL_TIMEOUT must be a number of seconds"

# ---- tools ----------------------------------------------------------------

apt_updated=false
apt_update_once() {
	$apt_updated && return 0
	log "running apt-get update"
	apt-get update -q >&2
	apt_updated=true
}

# command → Debian package. xz, zstd and lz4 unpack Debian's 6.1, 6.12 and
# cloud images.
declare -A tool_pkg=([qemu-system-x86_64]=qemu-system-x86 [xz]=xz-utils [zstd]=zstd [lz4]=lz4 [dpkg-deb]=dpkg [timeout]=coreutils)
missing=()
for tool in "${!tool_pkg[@]}"; do
	command -v "$tool" >/dev/null 2>&1 || missing+=("${tool_pkg[$tool]}")
done
# The guest has no libraries: busybox must be the static build.
if [[ $(dpkg-query -W -f='${Status}' busybox-static 2>/dev/null) != "install ok installed" ]]; then
	missing+=(busybox-static)
fi
if ((${#missing[@]})); then
	log "installing ${missing[*]}"
	apt_update_once
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >&2
fi
busybox=/bin/busybox
[[ -x $busybox ]] || die "$busybox missing although busybox-static is installed (apt-get install --reinstall busybox-static)"

# ---- work area ------------------------------------------------------------

mkdir -p "$cache" "$logdir"
# One run at a time per cache: runs share the kernels and the logs.
exec 9>"$cache/.lock"
flock -w 1800 9 || die "another run has held $cache/.lock for 30 minutes"
tmp=$(mktemp -d "${TMPDIR:-/tmp}/containerdsnoop-kernels.XXXXXX")
# On the way out, stop the guests still running (each timeout passes the
# signal on to its qemu), then remove what the run made.
# shellcheck disable=SC2317 # called by the trap
cleanup() {
	local f
	for f in "$tmp"/*.pid; do
		if [[ -e $f ]]; then kill "$(<"$f")" 2>/dev/null || true; fi
	done
	rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
rm -f "$logdir"/*.log

log "building the test binary and the helper"
CGO_ENABLED=0 "$GO" test -c -o "$tmp/bpf.test" ./internal/bpf/
CGO_ENABLED=0 "$GO" build -o "$tmp/kerneltest" ./test/kernels
kt=$tmp/kerneltest

# ---- kernels --------------------------------------------------------------

# newest PATTERN prints the newest package apt offers matching PATTERN.
newest() {
	local prefix=${1%%\\.*}
	apt-cache search --names-only "$prefix" 2>/dev/null | awk '{print $1}' | grep -E "$1" | sort -V | tail -n 1 || true
}

# fetch_kernel PKG leaves $cache/PKG/vmlinux (ELF) and config, unless there.
fetch_kernel() {
	local pkg=$1 dir=$cache/$1 work
	[[ -s $dir/vmlinux && -s $dir/config ]] && return 0
	work=$(mktemp -d "$cache/.fetch.XXXXXX")
	log "downloading $pkg"
	if ! (cd "$work" && apt-get download -q -o APT::Sandbox::User=root "$pkg" >&2); then
		rm -rf "$work"
		return 1
	fi
	# Called in a condition, where set -e is off: every step checks itself.
	mkdir "$work/x" || die "mkdir $work/x"
	dpkg-deb --fsys-tarfile "$work"/*.deb | tar -x -C "$work/x" --wildcards './boot/vmlinuz-*' './boot/config-*' ||
		die "cannot unpack /boot of $pkg"
	"$kt" vmlinux "$work"/x/boot/vmlinuz-* "$work/vmlinux" || die "cannot extract vmlinux from $pkg"
	mv "$work"/x/boot/config-* "$work/config" || die "no config in $pkg"
	basename "$work"/*.deb >"$work/deb"
	rm -rf "$work/x" "$work"/*.deb "$dir"
	mv "$work" "$dir" || die "cannot move $work to $dir"
}

kernels=()
if [[ -n ${KERNEL_PACKAGES:-} ]]; then
	read -r -a kernels <<<"$KERNEL_PACKAGES"
else
	for pattern in "${series[@]}"; do
		pkg=$(newest "$pattern")
		if [[ -z $pkg ]]; then
			apt_update_once
			pkg=$(newest "$pattern")
		fi
		[[ -n $pkg ]] || die "apt offers no package matching $pattern"
		kernels+=("$pkg")
	done
fi
for i in "${!kernels[@]}"; do
	if ! fetch_kernel "${kernels[$i]}"; then
		# Stale package lists name a version the mirror no longer has.
		$apt_updated && die "apt-get download ${kernels[$i]} failed"
		apt_update_once
		if [[ -z ${KERNEL_PACKAGES:-} ]]; then
			kernels[i]=$(newest "${series[$i]}")
		fi
		fetch_kernel "${kernels[$i]}" || die "apt-get download ${kernels[$i]} failed"
	fi
done
# Forget kernels that Debian replaced in a series this run tests, so the
# cache does not grow forever, and downloads that were cut short.
rm -rf "$cache"/.fetch.*
if [[ -z ${KERNEL_PACKAGES:-} ]]; then
	for old in "$cache"/linux-image-*; do
		[[ -e $old ]] || continue
		name=${old#"$cache"/}
		keep=true
		for p in "${series[@]}"; do [[ $name =~ $p ]] && keep=false; done
		for k in "${kernels[@]}"; do [[ $name == "$k" ]] && keep=true; done
		$keep || { log "removing $name from the cache"; rm -rf "$old"; }
	done
fi

# ---- runs -----------------------------------------------------------------

manifest=$tmp/manifest.tsv
: >"$manifest"
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

run_host() {
	local label out=$logdir/host.log start rc=0 ended=exited
	label="host:$(uname -r)"
	log "$label: running the tests on this machine (expect $host_expect)"
	start=$(now)
	{
		echo "KERNELTEST-UNAME: $(uname -r)"
		if [[ -e /sys/kernel/btf/vmlinux ]]; then echo "KERNELTEST-BTF: yes"; else echo "KERNELTEST-BTF: missing"; fi
		(cd "$tmp" && CONTAINERDSNOOP_EXPECT_BACKENDS=$host_expect CONTAINERDSNOOP_REQUIRE_PRIVILEGED=1 \
			timeout -k 10 "$timeout_s" ./bpf.test -test.v -test.count=1 -test.timeout="${timeout_s}s" -test.run "$test_run") || rc=$?
		if ((rc == 0)); then echo "KERNELTEST-RESULT: PASS"; else echo "KERNELTEST-RESULT: FAIL rc=$rc"; fi
	} >"$out" 2>&1
	((rc == 124 || rc == 137)) && ended=timeout
	printf '%s\t%s\t%s\t%s\t%s\n' "$label" "$host_expect" "$out" "$ended" "$(elapsed "$start")" >>"$manifest"
	log "$label: $(grep -m1 '^KERNELTEST-RESULT' "$out" || echo 'no result') in $(elapsed "$start") s"
}

# boot_guest PKG runs one guest to its end and leaves its manifest line in
# $tmp/NAME.manifest. Run in the background, several at once.
boot_guest() {
	local pkg=$1 label=${1#linux-image-} name=${1#linux-image-} start rc=0 ended=exited
	local out=$logdir/$name.log initrd=$tmp/$name.cpio.gz
	start=$(now)
	# microvm without ACPI: with it, Debian's kernels hang calibrating
	# timers under TCG. There is then no power-off, so the guest ends by
	# rebooting (reboot=t, a triple fault) and -no-reboot makes that qemu's
	# exit. mitigations=off: page-table isolation is costly under TCG.
	timeout -k 10 "$timeout_s" qemu-system-x86_64 \
		-M microvm,acpi=off,pit=on,pic=on,rtc=on -accel "$accel_opt" -cpu max -smp "$smp" -m 1024 \
		-nodefaults -no-user-config -display none -no-reboot \
		-serial "file:$out" -kernel "$cache/$pkg/vmlinux" -initrd "$initrd" \
		-append "console=ttyS0 panic=-1 reboot=t mitigations=off printk.time=0" \
		</dev/null 2>"$tmp/$name.qemu.err" &
	echo $! >"$tmp/$name.pid"
	wait $! || rc=$?
	rm -f "$tmp/$name.pid"
	if ((rc == 124 || rc == 137)); then
		ended=timeout
	elif ((rc != 0)); then
		ended="error: qemu exited $rc: $(head -n 1 "$tmp/$name.qemu.err")"
	fi
	printf '%s\t%s\t%s\t%s\t%s\n' "$label" "$guest_expect" "$out" "$ended" "$(elapsed "$start")" >"$tmp/$name.manifest"
	log "$label: $(tr -d '\r' <"$out" | grep -m1 '^KERNELTEST-RESULT' || echo "no result ($ended)") in $(elapsed "$start") s"
}

[[ ${KERNEL_SKIP_HOST:-} == 1 ]] || run_host

# With one host thread per guest, as many guests as host CPUs run at once.
jobs_max=${KERNEL_JOBS:-$(nproc)}
[[ $accel == tcg ]] || jobs_max=${KERNEL_JOBS:-1}
for pkg in "${kernels[@]}"; do
	name=${pkg#linux-image-}
	cat >"$tmp/$name.env" <<-EOF
		export CONTAINERDSNOOP_EXPECT_BACKENDS=$guest_expect
		export CONTAINERDSNOOP_REQUIRE_PRIVILEGED=1
		KERNELTEST_RUN='$test_run'
		KERNELTEST_GO_TIMEOUT=$((timeout_s / 2))s
	EOF
	"$kt" initramfs "$tmp/$name.cpio.gz" init="$repo/test/kernels/init.sh" bin/busybox="$busybox" \
		bpf.test="$tmp/bpf.test" kerneltest.env="$tmp/$name.env"
	while (($(jobs -rp | wc -l) >= jobs_max)); do
		wait -n || true
	done
	log "$name: booting (expect $guest_expect, timeout ${timeout_s}s)"
	boot_guest "$pkg" &
done
wait
for pkg in "${kernels[@]}"; do
	name=${pkg#linux-image-}
	if [[ -s $tmp/$name.manifest ]]; then
		cat "$tmp/$name.manifest" >>"$manifest"
	else
		printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$guest_expect" "$logdir/$name.log" "error: the run died" 0 >>"$manifest"
	fi
done

# ---- report ---------------------------------------------------------------

echo
rc=0
"$kt" report "$manifest" || rc=$?
if ((rc != 0)); then
	# A crash or hang shows only in the log's end.
	while IFS=$'\t' read -r label _ out _ _; do
		[[ -f $out ]] || continue
		if ! tr -d '\r' <"$out" | grep -q '^KERNELTEST-RESULT: PASS'; then
			echo
			echo "---- $label: last 40 lines of $out"
			tr -d '\r' <"$out" | tail -n 40
		fi
	done <"$manifest"
fi
exit "$rc"
