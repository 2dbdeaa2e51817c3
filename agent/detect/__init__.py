"""Object detection with ONNX Runtime: manifests, preprocessing, output decoders, the session."""

from agent.detect.decoders import DECODERS, DecodeError
from agent.detect.detections import Detections
from agent.detect.detector import Detector, DetectorError
from agent.detect.manifest import (
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
