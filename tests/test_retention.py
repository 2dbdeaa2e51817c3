"""Bounded storage: the per-event snapshot policy (with a real ingest on a real Mosquitto, and
an aggregator process killed between COMMIT and the file deletions), the age and size limits of
snapshots, database retention of threats with events kept, and the settings."""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import re
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from aggregator import lineage, retention, store
from aggregator.api import create_app
from aggregator.auth import accounts
from aggregator.auth.roles import Role
from aggregator.config import AggregatorConfig, StoreConfig, load_aggregator_config
from aggregator.ingest import Ingest
from aggregator.snapshots import snapshot_path
from demo.broker import Mosquitto
from demo.footage import sample_still
from tests.support import wait_for
from tests.support.auth import api_client
from tests.support.ingest import (
    T0,
    Harness,
    ingest_config,
    make_config,
    store_payloads,
    threat_payload,
)

SCORES = [0.55, 0.9, 0.6, 0.62, 0.95, 0.58, 0.7, 0.57, 0.88, 0.56]
"""Ten frames of one event: the best three are frames 4, 1 and 8; first 0, last 9."""
KEPT = {0, 1, 4, 8, 9}


def jpeg(i: int) -> bytes:
    """A distinct real JPEG snapshot per frame (the sample still with a frame number)."""
    image = sample_still("person").copy()
    cv2.putText(image, f"frame {i}", (20, 60), cv2.FONT_HERSHEY_SIMPLEX, 2, (0, 0, 255), 3)
    return bytes(cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 80])[1])


JPEGS = [jpeg(i) for i in range(len(SCORES))]
SHAS = [hashlib.sha256(j).hexdigest() for j in JPEGS]


def frame(
    i: int, *, at_s: float | None = None, agent_id: str = "cam-host", camera: str = "yard"
) -> dict[str, Any]:
    """Frame ``i`` of the event (snapshot JPEGS[i], score SCORES[i]), at ``i`` seconds."""
    p = threat_payload(
        at_s=float(i) if at_s is None else at_s,
        score=SCORES[i],
        agent_id=agent_id,
        camera=camera,
    )
    p["snapshot_jpeg_b64"] = base64.b64encode(JPEGS[i]).decode()
    p["sent_at"] = p["frame"]["captured_at"]
    return p


def files(config: AggregatorConfig) -> set[str]:
    return {p.name.removesuffix(".jpg") for p in config.store.snapshots_dir.rglob("*.jpg")}


def test_an_ended_event_keeps_its_best_first_and_last_snapshots(
    broker: Mosquitto, tmp_path: Path
) -> None:
    config = ingest_config(broker, tmp_path)
    ingest = Ingest(config)
    ingest.start()
    wait_for(ingest.connected.is_set, what="ingest connected")
    h = Harness(ingest, broker, config.store.path)
    try:
        for i in range(10):
            h.send(frame(i))
        wait_for(lambda: ingest.stats.stored == 10, what="ten frames stored")
        assert files(config) == set(SHAS)  # the event is open: every snapshot stays
        h.send(frame(0, at_s=100))  # a threat 100 s later ends the event (cutoff 10 s)
        wait_for(lambda: ingest.stats.stored == 11, what="the next event's frame stored")
    finally:
        h.pub.loop_stop()
        h.pub.disconnect()
        ingest.stop()
    assert files(config) == {SHAS[i] for i in KEPT}
    rows = h.rows("SELECT sha256, reason FROM snapshots_deleted")
    assert {(r[0], r[1]) for r in rows} == {(SHAS[i], "policy") for i in range(10) if i not in KEPT}
    assert h.rows("SELECT COUNT(*) FROM snapshot_deletions")[0][0] == 0
    kept = {(r[0], r[1]) for r in h.rows("SELECT sha256, role FROM snapshots_kept")}
    assert kept >= {(SHAS[0], "first"), (SHAS[9], "last"), (SHAS[4], "top")}
    assert {sha for sha, role in kept if role == "best"} == {SHAS[4], SHAS[1], SHAS[8]}
    # The lineage keeps every sha256; the API says why a file is gone.
    conn = store.connect(config.store.path, readonly=True)
    try:
        snaps = lineage.inputs_of(lineage.graph(conn, "event:1"))["snapshot"]
    finally:
        conn.close()
    assert sorted(snaps) == sorted(f"snapshot:{s}" for s in SHAS)
    client = api_client(config)
    gone = client.get(f"/api/snapshots/{SHAS[2]}.jpg")
    assert gone.status_code == 410
    assert "deleted by the event's snapshot policy" in gone.json()["detail"]
    assert client.get(f"/api/snapshots/{SHAS[1]}.jpg").content == JPEGS[1]
    best = client.get("/api/events/1/snapshot.jpg")
    assert best.status_code == 200 and best.content == JPEGS[4]


