"""What ``setup_logging`` (both command-line tools) makes of a log line: the text and JSON
formats as documented, and no per-line work for what neither shows (the caller's frame, the
thread, the process). Run in a process of its own: logging's switches are process-wide."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

SCRIPT = """
import logging, sys
from appcommon.cli import setup_logging
setup_logging("info", sys.argv[1])
walks = []
find_caller = logging.Logger.findCaller
def counting(self, *args, **kwargs):
    walks.append(1)
    return find_caller(self, *args, **kwargs)
logging.Logger.findCaller = counting
log = logging.getLogger("aggregator.ingest")
for i in range(10):
    log.info("stored message=%s agent=%s camera=%s threats=%d", f"{i:032x}", "cam-host", "yard", 1)
record = logging.LogRecord("x", logging.INFO, "x.py", 1, "m", None, None)
print(len(walks), record.thread, record.process, file=sys.stdout)
"""


def run(log_format: str) -> tuple[str, list[str]]:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, log_format],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout.strip(), done.stderr.strip().splitlines()


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_log_lines_cost_no_frame_walk_and_keep_their_format(log_format: str) -> None:
    summary, lines = run(log_format)
    assert summary == "0 None None"  # no caller looked up, no thread nor process gathered
    assert len(lines) == 10
    if log_format == "text":
        assert re.fullmatch(
            r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO aggregator\.ingest: stored "
            r"message=0{31}9 agent=cam-host camera=yard threats=1",
            lines[-1],
        )
    else:
        doc = json.loads(lines[-1])
        assert doc["level"] == "INFO" and doc["logger"] == "aggregator.ingest"
        assert doc["message"] == "0" * 31 + "9" and doc["agent"] == "cam-host"
        assert doc["camera"] == "yard"
