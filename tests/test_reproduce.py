"""Reproduce and explain on real data: the sample clip and one still through a real agent, a real
Mosquitto and a real `secagg`; then `secagg reproduce` re-runs the recorded model and rules."""

from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3
import subprocess
from pathlib import Path
from typing import Any

import cv2
import httpx
import pytest

from aggregator import retention, store
from aggregator.config import SnapshotsConfig
from demo.broker import Mosquitto
from demo.footage import sample_still
from modelrt import load_manifest
from tests.support import DEFAULT_RULES, MODEL_MANIFEST, ROOT, wait_for
from tests.support.auth import HEADERS
from tests.support.processes import (
    BIN,
    run_agent_to_completion,
    running_aggregator,
    write_agent_config,
    write_aggregator_config,
)

MODEL_SHA = hashlib.sha256(load_manifest(MODEL_MANIFEST).resolve_file().read_bytes()).hexdigest()
RULES_SHA = hashlib.sha256(DEFAULT_RULES.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def run(broker: Mosquitto, clip_path: Path, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """One run: camera ``yard`` plays the clip, camera ``door`` gets one still with a person.
    Yields while the aggregator still serves."""
    work = tmp_path_factory.mktemp("reproduce")
    door = work / "door"
    door.mkdir()
    still = cv2.imencode(".jpg", sample_still("person"), [cv2.IMWRITE_JPEG_QUALITY, 90])[1]
    (door / "visitor.jpg").write_bytes(still.tobytes())
    # Every frame keeps its snapshot here (each is reproduced from it); the default policy's
    # deletions are reproduced in test_a_frame_whose_snapshot_the_policy_deleted_is_named.
    agg_conf, api = write_aggregator_config(
        work, broker, cutoff_s=10, client_id="secagg-repro", store_yaml="snapshots: {keep: all}"
    )
    with agg_conf.open("a") as fh:
        fh.write(f"reproduce: {{model_paths: [{MODEL_MANIFEST.parent}]}}\n")
    agent_conf = write_agent_config(
        work,
        broker,
        agent_id="repro-host",
        cameras=(
            f"  - name: yard\n    source: {{type: video, path: {clip_path}, fps: 2}}\n"
            f"  - name: door\n    source: {{type: directory, path: {door}, watch: false}}\n"
        ),
    )
    with running_aggregator(agg_conf, api, work / "secagg.log"):
        summary = run_agent_to_completion(agent_conf)
        wait_for(
            lambda: (
                httpx.get(f"{api}/api/health", headers=HEADERS).json()["messages"]
                >= summary["threat_messages"]
            ),
            timeout_s=60,
            what="every threat message stored",
        )
        events = httpx.get(f"{api}/api/events", headers=HEADERS).json()
        yield {"work": work, "config": agg_conf, "api": api, "events": events, "still": door}


def secagg(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "secagg"), *map(str, args)], capture_output=True, text=True, timeout=180
    )


def event_of(run: dict[str, Any], camera: str) -> int:
    return min(int(e["id"]) for e in run["events"] if e["camera"] == camera)


def test_the_lineage_of_an_event_reaches_model_rules_frames_and_code(run) -> None:  # type: ignore[no-untyped-def]
    event_id = event_of(run, "yard")
    detail = httpx.get(f"{run['api']}/api/events/{event_id}", headers=HEADERS).json()
    graph = httpx.get(f"{run['api']}/api/provenance/event:{event_id}", headers=HEADERS).json()
    ids = {n["id"] for n in graph["nodes"]}
    assert f"model:{MODEL_SHA}" in ids and f"rules:{RULES_SHA}" in ids
    frames = {f"frame:{t['provenance']['frame_sha256']}" for t in detail["threats"]}
    # Content-addressed: frames with identical pixels (someone standing still) are one artifact.
    assert frames <= ids and len(frames) > 5
    code = detail["threats"][0]["provenance"]["code_version"]
    assert f"code:{code}" in ids

    out = secagg("explain", f"event:{event_id}", "--config", run["config"])
    assert out.returncode == 0, out.stderr
    frame_ids = {t["provenance"]["frame_id"] for t in detail["threats"]}
    for needle in (MODEL_SHA, RULES_SHA, *frames, *frame_ids, code, "detect run", "rules run"):
        assert needle in out.stdout


