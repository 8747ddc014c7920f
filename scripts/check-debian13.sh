#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Proves the set-up on Debian 13 (trixie) without a Debian 13 machine: builds a trixie root with
# debootstrap (from Debian's own packages), binds the kernel's /proc, /sys (tracefs, cgroups,
# BTF), /dev and a fresh /run into it, and inside it runs what a user would:
#   make setup, startprof doctor, lab up, record 5 pod starts, analyze them, lab down,
# checking that the 5 pods are found and that `sandbox` and `container.start` agree with the
# lab's CRI ground truth. The chroot shares the kernel, so BPF works inside.
#
# usage: sudo scripts/check-debian13.sh [--remove]
#   STARTPROF_D13_ROOT  the chroot [/var/tmp/startprof-debian13]; kept for the next run
#                       (debootstrap and make setup are then skipped or fast); --remove deletes
#                       it (2.2 GB after make setup) and its logs ($ROOT.*.log) at the end.
#   STARTPROF_LAB_LOCK  lock held while the chroot's lab runs [/tmp/startprof-lab.lock]: one
#                       lab per machine (a fixed bridge name and subnets); "-" when the caller
#                       already holds it (flock would wait for itself).
# Prints one "check-debian13: ..." line per step with its time, and a last line
# "check-debian13: passed in N s" or exits non-zero. Every mount it made is gone afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
root=${STARTPROF_D13_ROOT:-/var/tmp/startprof-debian13}
lock=${STARTPROF_LAB_LOCK:-/tmp/startprof-lab.lock}
suite=trixie
remove=0
[ "${1:-}" = "--remove" ] && remove=1

if [ "$(id -u)" -ne 0 ]; then
	echo "check-debian13: run as root (debootstrap, mounts, a lab containerd)" >&2
	exit 1
fi

t0=$(date +%s)
step_t=$t0
say() {
	local now
	now=$(date +%s)
	echo "check-debian13: $* (+$((now - step_t)) s)"
	step_t=$now
}

