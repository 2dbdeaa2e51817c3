"""bench/capacity.py runs end to end on a few messages and idle agents and reports every figure
it promises: the broker's memory per connected agent (TCP and TLS), the CPU a message of the
broker, the ingest worker and (on PostgreSQL) the database server, and the agents per core."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

MEMORY = re.compile(
    r"broker memory: \d+ KiB, \d+ KiB with 20 agents connected over (?P<kind>TCP|TLS) and "
    r"subscribed: (?P<kib>-?[\d.]+) KiB an agent"
)
COSTS = re.compile(
    r"CPU a threat message: broker (?P<broker>\d+) µs \(accept (?P<accept>\d+), deliver "
    r"(?P<deliver>\d+)\), ingest worker (?P<worker>\d+) µs(?:, PostgreSQL (?P<pg>\d+) µs)?; "
    r"one worker drained (?P<rate>\d+) msg/s"
)
PER_CORE = re.compile(
    r"one core of (?P<part>broker|ingest worker|PostgreSQL): [\d,]+ msg/s = [\d,]+ agents on "
    r"average, [\d,]+ with all in view at once"
)


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_bench_capacity_reports_every_figure(backend: str) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "bench/capacity.py",
            "--messages",
            "200",
            "--connections",
            "20",
            "--backend",
            backend,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    out = done.stdout
    memory = {m["kind"]: float(m["kib"]) for m in MEMORY.finditer(out)}
    assert set(memory) == {"TCP", "TLS"}, out
    costs = COSTS.search(out)
    assert costs is not None, out
    assert int(costs["broker"]) > 0 and int(costs["worker"]) > 0 and int(costs["rate"]) > 0
    assert (costs["pg"] is not None) == (backend == "postgresql")
    if costs["pg"] is not None:
        assert int(costs["pg"]) > 0
    parts = [m["part"] for m in PER_CORE.finditer(out)]
    expected = ["broker", "ingest worker"] + (["PostgreSQL"] if backend == "postgresql" else [])
    assert parts == expected, out
    assert "agents connected over TLS a GiB" in out