def test_an_event_the_sweep_ends_applies_the_policy_too(broker: Mosquitto, tmp_path: Path) -> None:
    """The agent falls silent: the sweep ends the event on the aggregator's clock."""
    config = ingest_config(broker, tmp_path, events={"cutoff_s": 1, "sweep_interval_s": 0.2})
    ingest = Ingest(config)
    ingest.start()
    wait_for(ingest.connected.is_set, what="ingest connected")
    h = Harness(ingest, broker, config.store.path)
    try:
        for i in range(10):
            h.send(frame(i))
        wait_for(lambda: ingest.stats.stored == 10, what="ten frames stored")
        wait_for(
            lambda: files(config) == {SHAS[i] for i in KEPT},
            what="the event ended by the sweep and its policy applied",
        )
    finally:
        h.pub.loop_stop()
        h.pub.disconnect()
        ingest.stop()
    assert h.rows("SELECT ended_ts IS NOT NULL FROM events WHERE id = 1")[0][0] == 1


def login(config: AggregatorConfig) -> TestClient:
    conn = store.connect(config.store.path)
    try:
        with store.transaction(conn):
            accounts.add_user(conn, name="ann", role=Role.viewer, password="ann-password-1")
    finally:
        conn.close()
    client = TestClient(create_app(config))
    r = client.post("/login", data={"username": "ann", "password": "ann-password-1"})
    assert r.status_code == 200, r.text
    return client


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_the_event_page_says_which_snapshots_the_policy_deleted(tmp_path: Path) -> None:
    """No broken image (no request that would fail): the page names why instead."""
    config = make_config(tmp_path)
    store_payloads(config, [frame(i) for i in range(10)])
    store_payloads(config, [frame(0, at_s=100)])  # ends event 1
    client = login(config)
    html = client.get("/events/1").text
    shown = set(re.findall(r'src="/api/snapshots/([0-9a-f]{64})\.jpg"', html))
    assert shown == {SHAS[i] for i in KEPT}
    assert html.count("snapshot deleted by the event&#39;s snapshot policy") == 5
    for sha in shown:
        assert client.get(f"/api/snapshots/{sha}.jpg").status_code == 200


def test_a_snapshot_another_open_event_shares_is_not_deleted(tmp_path: Path) -> None:
    """One frame with the same snapshot in two events (two agents see the same bytes): the
    first event ends and would delete it; the other is open, so it stays."""
    config = make_config(tmp_path, store={"snapshots": {"keep_best": 1}})
    shared = frame(2, agent_id="other-host")  # the same snapshot bytes as frame 2
    store_payloads(config, [frame(i) for i in range(4)] + [shared])
    store_payloads(config, [frame(0, at_s=100)])  # ends cam-host's event, not other-host's
    assert SHAS[2] in files(config)
    assert SHAS[3] in files(config)  # last frame
    assert SHAS[0] in files(config)  # first frame (and a later event's)
    conn = store.connect(config.store.path, readonly=True)
    try:
        assert retention.gone_reasons(conn, SHAS) == {}  # frame 1 is the best: nothing to go
    finally:
        conn.close()


def test_keep_all_deletes_nothing(tmp_path: Path) -> None:
    config = make_config(tmp_path, store={"snapshots": {"keep": "all"}})
    store_payloads(config, [frame(i) for i in range(10)])
    store_payloads(config, [frame(0, at_s=100)])
    assert files(config) == set(SHAS)


