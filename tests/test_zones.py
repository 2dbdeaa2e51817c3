"""Zones: rules limited to an area of one camera's view (the foot point of the box decides)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest

from modelrt import Detections
from modelrt.rules import RulesError, foot_points, load_rules
from tests.support import MODEL_MANIFEST
from tests.support.processes import BIN

# The left half of a 1280x720 view, and a small square bottom right.
ZONES = {
    "driveway": [(0.0, 0.0), (0.5, 0.0), (0.5, 1.0), (0.0, 1.0)],
    "gate": [(0.8, 0.8), (1.0, 0.8), (1.0, 1.0), (0.8, 1.0)],
}


def rules_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "rules.yaml"
    path.write_text(text)
    return path


def people(*xyxy: tuple[float, float, float, float]) -> Detections:
    n = len(xyxy)
    return Detections(
        xyxy=np.asarray(xyxy, np.float32).reshape(n, 4),
        score=np.full((n,), 0.9, np.float32),
        class_id=np.zeros((n,), np.int64),
        labels=("person",) * n,
    )


def test_foot_points_are_the_bottom_centres_as_fractions() -> None:
    feet = foot_points(people((100, 100, 300, 700), (1200, 600, 1280, 720)), (1280, 720))
    np.testing.assert_allclose(feet, [[200 / 1280, 700 / 720], [1240 / 1280, 1.0]])


@pytest.mark.parametrize(
    ("box", "expected_rule"),
    [
        ((100, 100, 300, 700), "in_driveway"),  # feet in the left half
        ((500, 100, 700, 700), "in_driveway"),  # feet at x = 0.47: still inside
        ((700, 100, 900, 700), "anywhere"),  # feet at x = 0.625: outside both zones
        ((1100, 400, 1240, 700), "at_gate"),  # feet at (0.91, 0.97)
        ((100, 0, 300, 10), "in_driveway"),  # a head high up: where it stands is what counts
    ],
)
def test_the_first_rule_whose_zone_holds_the_feet_fires(
    tmp_path: Path, box: tuple[float, float, float, float], expected_rule: str
) -> None:
    rules = load_rules(
        rules_file(
            tmp_path,
            """
rules:
  - {name: in_driveway, labels: [person], severity: high, zones: [driveway]}
  - {name: at_gate, labels: [person], severity: critical, zones: [gate]}
  - {name: anywhere, labels: [person], severity: low}
""",
        )
    )
    (threat,) = rules.apply("cam", people(box), zones=ZONES, frame_wh=(1280, 720))
    assert threat.rule == expected_rule


def test_a_zone_rule_never_fires_without_the_zones_of_the_camera(tmp_path: Path) -> None:
    rules = load_rules(
        rules_file(
            tmp_path,
            """
rules:
  - {name: in_driveway, labels: [person], severity: high, zones: [driveway]}
""",
        )
    )
    assert rules.apply("cam", people((100, 100, 300, 700))) == []
    assert rules.apply("cam", people((100, 100, 300, 700)), zones={}, frame_wh=(1280, 720)) == []


def test_a_rule_naming_an_unknown_zone_is_refused(tmp_path: Path) -> None:
    rules = load_rules(
        rules_file(
            tmp_path,
            """
rules:
  - {name: in_pool, labels: [person], severity: high, zones: [pool], cameras: [back]}
""",
        )
    )
    rules.check_zones({"back": ["pool"], "front": []})
    with pytest.raises(RulesError, match=r"rule in_pool names zone.*pool"):
        rules.check_zones({"back": ["lawn"], "front": ["pool"]})


def test_check_config_refuses_a_rule_with_a_zone_no_camera_has(tmp_path: Path) -> None:
    rules = rules_file(
        tmp_path,
        """
rules:
  - {name: in_pool, labels: [person], severity: high, zones: [pool]}
""",
    )
    config = tmp_path / "secagent.yaml"
    config.write_text(
        "agent_id: zone-host\n"
        f"detect: {{model: {MODEL_MANIFEST}}}\n"
        f"rules: {rules}\n"
        "cameras:\n"
        f"  - name: back\n    source: {{type: directory, path: {tmp_path}}}\n"
        "    zones: {lawn: [[0, 0], [1, 0], [1, 1]]}\n"
    )
    done = subprocess.run(
        [str(BIN / "secagent"), "check-config", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0 and "names zone(s) pool" in done.stderr
    config.write_text(config.read_text().replace("lawn:", "pool:"))
    done = subprocess.run(
        [str(BIN / "secagent"), "check-config", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr


def test_the_example_zone_rules_load() -> None:
    rules = load_rules(Path(__file__).parent.parent / "rules" / "example-zones.yaml")
    assert [r.name for r in rules.rules] == ["person_at_gate", "person_on_premises"]
    rules.check_zones({"driveway": ["gate"]})
