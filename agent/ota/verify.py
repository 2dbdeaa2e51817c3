"""Checks a downloaded release passes before it is used, each kind as the agent would load it
at start (:mod:`agent.loader` is the one load path): a model is loaded in ONNX Runtime with the
agent's settings, its layout recognised, its labels checked against what the active rules need,
and it is run on recent frames within the latency budget; a rules file is parsed and its zones
and labels checked against the cameras and the active model; a config is loaded in full."""

from __future__ import annotations

import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from agent.config import AgentConfig
from agent.loader import load_agent
from agent.ota.client import ReleaseRefused, SignedRelease
from appcommon.configfile import ConfigError
from modelrt import Detector, DetectorError, ManifestError, load_manifest
from modelrt.rules import RulesError, RuleSet, load_rules


@dataclass(frozen=True)
class Trial:
    frames: int
    mean_ms: float


def write_manifest(release: SignedRelease, onnx_path: Path) -> Path:
    """The signed manifest of a model release, naming the downloaded ONNX file."""
    if release.manifest is None:
        raise ReleaseRefused("incompatible_model", "the signed release has no model manifest")
    doc: dict[str, Any] = dict(release.manifest)
    doc["file"] = {"path": str(onnx_path)}
    doc["sha256"] = release.sha256
    path = onnx_path.with_name("manifest.yaml")
    path.write_text(yaml.safe_dump(doc, sort_keys=True))
    return path


def unusable_rules(rules: RuleSet, labels: set[str]) -> list[str]:
    """Rules none of whose labels the model has (they could never fire), with their labels."""
    return [
        f"{rule.name} ({', '.join(rule.labels)})"
        for rule in rules.rules
        if not set(rule.labels) & labels
    ]


def verify_model(
    manifest_path: Path,
    *,
    config: AgentConfig,
    rules: RuleSet,
    frames: list[np.ndarray],
    quiet: Callable[[], object] | None = None,
) -> tuple[Detector, Trial]:
    """Load and try a candidate model; ``quiet`` is called before each step that takes the
    CPU (the agent waits for a moment when the detection worker is idle)."""
    detect = config.detect
    if quiet is not None:
        quiet()
    try:
        detector = Detector(
            load_manifest(manifest_path),
            providers=detect.providers,
            intra_op_threads=detect.intra_op_threads,
            inter_op_threads=detect.inter_op_threads,
            max_batch=detect.max_batch,
            spin_wait=detect.spin_wait,
        )
    except (ManifestError, DetectorError) as exc:
        raise ReleaseRefused("incompatible_model", str(exc)) from exc
    missing = unusable_rules(rules, set(detector.labels.values()))
    if missing:
        raise ReleaseRefused(
            "incompatible_model",
            f"active rules that need labels the model does not have: {'; '.join(missing)} "
            f"(it has {', '.join(sorted(set(detector.labels.values())))})",
        )
    trial = frames or [np.full((480, 640, 3), 114, np.uint8)]
    times: list[float] = []
    try:
        for image in trial:
            if quiet is not None:
                quiet()
            started = time.perf_counter()
            detector.detect(image)
            times.append((time.perf_counter() - started) * 1000)
    except DetectorError as exc:
        raise ReleaseRefused("incompatible_model", f"inference failed: {exc}") from exc
    mean_ms = statistics.fmean(times)
    if mean_ms > config.ota.latency_budget_ms:
        raise ReleaseRefused(
            "latency_budget",
            f"{mean_ms:.0f} ms a frame on {len(times)} recent frame(s), the budget is "
            f"{config.ota.latency_budget_ms:g} ms (ota.latency_budget_ms)",
        )
    return detector, Trial(len(times), mean_ms)


def verify_rules(path: Path, *, config: AgentConfig, detector: Detector) -> RuleSet:
    try:
        rules = load_rules(path)
        rules.check_zones({c.name: c.zones.keys() for c in config.cameras})
    except RulesError as exc:
        raise ReleaseRefused("invalid_rules", str(exc)) from exc
    missing = unusable_rules(rules, set(detector.labels.values()))
    if missing:
        raise ReleaseRefused(
            "invalid_rules",
            f"rules that need labels the active model does not have: {'; '.join(missing)}",
        )
    return rules


def verify_config(path: Path, *, agent_id: str, base_dir: Path | None) -> None:
    """Load the config in full, as at start (relative paths from ``base_dir``)."""
    try:
        loaded = load_agent(path, base_dir=base_dir)
    except (ConfigError, DetectorError) as exc:
        raise ReleaseRefused("invalid_config", str(exc)) from exc
    if loaded.config.agent_id != agent_id:
        raise ReleaseRefused(
            "invalid_config", f"it is the config of {loaded.config.agent_id}, not {agent_id}"
        )
    fatal = [str(p) for p in loaded.problems if p.fatal]
    if fatal:
        raise ReleaseRefused("invalid_config", "; ".join(fatal))


def verify_software(release: Path) -> None:
    """The installed release starts: ``bin/secagent --version`` answers."""
    try:
        done = subprocess.run(
            [str(release / "bin" / "secagent"), "--version"],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ReleaseRefused("invalid_software", f"{release}/bin/secagent: {exc}") from exc
    if done.returncode != 0:
        raise ReleaseRefused(
            "invalid_software",
            f"{release}/bin/secagent --version failed: {done.stderr.strip()[-500:]}",
        )
