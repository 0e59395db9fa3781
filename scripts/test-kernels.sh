#!/usr/bin/env bash
# Kernel matrix: run the capture tests (internal/bpf, TestCapture*) on the
# kernels users run, not only on this machine's. Each kernel is Debian's own
# build (bullseye 5.10 to sid, amd64 and arm64), booted under qemu (TCG) from
# an initramfs that holds busybox and the static test binary; the test must
# find every backend the kernel is expected to support working and
# byte-exact. The host kernel is a row too (the same binary, run directly).
#
#   sudo scripts/test-kernels.sh            (make test-kernels)
#
# The guest's verdict travels on a serial port of its own (not the console,
# where other writers could split it), written to a file qemu keeps.
#
# Environment:
#   KERNEL_SLOW       1: also the slow rows (the real-time kernel); 0: not;
#                     auto (default): when `git diff` against the last
#                     release tag (v*) touches bpf/, internal/bpf/, this
#                     script or test/kernels/ (see README, "Kernel matrix")
#   KERNEL_ROWS       only the rows whose label matches this ERE (e.g.
#                     'arm64' or 'bullseye'); the README table is then
#                     checked only for the rows that ran
#   KERNEL_PACKAGES   instead of the matrix: space-separated SUITE/ARCH/PKG
#                     (e.g. bookworm/amd64/linux-image-6.1.0-41-rt-amd64)
#   KERNEL_FETCH_ONLY=1     download the rows' kernels, print "fetched ARCH
#                     PKG KERNEL BUSYBOX" per row, and stop (test/release)
#   KERNEL_TABLE      check (default): fail when the README's kernel table
#                     differs from what this run produced; update: rewrite it;
#                     skip: neither (a benchmark run)
#   KERNEL_BENCH      -test.bench pattern of internal/bpf run in each guest
#                     after the tests passed; the results are printed at
#                     the end (docs/performance.md)
#   HOST_EXPECT_BACKENDS    backends that must work on the host (default
#                     $CONTAINERDSNOOP_EXPECT_BACKENDS, else tracepoint, and
#                     sock-tracepoint from kernel 6.3)
#   KERNEL_SKIP_HOST=1      no host row
#   KERNEL_TIMEOUT    seconds per amd64 guest (default 900; arm64 and real-time x2)
#   KERNEL_ACCEL      qemu accelerator for amd64 (default tcg; kvm where it works)
#   KERNEL_SMP        guest CPUs (default 2)
#   KERNEL_JOBS       guests run at once (default: the host's CPUs; each
#                     guest is one host thread)
#   KERNEL_CACHE      where kernels are kept between runs (default
#                     ${XDG_CACHE_HOME:-/var/cache}/containerdsnoop/kernels)
#   KERNEL_TEST_RUN   -test.run pattern (default TestCapture|TestFollowChildren|TestSocketFilter)
#   GO                the go command (default go)
#
# Exits 0 only when every expected backend passed every test on every
# kernel and the README table matches; a guest that times out or crashes
# fails the run.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD

log() { printf 'test-kernels: %s\n' "$*" >&2; }
die() { printf 'test-kernels: error: %s\n' "$*" >&2; exit 1; }

[[ $(id -u) -eq 0 ]] || die "must run as root (installs packages, loads eBPF programs); try: sudo $0"

GO=${GO:-go}
# The guest's go test gets four fifths of it. 600 s was too little on a
# loaded host: 5.10's tests (the slowest amd64 row: its verifier walks the
# bounded loop) took 464 s of their 480 in one CI run, 406 s in the run
# before.
timeout_s=${KERNEL_TIMEOUT:-900}
accel=${KERNEL_ACCEL:-tcg}
smp=${KERNEL_SMP:-2}
# Two vCPUs, emulated by one host thread. Multi-threaded TCG (thread=multi)
# is faster but races with the kernel's live code patching (text_poke_bp,
# which attaching fentry, kprobes and tracepoints does): the other vCPU
# can run the stale int3, and the guest dies with "Oops: int3" in
# syscall_trace_enter or syscall_exit_to_user_mode_prepare.
accel_opt=$accel
[[ $accel == tcg ]] && accel_opt=tcg,thread=single
host_expect=${HOST_EXPECT_BACKENDS:-${CONTAINERDSNOOP_EXPECT_BACKENDS:-}}
# TestFollowChildren: trace -- CMD's fork and exit programs (tp_btf).
# TestSocketFilter: --socket decided in the kernel, on every backend.
test_run=${KERNEL_TEST_RUN:-'TestCapture|TestFollowChildren|TestSocketFilter'}
cache=${KERNEL_CACHE:-${XDG_CACHE_HOME:-/var/cache}/containerdsnoop/kernels}
logdir=$cache/logs
table_mode=${KERNEL_TABLE:-check}
all_backends=fentry,kprobe,sock-tracepoint,tracepoint

