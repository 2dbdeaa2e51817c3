"""``secagent detect``: the sample model on stills, one JSON line per image, exit 1 on any failure.

Each run loads the real 44 MB sample model, so the mixed run happens once per module.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import cv2
import pytest

from demo.footage import sample_still
from modelrt import load_manifest
from tests.support import MODEL_MANIFEST

SECAGENT = Path(sys.executable).parent / "secagent"


def detect(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SECAGENT), "detect", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def stills(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("stills")
    person, empty = folder / "person.jpg", folder / "empty.png"
    assert cv2.imwrite(str(person), sample_still("person"))
    assert cv2.imwrite(str(empty), sample_still("empty"))
    truncated = folder / "truncated.jpg"
    truncated.write_bytes(person.read_bytes()[:5000])
    text = folder / "notes.jpg"
    text.write_bytes(b"not an image at all\n" * 10)
    return {
        "person": person,
        "empty": empty,
        "truncated": truncated,
        "text": text,
        "missing": folder / "missing.jpg",
    }


@pytest.fixture(scope="module")
def mixed_run(stills: dict[str, Path]) -> tuple[subprocess.CompletedProcess[str], list[Any]]:
    """One run over good, corrupt and missing files."""
    order = ["person", "empty", "truncated", "text", "missing"]
    result = detect("--model", MODEL_MANIFEST, *(stills[k] for k in order))
    return result, [json.loads(line) for line in result.stdout.splitlines()]


def test_mixed_run_exits_1_with_one_line_per_image(
    stills: dict[str, Path], mixed_run: tuple[subprocess.CompletedProcess[str], list[Any]]
) -> None:
    result, records = mixed_run
    assert result.returncode == 1, result.stderr
    assert [r["path"] for r in records] == [
        str(stills[k]) for k in ["person", "empty", "truncated", "text", "missing"]
    ]


def test_person_still_has_a_person(
    stills: dict[str, Path], mixed_run: tuple[subprocess.CompletedProcess[str], list[Any]]
) -> None:
    record = mixed_run[1][0]
    assert "error" not in record
    assert record["sha256"] == sha256_of(stills["person"])
    assert record["model_sha256"] == load_manifest(MODEL_MANIFEST).sha256
    assert (record["width"], record["height"]) == (1280, 720)
    assert record["provider"] == "CPUExecutionProvider"
    people = [d for d in record["detections"] if d["label"] == "person" and d["score"] >= 0.5]
    assert people, record["detections"]
    best = people[0]
    assert best["class_id"] == 0
    assert set(best) == {"label", "class_id", "score", "xyxy"}
    x1, y1, x2, y2 = best["xyxy"]
    assert 0 <= x1 < 640 < x2 <= 1280
    assert 0 <= y1 < y2 <= 720


def test_empty_still_has_no_confident_detection(
    stills: dict[str, Path], mixed_run: tuple[subprocess.CompletedProcess[str], list[Any]]
) -> None:
    record = mixed_run[1][1]
    assert record["sha256"] == sha256_of(stills["empty"])
    assert "error" not in record
    assert [d for d in record["detections"] if d["score"] >= 0.5] == []


@pytest.mark.parametrize(
    ("index", "name", "expected_error"),
    [
        (2, "truncated", "truncated: JPEG ends before its end marker"),
        (3, "text", "wrong_format: not a JPEG or PNG"),
    ],
)
def test_corrupt_files_get_an_error_and_their_sha256(
    stills: dict[str, Path],
    mixed_run: tuple[subprocess.CompletedProcess[str], list[Any]],
    index: int,
    name: str,
    expected_error: str,
) -> None:
    record = mixed_run[1][index]
    assert record["error"].startswith(expected_error)
    assert record["sha256"] == sha256_of(stills[name])
    assert "detections" not in record


def test_missing_file_is_unreadable(
    mixed_run: tuple[subprocess.CompletedProcess[str], list[Any]],
) -> None:
    record = mixed_run[1][4]
    assert record["error"] == "unreadable: No such file or directory"
    assert "sha256" not in record


def test_all_good_images_exit_0(stills: dict[str, Path]) -> None:
    result = detect(
        "--model",
        MODEL_MANIFEST,
        "--provider",
        "CPUExecutionProvider",
        stills["empty"],
        stills["person"],
    )
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["path"] for r in records] == [str(stills["empty"]), str(stills["person"])]
    assert all("error" not in r for r in records)
    assert any(d["label"] == "person" and d["score"] >= 0.5 for d in records[1]["detections"])


@pytest.mark.parametrize(
    ("manifest_text", "expected_error"),
    [
        pytest.param(
            MODEL_MANIFEST.read_text().replace("layout: yolov8", "layout: yolov7"),
            "layout: Input should be",
            id="invalid-manifest",
        ),
        pytest.param(
            f"name: gone\nfile: gone.onnx\nsha256: '{'0' * 64}'\nlayout: yolov8\n"
            "input: {width: 640, height: 640}\nlabels: {0: person}\n",
            "gone.onnx does not exist",
            id="missing-model-file",
        ),
    ],
)
def test_bad_manifest_exits_1_before_any_image(
    tmp_path: Path, stills: dict[str, Path], manifest_text: str, expected_error: str
) -> None:
    manifest = tmp_path / "model.yaml"
    manifest.write_text(manifest_text)
    result = detect("--model", manifest, stills["person"])
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.startswith("Error: ")
    assert expected_error in result.stderr


def test_without_images_it_prints_what_it_recognised_in_the_model() -> None:
    result = detect("--model", MODEL_MANIFEST, "--provider", "CPUExecutionProvider")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["layout"] == "yolov8"
    assert summary["input"] == {
        "name": "images",
        "width": 640,
        "height": 640,
        "dtype": "float32",
        "batch": 1,
    }
    assert summary["labels"] == {"0": "person", "1": "person_fallen"}
    assert summary["sha256"] == load_manifest(MODEL_MANIFEST).sha256
    assert summary["warmup_inference_ms"] > 0


def test_a_bare_onnx_file_with_a_labels_file(tmp_path: Path, stills: dict[str, Path]) -> None:
    import numpy as np

    from tests.support.models import constant_model

    # YOLOv5 layout, 10 anchors, one box at the centre of the 640x640 input, class 1
    rows = np.zeros((1, 10, 7), np.float32)
    rows[0, 0] = [320, 320, 100, 60, 1.0, 0.05, 0.9]
    model = constant_model(tmp_path / "my-model.onnx", rows)
    labels = tmp_path / "labels.txt"
    labels.write_text("cat\nperson\n")
    result = detect("--model", model, "--labels", labels, stills["person"])
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)
    assert record["layout"] == "yolov5"
    assert [(d["label"], d["xyxy"]) for d in record["detections"]] == [
        ("person", [540.0, 300.0, 740.0, 420.0])
    ]


def test_a_model_of_no_known_layout_is_refused(tmp_path: Path) -> None:
    import numpy as np

    from tests.support.models import constant_model

    model = constant_model(tmp_path / "odd.onnx", np.zeros((1, 8400, 4), np.float32))
    labels = tmp_path / "labels.txt"
    labels.write_text("thing\n")
    result = detect("--model", model, "--labels", labels)
    assert result.returncode == 1
    assert "fits no supported layout" in result.stderr
    assert "supported layouts: yolov8 (1, 4+C, N), yolov5 (1, N, 5+C), end2end (1, K, 6)" in (
        result.stderr
    )
