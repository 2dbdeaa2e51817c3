"""The whole path: the sample clip through a real agent, a real Mosquitto and a real aggregator."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest

from aggregator import plots, store
from demo.broker import Mosquitto, free_port
from modelrt import load_manifest
from tests.support import DEFAULT_RULES, MODEL_MANIFEST, wait_for
from tests.support.auth import HEADERS
from tests.support.processes import (
    BIN,
    run_agent_to_completion,
    running_aggregator,
    write_agent_config,
    write_aggregator_config,
)
from tests.support.servers import SmtpServer

CUTOFF_S = 10


@pytest.fixture(scope="module")
def clip_run(broker: Mosquitto, clip_path: Path, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """Run the clip once; yield the agent's summary, the API's events and threats, and the
    emails a real SMTP server received."""
    work = tmp_path_factory.mktemp("e2e")
    smtp = SmtpServer(free_port()).start()
    notify = (
        "notify:\n  notifiers:\n"
        f"    - {{name: mail, type: smtp, host: 127.0.0.1, port: {smtp.port}, "
        "from_addr: secagg@example.org, to: [guard@example.org]}\n"
    )
    agg_conf, api = write_aggregator_config(
        work, broker, cutoff_s=CUTOFF_S, client_id="secagg-e2e", extra_yaml=notify
    )
    agent_conf = write_agent_config(
        work,
        broker,
        agent_id="e2e-host",
        cameras=f"  - name: yard\n    source: {{type: video, path: {clip_path}, fps: 2}}\n",
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
        health = httpx.get(f"{api}/api/health", headers=HEADERS).json()
        events = httpx.get(f"{api}/api/events", headers=HEADERS).json()
        details = [httpx.get(f"{api}/api/events/{e['id']}", headers=HEADERS).json() for e in events]
        threats = httpx.get(f"{api}/api/threats", headers=HEADERS, params={"limit": 1000}).json()
        agent = wait_for(
            lambda: (
                (a := httpx.get(f"{api}/api/agents/e2e-host", headers=HEADERS).json()).get("state")
                == "offline"
                and a
            ),
            what="the agent's last status (offline) stored",
        )
        wait_for(lambda: len(smtp.messages) >= len(events), what="one email per event")
        notifications = _settled_notifications(work / "secagg.sqlite")
    smtp.stop()
    yield {
        "config": agg_conf,
        "emails": list(smtp.messages),
        "notifications": notifications,
        "summary": summary,
        "health": health,
        "events": events,
        "details": details,
        "threats": threats,
        "agent": agent,
    }


def test_the_clip_makes_two_threat_events(clip_run) -> None:  # type: ignore[no-untyped-def]
    events = clip_run["events"]
    assert [(e["camera"], e["rule"]) for e in events] == [("yard", "person_on_premises")] * 2
    first, second = sorted(events, key=lambda e: e["id"])
    # The second visit starts more than the cutoff after the first one was last seen.
    gap = _ts(second["started_at"]) - _ts(first["last_seen_at"])
    assert gap > CUTOFF_S


def _settled_notifications(db: Path) -> list[dict[str, Any]]:
    def settled() -> list[dict[str, Any]] | None:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        conn.row_factory = sqlite3.Row
        try:
            rows = [dict(r) for r in conn.execute("SELECT * FROM notifications ORDER BY id")]
        finally:
            conn.close()
        return rows if all(r["state"] != "pending" for r in rows) else None

    return wait_for(settled, what="every notification sent")


def test_each_threat_event_sends_one_email_with_its_snapshot(clip_run) -> None:  # type: ignore[no-untyped-def]
    emails, events = clip_run["emails"], clip_run["events"]
    assert len(emails) == len(events) == 2
    assert [n["event_id"] for n in clip_run["notifications"]] == sorted(e["id"] for e in events)
    assert all(n["state"] == "sent" and n["attempts"] == 1 for n in clip_run["notifications"])
    for mail in emails:
        assert "person_on_premises on yard" in mail["Subject"]
        (attachment,) = list(mail.iter_attachments())
        assert attachment.get_content_type() == "image/jpeg"
        assert attachment.get_content().startswith(b"\xff\xd8")


def test_nothing_is_lost_or_stored_twice(clip_run) -> None:  # type: ignore[no-untyped-def]
    summary, health = clip_run["summary"], clip_run["health"]
    assert summary["threat_messages"] > 10
    assert summary["acknowledged"] == summary["threat_messages"]
    assert summary["outbox_depth"] == 0
    assert health["messages"] == summary["threat_messages"]
    assert health["threats"] == summary["threats"] == len(clip_run["threats"])
    assert sum(e["threat_count"] for e in clip_run["events"]) == summary["threats"]


def test_static_frames_never_reach_the_model(clip_run) -> None:  # type: ignore[no-untyped-def]
    summary = clip_run["summary"]
    assert summary["frames_no_motion"] > 0
    assert summary["frames_detected"] + summary["frames_no_motion"] == summary["frames_read"]


def test_frames_without_anyone_produce_no_threats(clip_run, clip_path: Path) -> None:  # type: ignore[no-untyped-def]
    truth = json.loads(clip_path.with_suffix(".truth.json").read_text())["frames"]
    for threat in clip_run["threats"]:
        index = int(threat["provenance"]["frame_source"].rsplit("#", 1)[1])
        assert truth[index]["person_visible"], f"threat on empty frame {index}"
    frames_with_threats = {t["provenance"]["frame_source"] for t in clip_run["threats"]}
    visible = sum(1 for f in truth if f["person_visible"])
    assert visible > 0 and frames_with_threats


def test_every_threat_carries_provenance_of_the_real_files(clip_run) -> None:  # type: ignore[no-untyped-def]
    model_file = load_manifest(MODEL_MANIFEST).resolve_file()
    model_sha = hashlib.sha256(model_file.read_bytes()).hexdigest()
    rules_sha = hashlib.sha256(DEFAULT_RULES.read_bytes()).hexdigest()
    threats = [t for d in clip_run["details"] for t in d["threats"]]
    assert len(threats) == clip_run["summary"]["threats"]
    for t in threats:
        prov = t["provenance"]
        assert prov["model_sha256"] == model_sha
        assert prov["rules_sha256"] == rules_sha
        assert prov["agent_id"] == "e2e-host"
        assert prov["code_version"] == clip_run["summary"]["versions"]["code"]
        assert len(prov["frame_sha256"]) == 64 and prov["frame_kind"] == "video"
        assert prov["snapshot_sha256"] is not None
        assert t["label"] == "person" and t["score"] >= 0.5


def _ts(iso: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(iso).timestamp()


def test_the_agent_reports_its_state_and_counters(clip_run) -> None:  # type: ignore[no-untyped-def]
    agent, summary = clip_run["agent"], clip_run["summary"]
    assert agent["versions"] == summary["versions"]
    assert agent["provider"] == "CPUExecutionProvider"
    assert agent["outbox_depth"] == 0 and agent["outbox_dropped"] == 0
    (camera,) = agent["cameras"]
    assert camera["name"] == "yard" and camera["state"] == "finished"
    assert camera["counters"]["captured"] == summary["frames_read"]
    assert camera["counters"]["threats"] == summary["threats"]


def _secagg(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "secagg"), *args], capture_output=True, text=True, timeout=300)


def test_each_email_is_explained_reproduced_and_plotted(clip_run) -> None:  # type: ignore[no-untyped-def]
    """Issue #5's promise on the sample clip: for each email, every input version that produced
    it is known (model file, rules file, frames, code), and the result can be produced again."""
    config = str(clip_run["config"])
    model_sha = hashlib.sha256(load_manifest(MODEL_MANIFEST).resolve_file().read_bytes())
    rules_sha = hashlib.sha256(DEFAULT_RULES.read_bytes()).hexdigest()
    frames_of = {
        d["id"]: {t["provenance"]["frame_sha256"] for t in d["threats"]}
        for d in clip_run["details"]
    }
    assert len(clip_run["notifications"]) == 2
    for note in clip_run["notifications"]:
        done = _secagg("explain", "--config", config, f"notification:{note['id']}", "--json")
        assert done.returncode == 0, done.stderr
        ids = {n["id"] for n in json.loads(done.stdout)["nodes"]}
        assert f"event:{note['event_id']}" in ids
        assert f"model:{model_sha.hexdigest()}" in ids and f"rules:{rules_sha}" in ids
        assert {f"frame:{sha}" for sha in frames_of[note["event_id"]]} <= ids
        assert f"code:{clip_run['summary']['versions']['code']}" in ids

        done = _secagg(
            "reproduce", "--config", config, str(note["event_id"]), "--json", "--snapshots-only"
        )
        report = json.loads(done.stdout)
        assert done.returncode == 0 and report["ok"], done.stdout[-2000:]
        assert len(report["frames"]) == next(
            e["threat_count"] for e in clip_run["events"] if e["id"] == note["event_id"]
        )

    done = _secagg("plot", "--config", config, "timeline")
    assert done.returncode == 0, done.stderr
    plot_id = done.stdout.split()[0].removeprefix("plot:")
    conn = store.connect(Path(config).parent / "secagg.sqlite", readonly=True)
    try:
        _, again = plots.rerender(conn, plot_id)
    finally:
        conn.close()
    assert again == plot_id  # the re-rendered PNG has the recorded sha256
