"""Shadow mode with real processes: a candidate model runs beside the active one on the same
frames and never raises a threat; the figures the agent reports (matched, only-active,
only-candidate per camera and label, threat-decision flips with frame ids) equal an independent
computation from the two models' raw detections on the same frames. Then ``promote`` makes the
candidate active, and ``abort`` takes the agent back to what it had."""

from __future__ import annotations

import hashlib
import json
from functools import partial
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import yaml

from demo.broker import Mosquitto
from modelrt import Detector, load_manifest
from modelrt.rules import load_rules
from tests.support import wait_for
from tests.support.models import shifting_model
from tests.support.ota import AgentProcess, OtaSite, model_sha, tiny_model

RULES = """rules:
  - {name: fallen, labels: [person_fallen], min_score: 0.5, severity: critical}
  - {name: person_on_premises, labels: [person], min_score: 0.5, severity: high}
"""
LEVELS = list(range(0, 200, 10))  # uniform grey stills: the candidate's boxes move 0..78 px


def candidate_model(folder: Path) -> Path:
    rows = np.asarray([[108, 88, 148, 168, 0.9, 0], [10, 10, 30, 30, 0.6, 1]], np.float32)
    onnx = shifting_model(
        folder / "cand.onnx", rows, shift_columns=(0, 2), names="['person', 'person_fallen']"
    )
    manifest = folder / "cand.yaml"
    manifest.write_text(
        yaml.safe_dump(
            {
                "name": "cand",
                "file": onnx.name,
                "sha256": hashlib.sha256(onnx.read_bytes()).hexdigest(),
                "layout": "end2end",
            }
        )
    )
    return manifest


def stored_at_least(site: OtaSite, count: int) -> bool:
    return len(site.messages("shadowed")) >= count


def iou(a: np.ndarray, b: np.ndarray) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def expected_figures(
    active: Path, candidate: Path, rules_path: Path, folder: Path
) -> dict[str, Any]:
    """Both models on the stills, paired here with a plain loop (greedy by IoU, same label)."""
    a_det = Detector(load_manifest(active), providers=["CPUExecutionProvider"])
    c_det = Detector(load_manifest(candidate), providers=["CPUExecutionProvider"])
    rules = load_rules(rules_path)
    counts: dict[str, dict[str, int]] = {}
    flips = []
    for path in sorted(folder.glob("*.png")):
        image = cv2.imread(str(path))
        assert image is not None
        a, c = a_det.detect(image), c_det.detect(image)
        for label in {*map(str, a.labels), *map(str, c.labels)}:
            ia = [i for i in range(len(a)) if str(a.labels[i]) == label]
            ic = [j for j in range(len(c)) if str(c.labels[j]) == label]
            pairs = sorted(
                ((iou(a.xyxy[i], c.xyxy[j]), i, j) for i in ia for j in ic), reverse=True
            )
            matched_a: set[int] = set()
            matched_c: set[int] = set()
            for value, i, j in pairs:
                if value >= 0.5 and i not in matched_a and j not in matched_c:
                    matched_a.add(i)
                    matched_c.add(j)
            into = counts.setdefault(label, {"matched": 0, "only_active": 0, "only_candidate": 0})
            into["matched"] += len(matched_a)
            into["only_active"] += len(ia) - len(matched_a)
            into["only_candidate"] += len(ic) - len(matched_c)
        fired_a = sorted({t.rule for t in rules.apply("door", a)})
        fired_c = sorted({t.rule for t in rules.apply("door", c)})
        if fired_a != fired_c:
            flips.append((path.name, fired_a, fired_c))
    return {"per_label": counts, "flips": flips}


def test_shadow_figures_equal_an_independent_computation(broker: Mosquitto, tmp_path: Path) -> None:
    site = OtaSite(tmp_path / "site", broker)
    active = tiny_model(tmp_path / "models", "active", x=320)
    candidate = candidate_model(tmp_path / "models")
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    release = site.add_release("model", candidate, tag="cand-1")
    camera = tmp_path / "camera"
    camera.mkdir()
    config = site.agent_config(
        tmp_path / "agent", agent_id="shadowed", model=active, camera_dir=camera, rules=rules
    )
    agent = AgentProcess(config)
    site.aggregator.start()
    try:
        agent.start()
        rollout = site.rollout(release["id"], "--agents", "shadowed", "--shadow", "1")
        site.wait_report("shadowed", release_id=release["id"], state="shadow")
        for i, level in enumerate(LEVELS):
            image = np.full((256, 256, 3), level, np.uint8)
            tmp = camera / f".{i:03d}.tmp.png"
            assert cv2.imwrite(str(tmp), image)
            tmp.rename(camera / f"{i:03d}.png")
            wait_for(partial(stored_at_least, site, i + 1), what=f"frame {i} stored")

        def compared() -> dict[str, Any] | None:
            out = site.secagg("rollout", "compare", str(rollout["id"]), "--json").stdout
            doc = json.loads(out)
            return doc if doc["frames"] == len(LEVELS) else None

        found = wait_for(compared, timeout_s=60, what="shadow figures of every frame")
        assert found is not None
        doc = found
        text = site.secagg("rollout", "compare", str(rollout["id"])).stdout
        stored = site.messages("shadowed")
        # promote: the candidate becomes active, its probation passes
        site.secagg("rollout", "promote", str(rollout["id"]))
        site.wait_report("shadowed", release_id=release["id"], state="committed")
        wait_for(
            lambda: (
                '"state": "completed"'
                in site.secagg("rollout", "status", str(rollout["id"])).stdout
            ),
            what="the rollout completed",
        )
        # abort: back to the model it was installed with
        site.secagg("rollout", "abort", str(rollout["id"]))
        back = site.wait_report("shadowed", release_id=None, state="active")
    finally:
        agent.stop()
        site.aggregator.stop()
    figures = doc["agents"]["shadowed"]
    assert figures["skipped"] == 0 and figures["errors"] == 0
    expected = expected_figures(active, candidate, rules, camera)
    assert figures["per_camera"] == {"door": expected["per_label"]}
    assert doc["per_label"] == expected["per_label"]
    matched = expected["per_label"]["person"]["matched"]
    assert 0 < matched < len(LEVELS), "the stills should give both matches and misses"
    frame_names = {m["frame_id"]: m["frame_source"].rsplit("/", 1)[1] for m in stored}
    got_flips = [
        (frame_names[f["frame_id"]], f["active"], f["candidate"]) for f in figures["flips"]
    ]
    assert sorted(got_flips) == sorted(expected["flips"])
    assert figures["flip_count"] == len(expected["flips"]) == len(LEVELS)
    assert figures["active_latency"]["p95_ms"] > 0 and figures["candidate_latency"]["p50_ms"] > 0
    # the candidate never raised a threat: every stored message is the active model's
    assert {m["model_sha256"] for m in stored} == {model_sha(active)}
    assert "flip" in text and "person" in text
    assert back["active"]["model"]["sha256"] == model_sha(active)
