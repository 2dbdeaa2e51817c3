"""The one load path of ``secagent run`` and ``secagent check-config``: the agent config, the
model manifest, the model file (sha256 checked) in an ONNX Runtime session, the rules file and
its zones, and the cameras' folders and video files. Nothing here starts a camera or connects to
the broker, so ``check-config`` refuses exactly what ``run`` would refuse.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.config import (
    AgentConfig,
    DirectorySourceConfig,
    VideoSourceConfig,
    in_force,
    load_agent_config,
)
from modelrt import Detector, load_manifest
from modelrt.rules import RuleSet, load_rules
from wire.payloads import canonical_sha256

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SourceProblem:
    """A camera's folder or video file that is not there now.

    ``fatal`` problems fail ``check-config`` (a video file that does not exist); the others are
    warnings (a folder may appear later: a share mounted after boot). ``run`` starts either
    way: the camera is reported down and tried again until it is there.
    """

    camera: str
    message: str
    fatal: bool

    def __str__(self) -> str:
        return f"camera {self.camera}: {self.message}"


@dataclass(frozen=True)
class LoadedAgent:
    """Everything ``secagent run`` needs before it starts a thread."""

    config: AgentConfig
    file_sha256: str
    in_force: dict[str, Any]
    """The config in force (:func:`agent.config.in_force`): what the status message carries."""
    config_sha256: str
    """The config version recorded on every result: sha256 of ``in_force``'s canonical JSON."""
    detector: Detector
    rules: RuleSet
    problems: tuple[SourceProblem, ...]
    config_path: Path | None = None
    base_dir: Path | None = None
    """Where the config's relative paths start, when not its own folder (a config release)."""
    releases: dict[str, dict[str, Any]] = field(default_factory=dict)
    """The over-the-air release of each kind in use (release id, sha256, tag), when one is."""


def source_problems(config: AgentConfig) -> list[SourceProblem]:
    """The folders and video files of ``config``'s cameras that are missing now."""
    out: list[SourceProblem] = []
    for camera in config.cameras:
        source = camera.source
        if isinstance(source, DirectorySourceConfig) and not source.path.is_dir():
            what = "is not a folder" if source.path.exists() else "does not exist (yet)"
            out.append(
                SourceProblem(
                    camera.name,
                    f"folder {source.path} {what}: the camera is reported down and tried "
                    "again until it is there",
                    fatal=source.path.exists(),
                )
            )
        elif isinstance(source, VideoSourceConfig) and not source.path.is_file():
            what = "is not a file" if source.path.exists() else "does not exist"
            out.append(SourceProblem(camera.name, f"video {source.path} {what}", fatal=True))
    return out


def load_agent(
    config_path: Path,
    *,
    data_dir: Path | None = None,
    base_dir: Path | None = None,
    model: Path | None = None,
    rules: Path | None = None,
    releases: dict[str, dict[str, Any]] | None = None,
) -> LoadedAgent:
    """Load the config and everything it names. Raises ConfigError (ManifestError and
    RulesError are ones) or DetectorError, whose messages name the file and the field.

    ``model`` and ``rules`` replace the model manifest and rules file the config names (the
    releases an over-the-air update made active); they are checked exactly the same way."""
    config, sha = load_agent_config(config_path, data_dir=data_dir, base_dir=base_dir)
    if model is not None:
        config = config.model_copy(
            update={"detect": config.detect.model_copy(update={"model": model})}
        )
    if rules is not None:
        config = config.model_copy(update={"rules": rules})
    manifest = load_manifest(config.detect.model)
    detector = Detector(
        manifest,
        providers=config.detect.providers,
        intra_op_threads=config.detect.intra_op_threads,
        inter_op_threads=config.detect.inter_op_threads,
        max_batch=config.detect.max_batch,
        spin_wait=config.detect.spin_wait,
    )
    ruleset = load_rules(config.rules)
    ruleset.check_zones({c.name: c.zones.keys() for c in config.cameras})
    doc = in_force(config)
    return LoadedAgent(
        config=config,
        file_sha256=sha,
        in_force=doc,
        config_sha256=canonical_sha256(doc),
        detector=detector,
        rules=ruleset,
        problems=tuple(source_problems(config)),
        config_path=config_path,
        base_dir=base_dir,
        releases=dict(releases or {}),
    )
