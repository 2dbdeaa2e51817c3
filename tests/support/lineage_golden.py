"""The lineage graphs of a fixed set of threat messages, as the API and ``secagg explain`` give
them: what ``tests/test_lineage_golden.py`` compares with the graphs that the code of an
earlier release gave for the same messages (``tests/data/lineage_golden.json``).

The messages are ``secagent.threat/1`` (every release reads them) with fixed ids and times:
a still scene (three frames with the same pixels and snapshot, so one frame and one snapshot
artifact made by three runs), a second visit, another camera, a message with two rules (two
events), a redelivery, then a notification and a plot. Times that are the aggregator's clock
(when it grouped a message) and its code version are replaced by placeholders.

Regenerated from the code of an earlier release (the data file came from commit 1fb4329, the
last one that recorded each run as rows of the lineage tables)::

    git archive <commit> | tar -x -C DIR && cp tests/support/lineage_golden.py DIR/tests/support/
    (cd DIR && PYTHONPATH=. $PWD/.venv/bin/python -m tests.support.lineage_golden \
        --out $PWD/tests/data/lineage_golden.json)
"""

from __future__ import annotations

import argparse
import base64
import copy
import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

T0_TS = 1_795_867_200.0  # 2026-11-28T12:00:00Z
MODEL, RULES, CONFIG = "a1" * 32, "b2" * 32, "c3" * 32


def _payload(
    n: int, *, at_s: float, camera: str, frame: str, rules: list[str], jpeg_b64: str
) -> dict[str, Any]:
    score = 0.8 if n <= 3 else 0.5 + n / 100  # the still scene: the same detections
    box = {"label": "person", "class_id": 0, "score": score, "xyxy": [10.0, 20.0, 110.0, 220.0]}
    at = datetime.fromtimestamp(T0_TS + at_s, UTC).isoformat()
    return {
        "schema": "secagent.threat/1",
        "message_id": f"{n:032x}",
        "agent_id": "cam-host",
        "camera": camera,
        "lineage_id": f"{n + 1000:032x}",
        "frame": {
            "frame_id": f"frame-{n}",
            "sha256": frame,
            "kind": "video",
            "source": f"/clips/{camera}.avi#{n}",
            "captured_at": at,
            "width": 1280,
            "height": 720,
        },
        "detections": [box],
        "threats": [{**box, "rule": r, "severity": "high"} for r in rules],
        "versions": {
            "code": "0.1.0+gagent",
            "model_sha256": MODEL,
            "rules_sha256": RULES,
            "config_sha256": CONFIG,
        },
        "snapshot_jpeg_b64": jpeg_b64,
        "sent_at": at,
    }


def messages(jpeg: bytes) -> list[list[dict[str, Any]]]:
    """Two batches of payloads."""
    b64 = base64.b64encode(jpeg).decode()
    still = "5e" * 32
    yard = "person_on_premises"
    first = [
        _payload(1, at_s=0, camera="yard", frame=still, rules=[yard], jpeg_b64=b64),
        _payload(2, at_s=1, camera="yard", frame=still, rules=[yard], jpeg_b64=b64),
        _payload(3, at_s=2, camera="yard", frame=still, rules=[yard], jpeg_b64=b64),
        _payload(
            4, at_s=3, camera="door", frame="d0" * 32, rules=[yard, "loitering"], jpeg_b64=b64
        ),
    ]
    second = [
        _payload(2, at_s=1, camera="yard", frame=still, rules=[yard], jpeg_b64=b64),  # again
        _payload(5, at_s=60, camera="yard", frame="f5" * 32, rules=[yard], jpeg_b64=b64),
    ]
    return [first, second]