def test_the_event_snapshot_is_served(run) -> None:  # type: ignore[no-untyped-def]
    event_id = event_of(run, "door")
    r = httpx.get(f"{run['api']}/api/events/{event_id}/snapshot.jpg", headers=HEADERS)
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    # A small JPEG still is sent as it is: the snapshot is the original file.
    assert r.content == (run["still"] / "visitor.jpg").read_bytes()


def reproduce(run: dict[str, Any], event_id: int, *extra: str) -> tuple[int, dict[str, Any]]:
    out = secagg("reproduce", str(event_id), "--config", run["config"], "--json", *extra)
    assert out.returncode in (0, 1), out.stderr
    return out.returncode, json.loads(out.stdout)


def test_a_clip_event_reproduces_within_tolerance_from_its_snapshots(run) -> None:  # type: ignore[no-untyped-def]
    code, report = reproduce(run, event_of(run, "yard"), "--snapshots-only")
    frames = report["frames"]
    assert code == 0 and report["ok"], json.dumps(frames, indent=1)[:3000]
    assert len(frames) > 5
    assert {f["mode"] for f in frames} == {"tolerance"}
    assert all(f["status"] == "match" and f["matched"] == f["recorded"] for f in frames)
    worst_iou = min(f["iou_min"] for f in frames)
    worst_score = max(f["score_delta_max"] for f in frames)
    print(
        f"clip from snapshots: {len(frames)} frames, IoU min {worst_iou:.4f}, "
        f"|score delta| max {worst_score:.6f}"
    )
    assert worst_iou >= report["iou_min"] and worst_score <= report["score_delta_max"]
    text = secagg(
        "reproduce", str(event_of(run, "yard")), "--config", run["config"], "--snapshots-only"
    )
    print(text.stdout)
    assert "MATCH within tolerance [stored snapshot (re-encoded JPEG)]" in text.stdout
    assert "tolerance for re-encoded frames: IoU >= 0.9, |score delta| <= 0.03" in text.stdout


def test_a_clip_event_reproduces_exactly_from_the_original_video(run) -> None:  # type: ignore[no-untyped-def]
    code, report = reproduce(run, event_of(run, "yard"))
    assert code == 0, json.dumps(report["frames"], indent=1)[:3000]
    assert {f["mode"] for f in report["frames"]} == {"exact"}
    assert max(f["score_delta_max"] for f in report["frames"]) <= 1e-6


def test_a_still_event_reproduces_exactly_and_the_text_report_says_so(run) -> None:  # type: ignore[no-untyped-def]
    event_id = event_of(run, "door")
    code, report = reproduce(run, event_id, "--snapshots-only")
    (frame,) = report["frames"]
    assert code == 0 and frame["mode"] == "exact" and frame["status"] == "match"
    assert "snapshot = original file bytes" in frame["input"]
    text = secagg("reproduce", str(event_id), "--config", run["config"])
    assert text.returncode == 0
    assert "MATCH exact" in text.stdout and "threats match" in text.stdout


