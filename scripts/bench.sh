#!/usr/bin/env bash
# Cost benchmark of containerdsnoop, side by side with strace, in one run
# (docs/performance.md). Run as root: sudo make bench, or sudo scripts/bench.sh.
#
# A CRI server (snoopbench server, grpc-go, RuntimeService/ListContainers on
# a unix socket) is loaded by snoopbench client, in rounds that alternate the
# configurations, so that drift on a shared machine hits them all alike:
#   (a) untraced
#   (b) containerdsnoop trace --output json --socket SOCK  (output to a file on
#       tmpfs, to count the calls it decoded)
#   (c) containerdsnoop trace --socket SOCK > /dev/null    (the table)
#   (d) strace -f -e trace=write,writev,sendmsg -s 65536 -xx -p SERVER -o /dev/null
# each at full speed (closed loop) and at a fixed rate (open loop). Then the
# cost on unrelated write(2)s, and the tracer's memory after many short
# connections. snoopbench report prints the table, ratios and budget
# verdicts.
#
# Knobs (environment): ROUNDS (3), DURATION (4s), RATE (5000; several
# rates, e.g. RATE="1000 5000", each get their own rows),
# FULL_CONCURRENCY (8), RATE_CONCURRENCY (16), REQ_SIZE (1024),
# RESP_SIZE (1024), WRITELOOP_DURATION (2s), CONNS (10000),
# CONFIGS ("untraced json table strace"); how cost grows, one tracer run per
# point: SCALE_RATES ("1000 5000 10000 full"), SCALE_SIZES ("1024 65536
# 1048576"), SCALE_CONNS ("10 1000 10000"; connections open at once), each
# "" to skip; BENCH_OUT (docs/perf: results.jsonl, report.md, scaling.png,
# replaced only by a complete run).
#
# Exit status: 0 when every budget is met, 3 when one is missed (the table
# is still printed), anything else when the benchmark itself failed.
set -euo pipefail

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-4s}
RATE=${RATE:-5000}
FULL_CONCURRENCY=${FULL_CONCURRENCY:-8}
RATE_CONCURRENCY=${RATE_CONCURRENCY:-16}
REQ_SIZE=${REQ_SIZE:-1024}
RESP_SIZE=${RESP_SIZE:-1024}
WRITELOOP_DURATION=${WRITELOOP_DURATION:-2s}
CONNS=${CONNS:-10000}
CONFIGS=${CONFIGS:-untraced json table strace}
GO=${GO:-go}

log() { printf 'bench: %s\n' "$*" >&2; }
die() { printf 'bench: error: %s\n' "$*" >&2; exit 1; }

[[ $(id -u) -eq 0 ]] || die "must run as root (loads eBPF programs, attaches strace); try: sudo $0"
cd "$(dirname "$0")/.."

# Work directory on tmpfs when there is one: the JSON config writes its
# output there, and a disk would add its own noise.
if [[ -d /dev/shm && -w /dev/shm ]]; then
	W=$(mktemp -d /dev/shm/snoopbench.XXXXXX)
else
	W=$(mktemp -d /tmp/snoopbench.XXXXXX)
fi
SCALE_RATES=${SCALE_RATES-1000 5000 10000 full}
SCALE_SIZES=${SCALE_SIZES-1024 65536 1048576}
SCALE_CONNS=${SCALE_CONNS-10 1000 10000}
BENCH_OUT=${BENCH_OUT:-docs/perf}
RESULTS=$W/results.jsonl
SOCK=$W/cri.sock
# 10,000 connections held open at once: two descriptors each, in the
# client and in the server.
ulimit -n 1048576 2>/dev/null || ulimit -n 65536 2>/dev/null || true

