"""The systemd units: Type=notify with a watchdog, a clean stop, a start limit, the config
checked before start (secagg), the agent started through secagent-launch, and hardening that
``systemd-analyze security`` rates (offline, from the unit files themselves).
tests/test_install.py verifies the installed units."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from tests.support import ROOT

UNITS = ROOT / "systemd"


def settings(unit: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in (UNITS / unit).read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            found.setdefault(key, []).append(value)
    return found


@pytest.mark.parametrize(
    ("unit", "command"),
    [
        ("secagent.service", "/opt/secagent/secagent-launch run"),
        ("secagg.service", "/opt/secagent/current/bin/secagg serve"),
    ],
)
def test_notify_watchdog_stop_and_start_limits(unit: str, command: str) -> None:
    s = settings(unit)
    assert s["Type"] == ["notify"] and s["NotifyAccess"] == ["main"]
    assert float(s["WatchdogSec"][0]) >= 10
    program = unit.removesuffix(".service")
    assert s["ExecStart"] == [f"{command} --config /etc/secagent/{program}.yaml"]
    assert int(s["TimeoutStopSec"][0]) >= 20  # the daemons finish what is in hand first
    assert int(s["StartLimitBurst"][0]) >= 1 and int(s["StartLimitIntervalSec"][0]) > 0
    assert s["Restart"] == ["on-failure"]


def test_secagg_checks_its_config_before_start() -> None:
    assert settings("secagg.service")["ExecStartPre"] == [
        "/opt/secagent/current/bin/secagg check-config --config /etc/secagent/secagg.yaml"
    ]


def test_the_agent_starts_through_the_launcher_that_takes_back_a_failed_release() -> None:
    """secagent-launch starts ``current`` and takes back an agent release that does not come
    up (docs/ota.md, "Agent software"): it and the agent switch ``current`` in /opt/secagent,
    the one folder the unit opens for writing; nothing runs the release's code outside it (no
    ExecStartPre), and exit 75 (an update) restarts it."""
    s = settings("secagent.service")
    assert s["ExecStart"][0].split()[0] == "/opt/secagent/secagent-launch"
    assert s["Environment"] == ["SECAGENT_PREFIX=/opt/secagent"]
    assert s["ProtectSystem"] == ["strict"] and s["ReadWritePaths"] == ["/opt/secagent"]
    assert "ExecStartPre" not in s
    assert s["Restart"] == ["on-failure"] and "RestartPreventExitStatus" not in s
    launcher = (ROOT / "deploy" / "secagent-launch").read_text()
    assert 'exec "$PREFIX/current/bin/secagent" "$@"' in launcher
    install = (ROOT / "deploy" / "install.sh").read_text()
    assert '"$ROOT/deploy/secagent-launch" "$PREFIX/secagent-launch"' in install


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")
@pytest.mark.parametrize(
    ("unit", "most"),
    [("secagg.service", 3.0), ("secagg-api.service", 3.0), ("secagent.service", 2.0)],
)
def test_exposure_rating(unit: str, most: float) -> None:
    done = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", "--no-pager", str(UNITS / unit)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    match = re.search(r"Overall exposure level for \S+: ([0-9.]+)", done.stdout)
    assert match, done.stdout + done.stderr
    assert float(match.group(1)) <= most, done.stdout


@pytest.mark.parametrize(
    ("unit", "role"),
    [("secagg-api.service", "--role api"), ("secagg-ingest@.service", "--role ingest --worker %i")],
)
def test_the_units_of_many_processes_on_one_store(unit: str, role: str) -> None:
    """docs/scale.md: secagg-api.service and secagg-ingest@NAME.service instead of
    secagg.service, each the same hardened notify unit with its role."""
    s, one = settings(unit), settings("secagg.service")
    assert s["ExecStart"] == [f"{one['ExecStart'][0]} {role}"]
    assert s["Conflicts"] == ["secagg.service"]
    for key in ("Type", "WatchdogSec", "TimeoutStopSec", "User", "SystemCallFilter"):
        assert s[key] == one[key], key