def test_reproduce_names_the_missing_model_and_frame(run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    # An aggregator that knows no model and has lost the snapshots (retention).
    (tmp_path / "empty").mkdir()
    config = tmp_path / "secagg.yaml"
    config.write_text(
        f"store: {{path: {run['work']}/secagg.sqlite, snapshots_dir: {tmp_path}/empty}}\n"
        f"reproduce: {{model_paths: [{tmp_path}/empty]}}\n"
    )
    event_id = event_of(run, "door")
    out = secagg("reproduce", str(event_id), "--config", config, "--snapshots-only")
    assert out.returncode == 1
    assert f"MISSING model {MODEL_SHA}" in out.stdout
    assert "not among the 0 known model(s)" in out.stdout
    assert "no stored snapshot" in out.stdout and "1 missing" in out.stdout


def test_a_frame_whose_snapshot_the_policy_deleted_is_named(run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A copy of the run's store and snapshots; the default policy (best 3, first, last)
    applied to the clip event as its end does: reproduce re-runs the frames kept, names each
    deleted one with why, and passes."""
    copy = tmp_path / "secagg.sqlite"
    store.backup(run["work"] / "secagg.sqlite", copy)
    shutil.copytree(run["work"] / "snapshots", tmp_path / "snapshots")
    event_id = event_of(run, "yard")
    config = tmp_path / "secagg.yaml"
    config.write_text(
        f"store: {{path: {copy}, snapshots_dir: {tmp_path}/snapshots}}\n"
        f"reproduce: {{model_paths: [{MODEL_MANIFEST.parent}]}}\n"
    )
    conn = store.connect(copy)
    try:
        with store.transaction(conn):
            queued = retention.apply_event_policy(
                conn, [event_id], SnapshotsConfig(keep_best=3), now_ts=0
            )
        assert queued > 0
        assert retention.remove_decided(conn, tmp_path / "snapshots") == {"policy": queued}
        kept = store.snapshot_files.kept_by_event(conn, event_id)
    finally:
        conn.close()
    code, report = reproduce({**run, "config": config}, event_id, "--snapshots-only")
    by_status = {s: [f for f in report["frames"] if f["status"] == s] for s in ("match", "deleted")}
    assert code == 0 and report["ok"]
    # The event keeps at most five (best 3, first, last); a frame with the same pixels as one
    # of the clip's other event (no policy applied there) keeps its shared snapshot too.
    assert 2 <= len(kept) <= 5 and by_status["deleted"]
    assert len(by_status["deleted"]) + len(by_status["match"]) == len(report["frames"])
    assert all(
        "deleted by the event's snapshot policy" in f["missing"][0] for f in by_status["deleted"]
    )
    text = secagg("reproduce", str(event_id), "--config", config, "--snapshots-only")
    assert text.returncode == 0
    assert f"{len(by_status['deleted'])} not re-run (snapshot deleted)" in text.stdout
    assert "NOT RE-RUN frame" in text.stdout


@pytest.fixture(scope="module")
def zoned_run(broker: Mosquitto, clip_path: Path, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """The clip on a camera with a zone (the right 40% of the view) and rules limited to it:
    the same person is ``person_at_gate`` while her feet are in the zone, else
    ``person_on_premises``. The aggregator keeps the config in force from the agent's status."""
    work = tmp_path_factory.mktemp("reproduce-zones")
    agg_conf, api = write_aggregator_config(work, broker, cutoff_s=10, client_id="secagg-zones")
    with agg_conf.open("a") as fh:
        fh.write(f"reproduce: {{model_paths: [{MODEL_MANIFEST.parent}]}}\n")
    agent_conf = write_agent_config(
        work,
        broker,
        agent_id="zones-host",
        rules=ZONE_RULES,
        cameras=(
            f"  - name: yard\n    source: {{type: video, path: {clip_path}, fps: 2}}\n"
            "    zones: {gate: [[0.6, 0.0], [1.0, 0.0], [1.0, 1.0], [0.6, 1.0]]}\n"
        ),
    )
    with running_aggregator(agg_conf, api, work / "secagg.log"):
        summary = run_agent_to_completion(agent_conf)
        wait_for(
            lambda: (
                httpx.get(f"{api}/api/health", headers=HEADERS).json()["messages"]
                >= summary["threat_messages"]
            ),
            timeout_s=60,
            what="every threat message stored",
        )
        events = httpx.get(f"{api}/api/events", headers=HEADERS).json()
        yield {"work": work, "config": agg_conf, "api": api, "events": events}


ZONE_RULES = ROOT / "rules" / "example-zones.yaml"


def test_an_event_of_a_zone_rule_reproduces_with_the_zones_the_agent_applied(zoned_run) -> None:  # type: ignore[no-untyped-def]
    rules = {e["rule"] for e in zoned_run["events"]}
    assert rules == {"person_at_gate", "person_on_premises"}, zoned_run["events"]
    for event in zoned_run["events"]:
        code, report = reproduce(zoned_run, event["id"])
        assert code == 0, json.dumps(report["frames"], indent=1)[:3000]
        assert all(f["threats_recorded"] == f["threats_rerun"] for f in report["frames"])


def test_without_the_config_in_force_a_zone_rule_is_not_reproduced(zoned_run) -> None:  # type: ignore[no-untyped-def]
    gate = next(e["id"] for e in zoned_run["events"] if e["rule"] == "person_at_gate")
    copy = zoned_run["work"] / "without-configs.sqlite"
    with sqlite3.connect(zoned_run["work"] / "secagg.sqlite") as conn:
        conn.execute("VACUUM INTO ?", (str(copy),))
    with sqlite3.connect(copy) as conn:
        conn.execute("DELETE FROM agent_configs")
    config = zoned_run["work"] / "secagg-without-configs.yaml"
    config.write_text(
        zoned_run["config"].read_text().replace("path: secagg.sqlite", f"path: {copy}")
    )
    out = secagg("reproduce", str(gate), "--config", config)
    assert out.returncode == 1
    assert "MISSING agent config" in out.stdout and "never reached the aggregator" in out.stdout
