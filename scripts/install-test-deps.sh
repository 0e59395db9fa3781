#!/usr/bin/env bash
# Installs what containerdsnoop's privileged and end-to-end tests need on a
# Debian 12 machine, and mounts tracefs. Safe to run repeatedly: it only acts
# on what is missing. The tests start their own private containerd
# (internal/testutil/containerdtest), so this script never relies on the
# system-wide one and keeps the package install from starting it.
set -euo pipefail

log() { printf 'install-test-deps: %s\n' "$*"; }
die() { printf 'install-test-deps: error: %s\n' "$*" >&2; exit 1; }

# have reports whether an executable named $1 is reachable. Root's PATH may
# lack /usr/sbin (where runc and bpftool live) under some su or sudo setups,
# so that is searched too. `command -v` alone is not enough: bash falls back
# to a non-executable file of that name when it finds no executable one.
have() {
	local path
	path=$(PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin" type -P "$1") && [[ -f $path && -x $path ]]
}

if [[ $(id -u) -ne 0 ]]; then
	die "must run as root (installs packages and mounts tracefs); try: sudo $0"
fi

# Commands the tests look up in PATH, and the Debian packages providing them.
tools=(containerd ctr runc clang llvm-strip bpftool tshark busybox strace)
packages=(containerd runc clang llvm bpftool tshark busybox-static strace libbpf-dev)

missing=()
for tool in "${tools[@]}"; do
	have "$tool" || missing+=("$tool")
done
# libbpf's headers (bpf_helpers.h), for `make generate`; a header, not a tool.
[[ -f /usr/include/bpf/bpf_helpers.h ]] || missing+=(libbpf-dev)

if ((${#missing[@]} == 0)); then
	log "all tools present (${tools[*]}); nothing to install"
else
	log "missing: ${missing[*]}"
	command -v apt-get >/dev/null 2>&1 || die "apt-get not found; install ${packages[*]} by hand"

	systemd_booted=false
	[[ -d /run/systemd/system ]] && systemd_booted=true
	containerd_was_active=false
	if $systemd_booted && systemctl is-active --quiet containerd.service 2>/dev/null; then
		containerd_was_active=true
	fi

	# tshark's postinst otherwise asks whether non-root users may capture,
	# which would block a non-interactive run.
	log "preseeding debconf: wireshark-common/install-setuid=false"
	echo 'wireshark-common wireshark-common/install-setuid boolean false' | debconf-set-selections

	# invoke-rc.d and deb-systemd-invoke consult policy-rc.d; exit code 101
	# tells them not to start services, so installing the containerd package
	# does not bring up a system daemon. An existing policy is left alone.
	policy=/usr/sbin/policy-rc.d
	if [[ ! -e $policy ]]; then
		log "installing temporary $policy so that package installs start no services"
		printf '#!/bin/sh\n# Temporary, from containerdsnoop scripts/install-test-deps.sh.\nexit 101\n' >"$policy"
		chmod 755 "$policy"
		trap 'rm -f "$policy"; log "removed temporary $policy"' EXIT
	fi

	log "running apt-get update"
	apt-get update -q
	log "installing ${packages[*]}"
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${packages[@]}"

	if $systemd_booted && ! $containerd_was_active && systemctl is-active --quiet containerd.service 2>/dev/null; then
		# Stopping it could disrupt whoever else relies on it from now on; the
		# tests never use it, so it is merely left alone.
		log "note: the package started the system containerd.service; tests do not use it, leaving it running"
	fi

	still_missing=()
	for tool in "${missing[@]}"; do
		[[ $tool == libbpf-dev ]] && continue
		have "$tool" || still_missing+=("$tool")
	done
	((${#still_missing[@]} == 0)) || die "still missing after install: ${still_missing[*]} (package installed but file deleted? try apt-get install --reinstall)"
	log "installed; all tools present"
fi

# The eBPF programs attach to uprobes and read trace events through tracefs,
# which minimal VMs and containers often do not mount.
tracefs=/sys/kernel/tracing
if awk -v mp="$tracefs" '$2 == mp && $3 == "tracefs" { found = 1 } END { exit !found }' /proc/mounts; then
	log "tracefs already mounted at $tracefs"
else
	[[ -d $tracefs ]] || die "$tracefs does not exist; the kernel lacks tracefs support"
	log "mounting tracefs at $tracefs"
	mount -t tracefs tracefs "$tracefs" || die "could not mount tracefs at $tracefs"
fi

# Real clients and servers nobody here wrote, each in its own idempotent
# script (scripts/deps/): pinned builds from the Go module proxy (crictl,
# containerd 2.x, Prometheus, the OpenTelemetry Collector, kubelet) and
# Debian's dockerd.
deps=$(dirname "$0")/deps
for dep in crictl containerd2 prometheus otelcol kubelet docker; do
	bash "$deps/$dep.sh"
done