# The matrix: ARCH SUITE PATTERN (ERE of the linux-image package; the newest
# match the suite offers is tested, so rows follow Debian's updates) SLOW.
# bpf_loop (5.17+) decides whether a send over 1 MiB is captured whole or
# cut and reported: the guest is told which to expect from the version.
# The arm64 guests, under TCG on an x86 host, take about as long as the
# amd64 ones (~6 min against 4.5-8 on a loaded 2-core machine), so they
# are default rows. The slow row is the real-time kernel (its larger
# trace_entry is handled through CO-RE: see bpf/snoop.bpf.c); cloud builds
# can be run with KERNEL_PACKAGES.
matrix=(
	'amd64 bullseye ^linux-image-5\.10\.0-[0-9]+-amd64$ 0'
	'amd64 bookworm ^linux-image-6\.1\.0-[0-9]+-amd64$ 0'
	'amd64 bookworm ^linux-image-6\.12\.[0-9]+\+deb12-amd64$ 0'
	'amd64 trixie ^linux-image-6\.12\.[0-9]+\+deb13-amd64$ 0'
	'amd64 sid ^linux-image-[0-9][0-9.]*(\+deb[0-9]+)?-amd64$ 0'
	'arm64 bookworm ^linux-image-6\.1\.0-[0-9]+-arm64$ 0'
	'arm64 trixie ^linux-image-6\.12\.[0-9]+\+deb13-arm64$ 0'
	'arm64 sid ^linux-image-[0-9][0-9.]*(\+deb[0-9]+)?-arm64$ 0'
	'amd64 bookworm ^linux-image-6\.1\.0-[0-9]+-rt-amd64$ 1'
)

command -v "$GO" >/dev/null 2>&1 || die "$GO not found in PATH (run with GO=/path/to/go)"
[[ $timeout_s =~ ^[0-9]+$ ]] || die "KERNEL_TIMEOUT must be a number of seconds"
[[ $table_mode == check || $table_mode == update || $table_mode == skip ]] || die "KERNEL_TABLE must be check, update or skip"

# ---- which rows -----------------------------------------------------------

# The slow rows run whenever what they test changed since the last release
# (or, with no release tag yet, since the root commit: always), so every
# change to the BPF side meets the arm64 kernels before it ships.
slow=${KERNEL_SLOW:-auto}
if [[ $slow == auto ]]; then
	base=$(git describe --tags --abbrev=0 --match 'v*' 2>/dev/null || true)
	if [[ -z $base ]]; then
		slow=1
		log "no release tag (v*): running the slow rows too"
	elif ! git diff --quiet "$base" -- bpf internal/bpf scripts/test-kernels.sh test/kernels 2>/dev/null; then
		slow=1
		log "bpf/, internal/bpf/ or the matrix changed since $base: running the slow rows too"
	else
		slow=0
		log "nothing the slow rows test changed since $base: skipping them (KERNEL_SLOW=1 runs them)"
	fi
fi
[[ $slow == 0 || $slow == 1 ]] || die "KERNEL_SLOW must be 0, 1 or auto"

# ---- tools ----------------------------------------------------------------

apt_updated=false
apt_update_once() {
	$apt_updated && return 0
	log "running apt-get update"
	apt-get update -q >&2
	apt_updated=true
}

