"""The sample footage: a deterministic clip composited from photos that installed packages ship.

Background: scikit-image's ``grass.png`` scaled to 1280x720; the person: matplotlib's
``grace_hopper.jpg``. Timeline (seconds, at ``FPS``): the scene is empty, a person walks in from
the left, stays, walks out to the right; the scene is empty for longer than the demo's cutoff;
the person walks in again, stays, leaves; empty again. Light sensor noise (seeded) on every frame.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import cv2
import numpy as np

WIDTH, HEIGHT = 1280, 720
FPS = 5
JPEG_QUALITY = 80
NOISE_PATTERNS = 8
PERSON_HEIGHT_PX = 360
SEED = 20261128


@dataclass(frozen=True)
class Segment:
    """``kind``: empty, enter (walk in), stay, leave (walk out); ``seconds`` long."""

    kind: str
    seconds: float


TIMELINE: tuple[Segment, ...] = (
    Segment("empty", 5),
    Segment("enter", 3),
    Segment("stay", 4),
    Segment("leave", 3),
    Segment("empty", 20),
    Segment("enter", 3),
    Segment("stay", 3),
    Segment("leave", 3),
    Segment("empty", 5),
)
"""Two visits separated by 20 s with no one in view (the demo's cutoff is 10 s)."""

VERSION = "1"  # bump when the recipe changes: the cache key includes it


@cache
def _sample_images() -> tuple[np.ndarray, np.ndarray]:
    """The background and the person, read once per process (read-only arrays)."""
    import matplotlib.cbook
    import skimage.data

    data_dir = Path(skimage.data.__file__).parent
    background = cv2.imread(str(data_dir / "grass.png"), cv2.IMREAD_COLOR)
    person = cv2.imread(
        str(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)),
        cv2.IMREAD_COLOR,
    )
    if background is None or person is None:
        raise FileNotFoundError("sample photos from scikit-image/matplotlib are missing")
    background = cv2.resize(background, (WIDTH, HEIGHT), interpolation=cv2.INTER_CUBIC)
    scale = PERSON_HEIGHT_PX / person.shape[0]
    person = cv2.resize(
        person, (round(person.shape[1] * scale), PERSON_HEIGHT_PX), interpolation=cv2.INTER_AREA
    )
    background.flags.writeable = False
    person.flags.writeable = False
    return background, person


@dataclass(frozen=True)
class FrameTruth:
    """Ground truth for frame ``index``: is the person fully or partly in view, and where."""

    index: int
    t_s: float
    person_visible: bool
    person_x: int | None


def plan() -> list[FrameTruth]:
    """Where the person is in every frame of the clip."""
    _, person_w = 0, round(512 * PERSON_HEIGHT_PX / 600)
    stay_x = WIDTH // 2 - person_w // 2
    out: list[FrameTruth] = []
    index = 0
    for seg in TIMELINE:
        n = round(seg.seconds * FPS)
        for i in range(n):
            frac = (i + 1) / n
            x: int | None
            if seg.kind == "empty":
                x = None
            elif seg.kind == "enter":
                x = round(-person_w + frac * (stay_x + person_w))
            elif seg.kind == "stay":
                x = stay_x
            else:
                x = round(stay_x + frac * (WIDTH - stay_x))
            visible = x is not None and x < WIDTH and x + person_w > 0
            out.append(FrameTruth(index, index / FPS, visible, x if visible else None))
            index += 1
    return out


def noise_patterns(rng: np.random.Generator) -> list[np.ndarray]:
    """A few frames of sensor noise (sigma 2 grey levels), cycled through the clip."""
    return [rng.normal(0, 2.0, (HEIGHT, WIDTH, 3)).astype(np.int16) for _ in range(NOISE_PATTERNS)]


def render(
    truth: FrameTruth, background: np.ndarray, person: np.ndarray, noise: list[np.ndarray]
) -> np.ndarray:
    frame = background.copy()
    if truth.person_x is not None:
        x0, y0 = truth.person_x, HEIGHT - person.shape[0]
        left, right = max(0, x0), min(WIDTH, x0 + person.shape[1])
        frame[y0:HEIGHT, left:right] = person[:, left - x0 : right - x0]
    grain = noise[truth.index % len(noise)]
    out: np.ndarray = np.clip(frame.astype(np.int16) + grain, 0, 255).astype(np.uint8)
    return out


