"""Frame validation (agent.validate) and the folder source's basics (agent.folder); the folder
source's watching, memory and rejections are in tests/test_folder.py."""

from __future__ import annotations

import os
import struct
from datetime import UTC, datetime
from pathlib import Path

import cv2
import numpy as np
import pytest

from agent.capture import Frame, SourceError, looks_complete
from agent.config import DirectorySourceConfig, ValidateConfig
from agent.folder import DirectorySource
from agent.validate import REASONS, FrameRejected, header_size_wh, validate_frame
from demo.footage import bomb_png

LIMITS = ValidateConfig()


def limits(**fields: int) -> ValidateConfig:
    return ValidateConfig(**fields)


def sample_image() -> np.ndarray:
    """A 64x48 BGR image with some structure (so JPEG has something to encode)."""
    image = np.zeros((48, 64, 3), np.uint8)
    image[:, :32] = (255, 0, 0)
    image[24:, :, 2] = 200
    return image


def encode(ext: str, image: np.ndarray | None = None) -> bytes:
    ok, buf = cv2.imencode(ext, sample_image() if image is None else image)
    assert ok
    return buf.tobytes()


JPEG = encode(".jpg")
NOISY_JPEG = encode(".jpg", np.random.default_rng(1).integers(0, 256, (48, 64, 3), np.uint8))
PNG = encode(".png")


def file_frame(data: bytes) -> Frame:
    return Frame(
        camera="door", kind="file", source="x.jpg", captured_at=datetime.now(UTC), data=data
    )


def video_frame(image: np.ndarray) -> Frame:
    return Frame(
        camera="yard", kind="video", source="clip.avi#0", captured_at=datetime.now(UTC), image=image
    )


def with_exif_orientation(jpeg: bytes, orientation: int) -> bytes:
    """``jpeg`` with an APP1 Exif segment holding only the Orientation tag."""
    tiff = (
        b"MM\x00*"
        + struct.pack(">I", 8)
        + struct.pack(">H", 1)
        + struct.pack(">HHIHH", 0x0112, 3, 1, orientation, 0)
        + struct.pack(">I", 0)
    )
    app1 = b"Exif\x00\x00" + tiff
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(app1) + 2) + app1 + jpeg[2:]


