"""A broken agent outbox: the agent starts anyway on a fresh file, the broken one is set aside,
and the loss (count and commit times when readable) is logged, kept and reported in status and
by the aggregator's agent view. A commit survives a process killed right after it, and a
journal file deleted by hand then: nothing committed lives outside the database file.

``BREAKS`` is the class of damage: each row breaks a real outbox holding 50 messages and says
whether the count can still be read from the broken file."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from agent.outbox import JOURNAL_MODE, Outbox
from demo.broker import Mosquitto
from tests.support import wait_for
from tests.support.auth import HEADERS
from tests.support.processes import (
    finish,
    running_aggregator,
    start_test_threats,
    write_agent_config,
    write_aggregator_config,
)

N = 50
PAYLOAD = b"x" * 2000


def filled(path: Path) -> None:
    outbox = Outbox(path, max_bytes=10 * 1024 * 1024)
    for i in range(N):
        outbox.put(message_id=f"{i:032x}", topic="secagent/v1/a/threats", payload=PAYLOAD)
    outbox.close()


def overwrite(offset_of: Callable[[int], int], data: bytes) -> Callable[[Path], object]:
    def damage(path: Path) -> None:
        size = path.stat().st_size
        with open(path, "r+b") as fh:
            fh.seek(offset_of(size))
            fh.write(data)

    return damage


def truncate_half(path: Path) -> None:
    os.truncate(path, path.stat().st_size // 2)


def random_file(path: Path) -> None:
    path.write_bytes(os.urandom(8192))


BREAKS: list[tuple[str, Callable[[Path], object], bool]] = [
    # (damage, how, count readable from the broken file)
    ("garbage in the middle", overwrite(lambda size: size // 2, os.urandom(4096)), True),
    ("a page of zeros after the schema", overwrite(lambda size: 4096, bytes(4096)), True),
    ("truncated to half", truncate_half, False),
    ("not a database at all", random_file, False),
]


@pytest.mark.parametrize(
    ("damage", "readable"), [b[1:] for b in BREAKS], ids=[b[0] for b in BREAKS]
)
def test_a_broken_outbox_is_set_aside_and_the_loss_reported(
    tmp_path: Path, damage: Callable[[Path], object], readable: bool
) -> None:
    path = tmp_path / "outbox.sqlite"
    filled(path)
    damage(path)
    outbox = Outbox(path, max_bytes=10 * 1024 * 1024)  # never raises
    try:
        assert outbox.depth() == 0
        outbox.put(message_id="f" * 32, topic="t", payload=b"new")  # works on the fresh file
        (loss,) = outbox.losses()
        assert Path(loss.moved_to).exists() and loss.reason
        if readable:
            assert loss.messages is not None and loss.first_at is not None
        (wire,) = outbox.losses_wire()
        assert wire["reason"] == loss.reason
    finally:
        outbox.close()
    reopened = Outbox(path, max_bytes=10 * 1024 * 1024)  # the loss stays on record
    try:
        assert len(reopened.losses()) == 1 and reopened.depth() == 1
    finally:
        reopened.close()


def test_an_intact_outbox_keeps_its_messages(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite"
    filled(path)
    outbox = Outbox(path, max_bytes=10 * 1024 * 1024)
    try:
        assert outbox.depth() == N and outbox.losses() == []
    finally:
        outbox.close()


KILLED_AFTER_COMMIT = """
import os, sys
from pathlib import Path
from agent.outbox import Outbox
outbox = Outbox(Path(sys.argv[1]), max_bytes=100 * 1024 * 1024)
for i in range(int(sys.argv[2])):
    outbox.put(message_id=f"{i:032x}", topic="t", payload=bytes([i]) * int(sys.argv[3]))
os._exit(0)  # as SIGKILL would: no close, no checkpoint
"""


@pytest.mark.parametrize("size", [2000, 250_000], ids=["in the row", "in a payload file"])
def test_commits_survive_a_kill_and_a_journal_deleted_by_hand(tmp_path: Path, size: int) -> None:
    """With a write-ahead log the last commits of a killed agent live in the ``-wal`` file, and
    deleting it (a cleanup script, a backup that copies one file) loses them silently. The
    outbox commits into the database file itself; a payload too big for a row is a file made
    durable before the row commits."""
    path = tmp_path / "outbox.sqlite"
    subprocess.run(
        [sys.executable, "-c", KILLED_AFTER_COMMIT, str(path), "40", str(size)], check=True
    )
    for suffix in ("-wal", "-shm", "-journal"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    outbox = Outbox(path, max_bytes=100 * 1024 * 1024)
    try:
        assert outbox.depth() == 40 and outbox.losses() == []
        entries = outbox.pending(limit=100)
        assert [e.payload for e in entries] == [bytes([i]) * size for i in range(40)]
    finally:
        outbox.close()
    assert JOURNAL_MODE == "TRUNCATE"


def test_the_aggregator_shows_what_a_broken_outbox_lost(tmp_path: Path) -> None:
    broker = Mosquitto(tmp_path / "broker").start()
    try:
        agg_conf, api = write_aggregator_config(tmp_path, broker, client_id="secagg-lost")
        agent_conf = write_agent_config(
            tmp_path,
            broker,
            agent_id="lossy-host",
            cameras=f"  - name: unused\n    source: {{type: directory, path: {tmp_path}}}\n",
        )
        filled(tmp_path / "outbox.sqlite")
        overwrite(lambda size: size // 2, os.urandom(4096))(tmp_path / "outbox.sqlite")
        with running_aggregator(agg_conf, api, tmp_path / "secagg.log"):
            summary = finish(start_test_threats(agent_conf, count=3, cameras=1))
            assert summary["outbox_depth"] == 0

            def reported() -> list[dict[str, Any]]:
                agent = httpx.get(f"{api}/api/agents/lossy-host", headers=HEADERS, timeout=5)
                return agent.json()["outbox_lost"] if agent.status_code == 200 else []

            (lost,) = wait_for(reported, what="the loss in the aggregator's agent view")
            assert 0 < lost["messages"] <= N and lost["first_at"] and lost["moved_to"]
    finally:
        broker.stop()
