"""The ONNX Runtime session: letterbox preprocessing, inference, decoding, boxes back to pixels."""

from __future__ import annotations

import ast
import logging
import time
from dataclasses import dataclass

import cv2
import numpy as np
import onnxruntime as ort

from agent.detect.decoders import DECODERS, DecodeError
from agent.detect.detections import Detections
from agent.detect.manifest import ManifestError, ModelManifest, file_sha256

log = logging.getLogger(__name__)

AUTO_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


class DetectorError(RuntimeError):
    """The model cannot be loaded or run (wrong hash, unsupported layout, bad input)."""


@dataclass(frozen=True)
class Letterbox:
    """How an image was fitted into the model input: ``input = image * scale + (pad_x, pad_y)``."""

    scale: float
    pad_x: float
    pad_y: float


def letterbox(
    image: np.ndarray, *, width: int, height: int, fill: int = 114
) -> tuple[np.ndarray, Letterbox]:
    """Resize ``image`` (h, w, 3) BGR keeping its aspect ratio, pad to (height, width, 3)."""
    h, w = image.shape[:2]
    scale = min(width / w, height / h)
    new_w, new_h = max(1, round(w * scale)), max(1, round(h * scale))
    resized = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    pad_x, pad_y = (width - new_w) // 2, (height - new_h) // 2
    out = np.full((height, width, 3), fill, np.uint8)
    out[pad_y : pad_y + new_h, pad_x : pad_x + new_w] = resized
    return out, Letterbox(scale=scale, pad_x=float(pad_x), pad_y=float(pad_y))


def choose_providers(requested: list[str], available: list[str]) -> list[str]:
    """Resolve the configured providers: ``auto`` = TensorRT, CUDA, CPU, whichever are present."""
    wanted: list[str] = []
    for name in requested:
        names = list(AUTO_PROVIDERS) if name == "auto" else [name]
        wanted += [n for n in names if n not in wanted]
    chosen = [n for n in wanted if n in available]
    if not chosen:
        raise DetectorError(f"none of the providers {wanted} is available (have {available})")
    return chosen


def labels_from_metadata(meta: dict[str, str]) -> dict[int, str] | None:
    """Ultralytics exports store ``names`` as a Python dict literal, e.g. ``{0: 'person'}``."""
    raw = meta.get("names")
    if not raw:
        return None
    try:
        names = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        return None
    if isinstance(names, dict):
        return {int(k): str(v) for k, v in names.items()}
    if isinstance(names, list):
        return dict(enumerate(str(v) for v in names))
    return None