def make_clip(path: Path) -> Path:
    """Write the clip (MJPEG in AVI) to ``path`` with a JSON ground-truth file beside it."""
    background, person = _sample_images()
    noise = noise_patterns(np.random.default_rng(SEED))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.avi")
    writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter.fourcc(*"MJPG"), FPS, (WIDTH, HEIGHT))
    if not writer.isOpened():
        raise RuntimeError(f"OpenCV cannot write MJPEG video to {tmp}")
    writer.set(cv2.VIDEOWRITER_PROP_QUALITY, JPEG_QUALITY)
    truths = plan()
    try:
        for truth in truths:
            writer.write(render(truth, background, person, noise))
    finally:
        writer.release()
    tmp.replace(path)
    truth_path = path.with_suffix(".truth.json")
    truth_path.write_text(
        json.dumps(
            {
                "fps": FPS,
                "width": WIDTH,
                "height": HEIGHT,
                "version": VERSION,
                "frames": [t.__dict__ for t in truths],
            }
        )
    )
    return path


def sample_clip(cache_dir: Path) -> Path:
    """The cached sample clip, generated on first use (deterministic, no downloads)."""
    key = hashlib.sha256(
        json.dumps(
            [VERSION, SEED, FPS, WIDTH, HEIGHT, JPEG_QUALITY, [s.__dict__ for s in TIMELINE]]
        ).encode()
    ).hexdigest()[:12]
    path = cache_dir / f"sample-clip-{key}.avi"
    if not path.exists():
        make_clip(path)
    return path


def sample_still(kind: str) -> np.ndarray:
    """One 1280x720 still: ``empty`` (background only) or ``person`` (person in the middle)."""
    background, person = _sample_images()
    x = WIDTH // 2 - person.shape[1] // 2 if kind == "person" else None
    return render(
        FrameTruth(0, 0.0, x is not None, x),
        background,
        person,
        noise_patterns(np.random.default_rng(SEED))[:1],
    )


def bomb_png(width: int, height: int) -> bytes:
    """A valid, tiny PNG that claims ``width`` x ``height`` (a decompression bomb's header)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    rows = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")


def write_door_stills(folder: Path) -> dict[str, str]:
    """Stills as a motion-triggered camera would drop them, good and bad.

    Returns file name -> what validation should say (``ok`` or the rejection reason).
    """
    folder.mkdir(parents=True, exist_ok=True)
    ok, person = cv2.imencode(".jpg", sample_still("person"), [cv2.IMWRITE_JPEG_QUALITY, 90])
    assert ok
    ok, empty = cv2.imencode(".jpg", sample_still("empty"), [cv2.IMWRITE_JPEG_QUALITY, 90])
    assert ok
    files = {
        "0001-empty.jpg": (empty.tobytes(), "ok"),
        "0002-person.jpg": (person.tobytes(), "ok"),
        "0003-truncated.jpg": (person.tobytes()[: len(person) // 2], "truncated"),
        "0004-zero-bytes.jpg": (b"", "empty"),
        "0005-not-an-image.jpg": (b"this is a text file, not a JPEG\n" * 10, "wrong_format"),
        "0006-bomb.png": (bomb_png(100_000, 100_000), "bad_dimensions"),
    }
    for name, (data, _) in files.items():
        (folder / name).write_bytes(data)
    return {name: expect for name, (_, expect) in files.items()}


@cache
def _seeded_noise() -> list[np.ndarray]:
    return noise_patterns(np.random.default_rng(SEED))


def scene(person_x: int | None, *, brightness: float = 1.0, noise_index: int = 0) -> np.ndarray:
    """One 1280x720 frame of the sample scene: the person's left edge at ``person_x`` (None: no
    one), lit at ``brightness`` x the photo's own light, with sensor noise pattern
    ``noise_index``. Motion-gate tests build their clips from it."""
    background, person = _sample_images()
    frame = render(
        FrameTruth(noise_index, 0.0, person_x is not None, person_x),
        background,
        person,
        _seeded_noise(),
    )
    if brightness == 1.0:
        return frame
    dimmed: np.ndarray = np.clip(frame.astype(np.float32) * brightness, 0, 255).astype(np.uint8)
    return dimmed
