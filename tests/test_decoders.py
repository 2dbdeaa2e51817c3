"""Output decoders and the Detector, on tiny ONNX models run by a real ONNX Runtime session.

Each tiny model has one input ``images`` (1, 3, H, W) and one output that is a constant tensor of
known values (plus 0 x the sum of the input, so the input is used), so decoding is exact.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import yaml

from demo.footage import sample_still
from modelrt import DECODERS, DecodeError, Detector, DetectorError, load_manifest
from modelrt.decoders import nms_per_class
from modelrt.detector import Letterbox, labels_from_metadata, letterbox
from tests.support.models import constant_model

SUPPORTED = "supported layouts: yolov8 (1, 4+C, N), yolov5 (1, N, 5+C), end2end (1, K, 6)"


def run_model(path: Path, *, width: int = 640, height: int = 640) -> np.ndarray:
    """The first output of ``path`` in a real ONNX Runtime session, on a random input."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    images = np.random.default_rng(0).random((1, 3, height, width), dtype=np.float32)
    return np.asarray(session.run(None, {"images": images})[0])


def yolov8_output(rows: list[list[float]]) -> np.ndarray:
    """Rows (cx, cy, w, h, class scores...) -> the (1, 4 + C, N) YOLOv8 layout."""
    return np.asarray(rows, np.float32).T[None]


def f32(values: Any) -> np.ndarray:
    return np.asarray(values, np.float32)


# cx, cy, w, h, score of class 0, score of class 1 (model-input pixels)
YOLOV8_ROWS = [
    [100, 100, 40, 60, 0.9, 0.1],  # A: class 0, kept
    [104, 100, 40, 60, 0.8, 0.05],  # B: class 0, IoU 0.82 with A -> suppressed
    [102, 100, 40, 60, 0.1, 0.7],  # C: class 1 on top of A -> kept (other class)
    [300, 300, 20, 20, 0.2, 0.1],  # D: best score 0.2, under the threshold
    [400, 200, 50, 50, 0.3, 0.6],  # E: class 1, alone
]


def test_yolov8_decodes_boxes_scores_classes_with_per_class_nms(tmp_path: Path) -> None:
    output = run_model(constant_model(tmp_path / "m.onnx", yolov8_output(YOLOV8_ROWS)))
    assert output.shape == (1, 6, 5)

    found = DECODERS["yolov8"](output, num_classes=2, score_threshold=0.25, iou_threshold=0.45)

    np.testing.assert_array_equal(
        found.xyxy, f32([[80, 70, 120, 130], [82, 70, 122, 130], [375, 175, 425, 225]])
    )
    np.testing.assert_array_equal(found.score, f32([0.9, 0.7, 0.6]))
    np.testing.assert_array_equal(found.class_id, np.array([0, 1, 1], np.int64))
    assert found.xyxy.dtype == np.float32
    assert found.labels == ()


@pytest.mark.parametrize(
    ("score_threshold", "iou_threshold", "expected_scores"),
    [
        (0.25, 0.45, [0.9, 0.7, 0.6]),
        (0.65, 0.45, [0.9, 0.7]),
        (0.7, 0.45, [0.9, 0.7]),  # a score equal to the threshold is kept
        (0.95, 0.45, []),
        (0.15, 0.45, [0.9, 0.7, 0.6, 0.2]),
        (0.25, 0.9, [0.9, 0.8, 0.7, 0.6]),  # IoU 0.82 of A and B is under 0.9: B survives
    ],
)
def test_yolov8_thresholds(
    tmp_path: Path, score_threshold: float, iou_threshold: float, expected_scores: list[float]
) -> None:
    output = run_model(constant_model(tmp_path / "m.onnx", yolov8_output(YOLOV8_ROWS)))
    found = DECODERS["yolov8"](
        output, num_classes=2, score_threshold=score_threshold, iou_threshold=iou_threshold
    )
    np.testing.assert_array_equal(found.score, f32(expected_scores))
    assert found.xyxy.shape == (len(expected_scores), 4)


def test_yolov8_max_detections_keeps_the_best(tmp_path: Path) -> None:
    rows = [[50 + 100 * i, 50, 20, 20, 0.3 + 0.1 * i, 0.0] for i in range(5)]
    output = run_model(constant_model(tmp_path / "m.onnx", yolov8_output(rows)))
    found = DECODERS["yolov8"](
        output, num_classes=2, score_threshold=0.25, iou_threshold=0.45, max_detections=2
    )
    np.testing.assert_allclose(found.score, [0.7, 0.6], rtol=1e-6)
    np.testing.assert_array_equal(found.xyxy, f32([[440, 40, 460, 60], [340, 40, 360, 60]]))