KILLED_INGEST = """
import json, os, signal, sys
from aggregator import retention, store
from aggregator.config import AggregatorConfig
from aggregator.ingest import Ingest

def killed(conn, snapshots_dir):
    if store.snapshot_files.pending(conn):  # committed, files not yet deleted
        os.kill(os.getpid(), signal.SIGKILL)
    return retention.Counter()

retention.remove_decided = killed
config = AggregatorConfig.model_validate_json(sys.argv[1])
ingest = Ingest(config)
ingest.start()
ingest.connected.wait(30)
print("connected", flush=True)
sys.stdin.read()
"""


def test_a_kill_between_commit_and_file_deletion_is_finished_at_restart(
    broker: Mosquitto, tmp_path: Path
) -> None:
    config = ingest_config(broker, tmp_path)
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLED_INGEST, config.model_dump_json()],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "connected"
        pub = Harness.__new__(Harness)
        Harness.__init__(pub, None, broker, config.store.path)  # type: ignore[arg-type]
        try:
            for i in range(10):
                pub.send(frame(i))
            pub.send(frame(0, at_s=100))
            wait_for(lambda: proc.poll() is not None, what="the aggregator killed after COMMIT")
        finally:
            pub.pub.loop_stop()
            pub.pub.disconnect()
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
    assert proc.returncode == -9
    conn = store.connect(config.store.path, readonly=True)
    try:
        decided = {sha for sha, _ in store.snapshot_files.pending(conn)}
    finally:
        conn.close()
    assert decided == {SHAS[i] for i in range(10) if i not in KEPT}
    assert files(config) == set(SHAS)  # decided and committed, not yet deleted
    restarted = Ingest(config)  # the deletion resumes at start, before anything is received
    restarted.start()
    restarted.stop()
    assert files(config) == {SHAS[i] for i in KEPT}
    conn = store.connect(config.store.path, readonly=True)
    try:
        assert store.snapshot_files.pending(conn) == []
        assert set(retention.gone_reasons(conn, SHAS).values()) == {"policy"}
    finally:
        conn.close()


def _aged(config: AggregatorConfig, shas: list[str]) -> None:
    """Give the files mtimes in the order of ``shas`` (oldest first), a second apart."""
    for n, sha in enumerate(shas):
        t = 1_700_000_000 + n
        os.utime(snapshot_path(config.store.snapshots_dir, sha), (t, t))


def test_the_size_cap_deletes_oldest_first_and_an_event_best_last(tmp_path: Path) -> None:
    config = make_config(tmp_path, store={"snapshots": {"keep": "all"}})
    # Event 1 (cam-host, ended): frames 0-4, best frame 4. Event 2 (other-host, open): 5-9.
    store_payloads(config, [frame(i) for i in range(5)])
    store_payloads(config, [frame(i, agent_id="other-host") for i in range(5, 10)])
    store_payloads(config, [frame(0, at_s=100)])  # ends event 1; event 3 opens with frame 0
    _aged(config, SHAS)
    sizes = {sha: len(j) for sha, j in zip(SHAS, JPEGS, strict=True)}
    total = sum(sizes.values())
    conn = store.connect(config.store.path)
    try:
        # A cap that deleting frames 1 and 2 (the oldest not protected) meets. Frame 0 is
        # event 3's best snapshot (open event), frame 4 event 1's best.
        cap = total - sizes[SHAS[1]] - sizes[SHAS[2]] + 1
        limits = config.store.model_copy(
            update={
                "snapshots": config.store.snapshots.model_copy(update={"max_total_mb": cap / 1e6})
            }
        )
        done = retention.sweep(conn, limits, now_ts=0)
        assert done.by_size == 2 and done.removed == {"size": 2}
        assert files(config) == set(SHAS) - {SHAS[1], SHAS[2]}
        # A cap below what all ended events hold: frame 3, then event 1's best (frame 4); the
        # open events' snapshots (0: event 3, 5-9: event 2) are never deleted.
        limits = limits.model_copy(
            update={"snapshots": limits.snapshots.model_copy(update={"max_total_mb": 1e-6})}
        )
        done = retention.sweep(conn, limits, now_ts=0)
        assert files(config) == {SHAS[0], *SHAS[5:]}
        assert retention.gone_reasons(conn, [SHAS[4]]) == {SHAS[4]: "size"}
    finally:
        conn.close()
    r = api_client(config).get("/api/events/1/snapshot.jpg")
    assert r.status_code == 410 and "store.snapshots.max_total_mb" in r.json()["detail"]


