#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Builds tests/kubelet-client (a grpc-go CRI client with the kubelet's transport) from Debian
# packages only, and prints the binary's path on stdout. No Go module is downloaded: GOPATH
# mode against /usr/share/gocode. Idempotent: the binary is cached under build/kubelet-client
# keyed by a hash of the Go sources, the CRI proto and this script, so an unchanged tree
# prints the cached path in a few milliseconds.
#
#   scripts/setup-go-client.sh            # install what is missing (root), build, print the path
#   KUBELET_CLIENT_BUILD=DIR scripts/...   # another cache dir
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
src=$root/tests/kubelet-client
proto=$root/src/startprof/cri/proto/api.proto
build=${KUBELET_CLIENT_BUILD:-$root/build/kubelet-client}

# golang-github-golang-protobuf-1-5-dev, not the 1-3 one: grpc-go's codec marshals through
# github.com/golang/protobuf, and 1.3 cannot encode the APIv2 messages protoc-gen-go writes.
PACKAGES=(
	golang-go golang-google-grpc-dev golang-google-protobuf-dev
	golang-github-golang-protobuf-1-5-dev protoc-gen-go protobuf-compiler
	golang-golang-x-sys-dev golang-golang-x-net-dev
)

missing=()
for p in "${PACKAGES[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
	if [ "$(id -u)" -ne 0 ]; then
		echo "setup-go-client: missing ${missing[*]}; run as root to install them" >&2
		exit 1
	fi
	echo "setup-go-client: installing ${missing[*]}" >&2
	# A new machine's package lists are empty: update before the first install.
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

key=$(cat "$src"/*.go "$proto" "$0" | sha256sum | cut -c1-16)
bin=$build/bin/kubelet-client-$key
if [ -x "$bin" ]; then
	echo "$bin"
	exit 0
fi

gopath=$build/gopath
gen=$gopath/src/startprof/cri/runtimev1
mkdir -p "$build/bin" "$build/proto/startprof/cri/proto" "$gen"
# Debian's protoc (3.21) predates the debug_redact field option (protobuf 22). It only marks
# fields for redaction in logs and changes nothing on the wire, so a copy without it compiles to
# the same messages; api.proto itself stays untouched.
sed 's/ *\[debug_redact = true\]//' "$proto" >"$build/proto/startprof/cri/proto/api.proto"
rm -f "$gen"/*.pb.go
protoc -I "$build/proto" --go_out="$gopath/src" startprof/cri/proto/api.proto

tmp=$bin.tmp.$$
(
	cd "$src"
	GO111MODULE=off GOPATH="$gopath:/usr/share/gocode" GOCACHE="$build/gocache" GOFLAGS= \
		CGO_ENABLED=0 go build -o "$tmp" .
)
mv -f "$tmp" "$bin"
# Older builds of other source versions are of no further use.
find "$build/bin" -name 'kubelet-client-*' ! -name "kubelet-client-$key" -delete
echo "$bin"
