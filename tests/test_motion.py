"""The motion gate on clips made from real photos (scikit-image's grass, matplotlib's Grace
Hopper): a static scene with sensor noise, a person walking, lights switching on, masks."""

from __future__ import annotations

from functools import cache
from typing import Any

import numpy as np
import pytest

from agent.config import MotionConfig
from agent.motion import MotionGate, polygon_mask
from demo.footage import scene

WALK = [100, 160, 220, 280, 340, 400, 460, 520]  # the person's left edge, px, frame by frame


@cache
def frame(person_x: int | None, brightness: float = 1.0, noise: int = 0) -> np.ndarray:
    return scene(person_x, brightness=brightness, noise_index=noise)


def run(gate: MotionGate, frames: list[np.ndarray]) -> list[bool]:
    return [gate.check(f).moved for f in frames]


def config(**fields: object) -> MotionConfig:
    return MotionConfig.model_validate(fields)


def test_the_first_frame_counts_as_motion_then_a_static_scene_does_not() -> None:
    gate = MotionGate(config())
    frames = [frame(None, noise=i % 8) for i in range(12)]
    assert run(gate, frames) == [True] + [False] * 11


def test_a_person_walking_is_motion_on_every_frame() -> None:
    gate = MotionGate(config())
    gate.check(frame(None))
    decisions = [gate.check(frame(x, noise=i % 8)) for i, x in enumerate(WALK)]
    assert all(d.moved for d in decisions), [d.largest_area_px for d in decisions]
    assert all(d.changed_fraction < 0.3 for d in decisions)


def test_a_person_standing_still_stops_being_motion() -> None:
    gate = MotionGate(config())
    gate.check(frame(None))
    decisions = run(gate, [frame(400, noise=i % 8) for i in range(40)])
    assert decisions[0] is True
    assert decisions[-10:] == [False] * 10  # the background has absorbed them


def test_lights_switching_on_recalibrate_instead_of_firing() -> None:
    gate = MotionGate(config())
    run(gate, [frame(None, noise=i) for i in range(5)])
    lights_on = gate.check(frame(None, brightness=1.6, noise=5))
    assert (lights_on.moved, lights_on.recalibrated) == (False, True)
    assert lights_on.changed_fraction >= 0.7
    after = run(gate, [frame(None, brightness=1.6, noise=i) for i in range(6)])
    assert after == [False] * 6
    # ... and the gate still sees someone walking in under the new light
    assert gate.check(frame(300, brightness=1.6, noise=1)).moved


def test_without_recalibration_the_same_light_change_would_fire() -> None:
    gate = MotionGate(config(recalibrate_fraction=1.0))
    run(gate, [frame(None, noise=i) for i in range(5)])
    assert gate.check(frame(None, brightness=1.6, noise=5)).moved


@pytest.mark.parametrize(
    ("masks", "expected_moved"),
    [
        ([], True),
        # the person walks in the left half; masking it hides them
        ([[[0, 0], [0.5, 0], [0.5, 1], [0, 1]]], False),
        # masking the right half leaves them visible
        ([[[0.6, 0], [1, 0], [1, 1], [0.6, 1]]], True),
    ],
)
def test_masked_areas_never_count_as_motion(masks: list[Any], expected_moved: bool) -> None:
    gate = MotionGate(config(masks=masks))
    gate.check(frame(None))
    # left edge 0..160 px with a 307 px wide person: all within x < 640 (half of 1280)
    decisions = [gate.check(frame(x, noise=i)) for i, x in enumerate([0, 80, 160, 200])]
    assert any(d.moved for d in decisions) is expected_moved


def test_polygon_mask_is_zero_inside() -> None:
    mask = polygon_mask([[(0.0, 0.0), (0.5, 0.0), (0.5, 1.0), (0.0, 1.0)]], width=10, height=4)
    assert mask is not None and mask.shape == (4, 10)
    assert mask[:, :5].sum() == 0 and mask[:, 6:].all()
    assert polygon_mask([], width=10, height=4) is None


def test_disabled_gate_lets_everything_through() -> None:
    gate = MotionGate(config(enabled=False))
    assert run(gate, [frame(None)] * 3) == [True] * 3


@pytest.mark.parametrize(
    ("fields", "error"),
    [
        ({"masks": [[[0, 0], [1, 0]]]}, "at least 3 items"),
        ({"masks": [[[0, 0], [1.5, 0], [1, 1]]]}, "less than or equal to 1"),
        ({"recalibrate_fraction": 0}, "greater than 0"),
    ],
)
def test_bad_motion_config_is_refused(fields: dict[str, Any], error: str) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=error):
        MotionConfig.model_validate(fields)
