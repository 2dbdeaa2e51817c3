"""Tiny ONNX models built with the ``onnx`` helper API, with outputs known in advance.

- :func:`constant_model`: the output is a constant tensor whatever the input (plus 0 x the sum of
  the input, so the input is used), in any layout, with any input dtype, size and batch.
- :func:`shifting_model`: a dynamic-batch model whose boxes move right by 100 px x the mean of
  each batch item's input, so each frame of a batch gets its own, predictable boxes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

ELEM = {np.float32: TensorProto.FLOAT, np.float16: TensorProto.FLOAT16}


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
