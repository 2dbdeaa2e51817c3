"""The aggregator's database: ``secagg serve`` refuses a corrupt file at start with a clear
message and the recovery steps (never a crash loop of tracebacks, never writing into it), and
``secagg backup`` copies the store while the ingest writes, into a file that passes SQLite's
check and that ``secagg serve`` starts on.

``BREAKS`` is the class of damage, each applied to a real store of 200 threats."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from aggregator import store
from aggregator.ingest import Ingest
from demo.broker import Mosquitto
from tests.support import wait_for
from tests.support.ingest import (
    T0,
    Harness,
    ingest_config,
    make_config,
    store_payloads,
    threat_payload,
)
from tests.support.processes import BIN


def filled(tmp_path: Path) -> Path:
    config = make_config(tmp_path)
    start_s = (datetime.now(UTC) - T0).total_seconds()
    store_payloads(config, [threat_payload(at_s=start_s + i) for i in range(200)])
    conn = store.connect(config.store.path)
    store.checkpoint(conn)
    conn.close()
    return config.store.path


def overwrite_at(fraction: float, data: bytes) -> Callable[[Path], object]:
    def damage(path: Path) -> None:
        with open(path, "r+b") as fh:
            fh.seek(int(path.stat().st_size * fraction) // 4096 * 4096)
            fh.write(data)

    return damage


BREAKS: list[tuple[str, Callable[[Path], object]]] = [
    ("garbage in the middle", overwrite_at(0.5, os.urandom(8192))),
    ("a page of zeros", overwrite_at(0.3, bytes(4096))),
    ("truncated", lambda p: os.truncate(p, p.stat().st_size // 3)),
    ("not a database", lambda p: p.write_bytes(os.urandom(65536))),
]


def serve(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "secagg"), "serve", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize("damage", [b[1] for b in BREAKS], ids=[b[0] for b in BREAKS])
def test_secagg_refuses_a_corrupt_store_with_the_recovery_steps(
    tmp_path: Path, damage: Callable[[Path], object]
) -> None:
    db = filled(tmp_path)
    damage(db)
    before = db.read_bytes()
    config = tmp_path / "secagg.yaml"
    config.write_text(
        f"store: {{path: {db}}}\nmqtt: {{host: 127.0.0.1, port: 1}}\napi: {{port: 0}}\n"
    )
    done = serve(config)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert "secagg backup" in done.stderr and ".recover" in done.stderr, done.stderr
    assert db.read_bytes() == before  # nothing written into it


def test_an_intact_store_passes_the_check(tmp_path: Path) -> None:
    store.check(filled(tmp_path))


def test_a_backup_taken_while_ingest_writes_is_whole(broker: Mosquitto, tmp_path: Path) -> None:
    config = ingest_config(broker, tmp_path)
    ingest = Ingest(config)
    ingest.start()
    h = Harness(ingest, broker, config.store.path)
    start_s = (datetime.now(UTC) - T0).total_seconds()
    conf_file = tmp_path / "secagg.yaml"
    conf_file.write_text(f"store: {{path: {config.store.path}}}\n")
    try:
        wait_for(ingest.connected.is_set, what="ingest connected")
        for i in range(300):
            h.pub.publish(
                "secagent/v1/cam-host/threats",
                json.dumps(threat_payload(at_s=start_s + i)).encode(),
                qos=1,
            )
        wait_for(lambda: ingest.stats.stored >= 50, what="ingest under way")
        out = tmp_path / "backups" / "secagg-backup.sqlite"
        done = subprocess.run(
            [str(BIN / "secagg"), "backup", "--config", str(conf_file), "--out", str(out)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        assert "quick_check ok" in done.stdout
        wait_for(lambda: ingest.stats.stored == 300, what="every threat stored")
    finally:
        h.pub.loop_stop()
        h.pub.disconnect()
        ingest.stop()
    store.check(out)
    copy = sqlite3.connect(out)
    (messages,) = copy.execute("SELECT COUNT(*) FROM messages").fetchone()
    (threats,) = copy.execute("SELECT COUNT(*) FROM threats").fetchone()
    copy.close()
    assert 50 <= messages <= 300 and threats == messages  # one consistent moment
    # secagg starts on the restored copy
    restored = ingest_config(broker, tmp_path / "restored")
    (tmp_path / "restored").mkdir()
    out.replace(restored.store.path)
    again = Ingest(restored)
    again.start()
    try:
        wait_for(again.connected.is_set, what="secagg running on the restored copy")
    finally:
        again.stop()
