"""The lineage a threat message keeps in its own row (migration m013), read back as the
artifacts, runs, used and generated rows it stands for.

Every stored threat message records the same four runs (:data:`MESSAGE_RUNS`); what differs
between messages is only which artifacts they name, and the message row has them all: the
frame, model, rules, config and code version, the snapshot, the sha256 of its detections, its
events (by its threats), the aggregator's code version (``group_code``) and ``run_base``, the
first of four run ids reserved for it in the ``runs`` sequence. So the ingest writes no lineage
rows for a message; this module answers the graph's questions from the message rows, and
:mod:`aggregator.store.lineage` merges its answers with those of the lineage tables (runs of
notifications, plots, releases, and of messages stored before m013).

Artifacts shared by many messages (model, rules, config, code, event) stay rows of
``artifacts``, written once by the ingest; those of one message (frame, detections, message,
snapshot) are derived from the first message that names them, as the first record of an
artifact was the one kept.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from aggregator.store.models import (
    ArtifactRow,
    GeneratedRow,
    MessageRow,
    NewArtifact,
    NewRun,
    RunRow,
    UsedRow,
)
from aggregator.store.schema import Connection

MESSAGE_RUNS: tuple[tuple[str, tuple[tuple[str, str], ...], tuple[str, ...]], ...] = (
    # (run kind, what it used: (artifact kind, role), what it generated: artifact kinds)
    ("validate", (("frame", "input"), ("config", "config"), ("code", "code")), ("snapshot",)),
    (
        "detect",
        (("frame", "input"), ("model", "model"), ("config", "config"), ("code", "code")),
        ("detections",),
    ),
    (
        "rules",
        (("detections", "input"), ("rules", "rules"), ("code", "code"), ("snapshot", "snapshot")),
        ("message",),
    ),
    ("group", (("message", "input"), ("group_code", "code")), ("event",)),
)
"""What one threat message records: its runs ``run_base + i`` in this order. The agent's runs
(validate, detect, rules) come from what the message says; the group run is the aggregator's.
A message without a snapshot names none (its validate run generated nothing)."""
DERIVED_KINDS = ("frame", "detections", "message", "snapshot")
"""Artifact kinds derived from message rows (the others are rows of ``artifacts``)."""
USED_KINDS = ("frame", "model", "rules", "config", "code", "detections", "snapshot", "message")
"""Artifact kinds that the runs of a message use."""
_COLUMNS = (
    "message_id, agent_id, camera, lineage_id, frame_id, frame_sha256, frame_kind, "
    "frame_source, frame_width, frame_height, captured_ts, received_at, code_version, "
    "model_sha256, rules_sha256, config_sha256, snapshot_sha256, detections_sha256, run_base, "
    "group_code, detections_json"
)
_KEY_COLUMN = {
    "frame": "frame_sha256",
    "detections": "detections_sha256",
    "message": "message_id",
    "snapshot": "snapshot_sha256",
    "model": "model_sha256",
    "rules": "rules_sha256",
    "config": "config_sha256",
}
_CHUNK = 400


@dataclass(frozen=True, slots=True)
class MessageLineage:
    """One message's lineage as its row keeps it."""

    message_id: str
    agent_id: str
    camera: str
    lineage_id: str
    frame_id: str
    frame_sha256: str
    frame_kind: str
    frame_source: str
    frame_width: int
    frame_height: int
    captured_ts: float
    received_at: str
    code_version: str
    model_sha256: str
    rules_sha256: str
    config_sha256: str
    snapshot_sha256: str | None
    detections_sha256: str
    run_base: int
    group_code: str
    detections_json: str

    @classmethod
    def of(
        cls, m: MessageRow, *, detections_sha256: str, run_base: int, group_code: str
    ) -> MessageLineage:
        """The lineage of a message row, with what the row may not hold yet."""
        return cls(
            message_id=m.message_id,
            agent_id=m.agent_id,
            camera=m.camera,
            lineage_id=m.lineage_id,
            frame_id=m.frame_id,
            frame_sha256=m.frame_sha256,
            frame_kind=m.frame_kind,
            frame_source=m.frame_source,
            frame_width=m.frame_width,
            frame_height=m.frame_height,
            captured_ts=m.captured_ts,
            received_at=m.received_at,
            code_version=m.code_version,
            model_sha256=m.model_sha256,
            rules_sha256=m.rules_sha256,
            config_sha256=m.config_sha256,
            snapshot_sha256=m.snapshot_sha256,
            detections_sha256=detections_sha256,
            run_base=run_base,
            group_code=group_code,
            detections_json=m.detections_json,
        )

    def ids(self, kind: str, event_ids: Sequence[int] = ()) -> list[str]:
        """The artifact ids of ``kind`` (a kind of :data:`MESSAGE_RUNS`) this message names."""
        match kind:
            case "frame":
                return [f"frame:{self.frame_sha256}"]
            case "model":
                return [f"model:{self.model_sha256}"]
            case "rules":
                return [f"rules:{self.rules_sha256}"]
            case "config":
                return [f"config:{self.config_sha256}"]
            case "code":
                return [f"code:{self.code_version}"]
            case "group_code":
                return [f"code:{self.group_code}"]
            case "detections":
                return [f"detections:{self.detections_sha256}"]
            case "snapshot":
                return [f"snapshot:{self.snapshot_sha256}"] if self.snapshot_sha256 else []
            case "message":
                return [f"message:{self.message_id}"]
            case "event":
                return [f"event:{e}" for e in sorted(set(event_ids))]
        raise ValueError(f"no artifact kind {kind!r} in a message's lineage")

    @property
    def group_at_ts(self) -> float:
        """When the aggregator grouped it: when it was received."""
        return datetime.fromisoformat(self.received_at).timestamp()

    def run(self, run_id: int) -> RunRow:
        index = run_id - self.run_base
        kind = MESSAGE_RUNS[index][0]
        if kind == "group":
            return RunRow(
                run_id, kind, self.lineage_id, self.agent_id, self.group_code, self.group_at_ts, {}
            )
        meta = {"frame_id": self.frame_id, "camera": self.camera}
        return RunRow(
            run_id, kind, self.lineage_id, self.agent_id, self.code_version, self.captured_ts, meta
        )

    def used(self, run_id: int) -> list[UsedRow]:
        _, used, _ = MESSAGE_RUNS[run_id - self.run_base]
        return [UsedRow(run_id, a, role) for kind, role in used for a in self.ids(kind)]

    def generated(self, run_id: int, event_ids: Sequence[int]) -> list[GeneratedRow]:
        _, _, made = MESSAGE_RUNS[run_id - self.run_base]
        return [GeneratedRow(run_id, a) for kind in made for a in self.ids(kind, event_ids)]

    def artifact(self, kind: str) -> ArtifactRow:
        """The artifact of ``kind`` (one of :data:`DERIVED_KINDS`) as this message recorded it."""
        meta: dict[str, Any]
        match kind:
            case "frame":
                meta = {
                    "frame_id": self.frame_id,
                    "kind": self.frame_kind,
                    "source": self.frame_source,
                    "width": self.frame_width,
                    "height": self.frame_height,
                    "agent_id": self.agent_id,
                    "camera": self.camera,
                }
            case "detections":
                meta = {"count": len(json.loads(self.detections_json))}
            case "message":
                meta = {"agent_id": self.agent_id, "camera": self.camera, "frame_id": self.frame_id}
            case _:
                meta = {}
        (artifact_id,) = self.ids(kind)
        return ArtifactRow(artifact_id, kind, self.captured_ts, meta)


