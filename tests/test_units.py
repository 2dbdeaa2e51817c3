"""The systemd units: Type=notify with a watchdog, a clean stop, a start limit, the config
checked before start, and hardening that ``systemd-analyze security`` rates (offline, from the
unit files themselves). tests/test_install.py verifies the installed units."""

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
    ("unit", "program"), [("secagent.service", "secagent"), ("secagg.service", "secagg")]
)
def test_notify_watchdog_stop_and_start_limits(unit: str, program: str) -> None:
    s = settings(unit)
    assert s["Type"] == ["notify"] and s["NotifyAccess"] == ["main"]
    assert float(s["WatchdogSec"][0]) >= 10
    assert s["ExecStartPre"][0].endswith(
        f"bin/{program} check-config --config /etc/secagent/{program}.yaml"
    )
    assert s["ExecStart"][0].startswith(f"/opt/secagent/current/bin/{program} ")
    assert int(s["TimeoutStopSec"][0]) >= 20  # the daemons finish what is in hand first
    assert int(s["StartLimitBurst"][0]) >= 1 and int(s["StartLimitIntervalSec"][0]) > 0
    assert s["Restart"] == ["on-failure"]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")
@pytest.mark.parametrize(("unit", "most"), [("secagg.service", 3.0), ("secagent.service", 2.0)])
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
