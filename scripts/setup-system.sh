#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Installs what startprof needs from Debian and links the kernel headers bcc compiles against.
# Idempotent: a machine that already has everything is left alone in well under a second.
# The same package names on Debian 12 (bcc 0.26, headers 6.1, Python 3.11, containerd 1.6.20)
# and Debian 13 (bcc 0.31, headers 6.12, Python 3.13, containerd 1.7.24, crun 1.21);
# scripts/check-debian13.sh proves the Debian 13 case in a debootstrap chroot.
set -euo pipefail

PACKAGES=(
	bpfcc-tools python3-bpfcc linux-headers-amd64
	containerd runc crun containernetworking-plugins
	iptables iproute2 busybox-static gcc libc6-dev make python3-venv
	chromium
)

if [ "$(id -u)" -ne 0 ]; then
	echo "setup: run as root (sudo make setup): it installs Debian packages and kernel-header links" >&2
	exit 1
fi

missing=()
for p in "${PACKAGES[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
	echo "setup: installing ${missing[*]}"
	# A new machine's package lists are empty: update before the first install.
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# bcc looks for headers at /lib/modules/$(uname -r)/build. The running kernel ships none, so point
# it at the newest Debian headers. They are older than the kernel, which is why the BPF programs
# never dereference kernel structs (see docs/probes.md).
kver=$(uname -r)
moddir=/lib/modules/$kver
if [ ! -e "$moddir/build/Makefile" ]; then
	hdr=$(ls -d /usr/src/linux-headers-*-amd64 2>/dev/null | sort -V | tail -n 1)
	if [ -z "$hdr" ]; then
		echo "setup: no /usr/src/linux-headers-*-amd64 after installing linux-headers-amd64" >&2
		exit 1
	fi
	mkdir -p "$moddir"
	ln -sfn "$hdr" "$moddir/build"
	ln -sfn "${hdr%-amd64}-common" "$moddir/source"
	echo "setup: linked $moddir/build -> $hdr"
fi

# bcc attaches tracepoints through tracefs; a fresh machine may have neither tracefs nor debugfs
# mounted. `startprof record` mounts tracefs itself too, but doctor should find it ready.
grep -q ' /sys/kernel/tracing tracefs ' /proc/mounts || mount -t tracefs nodev /sys/kernel/tracing
grep -q ' /sys/kernel/debug debugfs ' /proc/mounts || mount -t debugfs nodev /sys/kernel/debug || true
