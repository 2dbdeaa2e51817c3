"""``secagg reproduce``: run the recorded model and rules again on an event's frames and compare
with what the agent recorded.

- The model is looked up by its recorded sha256 among the manifests the aggregator knows
  (``reproduce.model_paths``; each manifest's sha256 is verified against its file), the rules
  file by its sha256 among ``reproduce.rules_paths``.
- The frame: a still whose snapshot *is* the original file (the agent sends a JPEG still as it
  is when it is small enough: snapshot sha256 == frame sha256), or the file itself found under
  ``--frames-dir``, is re-run **exactly**. A video frame is decoded again from the original video
  when its path (``path#index``) exists here and the decoded pixels have the recorded sha256:
  exact too. Otherwise the stored snapshot, a re-encoded JPEG, is re-run and the detections
  must match **within tolerance** (IoU >= ``iou_min``, score difference <= ``score_delta_max``).
- "Exact" means equal up to the wire's rounding (scores to 1e-6, boxes to 0.01 px).

It runs the model runtime the agent runs (:mod:`modelrt`: the detector, the rules, the frame
hashing and video reading, the conversion to the wire form), so a re-run is the same code path
that produced the result.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from aggregator import retention, store
from aggregator.admission import known_rules
from aggregator.config import ReproduceConfig
from aggregator.snapshots import snapshot_path
from aggregator.store.models import MessageRow
from modelrt import Detections, Detector, ManifestError, ModelManifest, load_manifest
from modelrt.detections import BOX_DECIMALS, SCORE_DECIMALS
from modelrt.frames import VideoError, VideoReader, decode_image, pixels_sha256, still_sha256
from modelrt.manifest import file_sha256
from modelrt.rules import RuleSet
from wire.payloads import DetectionOut

log = logging.getLogger(__name__)

CHECKOUT = Path(__file__).resolve().parent.parent
EXACT_SCORE = 10.0**-SCORE_DECIMALS
EXACT_BOX_PX = 10.0**-BOX_DECIMALS


class ReproduceError(RuntimeError):
    """The event is not in the store."""


def _files(paths: list[Path]) -> Iterator[Path]:
    for path in paths:
        if path.is_dir():
            yield from sorted(p for p in path.iterdir() if p.suffix.lower() in (".yaml", ".yml"))
        elif path.is_file():
            yield path


def known_models(paths: list[Path]) -> tuple[dict[str, tuple[Path, ModelManifest]], list[str]]:
    """sha256 -> (manifest path, manifest) of every usable manifest, and notes on the rest."""
    found: dict[str, tuple[Path, ModelManifest]] = {}
    notes: list[str] = []
    for path in _files(paths or [CHECKOUT / "models"]):
        try:
            manifest = load_manifest(path)
            actual = file_sha256(manifest.resolve_file())
        except (ManifestError, OSError) as exc:
            notes.append(f"{path}: skipped: {exc}")
            continue
        if actual != manifest.sha256:
            notes.append(f"{path}: skipped: file sha256 {actual} != manifest {manifest.sha256}")
            continue
        found.setdefault(actual, (path, manifest))
    return found, notes


@dataclass
class FrameResult:
    """How one recorded frame's detections compare with a re-run."""

    message_id: str
    frame_id: str
    frame_kind: str
    frame_source: str
    frame_sha256: str
    status: str = "missing"  # match / mismatch / missing / deleted (policy or retention)
    mode: str = ""  # exact / tolerance
    input: str = ""
    missing: list[str] = field(default_factory=list)
    recorded: int = 0
    rerun: int = 0
    matched: int = 0
    iou_min: float | None = None
    score_delta_max: float | None = None
    box_delta_max_px: float | None = None
    threats_recorded: list[str] = field(default_factory=list)
    threats_rerun: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class EventReport:
    event_id: int
    event: dict[str, Any]
    model_paths: dict[str, str]
    rules_paths: dict[str, str]
    iou_min: float
    score_delta_max: float
    frames: list[FrameResult]
    notes: list[str]

    @property
    def ok(self) -> bool:
        """Every frame that can still be re-run matches (at least one): a frame whose snapshot
        the policy or retention deleted is reported, not failed."""
        return any(f.status == "match" for f in self.frames) and all(
            f.status in ("match", "deleted") for f in self.frames
        )


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two xyxy boxes (4,)."""
    x1, y1 = max(a[0], b[0]), max(a[1], b[1])
    x2, y2 = min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x2 - x1) * max(0.0, y2 - y1)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def compare(
    recorded: list[DetectionOut], rerun: list[DetectionOut]
) -> tuple[list[tuple[int, int, float]], float | None, float | None, float | None]:
    """Pair recorded and re-run detections of the same label by IoU (greedy, best first);
    return the pairs and the worst IoU, score difference and box corner difference."""
    candidates = []
    for i, r in enumerate(recorded):
        for j, n in enumerate(rerun):
            if r.label == n.label:
                overlap = iou(np.array(r.xyxy, float), np.array(n.xyxy, float))
                if overlap > 0:
                    candidates.append((overlap, i, j))
    pairs: list[tuple[int, int, float]] = []
    used_r: set[int] = set()
    used_n: set[int] = set()
    for overlap, i, j in sorted(candidates, reverse=True):
        if i not in used_r and j not in used_n:
            pairs.append((i, j, overlap))
            used_r.add(i)
            used_n.add(j)
    if not pairs:
        return pairs, None, None, None
    worst_iou = min(p[2] for p in pairs)
    score_delta = max(abs(recorded[i].score - rerun[j].score) for i, j, _ in pairs)
    box_delta = max(
        float(np.max(np.abs(np.array(recorded[i].xyxy) - np.array(rerun[j].xyxy))))
        for i, j, _ in pairs
    )
    return pairs, worst_iou, score_delta, box_delta


class _Frames:
    """Finds the best available input for a recorded frame."""

    def __init__(
        self, *, snapshots_dir: Path, frames_dir: Path | None, use_originals: bool
    ) -> None:
        self.snapshots_dir = snapshots_dir
        self.frames_dir = frames_dir
        self.use_originals = use_originals
        self._videos: dict[Path, dict[int, np.ndarray]] = {}

    def prefetch_videos(self, rows: list[MessageRow]) -> None:
        if not self.use_originals:
            return
        wanted: dict[Path, set[int]] = {}
        for row in rows:
            if row.frame_kind == "video" and "#" in row.frame_source:
                path_s, _, index = row.frame_source.rpartition("#")
                path = self._locate(Path(path_s))
                if path is not None and index.isdigit():
                    wanted.setdefault(path, set()).add(int(index))
        for path, indices in wanted.items():
            try:
                with VideoReader(path) as reader:
                    self._videos[path] = reader.pick(indices)
            except VideoError as exc:
                log.warning("video %s cannot be read again: %s", path, exc)

    def _locate(self, original: Path) -> Path | None:
        if self.frames_dir is not None and (self.frames_dir / original.name).is_file():
            return self.frames_dir / original.name
        if self.use_originals and original.is_file():
            return original
        return None

    def image_of(self, row: MessageRow) -> tuple[np.ndarray | None, str, str]:
        """(BGR image, mode 'exact'/'tolerance', what it is); image None when missing."""
        sha = row.frame_sha256
        if row.frame_kind == "file":
            original = self._locate(Path(row.frame_source))
            if original is not None:
                data = original.read_bytes()
                if still_sha256(data) == sha:
                    return (
                        decode_image(data),
                        "exact",
                        f"original file {original} (sha256 verified)",
                    )
            snap = row.snapshot_sha256
            path = snapshot_path(self.snapshots_dir, snap) if snap else None
            if snap == sha and path is not None and path.is_file():
                return (
                    decode_image(path.read_bytes()),
                    "exact",
                    "stored snapshot = original file bytes (sha256 verified)",
                )
        else:
            path_s, _, index = row.frame_source.rpartition("#")
            located = self._locate(Path(path_s))
            image = self._videos.get(located, {}).get(int(index)) if located else None
            if image is not None and pixels_sha256(image) == sha:
                return image, "exact", f"frame decoded from {located} (pixel sha256 verified)"
        snap = row.snapshot_sha256
        path = snapshot_path(self.snapshots_dir, snap) if snap else None
        if path is not None and path.is_file():
            return decode_image(path.read_bytes()), "tolerance", "stored snapshot (re-encoded JPEG)"
        return None, "", ""


def _detections_out(
    detector: Detector, image: np.ndarray, *, width: int, height: int
) -> list[DetectionOut]:
    """Detections on ``image`` with boxes in the recorded frame's pixels, in the wire form."""
    found = detector.detect(image)
    return found.scaled(width / image.shape[1], height / image.shape[0]).to_wire()