def test_the_age_limit_deletes_what_is_older(tmp_path: Path) -> None:
    config = make_config(tmp_path, store={"snapshots": {"keep": "all", "max_age_days": 2}})
    store_payloads(config, [frame(0, at_s=-3 * 86400), frame(1)])
    conn = store.connect(config.store.path)
    try:
        now = (T0 + timedelta(days=1)).timestamp()
        assert retention.sweep(conn, config.store, now_ts=now).removed == {"age": 1}
    finally:
        conn.close()
    assert files(config) == {SHAS[1]}


def test_database_retention_keeps_events_listable_and_provenance_answering(
    tmp_path: Path,
) -> None:
    config = make_config(tmp_path, store={"retention": {"threats_days": 30, "batch_rows": 10}})
    # Event 1: 10 frames 40 days ago (ended); event 2: one frame now (open).
    store_payloads(config, [frame(i, at_s=i - 40 * 86400) for i in range(10)])
    now = T0.timestamp()
    store_payloads(config, [frame(0, at_s=0)])
    conn = store.connect(config.store.path)
    try:
        done = retention.sweep(conn, config.store, now_ts=now)
        assert done.messages_pruned == 10 and done.threats_pruned == 10
        assert done.events_pruned == {1}
        counts = store.counters.row_counts(conn)
        assert (counts.messages, counts.threats, counts.events) == (1, 1, 2)
        assert retention.sweep(conn, config.store, now_ts=now).messages_pruned == 0
    finally:
        conn.close()
    # The snapshots only the pruned threats had are gone; the event's best stays.
    assert files(config) == {SHAS[4], SHAS[0]}
    client = api_client(config)
    listed = client.get("/api/events").json()
    event = next(e for e in listed if e["id"] == 1)
    assert event["threat_count"] == 10 and event["top_score"] == pytest.approx(0.95)
    detail = client.get("/api/events/1")
    assert detail.status_code == 200 and detail.json()["threats"] == []
    assert client.get("/api/events/1/snapshot.jpg").content == JPEGS[4]
    graph = client.get("/api/provenance/event:1")
    assert graph.status_code == 200, graph.text
    root = next(n for n in graph.json()["nodes"] if n["id"] == "event:1")
    assert "database retention" in root["meta"]["pruned"]["what"]
    assert root["meta"]["pruned"]["best_snapshot_sha256"] == SHAS[4]
    explained = subprocess.run(
        [sys.executable, "-m", "aggregator", "explain", "event:1", "--config", _yaml(config)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert explained.returncode == 0, explained.stderr
    assert "pruned by database retention" in explained.stdout
    page = login(config)
    r = page.get("/events/1")
    assert r.status_code == 200 and f"/api/snapshots/{SHAS[4]}.jpg" in r.text
    assert page.get("/").status_code == 200


def test_a_backlog_of_old_threats_is_pruned_a_few_batches_a_sweep(
    broker: Mosquitto, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """120 old threat messages, 10 a batch: a sweep called with max_batches stops there and says
    more are left; the ingest's writer goes on sweep after sweep (5 batches each, storing
    messages in between) until none is left, and every event stays."""
    config = make_config(tmp_path, store={"retention": {"threats_days": 30, "batch_rows": 10}})
    store_payloads(config, [threat_payload(at_s=i - 40 * 86400) for i in range(120)])
    store_payloads(config, [threat_payload(at_s=-39 * 86400)])  # ends the old event
    conn = store.connect(config.store.path)
    try:
        first = retention.sweep(conn, config.store, now_ts=T0.timestamp(), max_batches=2)
        assert first.more and first.messages_pruned == 20
        assert store.counters.row_counts(conn).messages == 101
    finally:
        conn.close()
    live = ingest_config(
        broker, tmp_path, store={"retention": {"threats_days": 30, "batch_rows": 10}}
    )
    caplog.set_level(logging.INFO, logger="aggregator.retention")
    ingest = Ingest(live)
    ingest.start()
    h = Harness(ingest, broker, live.store.path)
    try:
        wait_for(ingest.connected.is_set, what="ingest connected")
        wait_for(
            lambda: h.rows("SELECT COUNT(*) FROM messages")[0][0] == 1,
            what="the backlog pruned (the open event's message stays)",
        )
        h.send(threat_payload(at_s=0))
        wait_for(lambda: ingest.stats.stored == 1, what="a new message stored")
    finally:
        h.pub.loop_stop()
        h.pub.disconnect()
        ingest.stop()
    sweeps = [r for r in caplog.records if r.getMessage().startswith("database retention:")]
    # Two sweeps of 5 batches (then, as the new message ended the open event, maybe its one).
    assert [r.getMessage().split(" message(s)")[0] for r in sweeps[:2]] == [
        "database retention: 50",
        "database retention: 50",
    ]
    assert h.rows("SELECT COUNT(*) FROM events")[0][0] == 3  # every event kept


def _yaml(config: AggregatorConfig) -> Path:
    path = config.store.path.parent / "secagg.yaml"
    path.write_text(json.dumps(config.model_dump(mode="json", include={"store"})))
    return path


@pytest.mark.parametrize(
    ("store_doc", "error"),
    [
        ({"snapshots": {"keep_best": -1}}, "store.snapshots.keep_best"),
        ({"snapshots": {"keep": "some"}}, "store.snapshots.keep"),
        ({"snapshots": {"max_total_mb": 0}}, "store.snapshots.max_total_mb"),
        ({"snapshots": {"max_age_days": -2}}, "store.snapshots.max_age_days"),
        ({"snapshots": {"sweep_interval_s": 0}}, "store.snapshots.sweep_interval_s"),
        ({"snapshots": {"keep_all": True}}, "store.snapshots.keep_all"),
        ({"retention": {"threats_days": 0}}, "store.retention.threats_days"),
        ({"retention": {"batch_rows": 1}}, "store.retention.batch_rows"),
    ],
)
def test_bad_storage_settings_are_refused_with_the_field(
    store_doc: dict[str, Any], error: str
) -> None:
    with pytest.raises(ValidationError) as info:
        AggregatorConfig.model_validate({"store": store_doc})
    assert error in ".".join(str(p) for p in info.value.errors()[0]["loc"])


def test_a_config_with_the_old_retention_setting_still_loads(tmp_path: Path) -> None:
    old = tmp_path / "secagg.yaml"
    old.write_text("store: {path: secagg.sqlite, snapshot_retention_days: 7}\n")
    config, _ = load_aggregator_config(old)
    assert config.store.snapshot_max_age_days == 7
    assert config.store.snapshots.keep == "best" and config.store.snapshots.keep_best == 3
    with pytest.raises(ValidationError) as info:
        StoreConfig.model_validate({"snapshot_retention_days": 7, "snapshots": {"max_age_days": 3}})
    message = str(info.value)
    assert "store.snapshot_retention_days" in message and "store.snapshots.max_age_days" in message


def test_the_keep_set_of_an_event() -> None:
    frames = [
        store.snapshot_files.EventFrame(f"m{i}", SHAS[i], float(i), SCORES[i]) for i in range(10)
    ]
    kept = retention.keep_set(frames, best=3, top="m4")
    assert set(kept) == {SHAS[i] for i in KEPT}
    assert retention.keep_set(frames, best=0, top="m4").keys() == {SHAS[0], SHAS[9], SHAS[4]}
    no_snapshots = [f.__class__(f.message_id, None, f.captured_ts, f.score) for f in frames]
    assert retention.keep_set(no_snapshots, best=3, top="m4") == {}
    assert np.isfinite(SCORES).all()