def test_yolov5_score_is_objectness_times_class_score(tmp_path: Path) -> None:
    # cx, cy, w, h, objectness, class 0, class 1
    rows = np.asarray(
        [
            [
                [100, 100, 40, 60, 0.9, 0.9, 0.1],  # class 0, 0.81
                [
                    104,
                    100,
                    40,
                    60,
                    0.9,
                    0.8,
                    0.1,
                ],  # class 0, 0.72, overlaps the first -> suppressed
                [102, 100, 40, 60, 0.8, 0.1, 0.9],  # class 1, 0.72, overlaps the first -> kept
                [
                    300,
                    300,
                    20,
                    20,
                    0.2,
                    0.9,
                    0.0,
                ],  # class score 0.9 but objectness 0.2 -> 0.18, dropped
            ]
        ],
        np.float32,
    )
    output = run_model(constant_model(tmp_path / "m.onnx", rows))
    assert output.shape == (1, 4, 7)

    found = DECODERS["yolov5"](output, num_classes=2, score_threshold=0.25, iou_threshold=0.45)

    np.testing.assert_array_equal(found.xyxy, f32([[80, 70, 120, 130], [82, 70, 122, 130]]))
    np.testing.assert_allclose(found.score, [0.81, 0.72], rtol=1e-6)
    np.testing.assert_array_equal(found.class_id, np.array([0, 1], np.int64))


def test_end2end_keeps_model_nms_and_drops_low_scores_and_unknown_classes(tmp_path: Path) -> None:
    # x1, y1, x2, y2, score, class
    rows = np.asarray(
        [
            [
                [10, 20, 110, 220, 0.6, 1],
                [
                    12,
                    22,
                    112,
                    222,
                    0.9,
                    1,
                ],  # overlaps the first, same class: NMS was the model's job
                [50, 50, 60, 60, 0.1, 0],  # under the threshold
                [0, 0, 10, 10, 0.95, 5],  # class 5 with 2 classes: dropped
                [0, 0, 0, 0, 0, 0],  # padding row
            ]
        ],
        np.float32,
    )
    output = run_model(constant_model(tmp_path / "m.onnx", rows))

    found = DECODERS["end2end"](output, num_classes=2, score_threshold=0.25, iou_threshold=0.45)

    np.testing.assert_array_equal(found.xyxy, f32([[12, 22, 112, 222], [10, 20, 110, 220]]))
    np.testing.assert_array_equal(found.score, f32([0.9, 0.6]))
    np.testing.assert_array_equal(found.class_id, np.array([1, 1], np.int64))


@pytest.mark.parametrize(
    ("layout", "shape", "expected_error"),
    [
        ("yolov8", (1, 7, 4), "yolov8: output shape (1, 7, 4) is not (1, 6, N)"),
        ("yolov8", (1, 4, 6), "yolov8: output shape (1, 4, 6) is not (1, 6, N)"),
        ("yolov8", (2, 6, 4), "yolov8: output shape (2, 6, 4) is not (1, 6, N)"),
        ("yolov8", (6, 4), "yolov8: output shape (6, 4) is not (1, 6, N)"),
        ("yolov5", (1, 7, 4), "yolov5: output shape (1, 7, 4) is not (1, N, 7)"),
        ("yolov5", (1, 4, 6), "yolov5: output shape (1, 4, 6) is not (1, N, 7)"),
        ("end2end", (1, 4, 7), "end2end: output shape (1, 4, 7) is not (1, K, 6)"),
        ("end2end", (1, 6), "end2end: output shape (1, 6) is not (1, K, 6)"),
    ],
)
def test_wrong_output_shape_raises_decode_error(
    tmp_path: Path, layout: str, shape: tuple[int, ...], expected_error: str
) -> None:
    output = run_model(constant_model(tmp_path / "m.onnx", np.zeros(shape, np.float32)))
    with pytest.raises(DecodeError) as info:
        DECODERS[layout](output, num_classes=2, score_threshold=0.25, iou_threshold=0.45)
    assert str(info.value) == expected_error


