"""What a release is made of: reading an artifact of each kind, checking it, and what it is
compatible with, before it is signed (``secagg release add KIND FILE``).

- ``model``: FILE is a model manifest (YAML) naming its ONNX file; the manifest, the ONNX
  sha256 and the layout are checked by loading it in ONNX Runtime. Recorded: layout, input
  size, labels.
- ``rules``: a rules file, parsed as the agent parses it. Recorded: the labels and zones the
  rules need.
- ``config``: an agent config, checked as a YAML mapping with ``agent_id``, ``detect`` and
  ``cameras``; the agent validates it fully, exactly as at start, before it uses it.
- ``agent``: a wheel of the ``secagent`` distribution. Recorded: its version, Requires-Python.

The aggregator never imports the agent's code (the layering test keeps it so): a config is
validated in full on the agent.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import zipfile
from dataclasses import dataclass, field
from email.parser import Parser
from pathlib import Path
from typing import Any, Literal

import yaml

from modelrt import Detector, DetectorError, ManifestError, load_manifest
from modelrt.rules import RulesError, load_rules

Kind = Literal["model", "rules", "config", "agent"]
KINDS: tuple[Kind, ...] = ("model", "rules", "config", "agent")
MAX_ARTIFACT_BYTES = 2 * 1024**3
TAG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}$")


class ArtifactError(ValueError):
    """An artifact is not a valid release of its kind; the message says why."""


@dataclass(frozen=True)
class Artifact:
    """One checked artifact, ready to be stored and signed."""

    kind: Kind
    name: str
    data: bytes
    file_name: str
    """The name it is served under (``<sha256>.<file_name>``)."""
    compat: dict[str, Any]
    extra: dict[str, Any] = field(default_factory=dict)
    """Signed with the release beyond the compatibility: a model's manifest (as JSON text)."""
    source_dir: Path | None = None

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


def _read(path: Path) -> bytes:
    try:
        size = path.stat().st_size
        if size > MAX_ARTIFACT_BYTES:
            raise ArtifactError(f"{path}: {size} bytes is more than {MAX_ARTIFACT_BYTES}")
        return path.read_bytes()
    except OSError as exc:
        raise ArtifactError(f"{path}: cannot read: {exc.strerror or exc}") from exc


def _safe_name(name: str) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9_.+-]", "-", name).strip("-.") or "artifact"
    return cleaned[:100]


def read_model(manifest_path: Path) -> Artifact:
    try:
        manifest = load_manifest(manifest_path)
        detector = Detector(manifest, providers=["CPUExecutionProvider"])
    except (ManifestError, DetectorError) as exc:
        raise ArtifactError(str(exc)) from exc
    onnx_path = detector.path
    data = _read(onnx_path)
    # The manifest as the agent will use it: labels resolved, the file named by sha256 only.
    doc = manifest.model_dump(mode="json", exclude={"file", "labels_file"})
    doc["labels"] = {str(k): v for k, v in sorted(detector.labels.items())}
    doc["label_map"] = {}
    doc["layout"] = detector.layout
    doc["input"] = {"width": detector.input_size.width, "height": detector.input_size.height}
    compat = {
        "layout": detector.layout,
        "input": doc["input"],
        "labels": sorted(set(detector.labels.values())),
        "batch": detector.batch_size or "dynamic",
    }
    return Artifact(
        kind="model",
        name=_safe_name(manifest.name),
        data=data,
        file_name=f"{_safe_name(manifest.name)}.onnx",
        compat=compat,
        # canonical JSON (what TUF signs) has no floats: the manifest travels as a string
        extra={"manifest_json": json.dumps(doc, sort_keys=True)},
        source_dir=manifest_path.resolve().parent,
    )


def read_rules(path: Path) -> Artifact:
    try:
        rules = load_rules(path)
    except RulesError as exc:
        raise ArtifactError(str(exc)) from exc
    labels = sorted({label for rule in rules.rules for label in rule.labels})
    zones = sorted({zone for rule in rules.rules for zone in (rule.zones or [])})
    return Artifact(
        kind="rules",
        name=_safe_name(path.stem),
        data=_read(path),
        file_name=f"{_safe_name(path.stem)}.yaml",
        compat={"labels": labels, "zones": zones, "rules": [r.name for r in rules.rules]},
        source_dir=path.resolve().parent,
    )


def read_config(path: Path) -> Artifact:
    data = _read(path)
    try:
        doc = yaml.safe_load(data)
    except yaml.YAMLError as exc:
        raise ArtifactError(f"{path}: not YAML: {exc}") from exc
    if not isinstance(doc, dict) or not {"agent_id", "detect", "cameras"} <= doc.keys():
        raise ArtifactError(f"{path}: not an agent config (agent_id, detect and cameras needed)")
    return Artifact(
        kind="config",
        name=_safe_name(str(doc["agent_id"])),
        data=data,
        file_name=f"{_safe_name(path.stem)}.yaml",
        compat={"agent_id": str(doc["agent_id"])},
        source_dir=path.resolve().parent,
    )


def read_wheel(path: Path) -> Artifact:
    data = _read(path)
    try:
        with zipfile.ZipFile(path) as wheel:
            meta_name = next(
                (n for n in wheel.namelist() if n.endswith(".dist-info/METADATA")), None
            )
            if meta_name is None:
                raise ArtifactError(f"{path}: not a wheel (no .dist-info/METADATA)")
            meta = Parser().parsestr(wheel.read(meta_name).decode("utf-8", "replace"))
    except zipfile.BadZipFile as exc:
        raise ArtifactError(f"{path}: not a wheel: {exc}") from exc
    if (meta.get("Name") or "").lower() != "secagent":
        raise ArtifactError(f"{path}: a wheel of {meta.get('Name')!r}, not of secagent")
    version = meta.get("Version") or ""
    return Artifact(
        kind="agent",
        name="secagent",
        data=data,
        file_name=path.name if path.name.endswith(".whl") else f"secagent-{version}.whl",
        compat={"version": version, "requires_python": meta.get("Requires-Python")},
        source_dir=path.resolve().parent,
    )


READERS = {"model": read_model, "rules": read_rules, "config": read_config, "agent": read_wheel}


def read_artifact(kind: str, path: Path) -> Artifact:
    """Read and check ``path`` as a release of ``kind``; ArtifactError says what is wrong."""
    if kind not in READERS:
        raise ArtifactError(f"kind must be one of {', '.join(KINDS)}, not {kind!r}")
    return READERS[kind](path)


def default_tag(artifact: Artifact) -> str | None:
    """``git describe --always --dirty`` of the repository holding the artifact, if any."""
    if artifact.source_dir is None:
        return None
    try:
        done = subprocess.run(
            ["git", "-C", str(artifact.source_dir), "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    tag = done.stdout.strip()
    return tag if done.returncode == 0 and TAG.match(tag) else None


def check_version(version: str) -> str:
    """A minimum agent version: numbers separated by dots (``0.2`` or ``1.4.0``)."""
    if not re.fullmatch(r"[0-9]+(\.[0-9]+){0,3}", version):
        raise ArtifactError(f"minimum agent version {version!r} must be like 0.2 or 1.4.0")
    return version


def check_tag(tag: str) -> str:
    if not TAG.match(tag):
        raise ArtifactError(f"tag {tag!r} must match {TAG.pattern}")
    return tag
