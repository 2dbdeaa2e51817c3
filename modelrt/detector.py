"""The ONNX Runtime session: letterbox preprocessing, (batched) inference, decoding, boxes back to
frame pixels. The layout, input size, input dtype, batch dimension and class names come from the
manifest where it says so, else from the model itself (see :mod:`modelrt.recognise`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import cv2
import numpy as np

from modelrt.decoders import DECODERS, DecodeError
from modelrt.detections import Detections
from modelrt.manifest import InputSize, ManifestError, ModelManifest, file_sha256
from modelrt.recognise import (
    SUPPORTED_LAYOUTS,
    Dim,
    LabelError,
    LayoutError,
    MetadataHints,
    classes_in_output,
    labels_from_metadata,
    recognise_layout,
    resolve_labels,
)
from modelrt.runtime import RuntimeInstallError, load_onnxruntime

log = logging.getLogger(__name__)

AUTO_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
INPUT_DTYPES: dict[str, type[np.floating]] = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
}

__all__ = [
    "AUTO_PROVIDERS",
    "Detector",
    "DetectorError",
    "Letterbox",
    "choose_providers",
    "labels_from_metadata",
    "letterbox",
]


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
    pad_x, pad_y = (width - new_w) // 2, (height - new_h) // 2
    if (new_w, new_h) == (width, height):
        out = image if (w, h) == (width, height) else cv2.resize(image, (new_w, new_h))
        return out, Letterbox(scale=scale, pad_x=0.0, pad_y=0.0)
    out = np.full((height, width, 3), fill, np.uint8)
    resized = image if (w, h) == (new_w, new_h) else cv2.resize(image, (new_w, new_h))
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


def _static(dim: object) -> int | None:
    return dim if isinstance(dim, int) and dim > 0 else None


class Detector:
    """One model loaded into one ONNX Runtime session, shared by all cameras of an agent.

    ``batch_size`` is the model's fixed batch dimension, or None when it is dynamic;
    ``max_batch`` is how many frames one :meth:`infer` call takes.
    """

    def __init__(
        self,
        manifest: ModelManifest,
        *,
        providers: list[str] | None = None,
        intra_op_threads: int = 0,
        inter_op_threads: int = 0,
        max_batch: int = 8,
        spin_wait: bool = False,
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
        try:
            ort = load_onnxruntime()
        except RuntimeInstallError as exc:
            raise DetectorError(f"model {manifest.name}: {exc}") from exc
        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads
        options.inter_op_num_threads = inter_op_threads
        options.log_severity_level = 3
        if not spin_wait:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            options.add_session_config_entry("session.inter_op.allow_spinning", "0")
        chosen = choose_providers(providers or ["auto"], ort.get_available_providers())
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=chosen)
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise DetectorError(
                f"model {manifest.name}: ONNX Runtime cannot load it: {exc}"
            ) from exc
        self.provider = self.session.get_providers()[0]
        hints = MetadataHints.read(self.session.get_modelmeta().custom_metadata_map)
        self._read_input(hints, max_batch=max_batch)
        try:
            self.labels = resolve_labels(
                manifest_labels=manifest.labels,
                file_labels=manifest.read_labels_file(),
                metadata_labels=hints.names,
                label_map=manifest.label_map,
            )
        except (LabelError, ManifestError) as exc:
            raise DetectorError(f"model {manifest.name}: {exc}") from exc
        self.last_inference_ms = 0.0
        self.mean_inference_ms = 0.0
        self.inferences = 0
        self._warm_up_and_check_layout(hints)
        log.info(
            "model=%s sha256=%s provider=%s input=%s %s %dx%d batch=%s layout=%s classes=%d "
            "warm-up %.1f ms",
            manifest.name,
            self.sha256[:12],
            self.provider,
            self.input_name,
            np.dtype(self.input_dtype).name,
            self.input_size.width,
            self.input_size.height,
            self.batch_size or f"dynamic (up to {self.max_batch})",
            self.layout,
            self.num_classes,
            self.last_inference_ms,
        )

    # loading ---------------------------------------------------------------------------------
    def _read_input(self, hints: MetadataHints, *, max_batch: int) -> None:
        """Input name, dtype, batch dimension and size; refuse inputs we cannot feed."""
        inputs = self.session.get_inputs()
        inp = inputs[0]
        name = self.manifest.name
        if len(inputs) != 1:
            raise DetectorError(
                f"model {name}: has {len(inputs)} inputs {[i.name for i in inputs]}; "
                "an image model with one (batch, 3, height, width) input is needed"
            )
        self.input_name = inp.name
        dtype = INPUT_DTYPES.get(inp.type)
        if dtype is None:
            raise DetectorError(
                f"model {name}: input {inp.name} is {inp.type}; supported: {sorted(INPUT_DTYPES)}"
            )
        self.input_dtype: type[np.floating] = dtype
        shape = list(inp.shape)
        if len(shape) != 4 or _static(shape[1]) not in (3, None):
            raise DetectorError(
                f"model {name}: input {inp.name} has shape {shape}; want (batch, 3, height, width)"
            )
        self.batch_size = _static(shape[0])
        self.max_batch = self.batch_size or max_batch
        static_hw = (_static(shape[2]), _static(shape[3]))
        size = self.manifest.input
        if size is None:
            h, w = static_hw
            if h is None or w is None:
                if hints.imgsz_hw is None:
                    raise DetectorError(
                        f"model {name}: input {inp.name} has dynamic size {shape} and no "
                        "'imgsz' metadata; give input: {width, height} in the manifest"
                    )
                h, w = h or hints.imgsz_hw[0], w or hints.imgsz_hw[1]
            size = InputSize(width=w, height=h)
        elif static_hw[0] not in (None, size.height) or static_hw[1] not in (None, size.width):
            raise DetectorError(
                f"model {name}: the manifest says input {size.width}x{size.height}, "
                f"the model's input {inp.name} is {shape} (batch, 3, height, width)"
            )
        self.input_size = size

    def _layout_error(self, layout: str, detail: str) -> DetectorError:
        outputs = [(o.name, o.shape) for o in self.session.get_outputs()]
        return DetectorError(
            f"model {self.manifest.name}: output does not match layout {layout!r}: {detail}; "
            f"outputs found: {outputs}; {SUPPORTED_LAYOUTS}"
        )

    def _output_shape(self, warm_up_output: np.ndarray) -> tuple[Dim, ...]:
        """The first output's shape as the graph declares it, open dimensions as names or None.
        Only a graph that declares no shape at all falls back to the warm-up output's shape, an
        empty dimension in it counted as open."""
        declared = tuple(self.session.get_outputs()[0].shape or ())
        if declared:
            return declared
        return tuple(int(d) if d > 0 else None for d in warm_up_output.shape)

    def _warm_up_and_check_layout(self, hints: MetadataHints) -> None:
        """One inference on a blank frame warms the session up. Then the layout is recognised
        (``auto``) or checked from the output shape the graph declares, and the warm-up output
        must decode. What the blank frame happens to produce (no rows at all, for a model with
        NMS inside) never decides the layout. A model that fits no layout is refused here."""
        blank = np.zeros((self.input_size.height, self.input_size.width, 3), np.uint8)
        tensor, lb = self.preprocess(blank)
        try:
            output = self.infer(tensor)
        except DetectorError as exc:
            raise DetectorError(f"model {self.manifest.name}: warm-up failed: {exc}") from exc
        shape = self._output_shape(output)
        named = hints.names if self.manifest.labels_file is None else None
        full = self.manifest.read_labels_file() or named
        known_classes = max(full) + 1 if full else None
        if self.manifest.layout == "auto":
            try:
                self.layout = recognise_layout(
                    shape, num_classes=known_classes, end2end=hints.end2end
                )
            except LayoutError as exc:
                raise self._layout_error("auto", str(exc)) from exc
        else:
            self.layout = self.manifest.layout
        declared = classes_in_output(self.layout, shape)
        if declared is not None and declared < 1:
            raise self._layout_error(self.layout, f"output shape {shape} leaves no class scores")
        self.num_classes = declared or max(self.labels) + 1
        if max(self.labels) >= self.num_classes:
            raise self._layout_error(
                self.layout,
                f"labels name class {max(self.labels)} but the output has "
                f"{self.num_classes} class(es)",
            )
        self._decode = DECODERS[self.layout]
        try:
            self.postprocess(output, lb, width=blank.shape[1], height=blank.shape[0])
        except DecodeError as exc:
            raise self._layout_error(
                self.layout, f"{exc} (with {self.num_classes} classes)"
            ) from exc

    # running ---------------------------------------------------------------------------------
    def preprocess(self, image: np.ndarray) -> tuple[np.ndarray, Letterbox]:
        """BGR (h, w, 3) uint8 -> model input (1, 3, H, W) RGB in [0, 1], and the letterbox."""
        boxed, lb = letterbox(image, width=self.input_size.width, height=self.input_size.height)
        tensor = cv2.dnn.blobFromImage(boxed, scalefactor=1 / 255.0, swapRB=True)
        return tensor.astype(self.input_dtype, copy=False), lb

    def infer(self, tensor: np.ndarray) -> np.ndarray:
        """Run the session on a preprocessed (B, 3, H, W) tensor, ``B <= max_batch``; return the
        first output, (B, ...). A fixed batch larger than B is padded (and the padding cut off)."""
        n = tensor.shape[0]
        if n > self.max_batch:
            raise DetectorError(f"batch of {n} frames; this model takes at most {self.max_batch}")
        feed = tensor
        if self.batch_size is not None and n < self.batch_size:
            pad = np.zeros((self.batch_size - n, *tensor.shape[1:]), tensor.dtype)
            feed = np.concatenate([tensor, pad])
        start = time.perf_counter()
        try:
            output = self.session.run(None, {self.input_name: feed})[0]
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise DetectorError(f"inference failed on input {feed.shape}: {exc}") from exc
        elapsed_ms = (time.perf_counter() - start) * 1000
        self.last_inference_ms = elapsed_ms
        self.inferences += 1
        weight = 1.0 if self.inferences == 1 else 0.1
        self.mean_inference_ms += weight * (elapsed_ms - self.mean_inference_ms)
        output = np.asarray(output)
        if output.ndim == 0 or output.shape[0] != feed.shape[0]:
            raise DetectorError(
                f"output {output.shape} does not have the input's batch of {feed.shape[0]}"
            )
        return output[:n]

    def postprocess(
        self, output: np.ndarray, lb: Letterbox, *, width: int, height: int
    ) -> Detections:
        """Decode one frame's output (1, ...), map boxes back to the original (width, height)
        pixels, attach labels."""
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

    def detect_batch(self, images: list[np.ndarray]) -> list[Detections]:
        """Detections for several BGR images in as few inferences as the batch size allows."""
        out: list[Detections] = []
        for start in range(0, len(images), self.max_batch):
            chunk = images[start : start + self.max_batch]
            prepared = [self.preprocess(image) for image in chunk]
            tensor = np.concatenate([t for t, _ in prepared]) if len(chunk) > 1 else prepared[0][0]
            output = self.infer(tensor)
            for i, (image, (_, lb)) in enumerate(zip(chunk, prepared, strict=True)):
                out.append(
                    self.postprocess(
                        output[i : i + 1], lb, width=image.shape[1], height=image.shape[0]
                    )
                )
        return out

    def detect(self, image: np.ndarray) -> Detections:
        """Detections for one BGR image (h, w, 3), boxes in its pixels."""
        tensor, lb = self.preprocess(image)
        output = self.infer(tensor)
        return self.postprocess(output, lb, width=image.shape[1], height=image.shape[0])