def _threat_keys(
    rules: RuleSet,
    camera: str,
    detections: list[DetectionOut],
    *,
    zones: dict[str, list[tuple[float, float]]],
    frame_wh: tuple[int, int],
) -> list[str]:
    """The threats the rules make of ``detections`` with the camera's zones, as the agent ran
    them: boxes in the recorded frame's pixels, zones in fractions of it."""
    dets = Detections.from_wire(detections)
    found = rules.apply(camera, dets, zones=zones, frame_wh=frame_wh)
    return sorted(f"{t.rule}/{t.severity}/{detections[t.index].label}" for t in found)


def camera_zones(config_doc: dict[str, Any], camera: str) -> dict[str, list[tuple[float, float]]]:
    """The zones of ``camera`` in an agent config in force (none when it has no such camera)."""
    for cam in config_doc.get("cameras", []):
        if isinstance(cam, dict) and cam.get("name") == camera:
            zones = cam.get("zones") or {}
            return {
                str(name): [(float(x), float(y)) for x, y in poly] for name, poly in zones.items()
            }
    return {}


def reproduce_event(
    conn: store.Connection,
    event_id: int,
    *,
    config: ReproduceConfig,
    snapshots_dir: Path,
    frames_dir: Path | None = None,
    use_originals: bool = True,
    providers: list[str] | None = None,
) -> EventReport:
    """Re-run the recorded model and rules on every frame of one event and compare."""
    event = store.events.get(conn, event_id)
    if event is None:
        raise ReproduceError(f"event {event_id} not found")
    rows = store.messages.of_event(conn, event_id)
    models, notes = known_models(config.model_paths)
    rules_known = known_rules(config.rules_paths)
    frames = _Frames(
        snapshots_dir=snapshots_dir, frames_dir=frames_dir, use_originals=use_originals
    )
    frames.prefetch_videos(rows)
    deleted = retention.gone_reasons(conn, [r.snapshot_sha256 for r in rows if r.snapshot_sha256])
    notes = list(notes)
    pruned_ts, best_sha = store.prune.pruned_at(conn, event_id)
    if pruned_ts is not None:
        kept = len({r.message_id for r in rows})
        notes.append(
            f"database retention (store.retention.threats_days) deleted threats of this event "
            f"at {datetime.fromtimestamp(pruned_ts, UTC).isoformat()}: {kept} frame(s) of "
            f"{event.threat_count} threat(s) left to reproduce; the event's summary is kept"
            + (f" (best snapshot {best_sha})" if best_sha else "")
        )
    detectors: dict[str, Detector] = {}
    configs: dict[str, dict[str, Any] | None] = {}
    results: list[FrameResult] = []
    for row in rows:
        res = FrameResult(
            message_id=row.message_id,
            frame_id=row.frame_id,
            frame_kind=row.frame_kind,
            frame_source=row.frame_source,
            frame_sha256=row.frame_sha256,
        )
        results.append(res)
        recorded = [DetectionOut.model_validate(d) for d in row.detections]
        res.recorded = len(recorded)
        res.threats_recorded = sorted(
            f"{t.rule}/{t.severity}/{t.label}"
            for t in store.messages.threats_of_message(conn, row.message_id)
        )
        model_sha, rules_sha = row.model_sha256, row.rules_sha256
        if row.config_sha256 not in configs:
            configs[row.config_sha256] = store.configs.get(conn, row.config_sha256)
        config_doc = configs[row.config_sha256]
        rules = rules_known.get(rules_sha)
        if config_doc is None and rules is not None and rules.uses_zones():
            res.missing.append(
                f"agent config {row.config_sha256} (its rules name zones, and the config in "
                "force never reached the aggregator in a status message)"
            )
        if model_sha not in models:
            res.missing.append(f"model {model_sha} (not among the {len(models)} known model(s))")
        if rules_sha not in rules_known:
            res.missing.append(f"rules {rules_sha} (not among the {len(rules_known)} known rules)")
        image, mode, what = frames.image_of(row)
        if image is None and row.snapshot_sha256 and row.snapshot_sha256 in deleted:
            res.status = "deleted"
            res.missing.append(
                f"frame {row.frame_sha256} ({row.frame_source}: no original here; snapshot "
                f"{row.snapshot_sha256} "
                f"{retention.reason_text(deleted[row.snapshot_sha256]).removeprefix('snapshot ')})"
            )
        elif image is None:
            res.missing.append(
                f"frame {row.frame_sha256} ({row.frame_source}: no original here, "
                "no stored snapshot)"
            )
        if res.missing or image is None:
            continue
        res.mode, res.input = mode, what
        if model_sha not in detectors:
            detectors[model_sha] = Detector(
                models[model_sha][1], providers=providers or ["CPUExecutionProvider"]
            )
        rerun = _detections_out(
            detectors[model_sha], image, width=row.frame_width, height=row.frame_height
        )
        res.rerun = len(rerun)
        pairs, res.iou_min, res.score_delta_max, res.box_delta_max_px = compare(recorded, rerun)
        res.matched = len(pairs)
        res.threats_rerun = _threat_keys(
            rules_known[rules_sha],
            row.camera,
            rerun,
            zones=camera_zones(config_doc or {}, row.camera),
            frame_wh=(row.frame_width, row.frame_height),
        )
        same_count = res.matched == res.recorded == res.rerun
        if mode == "exact":
            close = (res.score_delta_max or 0) <= EXACT_SCORE and (
                res.box_delta_max_px or 0
            ) <= EXACT_BOX_PX
        else:
            close = (res.iou_min is None or res.iou_min >= config.iou_min) and (
                res.score_delta_max or 0
            ) <= config.score_delta_max
        threats_same = res.threats_recorded == res.threats_rerun
        res.status = "match" if same_count and close and threats_same else "mismatch"
    return EventReport(
        event_id=event_id,
        event=dataclasses.asdict(event),
        model_paths={sha: str(p) for sha, (p, _) in models.items()},
        rules_paths={sha: str(r.path) for sha, r in rules_known.items()},
        iou_min=config.iou_min,
        score_delta_max=config.score_delta_max,
        frames=results,
        notes=notes,
    )