@pytest.mark.parametrize(
    ("frame", "limits", "expected_reason"),
    [
        pytest.param(file_frame(JPEG), LIMITS, None, id="good-jpeg"),
        pytest.param(file_frame(PNG), LIMITS, None, id="good-png"),
        pytest.param(file_frame(JPEG + b"\x00\x00"), LIMITS, None, id="jpeg-zero-padded"),
        pytest.param(file_frame(b""), LIMITS, "empty", id="empty"),
        pytest.param(file_frame(JPEG[: len(JPEG) // 2]), LIMITS, "truncated", id="truncated-jpeg"),
        pytest.param(file_frame(JPEG[:20]), LIMITS, "truncated", id="jpeg-cut-before-sof"),
        pytest.param(file_frame(PNG[: len(PNG) // 2]), LIMITS, "truncated", id="truncated-png"),
        pytest.param(file_frame(PNG[:16]), LIMITS, "truncated", id="png-cut-before-ihdr"),
        pytest.param(file_frame(b"this is not an image\n" * 20), LIMITS, "wrong_format", id="text"),
        pytest.param(file_frame(b"GIF89a" + b"\x00" * 100), LIMITS, "wrong_format", id="gif"),
        pytest.param(
            file_frame(bomb_png(100_000, 100_000)), LIMITS, "bad_dimensions", id="bomb-png"
        ),
        pytest.param(
            file_frame(bomb_png(8000, 8000)),
            LIMITS,
            "bad_dimensions",
            id="bomb-png-too-many-pixels",
        ),
        pytest.param(
            file_frame(encode(".png", np.zeros((8, 8, 3), np.uint8))),
            LIMITS,
            "bad_dimensions",
            id="tiny-8x8-png",
        ),
        pytest.param(
            file_frame(encode(".jpg", np.zeros((8, 8, 3), np.uint8))),
            LIMITS,
            "bad_dimensions",
            id="tiny-8x8-jpeg",
        ),
        pytest.param(
            file_frame(encode(".jpg", np.zeros((4000, 20, 3), np.uint8))),
            limits(max_side_px=2000),
            "bad_dimensions",
            id="side-too-long",
        ),
        pytest.param(
            file_frame(NOISY_JPEG), limits(max_file_bytes=1024), "too_large", id="too-many-bytes"
        ),
        pytest.param(
            file_frame(NOISY_JPEG),
            limits(max_file_bytes=len(NOISY_JPEG)),
            None,
            id="exactly-max-bytes",
        ),
        pytest.param(
            file_frame(b"\xff\xd8\xff" + b"\x00" * 3000),
            limits(max_file_bytes=1024),
            "too_large",
            id="too-many-bytes-checked-before-format",
        ),
        pytest.param(
            file_frame(b"\xff\xd8\xff\xe0\x00\x10" + b"garbage!" * 4 + b"\xff\xd9"),
            LIMITS,
            "undecodable",
            id="jpeg-bad-marker",
        ),
        pytest.param(video_frame(sample_image()), LIMITS, None, id="video-ok"),
        pytest.param(
            video_frame(sample_image().astype(np.float32)),
            LIMITS,
            "undecodable",
            id="video-float32",
        ),
        pytest.param(
            video_frame(np.zeros((48, 64), np.uint8)), LIMITS, "undecodable", id="video-grey-2d"
        ),
        pytest.param(
            video_frame(np.zeros((48, 64, 4), np.uint8)), LIMITS, "undecodable", id="video-bgra"
        ),
        pytest.param(
            video_frame(np.zeros((8, 64, 3), np.uint8)),
            LIMITS,
            "bad_dimensions",
            id="video-too-small",
        ),
    ],
)
def test_validate_frame(frame: Frame, limits: ValidateConfig, expected_reason: str | None) -> None:
    if expected_reason is not None:
        with pytest.raises(FrameRejected) as info:
            validate_frame(frame, limits)
        assert info.value.reason == expected_reason
        assert expected_reason in REASONS
        assert str(info.value).startswith(f"{expected_reason}: ")
        return
    image = validate_frame(frame, limits)
    assert image.dtype == np.uint8
    assert image.shape == (48, 64, 3)
    if frame.kind == "video":
        assert image is frame.image
    elif frame.data == PNG:
        np.testing.assert_array_equal(image, sample_image())  # PNG is lossless


def test_bomb_is_refused_from_its_header() -> None:
    data = bomb_png(100_000, 100_000)
    assert len(data) < 200
    assert header_size_wh(data, "png") == (100_000, 100_000)
    with pytest.raises(FrameRejected, match="100000x100000 exceeds 16384 px a side"):
        validate_frame(file_frame(data), LIMITS)


def test_header_size_of_jpeg_matches_the_image() -> None:
    assert header_size_wh(JPEG, "jpeg") == (64, 48)
    assert header_size_wh(PNG, "png") == (64, 48)


def test_jpeg_with_exif_rotation_is_accepted() -> None:
    data = with_exif_orientation(JPEG, 6)  # "rotate 90 CW to display", common on phones
    assert header_size_wh(data, "jpeg") == (64, 48)
    image = validate_frame(file_frame(data), LIMITS)
    assert image.shape[2] == 3


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (JPEG, True),
        (JPEG + b"\x00\x00\x00", True),
        (JPEG[:-2], False),
        (PNG, True),
        (PNG[:-1], False),
        (b"", False),
        (b"hello \xff\xd9", False),
    ],
)
def test_looks_complete(data: bytes, expected: bool) -> None:
    assert looks_complete(data) is expected


# ---------------------------------------------------------------- DirectorySource


def folder_source(folder: Path, **fields: object) -> DirectorySource:
    config = DirectorySourceConfig(type="directory", path=folder, **fields)
    return DirectorySource("door", config)


def test_half_written_file_is_taken_only_once_complete(tmp_path: Path) -> None:
    source = folder_source(tmp_path, settle_s=30)
    path = tmp_path / "0001.jpg"
    path.write_bytes(JPEG[: len(JPEG) // 2])

    assert source.poll() == []
    assert source.poll() == []  # still incomplete, and far from settled

    with path.open("ab") as fh:
        fh.write(JPEG[len(JPEG) // 2 :])
    frames = source.poll()

    assert [f.data for f in frames] == [JPEG]
    assert frames[0].source == str(path)
    assert frames[0].camera == "door"
    assert frames[0].kind == "file"
    assert source.poll() == []  # taken once
    assert not source.finished


def test_incomplete_file_is_taken_once_settled(tmp_path: Path) -> None:
    source = folder_source(tmp_path, settle_s=0)
    (tmp_path / "cut.jpg").write_bytes(JPEG[:100])
    frames = source.poll()
    assert [f.data for f in frames] == [JPEG[:100]]
    with pytest.raises(FrameRejected) as info:
        validate_frame(frames[0], LIMITS)
    assert info.value.reason == "truncated"


def test_hidden_temp_and_unmatched_files_are_ignored(tmp_path: Path) -> None:
    for name in (
        ".hidden.jpg",
        "upload.tmp",
        "upload.jpg.tmp",
        "x.jpg.part",
        "x.JPG.TMP",
        "notes.txt",
        "clip.avi",
    ):
        (tmp_path / name).write_bytes(JPEG)
    (tmp_path / "sub.jpg").mkdir()
    (tmp_path / "good.jpg").write_bytes(JPEG)
    (tmp_path / "LOUD.JPG").write_bytes(JPEG)
    (tmp_path / "pic.png").write_bytes(PNG)
    source = folder_source(tmp_path, settle_s=30)
    frames = source.poll()
    taken = sorted(Path(f.source).name for f in frames if f.rejected is None)
    assert taken == ["LOUD.JPG", "good.jpg", "pic.png"]
    # a folder named like a still is reported, not taken (tests/test_folder.py)
    assert [(Path(f.source).name, f.rejected) for f in frames if f.rejected] == [
        ("sub.jpg", ("not_a_file", "a folder, not a regular file"))
    ]


def test_files_come_oldest_first(tmp_path: Path) -> None:
    for i, name in enumerate(["c.jpg", "a.jpg", "b.jpg"]):
        path = tmp_path / name
        path.write_bytes(JPEG)
        os.utime(path, ns=(1_700_000_000_000_000_000 + i, 1_700_000_000_000_000_000 + i * 10**9))
    frames = folder_source(tmp_path, settle_s=30).poll()
    assert [Path(f.source).name for f in frames] == ["c.jpg", "a.jpg", "b.jpg"]
    assert frames[0].captured_at == datetime.fromtimestamp(1_700_000_000, UTC)


def test_rewritten_file_is_taken_again(tmp_path: Path) -> None:
    source = folder_source(tmp_path, settle_s=30)
    path = tmp_path / "latest.jpg"
    path.write_bytes(JPEG)
    assert len(source.poll()) == 1
    path.write_bytes(PNG)
    os.utime(path, ns=(0, path.stat().st_mtime_ns + 10**9))
    assert [f.data for f in source.poll()] == [PNG]


def test_watch_false_reads_existing_files_then_finishes(tmp_path: Path) -> None:
    (tmp_path / "a.jpg").write_bytes(JPEG)
    (tmp_path / "b.jpg").write_bytes(JPEG[:50])  # incomplete: taken anyway, validation decides
    (tmp_path / ".c.jpg").write_bytes(JPEG)
    source = folder_source(tmp_path, watch=False, settle_s=30)
    frames = source.frames()
    first = next(frames)
    assert not source.finished
    rest = list(frames)
    assert source.finished
    got = sorted((Path(f.source).name, f.data) for f in [first, *rest] if f is not None)
    assert got == [("a.jpg", JPEG), ("b.jpg", JPEG[:50])]


def test_existing_skip_ignores_files_already_there(tmp_path: Path) -> None:
    (tmp_path / "old.jpg").write_bytes(JPEG)
    source = folder_source(tmp_path, existing="skip", settle_s=30)
    assert source.poll() == []
    (tmp_path / "new.jpg").write_bytes(JPEG)
    assert [Path(f.source).name for f in source.poll()] == ["new.jpg"]


def test_after_delete_removes_processed_files_only(tmp_path: Path) -> None:
    (tmp_path / "done.jpg").write_bytes(JPEG)
    (tmp_path / "half.jpg").write_bytes(JPEG[:100])
    source = folder_source(tmp_path, after="delete", settle_s=30)
    frames = source.poll()
    assert [Path(f.source).name for f in frames] == ["done.jpg"]
    assert (tmp_path / "done.jpg").exists()  # taken, not processed yet: a crash loses nothing
    source.done(frames[0])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["half.jpg"]


def test_missing_folder_is_a_source_error(tmp_path: Path) -> None:
    source = folder_source(tmp_path / "nope")
    with pytest.raises(SourceError, match="does not exist"):
        source.poll()
