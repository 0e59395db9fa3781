#!/usr/bin/env bash
# Installs Debian's dockerd (package docker.io) for the tests that run a
# private dockerd against the test containerd (test/e2e/attach_dockerd_test.go).
# Idempotent: does nothing when /usr/sbin/dockerd is there. The package's
# services are kept from starting: the tests start their own dockerd with a
# private data root and socket, and never use a system one.
set -euo pipefail

log() { printf 'deps/docker: %s\n' "$*"; }

if [[ -x /usr/sbin/dockerd && -x /usr/bin/docker ]]; then
	log "dockerd present ($(/usr/sbin/dockerd --version))"
	exit 0
fi

# Exit code 101 from policy-rc.d tells invoke-rc.d and deb-systemd-invoke not
# to start services. An existing policy is left alone.
policy=/usr/sbin/policy-rc.d
if [[ ! -e $policy ]]; then
	printf '#!/bin/sh\n# Temporary, from containerdsnoop scripts/deps/docker.sh.\nexit 101\n' >"$policy"
	chmod 755 "$policy"
	trap 'rm -f "$policy"' EXIT
fi
log "installing docker.io"
apt-get -o DPkg::Lock::Timeout=900 update -q
DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=900 install -y -q --no-install-recommends docker.io
log "installed $(/usr/sbin/dockerd --version)"
