"""Decoders from raw model outputs to :class:`Detections`, one pure function per layout.

Boxes come out in the model's input pixels (the letterboxed image); the detector maps them back.
Supported layouts (batch dimension of 1 already removed by the caller is *not* assumed: each
decoder takes the whole first output, ``(1, ...)``):

- ``yolov8``: ``(1, 4 + C, N)`` rows cx, cy, w, h, then C class scores (YOLOv8 / YOLO11).
- ``yolov5``: ``(1, N, 5 + C)`` cx, cy, w, h, objectness, C class scores.
- ``end2end``: ``(1, K, 6)`` x1, y1, x2, y2, score, class (NMS inside the model).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from modelrt.detections import Detections


class DecodeError(ValueError):
    """A model output does not have the shape its layout requires."""


def _cxcywh_to_xyxy(boxes: np.ndarray) -> np.ndarray:
    cx, cy, w, h = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    return np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1).astype(np.float32)


def nms_per_class(
    xyxy: np.ndarray, score: np.ndarray, class_id: np.ndarray, *, iou_threshold: float
) -> np.ndarray:
    """Indices kept by greedy non-maximum suppression within each class, best score first.

    ``xyxy`` (n, 4), ``score`` (n,), ``class_id`` (n,). Boxes of different classes never
    suppress each other (they are offset apart by class before the IoU test).
    """
    if len(score) == 0:
        return np.zeros((0,), np.int64)
    boxes = xyxy.astype(np.float64)
    low = float(boxes.min())
    span = float(boxes.max()) - low + 1.0
    boxes = boxes - low + (class_id.astype(np.float64) * span)[:, None]
    areas = (boxes[:, 2] - boxes[:, 0]).clip(0) * (boxes[:, 3] - boxes[:, 1]).clip(0)
    order = np.argsort(-score, kind="stable")
    keep: list[int] = []
    while order.size:
        i = int(order[0])
        keep.append(i)
        rest = order[1:]
        xx1 = np.maximum(boxes[i, 0], boxes[rest, 0])
        yy1 = np.maximum(boxes[i, 1], boxes[rest, 1])
        xx2 = np.minimum(boxes[i, 2], boxes[rest, 2])
        yy2 = np.minimum(boxes[i, 3], boxes[rest, 3])
        inter = (xx2 - xx1).clip(0) * (yy2 - yy1).clip(0)
        iou = inter / np.maximum(areas[i] + areas[rest] - inter, 1e-9)
        order = rest[iou <= iou_threshold]
    return np.asarray(keep, np.int64)


def _finish(
    xyxy: np.ndarray,
    score: np.ndarray,
    class_id: np.ndarray,
    *,
    iou_threshold: float | None,
    max_detections: int,
) -> Detections:
    if iou_threshold is not None:
        keep = nms_per_class(xyxy, score, class_id, iou_threshold=iou_threshold)
    else:
        keep = np.argsort(-score, kind="stable")
    keep = keep[:max_detections]
    return Detections(
        xyxy=xyxy[keep].astype(np.float32),
        score=score[keep].astype(np.float32),
        class_id=class_id[keep].astype(np.int64),
    )


def _best_class_then_nms(
    cxcywh: np.ndarray,
    scores: np.ndarray,
    *,
    score_threshold: float,
    iou_threshold: float,
    max_detections: int,
) -> Detections:
    """``cxcywh`` (N, 4) boxes and ``scores`` (N, C): best class per box, threshold, NMS."""
    class_id = scores.argmax(axis=1)
    score = scores[np.arange(len(scores)), class_id]
    hit = score >= score_threshold
    return _finish(
        _cxcywh_to_xyxy(cxcywh[hit]),
        score[hit],
        class_id[hit],
        iou_threshold=iou_threshold,
        max_detections=max_detections,
    )


def _expect(output: np.ndarray, layout: str, ok: bool, want: str) -> np.ndarray:
    if not ok:
        raise DecodeError(f"{layout}: output shape {tuple(output.shape)} is not {want}")
    return np.asarray(output[0], dtype=np.float32)


def decode_yolov8(
    output: np.ndarray,
    *,
    num_classes: int,
    score_threshold: float,
    iou_threshold: float,
    max_detections: int = 300,
) -> Detections:
    """``output`` (1, 4 + C, N) -> Detections in model-input pixels, after per-class NMS."""
    rows = _expect(
        output,
        "yolov8",
        output.ndim == 3 and output.shape[0] == 1 and output.shape[1] == 4 + num_classes,
        f"(1, {4 + num_classes}, N)",
    ).T  # (N, 4 + C)
    return _best_class_then_nms(
        rows[:, :4],
        rows[:, 4:],
        score_threshold=score_threshold,
        iou_threshold=iou_threshold,
        max_detections=max_detections,
    )


def decode_yolov5(
    output: np.ndarray,
    *,
    num_classes: int,
    score_threshold: float,
    iou_threshold: float,
    max_detections: int = 300,
) -> Detections:
    """``output`` (1, N, 5 + C), score = objectness x class score, then per-class NMS."""
    rows = _expect(
        output,
        "yolov5",
        output.ndim == 3 and output.shape[0] == 1 and output.shape[2] == 5 + num_classes,
        f"(1, N, {5 + num_classes})",
    )
    return _best_class_then_nms(
        rows[:, :4],
        rows[:, 5:] * rows[:, 4:5],
        score_threshold=score_threshold,
        iou_threshold=iou_threshold,
        max_detections=max_detections,
    )


def decode_end2end(
    output: np.ndarray,
    *,
    num_classes: int,
    score_threshold: float,
    iou_threshold: float,
    max_detections: int = 300,
) -> Detections:
    """``output`` (1, K, 6) rows x1, y1, x2, y2, score, class; NMS already done by the model."""
    del iou_threshold
    rows = _expect(
        output,
        "end2end",
        output.ndim == 3 and output.shape[0] == 1 and output.shape[2] == 6,
        "(1, K, 6)",
    )
    class_id = rows[:, 5].round().astype(np.int64)
    hit = (rows[:, 4] >= score_threshold) & (class_id >= 0) & (class_id < num_classes)
    return _finish(
        rows[hit, :4].copy(),
        rows[hit, 4],
        class_id[hit],
        iou_threshold=None,
        max_detections=max_detections,
    )


Decoder = Callable[..., Detections]
DECODERS: dict[str, Decoder] = {
    "yolov8": decode_yolov8,
    "yolov5": decode_yolov5,
    "end2end": decode_end2end,
}