# command → Debian package. xz, zstd and lz4 unpack Debian's kernels.
declare -A tool_pkg=([qemu-system-x86_64]=qemu-system-x86 [qemu-system-aarch64]=qemu-system-arm [xz]=xz-utils [zstd]=zstd [lz4]=lz4 [dpkg-deb]=dpkg [timeout]=coreutils)
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
[[ -x /bin/busybox ]] || die "/bin/busybox missing although busybox-static is installed (apt-get install --reinstall busybox-static)"

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
rm -f "$logdir"/*.log "$logdir"/*.result

CGO_ENABLED=0 "$GO" build -o "$tmp/kerneltest" ./test/kernels
kt=$tmp/kerneltest

# ---- Debian's archive, one private apt state per suite ---------------------
#
# The host's apt configuration is left alone (adding sid to it would upgrade
# the machine): each suite gets its own sources and package lists under the
# cache, refreshed when older than a day or when a download fails.

declare -A suite_sources=(
	[bullseye]='bullseye bullseye-updates|bullseye-security'
	[bookworm]='bookworm bookworm-updates|bookworm-security'
	[trixie]='trixie trixie-updates|trixie-security'
	[sid]='sid|'
)
apt_dir() { echo "$cache/apt/$1"; }
apt_opts() {
	local d
	d=$(apt_dir "$1")
	echo "-o Dir::Etc::SourceList=$d/sources.list -o Dir::Etc::SourceParts=$d/none" \
		"-o Dir::State::Lists=$d/lists -o Dir::Cache=$d/cache -o APT::Architectures::=amd64 -o APT::Architectures::=arm64" \
		"-o APT::Sandbox::User=root -q"
}
suite_update() {
	local suite=$1 d main sec s
	d=$(apt_dir "$suite")
	[[ -n ${suite_sources[$suite]:-} ]] || die "unknown suite $suite (known: ${!suite_sources[*]})"
	mkdir -p "$d/lists/partial" "$d/cache/archives/partial" "$d/none"
	main=${suite_sources[$suite]%%|*} sec=${suite_sources[$suite]#*|}
	{
		for s in $main; do
			echo "deb [arch=amd64,arm64 signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian $s main"
		done
		for s in $sec; do
			echo "deb [arch=amd64,arm64 signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian-security $s main"
		done
	} >"$d/sources.list"
	log "apt-get update ($suite)"
	# shellcheck disable=SC2046 # options are words
	apt-get $(apt_opts "$suite") update >&2 || return 1
	touch "$d/updated"
}
suite_fresh() {
	local d
	d=$(apt_dir "$1")
	[[ -e $d/updated && -n $(find "$d/updated" -mmin -1440) ]]
}

# newest SUITE ARCH PATTERN prints the newest package the suite offers.
newest() {
	# shellcheck disable=SC2046
	apt-cache $(apt_opts "$1") search --names-only "^linux-image-" 2>/dev/null | awk '{print $1}' |
		grep -E -- "$3" | grep -v -- '-dbg$' | sort -V | tail -n 1 || true
}

# download SUITE ARCH PKG DIR: the .deb of PKG:ARCH into DIR.
download() {
	# shellcheck disable=SC2046
	(cd "$4" && apt-get $(apt_opts "$1") download "$3:$2" >&2)
}

# unpack_kernel DEB DIR unpacks only the kernel image (not the modules),
# from wherever the package keeps it; a package without one unpacks nothing.
unpack_kernel() {
	dpkg-deb --fsys-tarfile "$1" | tar -x -C "$2" --wildcards './boot/vmlinuz-*' './usr/lib/modules/*/vmlinuz' 2>/dev/null || true
}

