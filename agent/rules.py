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

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from agent.detect.detections import Detections
from wire.configfile import ConfigError, load_yaml_model


class RulesError(ConfigError):
    """The rules file is missing or invalid."""


class Rule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str = Field(pattern=r"^[A-Za-z0-9_.:-]{1,64}$", description="rule name, unique")
    labels: list[str] = Field(min_length=1, description="labels this rule fires on")
    min_score: float = Field(0.5, ge=0, le=1, description="lowest detection score that fires")
    severity: Literal["low", "medium", "high", "critical"] = Field(description="threat severity")
    cameras: list[str] | None = Field(None, description="cameras it applies to; default: all")


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

    def apply(self, camera: str, detections: Detections) -> list[Threat]:
        """The threats among ``detections``: one per (detection, first matching rule)."""
        threats: list[Threat] = []
        for i, (label, score) in enumerate(zip(detections.labels, detections.score, strict=True)):
            for rule in self.rules:
                if rule.cameras is not None and camera not in rule.cameras:
                    continue
                if label in rule.labels and float(score) >= rule.min_score:
                    threats.append(Threat(index=i, rule=rule.name, severity=rule.severity))
                    break
        return threats


def load_rules(path: Path) -> RuleSet:
    """Load the rules file; its version is the sha256 of its bytes."""
    try:
        parsed, sha = load_yaml_model(path, RulesFile)
    except ConfigError as exc:
        raise RulesError(str(exc)) from exc
    return RuleSet(rules=tuple(parsed.rules), sha256=sha, path=path)