class Detector:
    """One model loaded into one ONNX Runtime session, shared by all cameras of an agent."""

    def __init__(
        self,
        manifest: ModelManifest,
        *,
        providers: list[str] | None = None,
        intra_op_threads: int = 0,
        verify_sha256: bool = True,
    ) -> None:
        self.manifest = manifest
        try:
            self.path = manifest.resolve_file()
        except ManifestError as exc:
            raise DetectorError(str(exc)) from exc
        self.sha256 = file_sha256(self.path)
        if verify_sha256 and self.sha256 != manifest.sha256:
            raise DetectorError(
                f"model {manifest.name}: {self.path} has sha256 {self.sha256}, "
                f"manifest says {manifest.sha256}"
            )
        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads
        options.log_severity_level = 3
        chosen = choose_providers(providers or ["auto"], ort.get_available_providers())
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=chosen)
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise DetectorError(
                f"model {manifest.name}: ONNX Runtime cannot load it: {exc}"
            ) from exc
        self.provider = self.session.get_providers()[0]
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.input_dtype = np.float16 if inp.type == "tensor(float16)" else np.float32
        meta = self.session.get_modelmeta().custom_metadata_map
        labels = manifest.labels or labels_from_metadata(meta)
        if not labels:
            raise DetectorError(
                f"model {manifest.name}: no labels in the manifest nor 'names' in the ONNX metadata"
            )
        self.labels = labels
        declared = self._classes_in_output()
        if declared is not None and declared < 1:
            raise self._layout_error(
                f"output shape {self.session.get_outputs()[0].shape} leaves no class scores"
            )
        self.num_classes = declared or max(labels) + 1
        if max(labels) >= self.num_classes:
            raise self._layout_error(
                f"labels name class {max(labels)} but the output has {self.num_classes} class(es)"
            )
        self._decode = DECODERS[manifest.layout]
        self.last_inference_ms = 0.0
        self._check_output_layout()
        log.info(
            "model=%s sha256=%s provider=%s input=%s %dx%d layout=%s",
            manifest.name,
            self.sha256[:12],
            self.provider,
            inp.shape,
            manifest.input.width,
            manifest.input.height,
            manifest.layout,
        )

    def _classes_in_output(self) -> int | None:
        """The class count the output shape declares, when it is static (labels may drop some)."""
        shape = self.session.get_outputs()[0].shape
        if len(shape) != 3:
            return None
        if self.manifest.layout == "yolov8" and isinstance(shape[1], int):
            return shape[1] - 4
        if self.manifest.layout == "yolov5" and isinstance(shape[2], int):
            return shape[2] - 5
        return None

    def _layout_error(self, detail: str) -> DetectorError:
        return DetectorError(
            f"model {self.manifest.name}: output does not match layout "
            f"{self.manifest.layout!r}: {detail}; supported layouts: {sorted(DECODERS)}"
        )

    def _check_output_layout(self) -> None:
        """Warm up with a blank frame; refuse the model if its output does not fit the layout."""
        blank = np.zeros((self.manifest.input.height, self.manifest.input.width, 3), np.uint8)
        try:
            self.detect(blank)
        except DecodeError as exc:
            raise self._layout_error(f"{exc} (with {self.num_classes} classes)") from exc

    def preprocess(self, image: np.ndarray) -> tuple[np.ndarray, Letterbox]:
        """BGR (h, w, 3) uint8 -> model input (1, 3, H, W) RGB in [0, 1], and the letterbox."""
        boxed, lb = letterbox(
            image, width=self.manifest.input.width, height=self.manifest.input.height
        )
        tensor = cv2.dnn.blobFromImage(boxed, scalefactor=1 / 255.0, swapRB=True)
        return tensor.astype(self.input_dtype, copy=False), lb

    def infer(self, tensor: np.ndarray) -> np.ndarray:
        """Run the session on a preprocessed (1, 3, H, W) tensor; return the first output."""
        start = time.perf_counter()
        output = self.session.run(None, {self.input_name: tensor})[0]
        self.last_inference_ms = (time.perf_counter() - start) * 1000
        return np.asarray(output)

    def postprocess(
        self, output: np.ndarray, lb: Letterbox, *, width: int, height: int
    ) -> Detections:
        """Decode, map boxes back to the original (width, height) pixels, attach labels."""
        m = self.manifest
        raw = self._decode(
            output.astype(np.float32, copy=False),
            num_classes=self.num_classes,
            score_threshold=m.score_threshold,
            iou_threshold=m.iou_threshold,
            max_detections=m.max_detections,
        )
        xyxy = raw.xyxy.copy()
        xyxy[:, [0, 2]] = ((xyxy[:, [0, 2]] - lb.pad_x) / lb.scale).clip(0, width)
        xyxy[:, [1, 3]] = ((xyxy[:, [1, 3]] - lb.pad_y) / lb.scale).clip(0, height)
        known = np.array([int(c) in self.labels for c in raw.class_id], bool)
        mapped = Detections(xyxy=xyxy, score=raw.score, class_id=raw.class_id).select(known)
        return Detections(
            xyxy=mapped.xyxy,
            score=mapped.score,
            class_id=mapped.class_id,
            labels=tuple(self.labels[int(c)] for c in mapped.class_id),
        )

    def detect(self, image: np.ndarray) -> Detections:
        """Detections for one BGR image (h, w, 3), boxes in its pixels."""
        tensor, lb = self.preprocess(image)
        output = self.infer(tensor)
        return self.postprocess(output, lb, width=image.shape[1], height=image.shape[0])
