"""Lineage: what the real ingest records for each threat message, the recursive queries, the
provenance API, notifications, the backfill of older stores and snapshot retention."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest
import sqlite_utils
from click.testing import CliRunner

from aggregator import lineage, provenance, retention, snapshots, store
from aggregator.cli import main as secagg
from aggregator.config import AggregatorConfig, MqttConfig
from aggregator.ingest import Ingest
from demo.broker import Mosquitto
from tests.support import wait_for
from tests.support.auth import api_client
from tests.support.ingest import (
    CONFIG_SHA,
    JPEG,
    JPEG_SHA,
    MODEL_SHA,
    RULES_SHA,
    Harness,
    make_config,
    payload,
    read,
    released_row,
    store_payloads,
    threat_payload,
)


def test_the_ingest_records_the_lineage_of_each_threat(harness: Harness) -> None:
    sent = [payload(at_s=0), payload(at_s=2)]
    for p in sent:
        harness.send(p)
    wait_for(lambda: harness.ingest.stats.stored == 2, what="two stored")
    conn = store.connect(harness.db_path, readonly=True)
    try:
        graph = lineage.graph(conn, "event:1")
        inputs = lineage.inputs_of(graph)
        assert inputs["model"] == [f"model:{MODEL_SHA}"]
        assert inputs["rules"] == [f"rules:{RULES_SHA}"]
        assert inputs["config"] == [f"config:{CONFIG_SHA}"]
        assert "code:0.1.0+gtest" in inputs["code"]  # the agent's; the aggregator's is there too
        assert inputs["frame"] == [f"frame:{JPEG_SHA}"]
        assert inputs["snapshot"] == [f"snapshot:{JPEG_SHA}"]
        assert sorted(inputs["message"]) == sorted(f"message:{p['message_id']}" for p in sent)
        runs = [n for n in graph.nodes if n["type"] == "run"]
        assert sorted(r["kind"] for r in runs) == sorted(
            ["validate", "detect", "rules", "group"] * 2
        )
        # The runs that one frame triggered share its lineage id.
        for p in sent:
            kinds = {r["kind"] for r in runs if r["lineage_id"] == p["lineage_id"]}
            assert kinds == {"validate", "detect", "rules", "group"}
        # Downstream: which events did this model version contribute to?
        down = lineage.graph(conn, f"model:{MODEL_SHA}", direction="downstream")
        assert "event:1" in {n["id"] for n in down.nodes}
    finally:
        conn.close()


def _explain(config: AggregatorConfig, tmp_path: Path, *args: str) -> tuple[int, str]:
    cfg_file = tmp_path / "secagg.yaml"
    cfg_file.write_text(
        f"store: {{path: {config.store.path}, snapshots_dir: {config.store.snapshots_dir}}}\n"
    )
    result = CliRunner().invoke(secagg, ["explain", *args, "--config", str(cfg_file)])
    return result.exit_code, result.output


def test_explain_downstream_prints_what_came_of_a_model(tmp_path: Path) -> None:
    """The JSON graph downstream of a model had every node while the tree printed none."""
    config = make_config(tmp_path)
    store_payloads(config, [payload(at_s=0), payload(at_s=1), payload(at_s=40)])
    code, doc = _explain(config, tmp_path, f"model:{MODEL_SHA}", "--downstream", "--json")
    assert code == 0, doc
    nodes = json.loads(doc)["nodes"]
    code, tree = _explain(config, tmp_path, f"model:{MODEL_SHA}", "--downstream")
    assert code == 0, tree
    lines = tree.splitlines()
    assert lines[0] == f"model:{MODEL_SHA}" and "downstream:" in lines
    assert "[model] detect run" in tree and "[input] group run" in tree
    # every artifact and run of the JSON graph is in the tree
    for node in nodes:
        label = node["id"] if node["type"] == "artifact" else f"run #{node['id'][4:]}"
        assert label in tree, f"{label} missing from the tree"
    assert "event:1 (cam-host/yard person_on_premises high, 2 threats)" in tree
    assert "event:2 (cam-host/yard person_on_premises high, 1 threats)" in tree


def test_explain_takes_a_unique_prefix_of_an_artifact_id(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    shas = ["abcd" + "1" * 60, "abcd" + "2" * 60]
    store_payloads(
        config,
        [payload(at_s=0)] + [threat_payload(at_s=i, frame_sha256=s) for i, s in enumerate(shas)],
    )
    for short in (f"model:{MODEL_SHA[:10]}", f"model:{MODEL_SHA[:8]}…", f"model:{MODEL_SHA}"):
        code, out = _explain(config, tmp_path, short, "--downstream")
        assert code == 0, out
        assert out.startswith(f"model:{MODEL_SHA}\n")
    code, out = _explain(config, tmp_path, "frame:abcd")
    assert code == 1
    assert "frame:abcd is ambiguous" in out and all(f"frame:{s}" in out for s in shas)
    code, out = _explain(config, tmp_path, "frame:abcd2")
    assert code == 0 and out.startswith(f"frame:{shas[1]} ")
    code, out = _explain(config, tmp_path, "model:ffff")
    assert code == 1 and "no artifact starts with model:ffff" in out
    code, out = _explain(config, tmp_path, "event:99")  # ids that are numbers: never a prefix
    assert code == 1 and "artifact event:99 is not known" in out


def test_a_notification_has_the_lineage_of_its_event(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    store_payloads(config, [payload(at_s=0)])
    conn = store.connect(config.store.path)
    with store.transaction(conn):
        nid = provenance.record_notification(
            conn,
            notification_id=7,
            event_id=1,
            content_sha256="d4" * 32,
            code_version="0.1.0+gnotify",
            channel="email",
        )
    conn.close()
    assert nid == "notification:7"
    conn = read(config)
    graph = lineage.graph(conn, "notification:7")
    conn.close()
    inputs = lineage.inputs_of(graph)
    assert inputs["event"] == ["event:1"]
    assert {f"model:{MODEL_SHA}", f"rules:{RULES_SHA}", f"frame:{JPEG_SHA}"} <= {
        a for ids in inputs.values() for a in ids
    }
    assert "code:0.1.0+gnotify" in inputs["code"] and "code:0.1.0+gtest" in inputs["code"]

    cfg_file = tmp_path / "secagg.yaml"
    cfg_file.write_text(
        f"store: {{path: {config.store.path}, snapshots_dir: {config.store.snapshots_dir}}}\n"
    )
    result = CliRunner().invoke(secagg, ["explain", "notification:7", "--config", str(cfg_file)])
    assert result.exit_code == 0, result.output
    out = result.output
    assert out.startswith("notification:7 (email, content sha256 " + "d4" * 32)
    for needle in (MODEL_SHA, RULES_SHA, JPEG_SHA, "notify run", "group run", "detect run"):
        assert needle in out
    bad = CliRunner().invoke(secagg, ["explain", "notification:8", "--config", str(cfg_file)])
    assert bad.exit_code == 1 and "not known" in bad.output


def test_an_older_store_is_backfilled_by_the_migration(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    # A store as it was before the lineage tables: messages, threats and events only.
    conn = store.connect(config.store.path)
    store.migrations.apply(sqlite_utils.Database(conn), stop_before="m005_provenance")
    conn.close()
    p = payload(at_s=0)
    conn = store.connect(config.store.path)
    with store.transaction(conn):
        pending = snapshots.PendingSnapshots(config.store.snapshots_dir)
        pending.add(JPEG_SHA, JPEG)
        pending.stage()
        pending.publish()
        values = released_row(p, received_at="2026-11-28T12:00:00+00:00", snapshot_sha256=JPEG_SHA)
        conn.execute(
            f"INSERT INTO messages ({', '.join(values)}) VALUES ({', '.join('?' * len(values))})",
            list(values.values()),
        )
        conn.execute(
            "INSERT INTO events (agent_id, camera, rule, label, severity, started_ts, "
            "last_seen_ts, threat_count, top_score, top_message_id) "
            "VALUES ('cam-host', 'yard', 'person_on_premises', 'person', 'high', 0, 0, 1, 0.8, ?)",
            (p["message_id"],),
        )
        conn.execute(
            "INSERT INTO threats (message_id, event_id, agent_id, camera, rule, severity, label, "
            "class_id, score, x1, y1, x2, y2, captured_ts) VALUES "
            "(?, 1, 'cam-host', 'yard', 'person_on_premises', 'high', 'person', 0, 0.8, "
            "10, 20, 110, 220, 0)",
            (p["message_id"],),
        )
    conn.close()
    store.migrate(config.store.path)
    conn = read(config)
    inputs = lineage.inputs_of(lineage.graph(conn, "event:1"))
    conn.close()
    assert inputs["model"] == [f"model:{MODEL_SHA}"] and inputs["frame"] == [f"frame:{JPEG_SHA}"]
    assert "code:unknown (backfilled)" in inputs["code"]


def test_snapshot_retention_deletes_old_snapshots_and_keeps_the_lineage(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    store_payloads(config, [payload(at_s=0)])
    path = snapshots.snapshot_path(config.store.snapshots_dir, JPEG_SHA)
    assert path.read_bytes() == JPEG
    conn = store.connect(config.store.path)
    t0 = conn.execute("SELECT captured_ts FROM messages").fetchone()[0]
    aged = config.store.model_copy(update={"snapshot_retention_days": 1.0})  # still read
    assert retention.sweep(conn, aged, now_ts=t0 + 86400).by_age == 0
    assert path.exists()
    swept = retention.sweep(conn, aged, now_ts=t0 + 86401)
    assert swept.by_age == 1 and swept.removed == {"age": 1} and not path.exists()
    assert lineage.inputs_of(lineage.graph(conn, "event:1"))["snapshot"] == [f"snapshot:{JPEG_SHA}"]
    conn.close()
    r = api_client(config).get("/api/events/1/snapshot.jpg")
    assert r.status_code == 410 and "retention" in r.json()["detail"]


@pytest.mark.parametrize(
    ("config", "error"),
    [
        ({"store": {"snapshot_retention_days": 0}}, "store.snapshot_retention_days"),
        ({"reproduce": {"iou_min": 1.5}}, "reproduce.iou_min"),
        ({"reproduce": {"score_delta_max": -0.1}}, "reproduce.score_delta_max"),
        ({"reproduce": {"model_dirs": ["models"]}}, "reproduce.model_dirs"),
    ],
)
def test_bad_provenance_settings_are_refused(config: dict[str, Any], error: str) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError) as info:
        AggregatorConfig.model_validate(config)
    assert error in ".".join(str(p) for p in info.value.errors()[0]["loc"])


def test_the_ingest_applies_snapshot_retention(broker: Mosquitto, tmp_path: Path) -> None:
    def ingest_with(retention_days: float | None) -> Ingest:
        config = make_config(tmp_path).model_copy(
            update={
                "mqtt": MqttConfig(
                    host=broker.host,
                    port=broker.port,
                    client_id=f"secagg-{uuid.uuid4().hex[:8]}",
                    session_expiry_s=0,
                ),
                "store": make_config(tmp_path).store.model_copy(
                    update={"snapshot_retention_days": retention_days}
                ),
            }
        )
        ingest = Ingest(config)
        ingest.start()
        wait_for(ingest.connected.is_set, what="ingest connected")
        return ingest

    ingest = ingest_with(None)
    h = Harness(ingest, broker, ingest.config.store.path)
    try:
        h.send(payload(at_s=-3 * 86400))  # captured three days before the others
        wait_for(lambda: ingest.stats.stored == 1, what="stored")
    finally:
        h.pub.loop_stop()
        h.pub.disconnect()
        ingest.stop()
    path = snapshots.snapshot_path(ingest.config.store.snapshots_dir, JPEG_SHA)
    assert path.exists()  # no retention: kept
    ingest = ingest_with(1.0)
    try:
        wait_for(lambda: not path.exists(), what="the ingest's sweep to apply retention")
    finally:
        ingest.stop()
