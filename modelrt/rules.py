"""Threat rules: a versioned YAML file (its sha256 is its version). A detection that matches a rule
becomes a threat with the rule's name and severity.

```yaml
rules:
  - name: person_on_premises
    labels: [person, person_fallen]
    min_score: 0.5
    severity: high
    cameras: [front_door]     # optional; default: every camera
```
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from appcommon.configfile import ConfigError, load_yaml_model
from modelrt.detections import Detections


class RulesError(ConfigError):
    """The rules file is missing or invalid."""


class Rule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str = Field(pattern=r"^[A-Za-z0-9_.:-]{1,64}$", description="rule name, unique")
    labels: list[str] = Field(min_length=1, description="labels this rule fires on")
    min_score: float = Field(0.5, ge=0, le=1, description="lowest detection score that fires")
    severity: Literal["low", "medium", "high", "critical"] = Field(description="threat severity")
    cameras: list[str] | None = Field(None, description="cameras it applies to; default: all")
    zones: list[str] | None = Field(
        None,
        min_length=1,
        description="fires only for detections standing in one of these zones of the camera "
        "(cameras[].zones); default: anywhere in the view",
    )


class RulesFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    rules: list[Rule] = Field(min_length=1, description="checked in order; the first match wins")

    @model_validator(mode="after")
    def _unique_names(self) -> RulesFile:
        names = [r.name for r in self.rules]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"rule names must be unique, repeated: {', '.join(dupes)}")
        return self


@dataclass(frozen=True)
class Threat:
    """A detection (index ``index`` into the frame's Detections) flagged by ``rule``."""

    index: int
    rule: str
    severity: str


@dataclass(frozen=True)
class RuleSet:
    rules: tuple[Rule, ...]
    sha256: str
    path: Path

    def apply(
        self,
        camera: str,
        detections: Detections,
        *,
        zones: Mapping[str, Sequence[tuple[float, float]]] | None = None,
        frame_wh: tuple[int, int] | None = None,
    ) -> list[Threat]:
        """The threats among ``detections``: one per (detection, first matching rule).

        ``zones`` are the camera's named polygons in fractions of the frame (``frame_wh``
        pixels); a rule with ``zones`` fires only for a detection whose foot point (the bottom
        centre of its box) lies in one of them.
        """
        threats: list[Threat] = []
        feet = foot_points(detections, frame_wh) if frame_wh else None
        for i, (label, score) in enumerate(zip(detections.labels, detections.score, strict=True)):
            for rule in self.rules:
                if rule.cameras is not None and camera not in rule.cameras:
                    continue
                if label not in rule.labels or float(score) < rule.min_score:
                    continue
                if rule.zones is not None and not (
                    feet is not None and in_any_zone(feet[i], rule.zones, zones or {})
                ):
                    continue
                threats.append(Threat(index=i, rule=rule.name, severity=rule.severity))
                break
        return threats

    def uses_zones(self) -> bool:
        """True when a rule is limited to zones (applying it needs the camera's zones)."""
        return any(rule.zones is not None for rule in self.rules)

    def check_zones(self, camera_zones: Mapping[str, Iterable[str]]) -> None:
        """RulesError when a rule names a zone that none of the cameras it applies to has."""
        for rule in self.rules:
            if rule.zones is None:
                continue
            cameras = [c for c in camera_zones if rule.cameras is None or c in rule.cameras]
            known = {z for c in cameras for z in camera_zones[c]}
            missing = sorted(set(rule.zones) - known)
            if missing:
                raise RulesError(
                    f"{self.path}: rule {rule.name} names zone(s) {', '.join(missing)} that no "
                    f"camera it applies to defines (cameras[].zones)"
                )


def foot_points(detections: Detections, frame_wh: tuple[int, int]) -> np.ndarray:
    """(n, 2) bottom centres of the boxes as fractions of the frame's width and height."""
    width, height = frame_wh
    xyxy = detections.xyxy
    return np.stack([(xyxy[:, 0] + xyxy[:, 2]) / 2 / width, xyxy[:, 3] / height], axis=1)


def in_any_zone(
    point: np.ndarray, names: Iterable[str], zones: Mapping[str, Sequence[tuple[float, float]]]
) -> bool:
    """True when ``point`` (x, y fractions) lies inside or on the edge of a named zone."""
    for name in names:
        polygon = zones.get(name)
        if polygon is None:
            continue
        contour = np.asarray(polygon, np.float32).reshape(-1, 1, 2)
        if cv2.pointPolygonTest(contour, (float(point[0]), float(point[1])), False) >= 0:
            return True
    return False


def load_rules(path: Path) -> RuleSet:
    """Load the rules file; its version is the sha256 of its bytes."""
    try:
        parsed, sha = load_yaml_model(path, RulesFile, what="rules file")
    except ConfigError as exc:
        raise RulesError(str(exc)) from exc
    return RuleSet(rules=tuple(parsed.rules), sha256=sha, path=path)