def expand(
    m: MessageLineage, *, event_ids: Sequence[int], group_at_ts: float | None = None
) -> tuple[list[NewArtifact], list[NewRun]]:
    """The rows ``m`` stands for, as the lineage tables held them before m013 (and hold them
    for messages stored before): the artifacts in the order they were first recorded, and the
    four runs (``group_at_ts``: when the group run ran, if not when the message was
    received)."""
    grouped_at = m.group_at_ts if group_at_ts is None else group_at_ts
    artifacts: list[NewArtifact] = []
    runs: list[NewRun] = []
    for kind in ("frame", "model", "rules", "config", "code", "detections", "message", "snapshot"):
        for a in m.ids(kind):
            meta = m.artifact(kind).meta if kind in DERIVED_KINDS else None
            if kind == "config":
                meta = {"agent_id": m.agent_id}
            artifacts.append(NewArtifact(a, kind, m.captured_ts, meta))
    for a in [*m.ids("group_code"), *m.ids("event", event_ids)]:
        artifacts.append(NewArtifact(a, a.partition(":")[0], grouped_at, None))
    for i in range(len(MESSAGE_RUNS)):
        r = m.run(m.run_base + i)
        runs.append(
            NewRun(
                kind=r.kind,
                code_version=r.code_version,
                at_ts=grouped_at if r.kind == "group" else r.at_ts,
                used=[(u.artifact_id, u.role) for u in m.used(r.id)],
                generated=[g.artifact_id for g in m.generated(r.id, event_ids)],
                lineage_id=r.lineage_id,
                agent_id=r.agent_id,
                meta=r.meta or None,
            )
        )
    return artifacts, runs