def _fmt(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def format_report(report: EventReport) -> str:
    """The report as the CLI prints it: one line per frame, then a summary."""
    e = report.event
    lines = [
        f"event {report.event_id}: {e['agent_id']}/{e['camera']} {e['rule']} {e['severity']}, "
        f"{e['threat_count']} threat(s) in {len(report.frames)} frame(s)",
        f"tolerance for re-encoded frames: IoU >= {report.iou_min}, "
        f"|score delta| <= {report.score_delta_max}; exact = scores within {EXACT_SCORE}, "
        f"boxes within {EXACT_BOX_PX} px",
    ]
    for f in report.frames:
        head = f"frame {f.frame_id} ({f.frame_kind} {f.frame_source}, sha256 {f.frame_sha256})"
        if f.status == "missing":
            lines += [head, "    MISSING " + "; ".join(f.missing)]
            continue
        if f.status == "deleted":
            lines += [head, "    NOT RE-RUN " + "; ".join(f.missing)]
            continue
        verdict = "MATCH" if f.status == "match" else "MISMATCH"
        how = "exact" if f.mode == "exact" else "within tolerance"
        lines.append(head)
        lines.append(
            f"    {verdict} {how} [{f.input}]: {f.matched} of {f.recorded} recorded / "
            f"{f.rerun} re-run detections paired, IoU min {_fmt(f.iou_min, 4)}, "
            f"|score delta| max {_fmt(f.score_delta_max, 6)}, "
            f"box delta max {_fmt(f.box_delta_max_px, 2)} px; threats "
            + ("match" if f.threats_recorded == f.threats_rerun else "DIFFER")
            + f" ({', '.join(f.threats_rerun) or 'none'})"
        )
    counts = {s: sum(1 for f in report.frames if f.status == s) for s in ("match", "mismatch")}
    missing = sum(1 for f in report.frames if f.status == "missing")
    deleted = sum(1 for f in report.frames if f.status == "deleted")
    exact = sum(1 for f in report.frames if f.status == "match" and f.mode == "exact")
    ious = [f.iou_min for f in report.frames if f.iou_min is not None]
    deltas = [f.score_delta_max for f in report.frames if f.score_delta_max is not None]
    lines.append(
        f"summary: {len(report.frames)} frame(s): {counts['match']} match ({exact} exact, "
        f"{counts['match'] - exact} within tolerance), {counts['mismatch']} mismatch, "
        f"{missing} missing, {deleted} not re-run (snapshot deleted); "
        f"worst IoU {_fmt(min(ious) if ious else None, 4)}, "
        f"worst |score delta| {_fmt(max(deltas) if deltas else None, 6)}"
    )
    lines += [f"note: {n}" for n in report.notes]
    return "\n".join(lines)
