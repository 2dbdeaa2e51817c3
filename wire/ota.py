"""The v1 payloads of over-the-air updates.

- ``secagent/v1/<agent_id>/ota`` (aggregator -> agent, QoS 1, retained): :class:`OtaDesired`,
  the releases the agent should run. It is *not* trusted for what a release is: the agent takes
  kind, sequence number and hashes from the signed repository, and refuses a release whose
  signed sha256 differs from the one named here.
- ``secagent/v1/<agent_id>/ota/report`` (agent -> aggregator, QoS 1): :class:`OtaReport`, each
  change of an update's state, with the releases active after it, and shadow comparisons.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from wire.payloads import Name, Sha256, WireTime, _Wire, register_schema
from wire.topics import AGENT_ID_PATTERN

SCHEMA_OTA = "secagent.ota/1"
SCHEMA_OTA_REPORT = "secagent.ota_report/1"

ReleaseKind = Literal["model", "rules", "config", "agent"]
UpdateState = Literal[
    "downloading",
    "verifying",
    "staged",
    "shadow",
    "switching",
    "active",
    "committed",
    "failed",
    "rolled_back",
]
"""downloading -> verifying -> staged -> (shadow) -> switching -> active -> committed (probation
passed), or failed (never used) / rolled_back (used, then the last known good restored)."""


class DesiredRelease(_Wire):
    kind: ReleaseKind
    release_id: int = Field(ge=1)
    target_path: str = Field(max_length=300, pattern=r"^(model|rules|config|agent)/[^/]+$")
    sha256: Sha256
    length: int = Field(ge=1, description="bytes")
    mode: Literal["active", "shadow"] = Field(
        "active", description="shadow: a candidate model beside the active one, never used"
    )
    shadow_fraction: float = Field(1.0, gt=0, le=1, description="frames the candidate sees")


class OtaDesired(_Wire):
    """The releases an agent should run (kinds left out: keep what is active)."""

    schema_: Literal["secagent.ota/1"] = Field("secagent.ota/1", alias="schema")
    agent_id: str = Field(pattern=AGENT_ID_PATTERN)
    generation: int = Field(ge=1, description="grows with every change of this agent's state")
    rollout_id: int | None = None
    releases: list[DesiredRelease] = Field(default_factory=list, max_length=8)
    revert: list[ReleaseKind] = Field(
        default_factory=list,
        description="kinds to take back to what the agent was installed with (no release)",
    )
    sent_at: WireTime

    @model_validator(mode="after")
    def _one_per_kind_and_mode(self) -> OtaDesired:
        keys = [(r.kind, r.mode) for r in self.releases]
        if len(keys) != len(set(keys)):
            raise ValueError("at most one release per kind and mode")
        if any(r.mode == "shadow" and r.kind != "model" for r in self.releases):
            raise ValueError("only a model can run in shadow mode")
        return self


class ActiveRelease(_Wire):
    release_id: int | None = Field(None, description="null: what the agent was installed with")
    sha256: Sha256 | None = None
    tag: str | None = Field(None, max_length=64)


class LabelCounts(_Wire):
    matched: int = Field(0, ge=0, description="pairs with IoU >= 0.5 and the same label")
    only_active: int = Field(0, ge=0)
    only_candidate: int = Field(0, ge=0)


class Flip(_Wire):
    camera: Name
    frame_id: str = Field(max_length=128)
    active: list[str] = Field(description="rules the active model's detections fired")
    candidate: list[str] = Field(description="rules the candidate's detections would fire")


class Latency(_Wire):
    p50_ms: float = Field(ge=0)
    p95_ms: float = Field(ge=0)


class ShadowFigures(_Wire):
    """A candidate model run beside the active one on the same frames, since it started."""

    frames: int = Field(ge=0, description="frames both models ran on")
    skipped: int = Field(0, ge=0, description="frames left out (fraction, or shadow busy)")
    per_camera: dict[str, dict[str, LabelCounts]] = Field(
        default_factory=dict, description="camera -> label -> counts"
    )
    flips: list[Flip] = Field(default_factory=list, max_length=1000)
    flip_count: int = Field(0, ge=0)
    active_latency: Latency | None = None
    candidate_latency: Latency | None = None
    errors: int = Field(0, ge=0, description="candidate inferences that failed")


class OtaReport(_Wire):
    schema_: Literal["secagent.ota_report/1"] = Field("secagent.ota_report/1", alias="schema")
    report_id: str = Field(pattern=r"^[0-9a-f]{32}$")
    agent_id: str = Field(pattern=AGENT_ID_PATTERN)
    kind: ReleaseKind | None = None
    release_id: int | None = None
    generation: int | None = None
    rollout_id: int | None = None
    state: UpdateState | Literal["shadow_report"]
    reason: str | None = Field(None, max_length=2000)
    active: dict[str, ActiveRelease] = Field(
        default_factory=dict, description="the release of each kind active after this change"
    )
    frame_id: str | None = Field(
        None, max_length=128, description="the first frame processed with the new release"
    )
    shadow: ShadowFigures | None = None
    at: WireTime


register_schema(SCHEMA_OTA, OtaDesired)
register_schema(SCHEMA_OTA_REPORT, OtaReport)
