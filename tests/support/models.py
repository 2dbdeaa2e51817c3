"""Tiny ONNX models built with the ``onnx`` helper API, with outputs known in advance.

- :func:`constant_model`: the output is a constant tensor whatever the input (plus 0 x the sum of
  the input, so the input is used), in any layout, with any input dtype, size and batch.
- :func:`shifting_model`: a dynamic-batch model whose boxes move right by 100 px x the mean of
  each batch item's input, so each frame of a batch gets its own, predictable boxes.
- :func:`unranked_model`: a constant output whose rank the graph does not declare (nor can ONNX
  Runtime infer it).
- :func:`dynamic_rows_model`: an end-to-end model whose number of detections is dynamic (declared
  ``[batch, 'detections', 6]``), chosen by how bright the frames are: none for a black frame.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

ELEM: dict[type[np.floating[Any]], int] = {
    np.float32: TensorProto.FLOAT,
    np.float16: TensorProto.FLOAT16,
}


def _save(model: onnx.ModelProto, path: Path, metadata: dict[str, str] | None) -> Path:
    model.ir_version = 8
    if metadata:
        helper.set_model_props(model, metadata)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def constant_model(
    path: Path,
    output: np.ndarray,
    *,
    width: int = 640,
    height: int = 640,
    names: str | None = None,
    metadata: dict[str, str] | None = None,
    input_dtype: type = np.float32,
    batch: int | str = 1,
    input_hw: tuple[int | str, int | str] | None = None,
) -> Path:
    """An ONNX model whose output is ``output`` whatever its (batch, 3, height, width) input.

    ``batch`` may be a name (a dynamic dimension); the output then keeps the constant's own
    first dimension, as a model with a fixed output would. ``input_hw`` overrides the declared
    input height and width (e.g. dynamic names).
    """
    value = np.asarray(output, np.float32)
    nodes = [
        helper.make_node("Constant", [], ["raw"], value=numpy_helper.from_array(value, "raw")),
        helper.make_node("Cast", ["images"], ["images32"], to=TensorProto.FLOAT),
        helper.make_node("ReduceSum", ["images32"], ["total"], keepdims=0),
        helper.make_node(
            "Constant", [], ["zero"], value=numpy_helper.from_array(np.array(0, np.float32), "z")
        ),
        helper.make_node("Mul", ["total", "zero"], ["nothing"]),
        helper.make_node("Add", ["raw", "nothing"], ["output0"]),
    ]
    h, w = input_hw or (height, width)
    graph = helper.make_graph(
        nodes,
        "constant",
        [helper.make_tensor_value_info("images", ELEM[input_dtype], [batch, 3, h, w])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, list(value.shape))],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    meta = dict(metadata or {})
    if names is not None:
        meta["names"] = names
    return _save(model, path, meta)


def shifting_model(
    path: Path,
    rows: np.ndarray,
    *,
    shift_columns: tuple[int, ...],
    width: int = 256,
    height: int = 256,
    names: str | None = None,
    fixed_batch: int | None = None,
) -> Path:
    """A model with a dynamic (or ``fixed_batch``) batch: output[b] = ``rows`` (K, D) + 100 x
    mean(input[b]) in ``shift_columns``. Fed frames of uniform grey level g, boxes move by
    100 x g / 255 pixels."""
    rows = np.asarray(rows, np.float32)
    shift = np.zeros((1, *rows.shape), np.float32)
    shift[..., list(shift_columns)] = 100.0
    nodes = [
        helper.make_node("Constant", [], ["raw"], value=numpy_helper.from_array(rows[None], "raw")),
        helper.make_node("Constant", [], ["shift"], value=numpy_helper.from_array(shift, "shift")),
        helper.make_node("ReduceMean", ["images"], ["mean4"], axes=[1, 2, 3], keepdims=1),
        helper.make_node(
            "Constant",
            [],
            ["shape3"],
            value=numpy_helper.from_array(np.array([-1, 1, 1], np.int64), "s3"),
        ),
        helper.make_node("Reshape", ["mean4", "shape3"], ["mean"]),
        helper.make_node("Mul", ["mean", "shift"], ["moved"]),
        helper.make_node("Add", ["raw", "moved"], ["output0"]),
    ]
    batch: int | str = fixed_batch or "batch"
    graph = helper.make_graph(
        nodes,
        "shifting",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [batch, 3, height, width])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, [batch, *rows.shape])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    return _save(model, path, {"names": names} if names else None)


def dynamic_rows_model(
    path: Path,
    rows: np.ndarray,
    *,
    thresholds: tuple[float, ...],
    width: int = 256,
    height: int = 256,
    names: str | None = None,
    metadata: dict[str, str] | None = None,
    fixed_batch: int | None = None,
) -> Path:
    """An end-to-end model, output declared ``[batch, 'detections', 6]``, whose row count K is
    known only at run time, as with NMS inside a model.

    ``rows`` (N, 6) are x1, y1, x2, y2, score, class; row i is output when the brightest frame
    of the batch has a mean input above ``thresholds[i]`` (``Compress``), so an all-black batch
    (the warm-up frame) gives (B, 0, 6). In a batch, a frame darker than a row's threshold gets
    that row with score 0, as real end-to-end models pad their rows.
    """
    rows = np.asarray(rows, np.float32)
    limits = np.asarray(thresholds, np.float32)
    if rows.ndim != 2 or rows.shape[1] != 6 or limits.shape != (rows.shape[0],):
        raise ValueError(f"rows must be (N, 6) with N thresholds, got {rows.shape}, {limits.shape}")
    score_column = np.zeros((1, 1, 6), np.float32)
    score_column[..., 4] = 1.0

    def const(name: str, value: np.ndarray) -> onnx.NodeProto:
        return helper.make_node(
            "Constant", [], [name], value=numpy_helper.from_array(value, name + "_value")
        )

    nodes = [
        const("rows", rows),
        const("limits", limits),
        const("score_column", score_column),
        const("other_columns", 1.0 - score_column),
        const("shape_b1", np.array([-1, 1], np.int64)),
        const("axis0", np.array([0], np.int64)),
        const("axis2", np.array([2], np.int64)),
        # mean[b] (B, 1) and the brightest frame's mean (a scalar)
        helper.make_node("ReduceMean", ["images"], ["mean4"], axes=[1, 2, 3], keepdims=1),
        helper.make_node("Reshape", ["mean4", "shape_b1"], ["mean"]),
        helper.make_node("ReduceMax", ["mean"], ["brightest"], keepdims=0),
        # the K rows (and their thresholds) the brightest frame passes
        helper.make_node("Less", ["limits", "brightest"], ["passed"]),
        helper.make_node("Compress", ["rows", "passed"], ["kept"], axis=0),
        helper.make_node("Compress", ["limits", "passed"], ["kept_limits"], axis=0),
        # per frame: 1 where that frame passes the row's threshold, else 0 -> (B, K, 1)
        helper.make_node("Unsqueeze", ["kept_limits", "axis0"], ["kept_limits_1k"]),
        helper.make_node("Less", ["kept_limits_1k", "mean"], ["frame_passes"]),
        helper.make_node("Cast", ["frame_passes"], ["frame_passes01"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["frame_passes01", "axis2"], ["keep_score"]),
        # scale = keep_score on the score column, 1 elsewhere -> (B, K, 6)
        helper.make_node("Mul", ["keep_score", "score_column"], ["score_scale"]),
        helper.make_node("Add", ["score_scale", "other_columns"], ["scale"]),
        helper.make_node("Unsqueeze", ["kept", "axis0"], ["kept_1k6"]),
        helper.make_node("Mul", ["kept_1k6", "scale"], ["output0"]),
    ]
    batch: int | str = fixed_batch or "batch"
    graph = helper.make_graph(
        nodes,
        "dynamic_rows",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [batch, 3, height, width])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, [batch, "detections", 6])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    meta = dict(metadata or {})
    if names is not None:
        meta["names"] = names
    return _save(model, path, meta)


def unranked_model(
    path: Path, output: np.ndarray, *, width: int = 640, height: int = 640, names: str | None = None
) -> Path:
    """An ONNX model whose output is ``output``, reshaped to a shape chosen at run time (it
    depends on the input), so neither the graph nor ONNX Runtime knows its rank beforehand."""
    value = np.asarray(output, np.float32)

    def const(name: str, array: np.ndarray) -> onnx.NodeProto:
        return helper.make_node(
            "Constant", [], [name], value=numpy_helper.from_array(array, name + "_value")
        )

    nodes = [
        const("flat", value.reshape(-1)),
        const("dims", np.array(value.shape, np.int64)),
        const("minus_one", np.array(-1, np.float32)),
        const("rank", np.array([value.ndim], np.int64)),
        helper.make_node("ReduceSum", ["images"], ["total"], keepdims=0),
        helper.make_node("Greater", ["total", "minus_one"], ["always"]),  # true, but not constant
        helper.make_node("Expand", ["always", "rank"], ["keep"]),
        helper.make_node("Compress", ["dims", "keep"], ["shape"], axis=0),
        helper.make_node("Reshape", ["flat", "shape"], ["output0"]),
    ]
    out = onnx.ValueInfoProto()
    out.name = "output0"
    out.type.tensor_type.elem_type = TensorProto.FLOAT  # no shape at all
    graph = helper.make_graph(
        nodes,
        "unranked",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, height, width])],
        [out],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    if names is not None:
        helper.set_model_props(model, {"names": names})
    onnx.save(model, str(path))  # the checker wants a declared shape: that is the point
    return path


def stalling_model(path: Path, *, rows: int = 10, width: int = 640, height: int = 640) -> Path:
    """A YOLOv8-layout model (``[1, 6, rows]``, nothing found) whose inference never ends, for
    all practical purposes, on a frame with any pixel brighter than half white: a ``Loop`` runs
    ``floor(2 x max(input)) x 10^12`` times. A black frame letterboxed to the input (the
    warm-up at load) has nothing above 114/255, so the model loads, then sticks on the first
    bright frame: a stuck detection worker, for real."""
    value = np.zeros((1, 6, rows), np.float32)

    def const(name: str, array: np.ndarray) -> onnx.NodeProto:
        return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(array, name))

    body = helper.make_graph(
        [
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
            const("one", np.array(1.0, np.float32)),
            helper.make_node("Add", ["v_in", "one"], ["v_out"]),
        ],
        "spin",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("v_in", TensorProto.FLOAT, []),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("v_out", TensorProto.FLOAT, []),
        ],
    )
    nodes = [
        const("raw", value),
        helper.make_node("ReduceMax", ["images"], ["brightest"], keepdims=0),
        const("two", np.array(2.0, np.float32)),
        helper.make_node("Mul", ["brightest", "two"], ["doubled"]),
        helper.make_node("Floor", ["doubled"], ["halves"]),
        helper.make_node("Cast", ["halves"], ["halves64"], to=TensorProto.INT64),
        const("forever", np.array(10**12, np.int64)),
        helper.make_node("Mul", ["halves64", "forever"], ["trips"]),
        const("go", np.array(True)),
        const("start", np.array(0.0, np.float32)),
        helper.make_node("Loop", ["trips", "go", "start"], ["spun"], body=body),
        const("zero", np.array(0.0, np.float32)),
        helper.make_node("Mul", ["spun", "zero"], ["nothing"]),
        helper.make_node("Add", ["raw", "nothing"], ["output0"]),
    ]
    graph = helper.make_graph(
        nodes,
        "stalling",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, height, width])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, list(value.shape))],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    return _save(model, path, {"names": "{0: 'person', 1: 'car'}"})


def slow_model(
    path: Path,
    *,
    trips: int,
    x: float = 320.0,
    width: int = 640,
    height: int = 640,
    names: str = "['person', 'person_fallen']",
) -> Path:
    """A YOLOv8-layout model (``[1, 6, 1]``: one ``person`` box centred at ``x``, score 0.9)
    that is slow on bright frames only: a ``Loop`` of 32x32 MatMuls runs ``trips`` times on a
    frame whose mean input is above half white, and not at all on a darker one (a dark scene,
    or the grey warm-up frame at load, 114/255).
    :func:`tests.support.models.calibrated_trips` says how many trips take a given time."""
    row = np.asarray([[x], [320.0], [100.0], [200.0], [0.9], [0.0]], np.float32)[None]

    def const(name: str, array: np.ndarray) -> onnx.NodeProto:
        return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(array, name))

    rng = np.random.default_rng(3)
    body = helper.make_graph(
        [
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
            const("weights", (rng.standard_normal((32, 32)) / 32).astype(np.float32)),
            helper.make_node("MatMul", ["m_in", "weights"], ["m_out"]),
        ],
        "work",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("m_in", TensorProto.FLOAT, [32, 32]),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("m_out", TensorProto.FLOAT, [32, 32]),
        ],
    )
    nodes = [
        const("raw", row),
        helper.make_node("ReduceMean", ["images"], ["mean"], keepdims=0),
        const("half", np.array(0.5, np.float32)),
        helper.make_node("Less", ["half", "mean"], ["bright"]),
        helper.make_node("Cast", ["bright"], ["bright64"], to=TensorProto.INT64),
        const("trips_if_bright", np.array(trips, np.int64)),
        helper.make_node("Mul", ["bright64", "trips_if_bright"], ["trips"]),
        const("go", np.array(True)),
        const("start", np.eye(32, dtype=np.float32)),
        helper.make_node("Loop", ["trips", "go", "start"], ["worked"], body=body),
        helper.make_node("ReduceSum", ["worked"], ["total"], keepdims=0),
        const("zero", np.array(0.0, np.float32)),
        helper.make_node("Mul", ["total", "zero"], ["nothing"]),
        helper.make_node("Add", ["raw", "nothing"], ["output0"]),
    ]
    graph = helper.make_graph(
        nodes,
        "slow",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, height, width])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, [1, 6, 1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    return _save(model, path, {"names": names})


def calibrated_trips(folder: Path, *, at_least_ms: float) -> int:
    """How many trips make :func:`slow_model` take ``at_least_ms`` on a bright frame here,
    measured with ONNX Runtime on one thread (the fastest of three runs; a busier machine
    only makes it slower)."""
    import onnxruntime as ort

    probe_trips = 2000
    probe = slow_model(folder / "calibrate.onnx", trips=probe_trips)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(probe), options, providers=["CPUExecutionProvider"])
    bright = np.ones((1, 3, 640, 640), np.float32)
    times = []
    for _ in range(3):
        started = time.perf_counter()
        session.run(None, {"images": bright})
        times.append((time.perf_counter() - started) * 1000)
    probe.unlink()
    return max(1, int(np.ceil(at_least_ms / min(times) * probe_trips)))