def test_decoders_with_nothing_above_threshold_return_empty(tmp_path: Path) -> None:
    output = run_model(constant_model(tmp_path / "m.onnx", np.zeros((1, 6, 8), np.float32)))
    found = DECODERS["yolov8"](output, num_classes=2, score_threshold=0.25, iou_threshold=0.45)
    assert len(found) == 0
    assert found.xyxy.shape == (0, 4)


def test_nms_never_suppresses_other_classes_even_with_negative_coordinates() -> None:
    # The same box (partly outside the top-left of the input) found as two different classes.
    xyxy = f32([[-100, -100, 10, 10], [-100, -100, 10, 10]])
    keep = nms_per_class(xyxy, f32([0.9, 0.8]), np.array([0, 1], np.int64), iou_threshold=0.45)
    np.testing.assert_array_equal(keep, [0, 1])


# ---------------------------------------------------------------- the Detector on tiny models


def write_manifest(
    folder: Path,
    onnx_path: Path,
    *,
    layout: str = "yolov8",
    labels: dict[int, str] | None = None,
    sha256: str | None = None,
    width: int = 640,
    height: int = 640,
    **extra: object,
) -> Path:
    """A manifest next to the model; ``file`` is relative to the manifest."""
    doc: dict[str, object] = {
        "name": "tiny",
        "file": onnx_path.name,
        "sha256": sha256 or hashlib.sha256(onnx_path.read_bytes()).hexdigest(),
        "layout": layout,
        "input": {"width": width, "height": height},
        **extra,
    }
    if labels is not None:
        doc["labels"] = labels
    path = folder / "tiny.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def tiny_detector(
    tmp_path: Path, output: np.ndarray, *, names: str | None = None, **manifest: object
) -> Detector:
    model = constant_model(tmp_path / "tiny.onnx", output, names=names)
    labels = manifest.pop("labels", {0: "person", 1: "car"})
    path = write_manifest(tmp_path, model, labels=labels, **manifest)  # type: ignore[arg-type]
    return Detector(load_manifest(path), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize(
    ("image_wh", "expected"),
    [
        ((1280, 720), Letterbox(scale=0.5, pad_x=0.0, pad_y=140.0)),
        ((720, 1280), Letterbox(scale=0.5, pad_x=140.0, pad_y=0.0)),
        ((640, 640), Letterbox(scale=1.0, pad_x=0.0, pad_y=0.0)),
        ((320, 320), Letterbox(scale=2.0, pad_x=0.0, pad_y=0.0)),
        ((640, 320), Letterbox(scale=1.0, pad_x=0.0, pad_y=160.0)),
    ],
)
def test_letterbox_fits_and_pads(image_wh: tuple[int, int], expected: Letterbox) -> None:
    w, h = image_wh
    image = np.full((h, w, 3), 200, np.uint8)
    boxed, lb = letterbox(image, width=640, height=640)
    assert lb == expected
    assert boxed.shape == (640, 640, 3)
    if expected.pad_y:
        assert (boxed[: int(expected.pad_y)] == 114).all()
        assert (boxed[int(expected.pad_y) : 640 - int(expected.pad_y)] == 200).all()
    if expected.pad_x:
        assert (boxed[:, : int(expected.pad_x)] == 114).all()


def test_preprocess_is_rgb_nchw_in_unit_range(tmp_path: Path) -> None:
    detector = tiny_detector(tmp_path, yolov8_output([[10, 10, 4, 4, 0.0, 0.0]]))
    image = np.zeros((640, 640, 3), np.uint8)
    image[..., 0] = 255  # blue in BGR
    tensor, lb = detector.preprocess(image)
    assert tensor.shape == (1, 3, 640, 640)
    assert tensor.dtype == np.float32
    np.testing.assert_allclose(tensor[0, :, 0, 0], [0.0, 0.0, 1.0])  # R, G, B
    assert lb == Letterbox(scale=1.0, pad_x=0.0, pad_y=0.0)


# Model-input box (cx 320, cy 320, w 100, h 60) = xyxy (270, 290, 370, 350), class 1 "car".
@pytest.mark.parametrize(
    ("image_wh", "expected_xyxy"),
    [
        ((1280, 720), [540, 300, 740, 420]),  # scale 0.5, pad_y 140
        ((720, 1280), [260, 580, 460, 700]),  # scale 0.5, pad_x 140
        ((640, 640), [270, 290, 370, 350]),
        ((320, 320), [135, 145, 185, 175]),  # scale 2
    ],
)
def test_detector_maps_boxes_back_through_the_letterbox(
    tmp_path: Path, image_wh: tuple[int, int], expected_xyxy: list[float]
) -> None:
    detector = tiny_detector(tmp_path, yolov8_output([[320, 320, 100, 60, 0.1, 0.9]]))
    w, h = image_wh
    found = detector.detect(np.zeros((h, w, 3), np.uint8))
    np.testing.assert_allclose(found.xyxy, [expected_xyxy], atol=1e-4)
    assert found.labels == ("car",)
    np.testing.assert_array_equal(found.class_id, [1])
    np.testing.assert_array_equal(found.score, f32([0.9]))


def test_detector_clips_boxes_to_the_image(tmp_path: Path) -> None:
    # xyxy in the input: (550, 130, 650, 170); in a 1280x720 image: (1100, -20, 1300, 60)
    detector = tiny_detector(tmp_path, yolov8_output([[600, 150, 100, 40, 0.8, 0.0]]))
    found = detector.detect(np.zeros((720, 1280, 3), np.uint8))
    np.testing.assert_allclose(found.xyxy, [[1100, 0, 1280, 60]], atol=1e-4)
    assert found.labels == ("person",)


def test_detector_applies_manifest_thresholds(tmp_path: Path) -> None:
    rows = [[100, 100, 20, 20, 0.5, 0.0], [300, 300, 20, 20, 0.0, 0.8]]
    detector = tiny_detector(tmp_path, yolov8_output(rows), score_threshold=0.6)
    found = detector.detect(np.zeros((640, 640, 3), np.uint8))
    assert found.labels == ("car",)
    assert detector.manifest.score_threshold == 0.6


def test_detector_drops_classes_without_a_label(tmp_path: Path) -> None:
    rows = [
        [100, 100, 20, 20, 0.9, 0.0, 0.0],
        [300, 300, 20, 20, 0.0, 0.8, 0.0],  # class 1 has no label
        [500, 500, 20, 20, 0.0, 0.0, 0.7],
    ]
    detector = tiny_detector(tmp_path, yolov8_output(rows), labels={0: "person", 2: "car"})
    assert detector.num_classes == 3
    found = detector.detect(np.zeros((640, 640, 3), np.uint8))
    assert found.labels == ("person", "car")
    np.testing.assert_array_equal(found.class_id, [0, 2])


@pytest.mark.parametrize(
    ("manifest_labels", "metadata_names", "expected_labels", "expected_error"),
    [
        ({0: "person", 1: "car"}, None, {0: "person", 1: "car"}, None),
        (None, "{0: 'person', 1: 'car'}", {0: "person", 1: "car"}, None),
        (None, "['person', 'car']", {0: "person", 1: "car"}, None),
        (
            {0: "intruder", 1: "vehicle"},
            "{0: 'person', 1: 'car'}",
            {0: "intruder", 1: "vehicle"},
            None,
        ),
        (None, None, None, "no labels in the manifest nor 'names' in the ONNX metadata"),
        (None, "not a python literal {", None, "no labels in the manifest nor 'names'"),
        (None, "42", None, "no labels in the manifest nor 'names'"),
    ],
)
def test_detector_labels_from_manifest_else_onnx_metadata(
    tmp_path: Path,
    manifest_labels: dict[int, str] | None,
    metadata_names: str | None,
    expected_labels: dict[int, str] | None,
    expected_error: str | None,
) -> None:
    output = yolov8_output([[320, 320, 100, 60, 0.9, 0.1], [100, 100, 20, 20, 0.0, 0.8]])
    if expected_error is not None:
        with pytest.raises(DetectorError, match=expected_error):
            tiny_detector(tmp_path, output, names=metadata_names, labels=manifest_labels)
        return
    detector = tiny_detector(tmp_path, output, names=metadata_names, labels=manifest_labels)
    assert detector.labels == expected_labels
    found = detector.detect(np.zeros((640, 640, 3), np.uint8))
    assert expected_labels is not None
    assert found.labels == (expected_labels[0], expected_labels[1])


@pytest.mark.parametrize(
    ("names", "expected"),
    [
        ("{0: 'Normal', 1: 'Fall'}", {0: "Normal", 1: "Fall"}),
        ("{'0': 'a'}", {0: "a"}),
        ("['a', 'b']", {0: "a", 1: "b"}),
        ("", None),
        ("__import__('os')", None),
        ("(1, 2)", None),
    ],
)
def test_labels_from_metadata(names: str, expected: dict[int, str] | None) -> None:
    assert labels_from_metadata({"names": names}) == expected


def test_detector_refuses_a_model_whose_sha256_differs(tmp_path: Path) -> None:
    output = yolov8_output([[320, 320, 100, 60, 0.9, 0.1]])
    with pytest.raises(DetectorError) as info:
        tiny_detector(tmp_path, output, sha256="0" * 64)
    message = str(info.value)
    assert f"manifest says {'0' * 64}" in message
    actual = hashlib.sha256((tmp_path / "tiny.onnx").read_bytes()).hexdigest()
    assert f"has sha256 {actual}" in message


def test_detector_can_skip_the_sha256_check(tmp_path: Path) -> None:
    model = constant_model(tmp_path / "tiny.onnx", yolov8_output([[320, 320, 100, 60, 0.9, 0.1]]))
    manifest = load_manifest(
        write_manifest(tmp_path, model, labels={0: "person", 1: "car"}, sha256="1" * 64)
    )
    detector = Detector(manifest, providers=["CPUExecutionProvider"], verify_sha256=False)
    assert detector.sha256 == hashlib.sha256(model.read_bytes()).hexdigest()


@pytest.mark.parametrize(
    ("declared_layout", "output_shape", "expected_error"),
    [
        ("yolov5", (1, 6, 5), "output does not match layout 'yolov5': output shape"),
        ("yolov8", (1, 4, 10), "output does not match layout 'yolov8': output shape"),
        ("yolov8", (1, 5, 10), "labels name class 1 but the output has 1 class(es)"),
        ("end2end", (1, 10, 7), "output does not match layout 'end2end': end2end"),
    ],
)
def test_detector_refuses_an_output_that_does_not_fit_the_layout(
    tmp_path: Path, declared_layout: str, output_shape: tuple[int, ...], expected_error: str
) -> None:
    with pytest.raises(DetectorError) as info:
        tiny_detector(tmp_path, np.zeros(output_shape, np.float32), layout=declared_layout)
    assert expected_error in str(info.value)
    assert SUPPORTED in str(info.value)


def test_detector_refuses_a_missing_model_file(tmp_path: Path) -> None:
    model = constant_model(tmp_path / "tiny.onnx", yolov8_output([[1, 1, 1, 1, 0.0, 0.0]]))
    manifest = load_manifest(write_manifest(tmp_path, model, labels={0: "a", 1: "b"}))
    model.unlink()
    with pytest.raises(DetectorError, match=r"tiny\.onnx does not exist"):
        Detector(manifest, providers=["CPUExecutionProvider"])


def test_detector_refuses_unavailable_providers(tmp_path: Path) -> None:
    model = constant_model(tmp_path / "tiny.onnx", yolov8_output([[1, 1, 1, 1, 0.0, 0.0]]))
    manifest = load_manifest(write_manifest(tmp_path, model, labels={0: "a", 1: "b"}))
    with pytest.raises(DetectorError, match="none of the providers"):
        Detector(manifest, providers=["NoSuchExecutionProvider"])


def test_detector_refuses_a_file_that_is_not_onnx(tmp_path: Path) -> None:
    model = tmp_path / "tiny.onnx"
    model.write_bytes(b"not an onnx model")
    manifest = load_manifest(write_manifest(tmp_path, model, labels={0: "a", 1: "b"}))
    with pytest.raises(DetectorError, match="ONNX Runtime cannot load it"):
        Detector(manifest, providers=["CPUExecutionProvider"])


# ---------------------------------------------------------------- the real sample model


def test_sample_model_finds_the_person(sample_detector: Detector) -> None:
    image = sample_still("person")
    h, w = image.shape[:2]
    found = sample_detector.detect(image)
    people = [i for i in range(len(found)) if found.labels[i] == "person" and found.score[i] >= 0.5]
    assert people, f"no person >= 0.5 in {found}"
    x1, y1, x2, y2 = found.xyxy[people[0]]
    assert x1 < w / 2 < x2
    assert y1 < h * 0.75 < y2  # the person stands in the lower half, mid-frame
    assert 0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h


def test_sample_model_finds_nothing_in_the_empty_scene(sample_detector: Detector) -> None:
    found = sample_detector.detect(sample_still("empty"))
    assert not (found.score >= 0.5).any(), f"unexpected detections: {found}"
    assert sample_detector.provider == "CPUExecutionProvider"
