"""bench/ingest_scale.py runs end to end on a few messages, on both backends in one run, and
reports every figure it promises: the bare subscriber's rate and CPU, and for each number of
workers on each store the rate, its ratio, the CPU of all workers and of each, and on
PostgreSQL the server's CPU."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

BARE = re.compile(r"round 1: bare paho (?P<rate>\d+) msg/s, (?P<us>\d+) µs CPU/msg")
WORKERS = re.compile(
    r"round 1: (?P<n>\d) worker\(s\) on (?P<store>SQLite|PostgreSQL) (?P<rate>\d+) msg/s "
    r"\(ratio (?P<ratio>[\d.]+) of bare\), (?P<us>\d+) µs CPU/msg in all; "
    r"CPU s per worker \[(?P<each>[\d., ]+)\](?:; server (?P<server>\d+) µs CPU/msg)?"
)


def test_bench_ingest_scale_reports_both_backends() -> None:
    done = subprocess.run(
        [
            sys.executable,
            "bench/ingest_scale.py",
            *("--messages", "40", "--workers", "1", "2", "--no-snapshot", "--backend", "both"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    header, bare, *figures = done.stdout.strip().splitlines()
    assert header.startswith("40 threat messages of ") and "SQLite and PostgreSQL stores" in header
    found = BARE.fullmatch(bare)
    assert found is not None, bare
    assert int(found["rate"]) > 0  # CPU figures: /proc counts ticks of 10 ms, 40 messages less
    seen = []
    for line in figures:
        found = WORKERS.fullmatch(line)
        assert found is not None, line
        seen.append((found["store"], int(found["n"])))
        assert int(found["rate"]) > 0 and float(found["ratio"]) > 0
        assert len(found["each"].split(", ")) == int(found["n"])  # a CPU figure per worker
        # PostgreSQL's own processes do the store's work there: counted beside the workers'
        assert (found["server"] is not None) == (found["store"] == "PostgreSQL")
    assert seen == [("SQLite", 1), ("SQLite", 2), ("PostgreSQL", 1), ("PostgreSQL", 2)]
