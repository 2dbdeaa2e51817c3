#!/usr/bin/env bash
# Build secagent's images here, with no image registry: the Debian base image from mmdebstrap
# (docker/base.sh), then each image with BuildKit from the wheel of this checkout. Python
# packages come from the package registry, pinned by constraints.txt.
#
#   docker/build.sh [--fresh] [IMAGE...]   IMAGE: agent agent-gpu aggregator mosquitto mailsink
#                                          postgres
#                                          (default: all of them)
#   --fresh: rebuild the base image and every layer (no build cache): a cold build
#
# Images are tagged secagent/<image>:<version> and secagent/<image>:local (what
# docker/compose.yaml and docker/compose.scale.yaml run). docker/jetson.Dockerfile is built on
# a Jetson (see README).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DOCKER=${DOCKER:-/usr/bin/docker}  # Debian's docker.io client (BuildKit built in)
PYTHON=${PYTHON:-$ROOT/.venv/bin/python}
BASE=secagent/debian:bookworm
CA=${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
FRESH=0
IMAGES=()
for arg in "$@"; do
    case "$arg" in
        --fresh) FRESH=1 ;;
        agent|agent-gpu|aggregator|mosquitto|mailsink|postgres) IMAGES+=("$arg") ;;
        *) echo "build.sh: unknown argument $arg" >&2; exit 2 ;;
    esac
done
[ ${#IMAGES[@]} -gt 0 ] || IMAGES=(agent agent-gpu aggregator mosquitto mailsink postgres)

if ! "$DOCKER" info >/dev/null 2>&1; then
    if [ "$(id -u)" != 0 ] || ! command -v dockerd >/dev/null; then
        echo "build.sh: no Docker engine answers (start dockerd)" >&2
        exit 1
    fi
    echo "build.sh: starting dockerd (log: /var/log/secagent-dockerd.log)"
    nohup dockerd >/var/log/secagent-dockerd.log 2>&1 &
    for _ in $(seq 60); do  # a deadline of 60 s for the engine to answer
        "$DOCKER" info >/dev/null 2>&1 && break
        sleep 1
    done
    "$DOCKER" info >/dev/null 2>&1 || { echo "build.sh: dockerd did not start" >&2; exit 1; }
fi
if [ "$FRESH" = 1 ] || ! "$DOCKER" image inspect "$BASE" >/dev/null 2>&1; then
    "$ROOT/docker/base.sh" "$BASE"
fi

# the wheel, built here where git knows the commit (the version carries it)
rm -rf "$ROOT/docker/dist"
"$PYTHON" -m pip wheel -q --no-deps --no-build-isolation --no-index -w "$ROOT/docker/dist" "$ROOT"
WHEEL=$(ls "$ROOT"/docker/dist/secagent-*.whl)
VERSION=$(basename "$WHEEL" | cut -d- -f2)
TAG=${VERSION//+/-}  # a tag cannot hold '+'

SECRET=()
[ -s "$CA" ] && SECRET=(--secret "id=ca,src=$CA")
NO_CACHE=()
[ "$FRESH" = 1 ] && NO_CACHE=(--no-cache)
for image in "${IMAGES[@]}"; do
    echo "build.sh: secagent/$image:$TAG"
    DOCKER_BUILDKIT=1 "$DOCKER" build -q "${NO_CACHE[@]}" "${SECRET[@]}" \
        --build-arg "BASE=$BASE" \
        -f "$ROOT/docker/$image.Dockerfile" \
        -t "secagent/$image:$TAG" -t "secagent/$image:local" \
        "$ROOT" >/dev/null
    echo "build.sh: secagent/$image:local $("$DOCKER" image inspect -f '{{.Size}}' "secagent/$image:local" | numfmt --to=iec)"
done

# Day two: a build per commit would keep every commit's images (the GPU one alone is ~3 GB) and
# an unbounded build cache, until the disk is full. Keep this build's and the `local` tags only,
# and at most 10 GB of build cache.
for image in "${IMAGES[@]}"; do
    "$DOCKER" image ls --format '{{.Repository}}:{{.Tag}}' "secagent/$image" |
        { grep -v -e ":$TAG\$" -e ':local$' || true; } | xargs -r "$DOCKER" rmi >/dev/null || true
done
"$DOCKER" image prune -f >/dev/null
"$DOCKER" builder prune -f --keep-storage 10GB >/dev/null || true
