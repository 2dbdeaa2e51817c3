"""Storing an agent's update report (``secagent/v1/<agent>/ota/report``), in the ingest
writer's transaction: the report itself (what was active after it), a shadow comparison when it
carries one, and the lineage: an ``ota`` run that used the release and the content it made
active, and a ``shadow`` run that used the candidate and the active model and generated the
comparison (``shadow:<id>``)."""

from __future__ import annotations

import logging
import time

from aggregator import provenance, store
from wire.ota import OtaReport
from wire.payloads import PayloadError, parse_payload
from wire.topics import TopicError, Topics

log = logging.getLogger(__name__)

ARTIFACT_OF_KIND = {"model": "model", "rules": "rules", "config": "config", "agent": "software"}


def record_report(conn: store.Connection, topic: str, payload: bytes) -> tuple[str, str]:
    """Store one report; returns (outcome kind, agent id): ``ota_report`` or ``ota_duplicate``."""
    report = parse_payload(payload, OtaReport)
    try:
        topic_agent = Topics.agent_of(topic)
    except TopicError as exc:
        raise PayloadError("bad_topic", str(exc)) from exc
    if topic_agent != report.agent_id:
        raise PayloadError("agent_mismatch", f"topic says {topic_agent}, payload {report.agent_id}")
    now = time.time()
    at_ts = report.at.timestamp()
    active = {k: v.model_dump(mode="json") for k, v in report.active.items()}
    detail = {"generation": report.generation, "frame_id": report.frame_id}
    new = store.ota.add_report(
        conn,
        report_id=report.report_id,
        agent_id=report.agent_id,
        kind=report.kind,
        release_id=report.release_id,
        state=report.state,
        reason=report.reason,
        rollout_id=report.rollout_id,
        at_ts=at_ts,
        received_ts=now,
        active=active,
        detail=detail,
    )
    if not new:
        return "ota_duplicate", report.agent_id
    log.info(
        "agent=%s ota %s release=%s kind=%s state=%s%s",
        report.agent_id,
        report.report_id,
        report.release_id,
        report.kind,
        report.state,
        f" reason={report.reason}" if report.reason else "",
    )
    if report.shadow is not None and report.release_id is not None:
        _record_shadow(conn, report, at_ts=at_ts)
    elif report.state in ("active", "rolled_back") and report.kind is not None:
        _record_switch(conn, report, at_ts=at_ts)
    return "ota_report", report.agent_id


def _agent_code(conn: store.Connection, agent_id: str) -> str:
    """The code version the agent's latest status gave (its runs are recorded with it)."""
    agent = store.agents.get(conn, agent_id)
    code = (agent.versions or {}).get("code") if agent is not None else None
    return str(code) if code else "unknown (no status yet)"


def _record_switch(conn: store.Connection, report: OtaReport, *, at_ts: float) -> None:
    """An ``ota`` run: the agent made a release's content active (or went back to one)."""
    assert report.kind is not None
    now_active = report.active.get(report.kind)
    if now_active is None or now_active.sha256 is None:
        return
    content = provenance.artifact(ARTIFACT_OF_KIND[report.kind], now_active.sha256, at_ts=at_ts)
    artifacts = [content]
    used = [(content.id, "activated")]
    if now_active.release_id is not None:
        release = provenance.artifact("release", now_active.release_id, at_ts=at_ts)
        artifacts.append(release)
        used.append((release.id, "release"))
    store.lineage.add_artifacts(conn, artifacts)
    store.lineage.add_run(
        conn,
        provenance.run(
            kind="ota",
            code_version=_agent_code(conn, report.agent_id),
            at_ts=at_ts,
            used=used,
            generated=[],
            agent_id=report.agent_id,
            meta={
                "state": report.state,
                "reason": report.reason,
                "first_frame_id": report.frame_id,
                "report_id": report.report_id,
            },
        ),
    )


def _record_shadow(conn: store.Connection, report: OtaReport, *, at_ts: float) -> None:
    assert report.shadow is not None and report.release_id is not None
    shadow_id = store.ota.add_shadow(
        conn,
        report_id=report.report_id,
        agent_id=report.agent_id,
        release_id=report.release_id,
        rollout_id=report.rollout_id,
        at_ts=at_ts,
        figures=report.shadow.model_dump(mode="json"),
    )
    if shadow_id is None:
        return
    used: list[tuple[str, str]] = []
    artifacts = []
    release = provenance.artifact("release", report.release_id, at_ts=at_ts)
    artifacts.append(release)
    used.append((release.id, "candidate"))
    active_model = report.active.get("model")
    if active_model is not None and active_model.sha256 is not None:
        model = provenance.artifact("model", active_model.sha256, at_ts=at_ts)
        artifacts.append(model)
        used.append((model.id, "active"))
    shadow = provenance.artifact(
        "shadow", shadow_id, at_ts=at_ts, meta={"frames": report.shadow.frames}
    )
    artifacts.append(shadow)
    store.lineage.add_artifacts(conn, artifacts)
    store.lineage.add_run(
        conn,
        provenance.run(
            kind="shadow",
            code_version=_agent_code(conn, report.agent_id),
            at_ts=at_ts,
            used=used,
            generated=[shadow.id],
            agent_id=report.agent_id,
            meta={"report_id": report.report_id},
        ),
    )