def _chunks(values: Sequence[Any]) -> Iterator[tuple[list[Any], str]]:
    for start in range(0, len(values), _CHUNK):
        chunk = list(values[start : start + _CHUNK])
        yield chunk, ",".join("?" * len(chunk))


def _rows(conn: Connection, where: str, args: Sequence[Any]) -> list[MessageLineage]:
    rows = conn.execute(
        f"SELECT {_COLUMNS} FROM messages WHERE run_base IS NOT NULL AND {where}", args
    )
    return [MessageLineage(*r) for r in rows]


def by_key(
    conn: Connection, kind: str, keys: Sequence[str], *, limit: int | None = None
) -> list[MessageLineage]:
    """The messages that name these artifacts of ``kind`` (the keys of their ids), in the
    order they were stored; ``limit``: the first of them."""
    column = _KEY_COLUMN[kind]
    found: list[MessageLineage] = []
    for chunk, marks in _chunks(keys):
        tail = "" if limit is None else f" ORDER BY run_base LIMIT {int(limit)}"
        found += _rows(conn, f"{column} IN ({marks}){tail}", chunk)
    found.sort(key=lambda m: m.run_base)
    return found if limit is None else found[:limit]


def by_code(conn: Connection, version: str, *, limit: int | None) -> list[MessageLineage]:
    """The messages whose agent or group run ran this code version."""
    tail = "" if limit is None else f" ORDER BY run_base LIMIT {int(limit)}"
    return _rows(conn, f"(code_version = ? OR group_code = ?){tail}", (version, version))


def by_event(conn: Connection, event_ids: Sequence[int]) -> list[tuple[int, MessageLineage]]:
    """(event id, message) for the messages whose threats went into these events."""
    found: list[tuple[int, MessageLineage]] = []
    for chunk, marks in _chunks(event_ids):
        rows = conn.execute(
            f"SELECT DISTINCT t.event_id, {', '.join('m.' + c for c in _COLUMNS.split(', '))} "
            "FROM threats t JOIN messages m ON m.message_id = t.message_id "
            f"WHERE t.event_id IN ({marks}) AND m.run_base IS NOT NULL",
            chunk,
        )
        found += [(int(r[0]), MessageLineage(*r[1:])) for r in rows]
    return found


def by_run(conn: Connection, run_ids: Iterable[int]) -> dict[int, MessageLineage]:
    """run id -> the message it is one of the runs of (for the ids that are)."""
    wanted = set(run_ids)
    bases = sorted({r - i for r in wanted for i in range(len(MESSAGE_RUNS))})
    found: dict[int, MessageLineage] = {}
    for chunk, marks in _chunks(bases):
        for m in _rows(conn, f"run_base IN ({marks})", chunk):
            for i in range(len(MESSAGE_RUNS)):
                if m.run_base + i in wanted:
                    found[m.run_base + i] = m
    return found


def event_ids_of(conn: Connection, message_ids: Sequence[str]) -> dict[str, list[int]]:
    """message id -> the events its threats went into."""
    found: dict[str, list[int]] = {m: [] for m in message_ids}
    for chunk, marks in _chunks(message_ids):
        for r in conn.execute(
            f"SELECT DISTINCT message_id, event_id FROM threats WHERE message_id IN ({marks}) "
            "ORDER BY event_id",
            chunk,
        ):
            found[str(r[0])].append(int(r[1]))
    return found


def key_range(conn: Connection, kind: str, prefix: str, *, limit: int) -> list[str]:
    """Artifact ids of ``kind`` (one of :data:`DERIVED_KINDS`) whose key starts with
    ``prefix``, in order, at most ``limit``."""
    column = _KEY_COLUMN[kind]
    rows = conn.execute(
        f"SELECT DISTINCT {column} FROM messages WHERE {column} >= ? AND {column} < ? "
        f"AND run_base IS NOT NULL ORDER BY {column} LIMIT ?",
        (prefix, prefix + "\U0010ffff", limit),
    )
    return [f"{kind}:{r[0]}" for r in rows]