GRAPHS = [
    ("event:1", "upstream"),
    ("event:2", "upstream"),
    ("event:3", "upstream"),
    ("notification:1", "upstream"),
    ("plot:" + "9f" * 32, "upstream"),
    (f"model:{MODEL}", "downstream"),
    (f"rules:{RULES}", "downstream"),
    ("code:0.1.0+gagent", "downstream"),
    ("frame:" + "5e" * 32, "downstream"),
    ("message:" + f"{4:032x}", "upstream"),
    ("message:" + f"{4:032x}", "downstream"),
    ("event:1", "downstream"),
]


def golden(work: Path) -> dict[str, Any]:
    """Store the messages in a fresh store under ``work`` and return its graphs."""
    from aggregator import events, lineage, provenance, records, store
    from aggregator.config import AggregatorConfig
    from appcommon.version import code_version
    from tests.support.ingest import JPEG

    config = AggregatorConfig.model_validate(
        {
            "store": {"path": str(work / "g.sqlite"), "snapshots_dir": str(work / "snapshots")},
            "events": {"cutoff_s": 10},
        }
    )
    store.migrate(config.store.path)
    conn = store.connect(config.store.path)
    grouping = events.Grouping.from_config(config.events)
    first, second = messages(JPEG)
    now = time.time()

    def batch(payloads: list[dict[str, Any]]) -> None:
        topic = "secagent/v1/cam-host/threats"
        raw = [(topic, json.dumps(p).encode()) for p in payloads]
        records.store_batch(conn, raw, config=config, grouping=grouping, now_ts=now)

    batch(first)
    with store.transaction(conn):
        provenance.record_notification(
            conn,
            notification_id=1,
            event_id=1,
            content_sha256="d4" * 32,
            code_version="0.1.0+gnotify",
            channel="email",
            at_ts=T0_TS + 100,
        )
    batch(second)
    with store.transaction(conn):
        provenance.record_plot(
            conn,
            plot_sha256="9f" * 32,
            kind="timeline",
            query={"camera": "yard"},
            event_ids=[1, 2],
            code_version="0.1.0+gplot",
            at_ts=T0_TS + 200,
        )
    ours = code_version()
    out: dict[str, Any] = {}
    for artifact, direction in GRAPHS:
        g = lineage.graph(conn, artifact, direction=direction)
        doc = _normalised(g.as_dict(), ours)
        doc["tree"] = _tree(lineage.render_tree(g), ours)
        out[f"{artifact} {direction}"] = doc
    conn.close()
    return out


def _tree(tree: str, ours: str) -> str:
    """The tree with the aggregator's code version replaced, and the summary's list of code
    versions sorted after that (it lists them by id, and the version decided the order)."""
    lines = tree.replace(ours, "<secagg>").splitlines()
    for i, line in enumerate(lines):
        head, sep, listed = line.partition(": ")
        if head == "  code" and sep:
            count, _, ids = listed.partition(": ")
            lines[i] = f"{head}: {count}: {', '.join(sorted(ids.split(', ')))}"
    return "\n".join(lines)


def _normalised(doc: dict[str, Any], ours: str) -> dict[str, Any]:
    """The graph without what depends on the aggregator's clock and code version."""
    doc = copy.deepcopy(doc)
    for node in doc["nodes"]:
        if node["type"] == "run" and node["kind"] == "group":
            node["at_ts"] = "<grouped at>"
        if node.get("code_version") == ours:
            node["code_version"] = "<secagg>"
        if node["id"] == f"code:{ours}":
            node["id"] = "code:<secagg>"
    for edge in doc["edges"]:
        for end in ("from", "to"):
            if edge[end] == f"code:{ours}":
                edge[end] = "code:<secagg>"
    doc["nodes"].sort(key=lambda n: n["id"])
    doc["edges"].sort(key=lambda e: (e["from"], e["to"], e["type"]))
    return doc


def main() -> None:
    import tempfile

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    import aggregator

    print(f"code from {Path(aggregator.__file__).parent.parent}", file=sys.stderr)
    with tempfile.TemporaryDirectory() as tmp:
        found = golden(Path(tmp))
    args.out.write_text(json.dumps(found, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
