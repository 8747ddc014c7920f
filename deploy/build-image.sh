#!/bin/sh
# Build the agent's image from this checkout without a registry, and optionally import it
# into a node's containerd.
#
# Needs: docker (or podman, as DOCKER=podman) with access to deb.debian.org and PyPI;
# for the import, ctr on the node.
#   deploy/build-image.sh                 # builds startprof-agent:latest
#   deploy/build-image.sh --import        # and imports it into containerd's k8s.io namespace
set -eu
here=$(cd "$(dirname "$0")" && pwd)
DOCKER=${DOCKER:-docker}
TAG=${TAG:-startprof-agent:latest}
"$DOCKER" build -t "$TAG" -f "$here/Dockerfile" "$here/.."
if [ "${1:-}" = "--import" ]; then
	"$DOCKER" save "$TAG" | ctr -n k8s.io images import -
fi
echo "built $TAG"
