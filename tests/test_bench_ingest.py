"""bench/ingest.py runs end to end on a few messages and reports every figure it promises:
both rates, the CPU each consumer spent per message (each in a process of its own), and the
database and snapshot bytes per stored threat (and, on PostgreSQL, the server's CPU)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

SUMMARY = re.compile(
    r"(?P<n>\d+) threat messages of [\d.]+ KiB \((?P<kind>[^)]*)\), zero lost, medians of 2 "
    r"alternating rounds: bare paho (?P<bare>\d+) msg/s, (?P<bare_us>\d+) µs CPU/msg; secagg "
    r"(?P<agg>\d+) msg/s, (?P<agg_us>\d+)(?: \+ server (?P<server_us>\d+))? µs CPU/msg; "
    r"ratio (?P<ratio>[\d.]+); database "
    r"(?P<db>\d+) B/threat, snapshots (?P<snap>\d+) B/threat"
)


@pytest.mark.parametrize(
    ("flags", "kind", "with_snapshot"),
    [
        (["--no-snapshot"], "no snapshot", False),
        ([], "threat/2 with a snapshot", True),
        (["--wire", "1"], "threat/1 with a snapshot", True),
        (
            ["--snapshot-sync", "filesystem"],
            "threat/2 with a snapshot, snapshot_sync filesystem",
            True,
        ),
        (
            ["--no-snapshot", "--backend", "postgresql"],
            "no snapshot, store on postgresql",
            False,
        ),
    ],
)
def test_bench_ingest_reports_every_figure(
    flags: list[str], kind: str, with_snapshot: bool
) -> None:
    done = subprocess.run(
        [sys.executable, "bench/ingest.py", "--messages", "40", "--rounds", "2", *flags],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    lines = done.stdout.strip().splitlines()
    assert [line.split(":")[0] for line in lines[:2]] == ["round 1", "round 2"]
    found = SUMMARY.fullmatch(lines[-1])
    assert found is not None, lines[-1]
    assert found["n"] == "40" and found["kind"] == kind
    assert int(found["bare"]) > 0 and int(found["agg"]) > 0
    assert int(found["bare_us"]) > 0 and int(found["agg_us"]) > 0
    # PostgreSQL's own CPU (its processes) is printed beside secagg's, SQLite's is in it
    assert (found["server_us"] is not None) == ("postgresql" in kind)
    assert found["server_us"] is None or int(found["server_us"]) > 0
    # a threat row with its lineage cannot take less than a few hundred bytes (PostgreSQL's
    # database grows by whole 8 KiB pages of each table and index: over 40 threats, coarse)
    assert 200 < int(found["db"]) < (20_000 if "postgresql" not in kind else 200_000)
    # every message has a snapshot of its own (about 70 KB), stored once
    assert (int(found["snap"]) > 50_000) == with_snapshot
    assert (int(found["snap"]) == 0) == (not with_snapshot)
