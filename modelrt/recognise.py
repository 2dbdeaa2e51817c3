"""What a model is, read from its graph and metadata: the output layout, the input size and the
class names. Pure functions of shapes and strings, so each rule is tested with known values.

Layout rules for the first output, shape ``(B, d1, d2)`` as the graph **declares** it, so the
result never depends on what an inference happens to return (an end-to-end model returns no rows
at all for an empty frame). A dimension the graph leaves open (a symbolic name such as
``'batch'`` or ``'detections'``, or None) is unknown; it can only ever be a batch or a row count:

- ``end2end`` ``(B, K, 6)``: rows x1, y1, x2, y2, score, class. Chosen when the Ultralytics
  metadata says ``end2end`` or ``nms=True``, or when ``d2 == 6`` and the model does not have
  exactly one class (a one-class YOLOv5 output is ``(B, N, 6)`` too: that case is refused as
  ambiguous unless the metadata or the manifest decides).
- ``yolov8`` ``(B, 4 + C, N)``: fewer rows than anchors (``d1 < d2``), ``C = d1 - 4``; ``d1``
  must be known, an unknown ``N`` counts as many.
- ``yolov5`` ``(B, N, 5 + C)``: more anchors than columns (``d1 > d2``), ``C = d2 - 5``; ``d2``
  must be known, an unknown ``N`` counts as many.
- ``end2end`` needs ``d2 == 6`` known; ``K`` may be unknown (a dynamic number of detections).

When the class names are known (metadata or labels file), the class count must match too.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass

from modelrt.manifest import LAYOUTS


class LayoutError(ValueError):
    """The model's output fits no supported layout, or fits more than one."""


class LabelError(ValueError):
    """The class names cannot be resolved (none given, or a label map names an unknown class)."""


def _literal(raw: str | None) -> object:
    if not raw:
        return None
    try:
        return ast.literal_eval(raw)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return None


def labels_from_metadata(meta: dict[str, str]) -> dict[int, str] | None:
    """Ultralytics exports store ``names`` as a Python dict literal, e.g. ``{0: 'person'}``."""
    names = _literal(meta.get("names"))
    try:
        if isinstance(names, dict):
            return {int(k): str(v) for k, v in names.items()}
        if isinstance(names, list):
            return dict(enumerate(str(v) for v in names))
    except (TypeError, ValueError):
        return None
    return None


@dataclass(frozen=True)
class MetadataHints:
    """What an Ultralytics export's metadata says: class names, NMS inside, input size."""

    names: dict[int, str] | None = None
    end2end: bool | None = None
    imgsz_hw: tuple[int, int] | None = None

    @classmethod
    def read(cls, meta: dict[str, str]) -> MetadataHints:
        args = _literal(meta.get("args"))
        nms = args.get("nms") if isinstance(args, dict) else None
        e2e = meta.get("end2end")
        end2end: bool | None = None
        if e2e is not None or nms is not None:
            end2end = str(e2e).lower() == "true" or nms is True
        imgsz = _literal(meta.get("imgsz"))
        size: tuple[int, int] | None = None
        if isinstance(imgsz, int):
            size = (imgsz, imgsz)
        elif isinstance(imgsz, list | tuple) and [type(v) for v in imgsz] == [int, int]:
            size = (int(imgsz[0]), int(imgsz[1]))
        return cls(names=labels_from_metadata(meta), end2end=end2end, imgsz_hw=size)


SUPPORTED_LAYOUTS = "supported layouts: yolov8 (1, 4+C, N), yolov5 (1, N, 5+C), end2end (1, K, 6)"

Dim = int | str | None
"""One dimension of a declared shape: a size, or a symbolic name / None when the graph leaves it
open (ONNX Runtime's ``NodeArg.shape`` gives exactly these)."""


def known(dim: Dim) -> int | None:
    """The size of a declared dimension, or None when it is open."""
    return dim if isinstance(dim, int) and not isinstance(dim, bool) else None


