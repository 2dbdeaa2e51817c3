#!/usr/bin/env bash
# The Debian base image of every secagent image, made without an image registry: mmdebstrap
# builds a minimal bookworm root file system from the Debian mirror apt uses, and
# `docker import` makes it an image. Python 3.11 (bookworm's, as on a camera host), venv,
# CA certificates and tini (PID 1 that forwards SIGTERM and reaps children).
#
#   docker/base.sh [TAG]        (default: secagent/debian:bookworm; Debian package mmdebstrap)
set -euo pipefail
TAG=${1:-secagent/debian:bookworm}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
SECURITY=${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
DOCKER=${DOCKER:-/usr/bin/docker}
command -v mmdebstrap >/dev/null || { echo "base.sh: apt-get install mmdebstrap" >&2; exit 1; }
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
# shellcheck disable=SC2016  # "$1" in the hook is the root file system, for mmdebstrap to expand
mmdebstrap --quiet --variant=minbase \
    --include=python3,python3-venv,ca-certificates,tini \
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/info/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*.bin' \
    bookworm "$WORK/rootfs.tar" \
    "deb $MIRROR bookworm main" \
    "deb $MIRROR bookworm-updates main" \
    "deb $SECURITY bookworm-security main"
"$DOCKER" import \
    --change 'ENV LANG=C.UTF-8 PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["/bin/bash"]' \
    "$WORK/rootfs.tar" "$TAG"
echo "base.sh: $TAG ($("$DOCKER" image inspect -f '{{.Size}}' "$TAG" | numfmt --to=iec))"
