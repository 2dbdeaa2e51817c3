"""Object detection with ONNX Runtime: manifests, preprocessing, output decoders, the session."""

from modelrt.decoders import DECODERS, DecodeError
from modelrt.detections import Detections
from modelrt.detector import Detector, DetectorError
from modelrt.manifest import (
    ManifestError,
    ModelManifest,
    load_manifest,
    load_model_argument,
    manifest_for_onnx,
)

__all__ = [
    "DECODERS",
    "DecodeError",
    "Detections",
    "Detector",
    "DetectorError",
    "ManifestError",
    "ModelManifest",
    "load_manifest",
    "load_model_argument",
    "manifest_for_onnx",
]