# ---- processes: every one started is tracked and ended on exit ----------
PIDS=()
# shellcheck disable=SC2317 # invoked by the trap
cleanup() {
	local pid
	for pid in "${PIDS[@]}"; do
		kill -TERM "$pid" 2>/dev/null || true
	done
	for pid in "${PIDS[@]}"; do
		wait "$pid" 2>/dev/null || true
	done
	rm -rf "$W"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

forget() { # forget PID: it has been waited for
	local keep=() p
	for p in "${PIDS[@]}"; do [[ $p == "$1" ]] || keep+=("$p"); done
	PIDS=("${keep[@]}")
}

# wait_line FILE REGEX PID TIMEOUT_S: until a line of FILE matches, or fail
# when PID exits first or the time is up.
wait_line() {
	local file=$1 re=$2 pid=$3 deadline=$((SECONDS + $4))
	until grep -qE -- "$re" "$file" 2>/dev/null; do
		if ! kill -0 "$pid" 2>/dev/null; then
			log "process $pid exited before printing /$re/:"
			sed 's/^/    /' "$file" >&2
			return 1
		fi
		((SECONDS < deadline)) || { log "timed out waiting for /$re/ in $file"; return 1; }
		sleep 0.02
	done
}

# cpu_ticks PID: utime+stime of the whole process and of its children still
# running (the tracer's watchdog, internal/watchdog), in clock ticks.
cpu_ticks() {
	local pid=$1 s t c
	read -r s <"/proc/$pid/stat"
	s=${s##*) } # the comm may hold spaces and parentheses
	# shellcheck disable=SC2086
	set -- $s
	t=$((${12} + ${13}))
	for c in $(cat /proc/"$pid"/task/*/children 2>/dev/null); do
		read -r s <"/proc/$c/stat" 2>/dev/null || continue
		s=${s##*) }
		# shellcheck disable=SC2086
		set -- $s
		t=$((t + ${12} + ${13}))
	done
	echo "$t"
}

# status_kb PID FIELD: VmHWM, VmRSS or RssAnon in kB.
status_kb() { awk -v f="$2:" '$1 == f { print $2 }' "/proc/$1/status"; }

# bpfmap_kb PID: resident kB of the process's BPF map mappings (the ring
# buffer: its data pages are mapped twice, so RSS counts them twice).
bpfmap_kb() {
	awk '/^[0-9a-f]+-[0-9a-f]+ / { m = ($6 == "anon_inode:bpf-map") } m && $1 == "Rss:" { kb += $2 } END { print kb + 0 }' "/proc/$1/smaps"
}

# wait_idle PID: until the process has used at most one tick in 200 ms (it
# has drained its ring buffer), at most 60 s.
wait_idle() {
	local pid=$1 prev cur deadline=$((SECONDS + 60)) at
	prev=$(cpu_ticks "$pid")
	while ((SECONDS < deadline)); do
		at=$(now)
		sleep 0.2
		cur=$(cpu_ticks "$pid")
		# IDLE_AT: when the quiet interval began, i.e. when the tracer
		# finished what it had to catch up on (to 0.2 s).
		((cur - prev <= 1)) && IDLE_AT=$at && return 0
		prev=$cur
	done
	IDLE_AT=$(now)
	log "warning: tracer $pid still busy after 60 s"
}

# busy_window T0 TEND: seconds from T0 to TEND or, when the tracer was
# still catching up after the load ended, to IDLE_AT (wait_idle): its CPU
# ticks, counted until then, are divided by this for "tracer cores" (over
# the load's time alone, a tracer draining a backlog would show more cores
# than the machine has).
busy_window() {
	awk -v a="$1" -v b="$2" -v c="${IDLE_AT:-0}" 'BEGIN { if (c > b) b = c; printf "%.3f", b - a }'
}

now() { echo "$EPOCHREALTIME"; }

TPID='' TERR=''
# start_tracer CONFIG OUT: containerdsnoop or strace, waiting until attached.
start_tracer() {
	local cfg=$1 out=$2
	TERR=$W/tracer.err
	: >"$TERR"
	case $cfg in
	json) "$SNOOP" trace --output json --socket "$SOCK" >"$out" 2>"$TERR" & ;;
	table) "$SNOOP" trace --socket "$SOCK" >"$out" 2>"$TERR" & ;;
	strace) strace -f -e trace=write,writev,sendmsg -s 65536 -xx -p "$SERVER_PID" -o /dev/null 2>"$TERR" & ;;
	*) die "unknown config $cfg" ;;
	esac
	TPID=$!
	PIDS+=("$TPID")
	case $cfg in
	strace) wait_line "$TERR" '^strace: Process [0-9]+ attached' "$TPID" 30 ;;
	*) wait_line "$TERR" '^containerdsnoop: tracing gRPC on unix sockets' "$TPID" 60 ;;
	esac
}

# stop_tracer: SIGTERM (both tools detach on it) and reap.
stop_tracer() {
	kill -TERM "$TPID" 2>/dev/null || true
	wait "$TPID" 2>/dev/null || true
	forget "$TPID"
}

# loss_fields: the tracer's exit totals as JSON fields (0 when it printed
# none: it prints the line only when something was lost).
loss_fields() {
	local line ev=0 by=0 fa=0
	line=$(grep -E '^containerdsnoop: lost [0-9]+ events' "$TERR" | tail -n 1 || true)
	if [[ $line =~ lost\ ([0-9]+)\ events\ \(([0-9]+)\ bytes\)\ and\ ([0-9]+)\ unreadable ]]; then
		ev=${BASH_REMATCH[1]} by=${BASH_REMATCH[2]} fa=${BASH_REMATCH[3]}
	fi
	printf '"lost_events":%s,"lost_bytes":%s,"faults":%s' "$ev" "$by" "$fa"
}

# decoded FILE: ListContainers response lines in a JSON output file.
decoded() {
	grep -F '"type":"response"' "$1" | grep -cF '"method":"/runtime.v1.RuntimeService/ListContainers"' || true
}

# ---- build --------------------------------------------------------------
command -v "$GO" >/dev/null || die "go not found"
if ! command -v strace >/dev/null && [[ " $CONFIGS " == *" strace "* ]]; then
	log "strace missing; installing it"
	{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq strace; } >&2 ||
		{ log "could not install strace: skipping config (d)"; CONFIGS=${CONFIGS/strace/}; }
fi
log "building containerdsnoop, its watchdog and snoopbench"
CGO_ENABLED=0 "$GO" build -trimpath -o "$W/containerdsnoop" ./cmd/containerdsnoop
# Beside it, as installed (the tracer runs it with --yield-cpu).
CGO_ENABLED=0 "$GO" build -trimpath -ldflags '-s -w' -o "$W/containerdsnoop-watchdog" ./cmd/containerdsnoop-watchdog
CGO_ENABLED=0 "$GO" build -trimpath -o "$W/snoopbench" ./cmd/snoopbench
SNOOP=$W/containerdsnoop
BENCH=$W/snoopbench
CLK_TCK=$(getconf CLK_TCK)

# ---- server -------------------------------------------------------------
# start_server RESP_SIZE: (re)start the CRI server, waiting until it is ready.
start_server() {
	if [[ -n ${SERVER_PID:-} ]]; then
		kill -TERM "$SERVER_PID" 2>/dev/null || true
		wait "$SERVER_PID" 2>/dev/null || true
		forget "$SERVER_PID"
	fi
	: >"$W/server.log"
	"$BENCH" server -socket "$SOCK" -resp-size "$1" >"$W/server.log" 2>&1 &
	SERVER_PID=$!
	PIDS+=("$SERVER_PID")
	wait_line "$W/server.log" '^snoopbench: server ready' "$SERVER_PID" 30
	SERVER_LINE=$(grep -m1 '^snoopbench: server ready' "$W/server.log")
	log "$SERVER_LINE"
}
SERVER_PID=''
start_server "$RESP_SIZE"
FIRST_SERVER_LINE=$SERVER_LINE

: >"$RESULTS"
read -ra CFGS <<<"$CONFIGS"
n=${#CFGS[@]}

# run_load CONFIG MODE ROUND: one measurement, appended to RESULTS. MODE is
# "full" or a rate in calls/s.
run_load() {
	local cfg=$1 mode=$2 round=$3 out=/dev/null args client s0 s1 t0 t1 tr0=0 tr1=0 tend hwm=0 rss=0 dec=-1 loss mem=null
	loss='"lost_events":-1,"lost_bytes":-1,"faults":-1'
	args=(-socket "$SOCK" -req-size "$REQ_SIZE" -duration "$DURATION")
	local label="full speed"
	if [[ $mode != full ]]; then
		args+=(-rate "$mode" -concurrency "$RATE_CONCURRENCY")
		label="$mode/s" mode=rate
	else
		args+=(-concurrency "$FULL_CONCURRENCY")
	fi
	[[ $cfg == json ]] && out=$W/out.json
	if [[ $cfg != untraced ]]; then
		start_tracer "$cfg" "$out"
		tr0=$(cpu_ticks "$TPID")
	fi
	s0=$(cpu_ticks "$SERVER_PID")
	t0=$(now)
	client=$("$BENCH" client "${args[@]}")
	tend=$(now)
	s1=$(cpu_ticks "$SERVER_PID")
	if [[ $cfg != untraced ]]; then
		wait_idle "$TPID"
		tr1=$(cpu_ticks "$TPID")
		hwm=$(status_kb "$TPID" VmHWM)
		rss=$(status_kb "$TPID" VmRSS)
		[[ $cfg != strace ]] && mem=$("$BENCH" mem -pid "$TPID")
		stop_tracer
		if [[ $cfg != strace ]]; then
			loss=$(loss_fields)
		fi
		if [[ $cfg == json ]]; then
			dec=$(decoded "$out")
			rm -f "$out"
		fi
	fi
	t1=$(awk -v a="$t0" -v b="$tend" 'BEGIN { printf "%.3f", b - a }')
	[[ $cfg != untraced ]] && t1=$(busy_window "$t0" "$tend")
	printf '{"kind":"%s","axis":"%s","value":%s,"config":"%s","mode":"%s","round":%d,"clk_tck":%d,"client":%s,"server_ticks":%d,"tracer_ticks":%d,"tracer_window_s":%s,"tracer_hwm_kb":%d,"tracer_rss_kb":%d,"tracer_mem":%s,"decoded":%d,%s}\n' \
		"${KIND:-load}" "${AXIS:-}" "${VALUE:-0}" "$cfg" "$mode" "$round" "$CLK_TCK" "$client" $((s1 - s0)) $((tr1 - tr0)) "$t1" "$hwm" "$rss" "$mem" "$dec" "$loss" >>"$RESULTS"
	log "round $round $label $cfg: $(sed -E 's/.*"calls_per_sec":([0-9.]+).*"p50_us":([0-9.]+).*"p99_us":([0-9.]+).*/\1 calls\/s, p50 \2 µs, p99 \3 µs/' <<<"$client")"
}

read -ra RATES <<<"$RATE"
log "load: $ROUNDS rounds of ${CFGS[*]}, $DURATION each, at ${RATES[*]} calls/s and full speed"
for ((r = 1; r <= ROUNDS; r++)); do
	for mode in "${RATES[@]}" full; do
		for ((i = 0; i < n; i++)); do
			# Rotate the order each round.
			run_load "${CFGS[$(((i + r - 1) % n))]}" "$mode" "$r"
		done
	done
done

# ---- unrelated work: write(2) to /dev/null and a pipe --------------------
log "writeloop: $ROUNDS rounds, untraced and traced, $WRITELOOP_DURATION per target"
for ((r = 1; r <= ROUNDS; r++)); do
	order=(untraced traced)
	((r % 2 == 0)) && order=(traced untraced)
	for cfg in "${order[@]}"; do
		[[ $cfg == traced ]] && start_tracer json /dev/null
		wl=$("$BENCH" writeloop -duration "$WRITELOOP_DURATION")
		[[ $cfg == traced ]] && stop_tracer
		printf '{"kind":"writeloop","config":"%s","round":%d,"writeloop":%s}\n' "$cfg" "$r" "$wl" >>"$RESULTS"
		log "round $r writeloop $cfg: $wl"
	done
done

# ---- memory after many short connections --------------------------------
if ((CONNS > 0)); then
	log "memory: tracer after $CONNS short connections"
	start_tracer json "$W/conns.json"
	rss0=$(status_kb "$TPID" VmRSS)
	cr=$("$BENCH" conns -socket "$SOCK" -n "$CONNS")
	wait_idle "$TPID"
	# At rest: a tracer idle for a second gives memory back (a collection
	# and a scavenge, docs/performance.md "Memory"); the figure is the
	# memory it keeps, the peak (VmHWM) is reported beside it.
	sleep 2
	rss1=$(status_kb "$TPID" VmRSS)
	hwm=$(status_kb "$TPID" VmHWM)
	anon=$(status_kb "$TPID" RssAnon)
	rb=$(bpfmap_kb "$TPID")
	mem=$("$BENCH" mem -pid "$TPID")
	stop_tracer
	printf '{"kind":"conns","config":"json","clk_tck":%d,"conns":%s,"tracer_rss_before_kb":%d,"tracer_rss_kb":%d,"tracer_hwm_kb":%d,"tracer_anon_kb":%d,"tracer_bpfmap_kb":%d,"tracer_mem":%s,"decoded":%d,%s}\n' \
		"$CLK_TCK" "$cr" "$rss0" "$rss1" "$hwm" "$anon" "$rb" "$mem" "$(decoded "$W/conns.json")" "$(loss_fields)" >>"$RESULTS"
	log "conns: $cr; tracer RSS $rss0 -> $rss1 kB (peak $hwm kB)"
fi

# ---- how cost grows: one tracer (JSON) run per point ----------------------
if [[ -n $SCALE_RATES ]]; then
	log "scale: call rate ${SCALE_RATES}"
	for rate in $SCALE_RATES; do
		v=$rate
		[[ $rate == full ]] && v=0
		KIND=scale AXIS=rate VALUE=$v run_load json "$rate" 1
	done
fi
if [[ -n $SCALE_SIZES ]]; then
	log "scale: message size ${SCALE_SIZES}"
	for size in $SCALE_SIZES; do
		start_server "$size"
		REQ_SIZE=$size KIND=scale AXIS=size VALUE=$size run_load json full 1
	done
	start_server "$RESP_SIZE"
fi
for n in $SCALE_CONNS; do
	log "scale: $n connections open at once"
	start_tracer json "$W/conns.json"
	tr0=$(cpu_ticks "$TPID")
	t0=$(now)
	cr=$("$BENCH" conns -socket "$SOCK" -n "$n" -parallel 16 -hold -tracer-pid "$TPID")
	tend=$(now)
	wait_idle "$TPID"
	t1=$(busy_window "$t0" "$tend")
	tr1=$(cpu_ticks "$TPID")
	hwm=$(status_kb "$TPID" VmHWM)
	stop_tracer
	printf '{"kind":"scale","axis":"conns","value":%d,"config":"json","clk_tck":%d,"conns":%s,"tracer_ticks":%d,"tracer_window_s":%s,"tracer_hwm_kb":%d,"decoded":%d,%s}\n' \
		"$n" "$CLK_TCK" "$cr" $((tr1 - tr0)) "$t1" "$hwm" "$(decoded "$W/conns.json")" "$(loss_fields)" >>"$RESULTS"
done

# ---- report -------------------------------------------------------------
backend=tracepoint
[[ -s $TERR ]] && backend=$(sed -nE 's/^containerdsnoop: tracing gRPC on unix sockets \(backend ([a-z-]+)\).*/\1/p' "$TERR" | head -n1)
printf '{"kind":"info","kernel":"%s","cpus":%d,"cpu_model":"%s","go":"%s","backend":"%s","server":"%s","params":"%s"}\n' \
	"$(uname -r)" "$(nproc)" "$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)" "$("$GO" env GOVERSION)" "${backend:-tracepoint}" \
	"${FIRST_SERVER_LINE#snoopbench: }, request $REQ_SIZE B" \
	"ROUNDS=$ROUNDS DURATION=$DURATION RATE=$RATE FULL_CONCURRENCY=$FULL_CONCURRENCY RATE_CONCURRENCY=$RATE_CONCURRENCY WRITELOOP_DURATION=$WRITELOOP_DURATION CONNS=$CONNS SCALE_RATES=$SCALE_RATES SCALE_SIZES=$SCALE_SIZES SCALE_CONNS=$SCALE_CONNS" >>"$RESULTS"

echo
status=0
plot=()
[[ -n "$SCALE_RATES$SCALE_SIZES$SCALE_CONNS" ]] && plot=(-plot "$W/scaling.png")
"$BENCH" report "${plot[@]}" "$RESULTS" >"$W/report.md" || status=$?
cat "$W/report.md"
echo
if ((status == 0 || status == 3)); then
	# A complete run: it replaces the one kept beside docs/performance.md.
	mkdir -p "$BENCH_OUT"
	cp "$RESULTS" "$BENCH_OUT/results.jsonl"
	cp "$W/report.md" "$BENCH_OUT/report.md"
	[[ -f $W/scaling.png ]] && cp "$W/scaling.png" "$BENCH_OUT/scaling.png"
	log "raw results, report and plot: $BENCH_OUT/{results.jsonl,report.md,scaling.png}"
fi
exit "$status"
