"""Models users bring: layouts recognised from the graph and metadata, float16 inputs, fixed and
dynamic batch, non-square inputs, labels from a file, label maps. Tiny ONNX graphs with known
outputs run through a real ONNX Runtime session."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import yaml

from modelrt import Detector, DetectorError, load_manifest, manifest_for_onnx
from modelrt.recognise import (
    Dim,
    LabelError,
    LayoutError,
    MetadataHints,
    recognise_layout,
    resolve_labels,
)
from tests.support.models import (
    constant_model,
    dynamic_rows_model,
    shifting_model,
    unranked_model,
)

# One person box, in every layout: model-input xyxy (270, 290, 370, 350), class 1, score 0.9.
# YOLO outputs have many anchors; the other 9 here score nothing.
V8 = np.asarray([[320, 320, 100, 60, 0.05, 0.9]] + [[0] * 6] * 9, np.float32).T[None]  # (1, 6, 10)
V5 = np.asarray([[[320, 320, 100, 60, 1.0, 0.05, 0.9]] + [[0] * 7] * 9], np.float32)  # (1, 10, 7)
E2E = np.asarray([[[270, 290, 370, 350, 0.9, 1], [0, 0, 0, 0, 0, 0]]], np.float32)  # (1, 2, 6)
E2E1 = np.asarray([[[270, 290, 370, 350, 0.9, 0]] + [[0] * 6] * 9], np.float32)  # 1 class


def manifest_file(folder: Path, model: Path, **fields: object) -> Path:
    doc = {
        "name": "tiny",
        "file": model.name,
        "sha256": hashlib.sha256(model.read_bytes()).hexdigest(),
        **fields,
    }
    path = folder / "tiny.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def load(folder: Path, model: Path, **fields: object) -> Detector:
    manifest = load_manifest(manifest_file(folder, model, **fields))
    return Detector(manifest, providers=["CPUExecutionProvider"])


# ---------------------------------------------------------------- recognition, pure functions


@pytest.mark.parametrize(
    ("shape", "num_classes", "end2end", "expected", "expected_error"),
    [
        ((1, 84, 8400), None, None, "yolov8", None),
        ((1, 84, 8400), 80, False, "yolov8", None),
        ((1, 6, 8400), 2, None, "yolov8", None),
        ((1, 25200, 85), None, None, "yolov5", None),
        ((1, 25200, 85), 80, None, "yolov5", None),
        ((1, 300, 6), 80, None, "end2end", None),
        ((1, 300, 6), None, True, "end2end", None),
        ((1, 300, 6), 1, True, "end2end", None),
        ((4, 300, 6), 80, None, "end2end", None),
        ((1, 25200, 6), 1, False, "yolov5", None),
        ((1, 300, 6), None, None, None, "is ambiguous: it fits end2end and yolov5"),
        ((1, 300, 6), 1, None, None, "is ambiguous: it fits end2end and yolov5"),
        ((1, 5, 6), None, None, None, "is ambiguous: it fits end2end and yolov8"),
        ((1, 6, 7), 2, None, None, "is ambiguous: it fits yolov8 and yolov5"),
        ((1, 84, 8400), 2, None, None, "with 2 class name(s) fits no supported layout"),
        ((1, 8400, 4), None, None, None, "fits no supported layout"),
        ((1, 300, 7), None, True, None, "the metadata says NMS is inside the model"),
        ((1, 1000), None, None, None, "is not (batch, rows, columns)"),
        ((1, 2, 3, 4), None, None, None, "is not (batch, rows, columns)"),
        # declared shapes with open dimensions (symbolic names or None)
        (("batch", "detections", 6), 2, None, "end2end", None),
        ((1, None, 6), None, True, "end2end", None),
        ((4, "detections", 6), 1, True, "end2end", None),
        (("batch", 84, "anchors"), None, None, "yolov8", None),
        (("batch", 6, None), 2, None, "yolov8", None),
        (("batch", "anchors", 85), None, None, "yolov5", None),
        ((1, "detections", 6), None, None, None, "is ambiguous: it fits end2end and yolov5"),
        ((1, "rows", "columns"), None, None, None, "fits no supported layout"),
        ((1, 0, 6), 2, None, None, "output shape (1, 0, 6) is not (batch, rows, columns)"),
    ],
)
def test_recognise_layout(
    shape: tuple[Dim, ...],
    num_classes: int | None,
    end2end: bool | None,
    expected: str | None,
    expected_error: str | None,
) -> None:
    if expected_error is not None:
        with pytest.raises(LayoutError) as info:
            recognise_layout(shape, num_classes=num_classes, end2end=end2end)
        assert expected_error in str(info.value)
        return
    assert recognise_layout(shape, num_classes=num_classes, end2end=end2end) == expected


@pytest.mark.parametrize(
    ("meta", "expected"),
    [
        ({}, MetadataHints()),
        (
            {"names": "{0: 'person'}", "end2end": "True", "imgsz": "[384, 640]"},
            MetadataHints(names={0: "person"}, end2end=True, imgsz_hw=(384, 640)),
        ),
        ({"args": "{'batch': 1, 'nms': True}"}, MetadataHints(end2end=True)),
        ({"args": "{'batch': 1, 'half': False}", "end2end": "False"}, MetadataHints(end2end=False)),
        ({"imgsz": "640"}, MetadataHints(imgsz_hw=(640, 640))),
        ({"imgsz": "[1, 2, 3]", "args": "not python"}, MetadataHints()),
    ],
)
def test_metadata_hints(meta: dict[str, str], expected: MetadataHints) -> None:
    assert MetadataHints.read(meta) == expected


@pytest.mark.parametrize(
    ("manifest_labels", "file_labels", "metadata_labels", "label_map", "expected", "error"),
    [
        ({0: "a"}, {0: "b"}, {0: "c"}, {}, {0: "a"}, None),
        (None, {0: "b"}, {0: "c"}, {}, {0: "b"}, None),
        (None, None, {0: "c", 1: "d"}, {}, {0: "c", 1: "d"}, None),
        (
            None,
            None,
            {0: "Normal", 1: "Fall"},
            {"Normal": "person"},
            {0: "person", 1: "Fall"},
            None,
        ),
        (None, None, {0: "Normal", 1: "Fall"}, {"Fall": None}, {0: "Normal"}, None),
        (None, None, {0: "x", 1: "y"}, {"x": "z", "y": "z"}, {0: "z", 1: "z"}, None),
        (None, None, {0: "Normal"}, {"Norml": "person"}, None, "label_map renames ['Norml']"),
        (None, None, {0: "Normal"}, {"Normal": None}, None, "label_map drops every class"),
        (None, None, None, {}, None, "no labels in the manifest nor 'names'"),
    ],
)
def test_resolve_labels(
    manifest_labels: dict[int, str] | None,
    file_labels: dict[int, str] | None,
    metadata_labels: dict[int, str] | None,
    label_map: dict[str, str | None],
    expected: dict[int, str] | None,
    error: str | None,
) -> None:
    kwargs = {
        "manifest_labels": manifest_labels,
        "file_labels": file_labels,
        "metadata_labels": metadata_labels,
        "label_map": label_map,
    }
    if error is not None:
        with pytest.raises(LabelError, match=error.replace("[", r"\[").replace("]", r"\]")):
            resolve_labels(**kwargs)  # type: ignore[arg-type]
        return
    assert resolve_labels(**kwargs) == expected  # type: ignore[arg-type]


# ---------------------------------------------------------------- the Detector on tiny models


@pytest.mark.parametrize(
    ("output", "metadata", "expected_layout"),
    [
        (V8, {}, "yolov8"),
        (V5, {}, "yolov5"),
        (E2E, {}, "end2end"),
        # an Ultralytics nms=True export of a 1-class model: (1, K, 6) is decided by the metadata
        (E2E1, {"args": "{'nms': True}", "names": "{0: 'person'}"}, "end2end"),
    ],
)
def test_auto_layout_decodes_the_same_box(
    tmp_path: Path, output: np.ndarray, metadata: dict[str, str], expected_layout: str
) -> None:
    names = metadata.pop("names", "{0: 'cat', 1: 'person'}")
    model = constant_model(tmp_path / "m.onnx", output, names=names, metadata=metadata)
    detector = load(tmp_path, model)
    assert detector.layout == expected_layout
    found = detector.detect(np.zeros((720, 1280, 3), np.uint8))  # scale 0.5, pad_y 140
    assert found.labels == ("person",)
    np.testing.assert_allclose(found.xyxy, [[540, 300, 740, 420]], atol=1e-4)
    np.testing.assert_allclose(found.score, [0.9], rtol=1e-6)


def test_an_output_of_undeclared_rank_is_recognised_from_the_warm_up_output(
    tmp_path: Path,
) -> None:
    model = unranked_model(tmp_path / "m.onnx", V8, names="{0: 'cat', 1: 'person'}")
    detector = load(tmp_path, model)
    assert detector.session.get_outputs()[0].shape == []  # nothing declared
    assert (detector.layout, detector.num_classes) == ("yolov8", 2)
    found = detector.detect(np.zeros((640, 640, 3), np.uint8))
    np.testing.assert_allclose(found.xyxy, [[270, 290, 370, 350]], atol=1e-4)


def test_an_unrecognised_layout_is_refused_with_what_was_found(tmp_path: Path) -> None:
    model = constant_model(tmp_path / "m.onnx", np.zeros((1, 8400, 4), np.float32), names="['a']")
    with pytest.raises(DetectorError) as info:
        load(tmp_path, model)
    message = str(info.value)
    assert "output does not match layout 'auto'" in message
    assert "output shape (1, 8400, 4) with 1 class name(s) fits no supported layout" in message
    assert message.count("supported layouts") == 1
    assert "outputs found: [('output0', [1, 8400, 4])]" in message
    assert "supported layouts: yolov8 (1, 4+C, N), yolov5 (1, N, 5+C), end2end (1, K, 6)" in message


def test_float16_input(tmp_path: Path) -> None:
    model = constant_model(
        tmp_path / "m.onnx", V8, names="['cat', 'person']", input_dtype=np.float16
    )
    detector = load(tmp_path, model)
    tensor, _ = detector.preprocess(np.full((640, 640, 3), 255, np.uint8))
    assert tensor.dtype == np.float16 and tensor.shape == (1, 3, 640, 640)
    assert float(tensor.max()) == 1.0
    found = detector.detect(np.zeros((640, 640, 3), np.uint8))
    assert found.labels == ("person",)
    np.testing.assert_allclose(found.xyxy, [[270, 290, 370, 350]], atol=1e-4)


def test_non_square_input_size_comes_from_the_model(tmp_path: Path) -> None:
    # Input 320 wide x 192 high. A 1280x720 frame scales by 0.25 to 320x180, padded 6 px top.
    output = np.asarray([[160, 96, 40, 20, 0.9]] + [[0] * 5] * 9, np.float32).T[None]  # (1, 5, 10)
    model = constant_model(tmp_path / "m.onnx", output, width=320, height=192, names="['car']")
    detector = load(tmp_path, model)
    assert (detector.input_size.width, detector.input_size.height) == (320, 192)
    tensor, lb = detector.preprocess(np.zeros((720, 1280, 3), np.uint8))
    assert tensor.shape == (1, 3, 192, 320)
    assert (lb.scale, lb.pad_x, lb.pad_y) == (0.25, 0.0, 6.0)
    found = detector.detect(np.zeros((720, 1280, 3), np.uint8))
    # input xyxy (140, 86, 180, 106) -> frame ((140-0)/0.25, (86-6)/0.25, ...)
    np.testing.assert_allclose(found.xyxy, [[560, 320, 720, 400]], atol=1e-4)


@pytest.mark.parametrize(
    ("manifest_input", "metadata", "expected_wh", "expected_error"),
    [
        ({"width": 320, "height": 256}, {}, (320, 256), None),
        (None, {"imgsz": "[256, 320]"}, (320, 256), None),
        (None, {}, None, "has dynamic size ['batch', 3, 'h', 'w'] and no 'imgsz' metadata"),
    ],
)
def test_dynamic_input_size_from_the_manifest_or_metadata(
    tmp_path: Path,
    manifest_input: dict[str, int] | None,
    metadata: dict[str, str],
    expected_wh: tuple[int, int] | None,
    expected_error: str | None,
) -> None:
    model = constant_model(
        tmp_path / "m.onnx",
        V8,
        names="['cat', 'person']",
        metadata=metadata,
        batch="batch",
        input_hw=("h", "w"),
    )
    fields = {"input": manifest_input} if manifest_input else {}
    if expected_error is not None:
        with pytest.raises(DetectorError, match=expected_error.replace("[", r"\[")):
            load(tmp_path, model, **fields)
        return
    detector = load(tmp_path, model, **fields)
    assert (detector.input_size.width, detector.input_size.height) == expected_wh
    assert detector.preprocess(np.zeros((720, 1280, 3), np.uint8))[0].shape[2:] == (256, 320)


def test_a_manifest_input_size_that_contradicts_the_model_is_refused(tmp_path: Path) -> None:
    model = constant_model(tmp_path / "m.onnx", V8, names="['cat', 'person']")
    with pytest.raises(DetectorError, match="the manifest says input 320x320, the model's input"):
        load(tmp_path, model, input={"width": 320, "height": 320})


def test_an_integer_input_is_refused(tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Cast", ["images"], ["output0"], to=TensorProto.FLOAT)],
        "u8",
        [helper.make_tensor_value_info("images", TensorProto.UINT8, [1, 3, 64, 64])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, [1, 3, 64, 64])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "m.onnx"))
    with pytest.raises(DetectorError, match=r"input images is tensor\(uint8\); supported"):
        load(tmp_path, tmp_path / "m.onnx", labels={0: "a"})


# ---------------------------------------------------------------- batches


# end2end rows: a box whose x moves by 100 x mean grey level of its batch item.
SHIFT_ROWS = np.asarray([[10, 10, 20, 30, 0.9, 0]], np.float32)


def grey(level: int) -> np.ndarray:
    return np.full((256, 256, 3), level, np.uint8)


def test_dynamic_batch_runs_frames_of_several_cameras_in_one_inference(tmp_path: Path) -> None:
    model = shifting_model(
        tmp_path / "m.onnx", SHIFT_ROWS, shift_columns=(0, 2), names="['person']"
    )
    detector = load(tmp_path, model, layout="end2end")
    assert detector.batch_size is None and detector.max_batch == 8
    before = detector.inferences
    found = detector.detect_batch([grey(0), grey(51), grey(255)])
    assert detector.inferences == before + 1
    # grey 51 -> mean 0.2 -> +20 px; grey 255 -> +100 px
    for dets, dx in zip(found, (0, 20, 100), strict=True):
        np.testing.assert_allclose(dets.xyxy, [[10 + dx, 10, 20 + dx, 30]], atol=1e-3)
        assert dets.labels == ("person",)


def test_more_frames_than_max_batch_take_several_inferences(tmp_path: Path) -> None:
    model = shifting_model(
        tmp_path / "m.onnx", SHIFT_ROWS, shift_columns=(0, 2), names="['person']"
    )
    manifest = load_manifest(manifest_file(tmp_path, model, layout="end2end"))
    detector = Detector(manifest, providers=["CPUExecutionProvider"], max_batch=2)
    before = detector.inferences
    found = detector.detect_batch([grey(0)] * 5)
    assert detector.inferences == before + 3
    assert len(found) == 5


def test_a_fixed_batch_is_padded_and_cut(tmp_path: Path) -> None:
    model = shifting_model(
        tmp_path / "m.onnx", SHIFT_ROWS, shift_columns=(0, 2), names="['person']", fixed_batch=4
    )
    detector = load(tmp_path, model, layout="end2end")
    assert detector.batch_size == 4 and detector.max_batch == 4
    found = detector.detect_batch([grey(255), grey(0)])
    assert len(found) == 2
    np.testing.assert_allclose(found[0].xyxy, [[110, 10, 120, 30]], atol=1e-3)
    np.testing.assert_allclose(found[1].xyxy, [[10, 10, 20, 30]], atol=1e-3)
    with pytest.raises(DetectorError, match="batch of 5 frames; this model takes at most 4"):
        detector.infer(np.zeros((5, 3, 256, 256), np.float32))


# ---------------------------------------------------------------- a dynamic number of detections


# end2end rows (x1, y1, x2, y2, score, class); row i comes out when the brightest frame's mean
# input is above DYNAMIC_THRESHOLDS[i]: none for black, the first for grey 51 (0.2), both for 204.
DYNAMIC_ROWS = np.asarray([[10, 10, 50, 60, 0.9, 1], [100, 100, 150, 160, 0.8, 0]], np.float32)
DYNAMIC_THRESHOLDS = (0.1, 0.5)


@pytest.mark.parametrize("fixed_batch", [None, 1, 4])
@pytest.mark.parametrize(
    ("names", "metadata"),
    [
        ("['cat', 'person']", {}),  # two classes: (B, K, 6) can only be end2end
        ("['person']", {"args": "{'nms': True}"}),  # one class: the metadata decides
    ],
)
def test_a_dynamic_number_of_detections_loads_warms_up_and_decodes(
    tmp_path: Path, fixed_batch: int | None, names: str, metadata: dict[str, str]
) -> None:
    rows = DYNAMIC_ROWS.copy()
    rows[:, 5] = rows[:, 5].clip(max=len(yaml.safe_load(names)) - 1)
    model = dynamic_rows_model(
        tmp_path / "m.onnx",
        rows,
        thresholds=DYNAMIC_THRESHOLDS,
        names=names,
        metadata=metadata,
        fixed_batch=fixed_batch,
    )
    detector = load(tmp_path, model)  # the warm-up frame is black: its output is (B, 0, 6)
    assert detector.layout == "end2end"
    assert detector.inferences == 1
    assert detector.batch_size == fixed_batch
    assert detector.infer(detector.preprocess(grey(0))[0]).shape == (1, 0, 6)

    assert len(detector.detect(grey(0))) == 0
    one = detector.detect(grey(51))
    np.testing.assert_allclose(one.xyxy, [[10, 10, 50, 60]], atol=1e-4)
    np.testing.assert_allclose(one.score, [0.9], rtol=1e-6)
    two = detector.detect(grey(204))
    np.testing.assert_allclose(two.xyxy, [[10, 10, 50, 60], [100, 100, 150, 160]], atol=1e-4)

    # in a batch, K follows the brightest frame; the darker frames' extra rows score 0
    found = detector.detect_batch([grey(0), grey(51), grey(204), grey(0)])
    assert [len(d) for d in found] == [0, 1, 2, 0]
    np.testing.assert_allclose(found[2].score, [0.9, 0.8], rtol=1e-6)


# ---------------------------------------------------------------- labels


def test_labels_file_and_label_map(tmp_path: Path) -> None:
    model = constant_model(tmp_path / "m.onnx", V8)  # no names metadata
    (tmp_path / "labels.txt").write_text("Fall\nNormal\n")
    detector = load(
        tmp_path, model, labels_file="labels.txt", label_map={"Normal": "person", "Fall": None}
    )
    assert detector.labels == {1: "person"}
    found = detector.detect(np.zeros((640, 640, 3), np.uint8))
    assert found.labels == ("person",)


def test_labels_file_must_exist(tmp_path: Path) -> None:
    model = constant_model(tmp_path / "m.onnx", V8)
    with pytest.raises(DetectorError, match="cannot read labels_file"):
        load(tmp_path, model, labels_file="missing.txt")


def test_a_bare_onnx_file_gets_a_manifest_of_its_own(tmp_path: Path) -> None:
    model = constant_model(tmp_path / "yolo-tiny.onnx", V5, names="{0: 'cat', 1: 'person'}")
    manifest = manifest_for_onnx(model)
    assert manifest.name == "yolo-tiny"
    assert manifest.sha256 == hashlib.sha256(model.read_bytes()).hexdigest()
    detector = Detector(manifest, providers=["CPUExecutionProvider"])
    assert (detector.layout, detector.labels) == ("yolov5", {0: "cat", 1: "person"})