# fetch_kernel SUITE ARCH PKG leaves $cache/ARCH/PKG/kernel (what qemu boots:
# an ELF vmlinux on amd64, an Image on arm64), unless there. The kernel is
# in /boot of the linux-image package, or (sid) in
# /usr/lib/modules/*/vmlinuz of the linux-binary package it depends on.
fetch_kernel() {
	local suite=$1 arch=$2 pkg=$3 dir=$cache/$2/$3 work dep z
	[[ -s $dir/kernel ]] && return 0
	mkdir -p "$cache/$arch"
	work=$(mktemp -d "$cache/.fetch.XXXXXX")
	log "downloading $pkg ($arch, $suite)"
	download "$suite" "$arch" "$pkg" "$work" || { rm -rf "$work"; return 1; }
	mkdir "$work/x" || die "mkdir $work/x"
	unpack_kernel "$work"/*.deb "$work/x"
	z=$(find "$work/x/boot" "$work/x/usr/lib/modules" -maxdepth 2 -name 'vmlinuz*' -type f 2>/dev/null | head -n 1)
	if [[ -z $z ]]; then
		dep=$(dpkg-deb -f "$work"/*.deb Depends | tr ',' '\n' | sed -E 's/^ *([^ ]+).*/\1/' | grep -E '^linux-(binary|image)-' | head -n 1)
		[[ -n $dep ]] || die "$pkg holds no kernel and depends on no linux-binary package"
		log "downloading $dep ($arch, $suite): $pkg holds no kernel"
		rm -f "$work"/*.deb
		download "$suite" "$arch" "$dep" "$work" || { rm -rf "$work"; return 1; }
		unpack_kernel "$work"/*.deb "$work/x"
		z=$(find "$work/x/boot" "$work/x/usr/lib/modules" -maxdepth 2 -name 'vmlinuz*' -type f 2>/dev/null | head -n 1)
		[[ -n $z ]] || die "neither $pkg nor $dep holds a vmlinuz"
	fi
	if [[ $arch == amd64 ]]; then
		"$kt" vmlinux "$z" "$work/kernel" || die "cannot extract vmlinux from $pkg"
	else
		"$kt" arm64image "$z" "$work/kernel" || die "cannot read the arm64 Image of $pkg"
	fi
	echo "$pkg" >"$work/package"
	rm -rf "$work/x" "$work"/*.deb "$dir"
	mv "$work" "$dir" || die "cannot move $work to $dir"
}

# The arm64 guest needs an arm64 busybox: Debian's, from the same archive.
fetch_busybox_arm64() {
	local out=$cache/arm64/busybox work
	[[ -x $out ]] && return 0
	mkdir -p "$cache/arm64"
	suite_fresh bookworm || suite_update bookworm || die "apt-get update (bookworm) failed"
	work=$(mktemp -d "$cache/.fetch.XXXXXX")
	download bookworm arm64 busybox-static "$work" || die "cannot download busybox-static:arm64"
	dpkg-deb -x "$work"/*.deb "$work/x" || die "cannot unpack busybox-static:arm64"
	install -m 0755 "$work/x/bin/busybox" "$out.tmp" && mv "$out.tmp" "$out"
	rm -rf "$work"
}

# rows: ARCH SUITE PKG LABEL EXPECT SEND_CUT
rows=()
# older VER MAJOR MINOR: whether kernel version VER is older than MAJOR.MINOR.
older() {
	[[ $1 =~ ^([0-9]+)\.([0-9]+) ]] && ((BASH_REMATCH[1] < $2 || (BASH_REMATCH[1] == $2 && BASH_REMATCH[2] < $3)))
}
add_row() {
	local arch=$1 suite=$2 pkg=$3 ver cut=0 expect=$all_backends
	ver=${pkg#linux-image-}
	# Before 5.17 there is no bpf_loop: a send is captured up to 64 chunks
	# (1 MiB) and the rest reported lost.
	if older "$ver" 5 17; then cut=1048576; fi
	# arm64 attaches trampolines to kernel functions through ftrace direct
	# calls, which it has since 6.4 (6.1: "create raw tracepoint: not
	# supported"); x86-64 since 5.5.
	if [[ $arch == arm64 ]] && older "$ver" 6 4; then expect=kprobe,tracepoint; fi
	# sock:sock_send_length, which the socket tracepoint backend takes
	# sends at, is 6.3+.
	if older "$ver" 6 3; then expect=${expect/sock-tracepoint,/}; fi
	rows+=("$arch $suite $pkg $arch:$suite:$ver $expect $cut")
}
if [[ -n ${KERNEL_PACKAGES:-} ]]; then
	for spec in $KERNEL_PACKAGES; do
		IFS=/ read -r suite arch pkg <<<"$spec"
		[[ -n $pkg ]] || die "KERNEL_PACKAGES entry $spec: want SUITE/ARCH/PACKAGE"
		add_row "$arch" "$suite" "$pkg"
	done
else
	for m in "${matrix[@]}"; do
		read -r arch suite pattern is_slow <<<"$m"
		((is_slow && !slow)) && continue
		if [[ -n ${KERNEL_ROWS:-} ]] && ! [[ "$arch $suite $pattern" =~ $KERNEL_ROWS ]]; then
			continue
		fi
		suite_fresh "$suite" || suite_update "$suite" || die "apt-get update ($suite) failed"
		pkg=$(newest "$suite" "$arch" "$pattern")
		[[ -n $pkg ]] || die "$suite offers no package matching $pattern"
		add_row "$arch" "$suite" "$pkg"
	done
fi
((${#rows[@]})) || die "no rows selected"
for i in "${!rows[@]}"; do
	read -r arch suite pkg _ <<<"${rows[$i]}"
	[[ $arch == arm64 ]] && fetch_busybox_arm64
	if ! fetch_kernel "$suite" "$arch" "$pkg"; then
		# Stale package lists name a version the mirror no longer has.
		suite_update "$suite" || die "apt-get update ($suite) failed"
		fetch_kernel "$suite" "$arch" "$pkg" || die "apt-get download $pkg:$arch ($suite) failed"
	fi
done
# Forget kernels no row uses any more, so the cache does not grow forever,
# and downloads that were cut short.
rm -rf "$cache"/.fetch.*
if [[ -z ${KERNEL_PACKAGES:-} && -z ${KERNEL_ROWS:-} ]] && ((slow)); then
	for old in "$cache"/amd64/linux-image-* "$cache"/arm64/linux-image-* "$cache"/linux-image-*; do
		[[ -e $old ]] || continue
		keep=false
		for r in "${rows[@]}"; do
			read -r arch _ pkg _ <<<"$r"
			[[ $old == "$cache/$arch/$pkg" ]] && keep=true
		done
		$keep || { log "removing ${old#"$cache"/} from the cache"; rm -rf "$old"; }
	done
fi

# test/release boots its own guest: it needs only the kernel and busybox.
if [[ ${KERNEL_FETCH_ONLY:-} == 1 ]]; then
	for r in "${rows[@]}"; do
		read -r arch _ pkg _ <<<"$r"
		bb=/bin/busybox
		[[ $arch == arm64 ]] && bb=$cache/arm64/busybox
		printf 'fetched %s %s %s %s\n' "$arch" "$pkg" "$cache/$arch/$pkg/kernel" "$bb"
	done
	exit 0
fi

arches=()
for r in "${rows[@]}"; do
	read -r arch _ <<<"$r"
	[[ " ${arches[*]} " == *" $arch "* ]] || arches+=("$arch")
done
[[ " ${arches[*]} " == *" amd64 "* ]] || arches+=(amd64) # the host row
log "building the test binaries (${arches[*]})"
for a in "${arches[@]}"; do
	CGO_ENABLED=0 GOARCH=$a "$GO" test -c -o "$tmp/bpf.test.$a" ./internal/bpf/
done

# ---- runs -----------------------------------------------------------------

manifest=$tmp/manifest.tsv
: >"$manifest"
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

# Manifest: label, expected backends, console log, result file, how it
# ended, seconds (see test/kernels/report.go).
run_host() {
	local label out=$logdir/host.log res=$logdir/host.result start rc=0 ended=exited
	label="host:$(uname -r)"
	if [[ -z $host_expect ]]; then
		host_expect=tracepoint
		older "$(uname -r)" 6 3 || host_expect=sock-tracepoint,tracepoint
	fi
	log "$label: running the tests on this machine (expect $host_expect)"
	start=$(now)
	{
		echo "KERNELTEST-UNAME: $(uname -r)"
		if [[ -e /sys/kernel/btf/vmlinux ]]; then echo "KERNELTEST-BTF: yes"; else echo "KERNELTEST-BTF: missing"; fi
		(cd "$tmp" && CONTAINERDSNOOP_EXPECT_BACKENDS=$host_expect CONTAINERDSNOOP_REQUIRE_PRIVILEGED=1 \
			timeout -k 10 "$timeout_s" "./bpf.test.amd64" -test.v -test.count=1 -test.timeout="${timeout_s}s" -test.run "$test_run") || rc=$?
	} >"$out" 2>&1
	if ((rc == 0)); then echo "KERNELTEST-RESULT: PASS"; else echo "KERNELTEST-RESULT: FAIL rc=$rc"; fi >"$res"
	((rc == 124 || rc == 137)) && ended=timeout
	printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$label" "$host_expect" "$out" "$res" "$ended" "$(elapsed "$start")" >>"$manifest"
	log "$label: $(head -n 1 "$res") in $(elapsed "$start") s"
}

# boot_guest ARCH LABEL NAME EXPECT KERNEL SECONDS runs one guest to its end
# (or SECONDS) and leaves its manifest line in $tmp/NAME.manifest. Run in the
# background, several at once.
boot_guest() {
	local arch=$1 label=$2 name=$3 expect=$4 kernel=$5 t=$6 start rc=0 ended=exited
	local out=$logdir/$name.log res=$logdir/$name.result initrd=$tmp/$name.cpio.gz
	local qemu=()
	start=$(now)
	: >"$res"
	if [[ $arch == amd64 ]]; then
		# microvm without ACPI: with it, Debian's kernels hang calibrating
		# timers under TCG. There is then no power-off, so the guest ends by
		# rebooting (reboot=t, a triple fault) and -no-reboot makes that
		# qemu's exit. mitigations=off: page-table isolation is costly under
		# TCG. The result port is a second 16550 (ttyS1, at COM2's address).
		qemu=(qemu-system-x86_64 -M microvm,acpi=off,pit=on,pic=on,rtc=on -accel "$accel_opt" -cpu max
			-chardev "file,id=result,path=$res" -device isa-serial,chardev=result,iobase=0x2f8,irq=3
			-append "console=ttyS0 panic=-1 reboot=t mitigations=off printk.time=0")
	else
		# virt, booted directly (no firmware); PL011 is the console. The
		# result port is a PCI 16550, ttyS0 in the guest. pauth-impdef:
		# QEMU's own pointer-authentication hash, far cheaper under TCG.
		qemu=(qemu-system-aarch64 -M virt -accel tcg,thread=single -cpu max,pauth-impdef=on
			-chardev "file,id=result,path=$res" -device pci-serial,chardev=result
			-append "console=ttyAMA0 panic=-1 mitigations=off printk.time=0")
	fi
	timeout -k 10 "$t" "${qemu[@]}" -smp "$smp" -m 1024 \
		-nodefaults -no-user-config -display none -no-reboot \
		-serial "file:$out" -kernel "$kernel" -initrd "$initrd" \
		</dev/null 2>"$tmp/$name.qemu.err" &
	echo $! >"$tmp/$name.pid"
	wait $! || rc=$?
	rm -f "$tmp/$name.pid"
	if ((rc == 124 || rc == 137)); then
		ended=timeout
	elif ((rc != 0)); then
		ended="error: qemu exited $rc: $(head -n 1 "$tmp/$name.qemu.err")"
	fi
	printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$label" "$expect" "$out" "$res" "$ended" "$(elapsed "$start")" >"$tmp/$name.manifest"
	log "$label: $(grep -m1 '^KERNELTEST-RESULT' "$res" || echo "no result ($ended)") in $(elapsed "$start") s"
}

run_start=$(now)
[[ ${KERNEL_SKIP_HOST:-} == 1 ]] || run_host

# With one host thread per guest, as many guests as host CPUs run at once.
jobs_max=${KERNEL_JOBS:-$(nproc)}
[[ $accel == tcg ]] || jobs_max=${KERNEL_JOBS:-1}
# Longest first, so that a short guest, not a long one, runs alone at the
# end. Measured in CI (2026-12-02, two guests at a time on a loaded 2-core
# host): the real-time 6.1 kernel 8.7 min, 5.10 8 min (its verifier walks
# the bounded loop), the arm64 guests ~6 min, the other amd64 ones 4.5-5.
rank() {
	case $1 in
	amd64\ *-rt-*) echo 0 ;;
	amd64\ bullseye\ *) echo 1 ;;
	arm64\ *) echo 2 ;;
	*) echo 3 ;;
	esac
}
order=()
for r in 0 1 2 3; do
	for i in "${!rows[@]}"; do [[ $(rank "${rows[$i]}") == "$r" ]] && order+=("$i"); done
done
for i in "${order[@]}"; do
	read -r arch suite pkg label expect cut <<<"${rows[$i]}"
	name=$arch-${pkg#linux-image-}
	bb=/bin/busybox tty=/dev/ttyS1 t=$timeout_s
	[[ $arch == arm64 ]] && bb=$cache/arm64/busybox tty=/dev/ttyS0 t=$((timeout_s * 2))
	# PREEMPT_RT: the same tests take ~1.6x as long (a loaded host took the
	# 6.1 rt guest past 480 s of test time, then the limit's four fifths).
	[[ $pkg == *-rt-* ]] && t=$((t * 2))
	cat >"$tmp/$name.env" <<-EOF
		export CONTAINERDSNOOP_EXPECT_BACKENDS=$expect
		export CONTAINERDSNOOP_EXPECT_SEND_CUT=$cut
		export CONTAINERDSNOOP_EXPECT_NO_TRACEFS=1
		export CONTAINERDSNOOP_REQUIRE_PRIVILEGED=1
		KERNELTEST_RUN='$test_run'
		KERNELTEST_BENCH='${KERNEL_BENCH:-}'
		KERNELTEST_GO_TIMEOUT=$((t * 4 / 5))s
		KERNELTEST_RESULT_TTY=$tty
	EOF
	"$kt" initramfs "$tmp/$name.cpio.gz" init="$repo/test/kernels/init.sh" bin/busybox="$bb" \
		bpf.test="$tmp/bpf.test.$arch" kerneltest.env="$tmp/$name.env"
	while (($(jobs -rp | wc -l) >= jobs_max)); do
		wait -n || true
	done
	log "$label: booting (expect $expect, send cut at ${cut:-none})"
	boot_guest "$arch" "$label" "$name" "$expect" "$cache/$arch/$pkg/kernel" "$t" &
done
wait
for i in "${!rows[@]}"; do
	read -r arch suite pkg label expect _ <<<"${rows[$i]}"
	name=$arch-${pkg#linux-image-}
	if [[ -s $tmp/$name.manifest ]]; then
		cat "$tmp/$name.manifest" >>"$manifest"
	else
		printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$label" "$expect" "$logdir/$name.log" "$logdir/$name.result" "error: the run died" 0 >>"$manifest"
	fi
done
log "all rows done in $(elapsed "$run_start") s (slow rows: $( ((slow)) && echo included || echo skipped))"

# ---- report ---------------------------------------------------------------

echo
rc=0
"$kt" report "$manifest" || rc=$?
if ((rc != 0)); then
	# A crash or hang shows only in the log's end.
	while IFS=$'\t' read -r label _ out res _ _; do
		[[ -f $out ]] || continue
		if ! grep -q '^KERNELTEST-RESULT: PASS' "$res" 2>/dev/null; then
			echo
			echo "---- $label: last 40 lines of $out"
			tr -d '\r' <"$out" | tail -n 40
		fi
	done <"$manifest"
fi
# The README's kernel table is this output: a run that disagrees with it
# fails (or, with KERNEL_TABLE=update, rewrites it).
if [[ -z ${KERNEL_PACKAGES:-} && $table_mode != skip ]]; then
	"$kt" table "$table_mode" README.md "$manifest" || rc=1
fi
# The failures once more, last and short: a CI log is often read from its
# tail, which the table's diff above would otherwise fill.
if ((rc != 0)); then
	echo
	echo "---- failed rows (their logs: $logdir)"
	while IFS=$'\t' read -r label _ out res ended _; do
		grep -q '^KERNELTEST-RESULT: PASS' "$res" 2>/dev/null && continue
		echo "$label: $(grep -m1 '^KERNELTEST-RESULT' "$res" 2>/dev/null || echo "no result ($ended)")"
		[[ -f $out ]] || continue
		tr -d '\r' <"$out" | grep -E -B3 '^\s*--- FAIL' | grep -v -E '^\s*=== (RUN|PAUSE|CONT)|^--$' | tail -n 12 | cut -c1-200
	done <"$manifest"
fi
if [[ -n ${KERNEL_BENCH:-} ]]; then
	while IFS=$'\t' read -r label _ out _ _ _; do
		[[ -f $out ]] || continue
		echo
		echo "---- $label: benchmarks"
		tr -d '\r' <"$out" | grep -E '^(Benchmark|cpu:)' || echo "(none: see $out)"
	done <"$manifest"
fi
exit "$rc"