# The machine's own Debian mirror, as the lab's containerd fetcher finds it.
mirror=${STARTPROF_DEBIAN_MIRROR:-$(
	grep -hoE '^\s*(URIs:\s*|deb\s+(\[[^]]*\]\s+)?)\S+/debian/?(\s|$)' \
		/etc/apt/sources.list /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list 2>/dev/null |
		grep -v security | awk '{print $NF}' | head -n 1 || true
)}
mirror=${mirror:-http://deb.debian.org/debian}

cleanup() {
	local code=$?
	set +e
	if [ -x "$root/usr/local/bin/startprof" ] && [ -d "$root/proc/self" ]; then
		chroot "$root" /usr/local/bin/startprof lab down >/dev/null 2>&1
	fi
	# deepest first; --rbind trees go with -R
	for m in run dev/pts dev sys proc; do
		mountpoint -q "$root/$m" && umount -R "$root/$m"
	done
	mountpoint -q "$root" && umount "$root"
	left=$(awk -v r="$root" '$2 == r || index($2, r "/") == 1 {print $2}' /proc/mounts)
	if [ -n "$left" ]; then
		echo "check-debian13: mounts left under $root: $left" >&2
		code=1
	elif [ "$remove" = 1 ]; then
		rm -rf --one-file-system "$root"
		rm -f "$root".debootstrap.log "$root".setup.log "$root".doctor.log "$root".lab.log
	fi
	exit "$code"
}
trap cleanup EXIT

if ! command -v debootstrap >/dev/null; then
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap >/dev/null
	say "installed debootstrap $(dpkg-query -W -f='${Version}' debootstrap)"
fi

if [ ! -x "$root/usr/bin/apt-get" ] || [ ! -f "$root/.debootstrap-done" ]; then
	rm -rf --one-file-system "$root"
	debootstrap --variant=minbase --include=ca-certificates,make "$suite" "$root" "$mirror" \
		>"$root.debootstrap.log" 2>&1 || {
		tail -n 5 "$root.debootstrap.log" >&2
		exit 1
	}
	touch "$root/.debootstrap-done"
	say "debootstrap $suite from $mirror: $(du -sh --one-file-system "$root" | cut -f1)"
else
	say "reusing $root"
fi
# The machine's name resolution, extra CA certificates (a TLS-inspecting egress proxy's, say)
# and pip configuration: a Debian 13 machine of this kind would have them too.
cp /etc/resolv.conf "$root/etc/resolv.conf"
[ ! -f /etc/pip.conf ] || cp /etc/pip.conf "$root/etc/pip.conf"
if compgen -G "/usr/local/share/ca-certificates/*" >/dev/null; then
	mkdir -p "$root/usr/local/share/ca-certificates"
	cp -r /usr/local/share/ca-certificates/. "$root/usr/local/share/ca-certificates/"
	chroot "$root" update-ca-certificates >/dev/null 2>&1 || true
fi

# The chroot's / must be a mount point: runc makes the root's propagation rslave
# (mount("", "/", MS_SLAVE|MS_REC)), which fails with EINVAL on a plain directory.
mount --bind "$root" "$root"
mount -t proc proc "$root/proc"
mount --rbind /sys "$root/sys" && mount --make-rslave "$root/sys"
mount --rbind /dev "$root/dev" && mount --make-rslave "$root/dev"
mount -t tmpfs -o mode=755 tmpfs "$root/run"

# The project as committed (STARTPROF_D13_REV, default HEAD): no venv, no caches, and none of
# the work tree's uncommitted edits.
rm -rf "$root/src/startprof"
mkdir -p "$root/src/startprof"
git -C "$repo" archive "${STARTPROF_D13_REV:-HEAD}" | tar -C "$root/src/startprof" -xf -

env=(
	PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
	STARTPROF_LAB_DIR=/var/lib/startprof/lab
	PIP_CERT=/etc/ssl/certs/ca-certificates.crt
	REQUESTS_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt
	SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
	PIP_DISABLE_PIP_VERSION_CHECK=1
)
in_root() {
	chroot "$root" /usr/bin/env -i HOME=/root LANG=C.UTF-8 TERM=dumb "${env[@]}" \
		bash -c "cd /src/startprof && $1"
}

in_root "make setup" >"$root.setup.log" 2>&1 || {
	tail -n 20 "$root.setup.log" >&2
	exit 1
}
say "make setup: $(in_root 'grep -h PRETTY_NAME /etc/os-release | cut -d\" -f2'), $(in_root '.venv/bin/python -V'), bcc $(in_root "dpkg-query -W -f='\${Version}' python3-bpfcc"), headers $(in_root 'readlink /lib/modules/$(uname -r)/build')"

in_root "startprof doctor" >"$root.doctor.log" 2>&1 || {
	cat "$root.doctor.log" >&2
	exit 1
}
say "startprof doctor: ok; $(in_root 'containerd --version | cut -d" " -f3'), runc $(in_root 'runc --version | head -n1 | cut -d" " -f3'), crun $(in_root 'crun --version | head -n1 | cut -d" " -f3')"

# The lab part holds the machine's lab lock: only one lab containerd at a time.
locked=(flock "$lock")
[ "$lock" != "-" ] || locked=()
"${locked[@]}" chroot "$root" /usr/bin/env -i HOME=/root LANG=C.UTF-8 TERM=dumb "${env[@]}" \
	bash -euo pipefail -c '
	cd /src/startprof
	out=/var/tmp/check
	rm -rf $out && mkdir -p $out
	startprof lab up >$out/up.log 2>&1 || { tail -n 5 $out/up.log >&2; exit 1; }
	startprof record -o $out/pods.arrows -- \
		startprof lab run --pods 5 --truth $out/truth.jsonl >$out/record.log 2>&1 ||
		{ tail -n 20 $out/record.log >&2; startprof lab down; exit 1; }
	startprof analyze --json $out/pods.arrows >$out/analysis.json
	startprof analyze $out/pods.arrows | tail -n 3
	startprof lab down
	.venv/bin/python scripts/truth_check.py $out/pods.arrows $out/analysis.json $out/truth.jsonl --pods 5
' >"$root.lab.log" 2>&1 || {
	tail -n 30 "$root.lab.log" >&2
	exit 1
}
sed 's/^/  /' "$root.lab.log" | grep -vE '^\s*$' | tail -n 8
say "lab up, record and analyze 5 pods, lab down: ok"
echo "check-debian13: passed in $(($(date +%s) - t0)) s"