def _fewer(small: int | None, large: int | None) -> bool:
    """``small < large``, where an open ``large`` (a row or anchor count) counts as many."""
    return small is not None and (large is None or small < large)


def recognise_layout(
    shape: tuple[Dim, ...], *, num_classes: int | None, end2end: bool | None = None
) -> str:
    """The layout of an output whose declared shape is ``shape``; ``num_classes`` when the class
    names are known.

    ``end2end`` is the metadata's word on NMS inside the model (None when it says nothing).
    Without a class count, a YOLOv8 output has fewer rows than anchors and a YOLOv5 output
    more anchors than columns. Open dimensions are row or anchor counts (see the module doc).
    """
    sizes = [known(d) for d in shape]
    if len(shape) != 3 or any(s is not None and s < 1 for s in sizes):
        raise LayoutError(f"output shape {shape} is not (batch, rows, columns)")
    _, d1, d2 = sizes
    if end2end:
        if d2 != 6:
            raise LayoutError(
                f"the metadata says NMS is inside the model, but the output shape {shape} is "
                "not (1, K, 6)"
            )
        return "end2end"
    candidates = []
    if d2 == 6 and end2end is None:
        candidates.append("end2end")
    if (
        d1 is not None
        and d1 > 4
        and (d1 - 4 == num_classes if num_classes is not None else _fewer(d1, d2))
    ):
        candidates.append("yolov8")
    if (
        d2 is not None
        and d2 > 5
        and (d2 - 5 == num_classes if num_classes is not None else _fewer(d2, d1))
    ):
        candidates.append("yolov5")
    if len(candidates) == 1:
        return candidates[0]
    found = f"output shape {shape}" + (
        f" with {num_classes} class name(s)" if num_classes is not None else ""
    )
    if not candidates:
        raise LayoutError(f"{found} fits no supported layout")
    raise LayoutError(
        f"{found} is ambiguous: it fits {' and '.join(candidates)} (set `layout:` in a manifest)"
    )


def classes_in_output(layout: str, shape: tuple[Dim, ...]) -> int | None:
    """The class count a declared output ``shape`` gives in ``layout`` (None for end2end, or
    when that dimension is open or the shape is not 3-D)."""
    if len(shape) != 3:
        return None
    if layout == "yolov8":
        columns = known(shape[1])
        return None if columns is None else columns - 4
    if layout == "yolov5":
        columns = known(shape[2])
        return None if columns is None else columns - 5
    return None


def resolve_labels(
    *,
    manifest_labels: dict[int, str] | None,
    file_labels: dict[int, str] | None,
    metadata_labels: dict[int, str] | None,
    label_map: dict[str, str | None],
) -> dict[int, str]:
    """Class index -> label: the manifest's ``labels``, else its labels file, else the ONNX
    ``names`` metadata; then ``label_map`` renames classes by name and drops those mapped to
    None. A label map key that names no class is refused (it is a typo, not a no-op)."""
    base = manifest_labels or file_labels or metadata_labels
    if not base:
        raise LabelError(
            "no labels in the manifest nor 'names' in the ONNX metadata "
            "(give labels or labels_file in the manifest)"
        )
    unknown = sorted(set(label_map) - set(base.values()))
    if unknown:
        raise LabelError(
            f"label_map renames {unknown}, which the model does not have "
            f"(its classes: {sorted(set(base.values()))[:20]})"
        )
    out: dict[int, str] = {}
    for index, name in base.items():
        mapped = label_map.get(name, name)
        if mapped:
            out[index] = mapped
    if not out:
        raise LabelError("label_map drops every class")
    return out


__all__ = [
    "LAYOUTS",
    "SUPPORTED_LAYOUTS",
    "Dim",
    "LabelError",
    "LayoutError",
    "MetadataHints",
    "classes_in_output",
    "known",
    "labels_from_metadata",
    "recognise_layout",
    "resolve_labels",
]
