"""Bounded storage: which snapshot files stay, and how long threats stay in the database.

- **Per event** (``store.snapshots.keep: best``): when an event ends, the transaction that ends
  it keeps the snapshots of its ``keep_best`` highest-scoring frames, its first and last frame
  and its top threat's (``snapshots_kept``), and queues the others for deletion. A snapshot
  that a message of another event still refers to, where that event is open or kept it (or
  ended before any policy), is never deleted. The messages keep the sha256: the lineage stays
  whole.
- **By age** (``max_age_days``): a snapshot whose newest referring threat was captured that
  long ago.
- **By total size** (``max_total_mb``): oldest written first until the folder is under the cap.
  An open event's snapshots are never deleted; an ended event's best snapshot only once no
  other file is left to delete (the cap wins: it is what keeps the disk from filling).
- **Database** (``store.retention.threats_days``): messages, their threats and the lineage they
  keep in their row, oldest first in batches of ``batch_rows``, only those whose events have
  all ended. Events stay with their summary (counts, times, top score) and the sha256 of their
  best snapshot (``events.best_snapshot_sha256``); ``events.pruned_ts`` says when.

Every deletion is crash-safe: a transaction decides it (``snapshot_deletions``, with why in
``snapshots_deleted``), the files are removed after COMMIT, and :func:`remove_decided` at the
next start finishes what a crash interrupted. All of it runs on the ingest's writer thread.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from aggregator import store
from aggregator.config import SnapshotsConfig, StoreConfig
from aggregator.events import EventChange
from aggregator.snapshots import snapshot_path
from aggregator.store.models import EventRow

log = logging.getLogger(__name__)

REASONS = {
    "policy": "deleted by the event's snapshot policy (store.snapshots.keep_best)",
    "age": "deleted by retention (store.snapshots.max_age_days)",
    "size": "deleted by retention (store.snapshots.max_total_mb)",
    "retention": "deleted with its threat by database retention (store.retention.threats_days)",
}
"""Why a snapshot file is gone, as the API, the pages and ``secagg reproduce`` say it."""


def reason_text(reason: str | None) -> str:
    """What to tell a user about a snapshot whose file is gone."""
    if reason is None:
        return "snapshot file missing (not deleted by secagg)"
    return f"snapshot {REASONS.get(reason, f'deleted ({reason})')}"


def keep_set(
    frames: Sequence[store.snapshot_files.EventFrame], *, best: int, top: str
) -> dict[str, list[str]]:
    """sha256 -> roles ('top', 'best', 'first', 'last') of the snapshots an ended event keeps:
    its ``best`` highest-scoring frames (earlier first on a tie), its first and last frame and
    its top threat's message ``top``."""
    with_snapshot = [f for f in frames if f.snapshot_sha256 is not None]
    kept: dict[str, list[str]] = {}

    def add(frame: store.snapshot_files.EventFrame, role: str) -> None:
        assert frame.snapshot_sha256 is not None
        roles = kept.setdefault(frame.snapshot_sha256, [])
        if role not in roles:
            roles.append(role)

    if not with_snapshot:
        return kept
    add(with_snapshot[0], "first")
    add(with_snapshot[-1], "last")
    ranked = sorted(with_snapshot, key=lambda f: (-f.score, f.captured_ts, f.message_id))
    for f in ranked[:best]:
        add(f, "best")
    for f in with_snapshot:
        if f.message_id == top:
            add(f, "top")
    return kept


def apply_event_policy(
    conn: store.Connection,
    event_ids: Sequence[int],
    config: SnapshotsConfig,
    *,
    now_ts: float,
) -> int:
    """In the transaction that ended ``event_ids``: record what each keeps and queue the other
    snapshots of their frames for deletion; returns how many were queued."""
    if config.keep == "all" or not event_ids:
        return 0
    candidates: dict[str, int] = {}
    for event_id in event_ids:
        event = store.events.get(conn, event_id)
        if event is None:
            continue
        frames = store.snapshot_files.frames_of_event(conn, event_id)
        kept = keep_set(frames, best=config.keep_best, top=event.top_message_id)
        store.snapshot_files.keep(
            conn, event_id, [(sha, role) for sha, roles in kept.items() for role in roles]
        )
        for f in frames:
            if f.snapshot_sha256 is not None and f.snapshot_sha256 not in kept:
                candidates.setdefault(f.snapshot_sha256, event_id)
    # A batch storing the same bytes now, beside this one (PostgreSQL), holds its snapshot's
    # lock: the file stays (store.locks.try_snapshot); one that comes later waits for this one.
    doomed = [
        sha
        for sha in candidates
        if not store.snapshot_files.protected(conn, sha, ending=list(event_ids))
        and store.locks.try_snapshot(conn, sha)
    ]
    if doomed:
        log.info(
            "events %s ended: %d snapshot(s) to delete by policy (keep_best=%d, first, last)",
            ",".join(map(str, event_ids)),
            len(doomed),
            config.keep_best,
        )
    return store.snapshot_files.decide(conn, [(sha, "policy") for sha in doomed], now_ts=now_ts)


def remove_decided(conn: store.Connection, snapshots_dir: Path) -> Counter[str]:
    """Outside a transaction: delete the files a committed transaction decided to delete (at
    start: what a crash left), then forget them; returns how many, by reason."""
    pending = store.snapshot_files.pending(conn)
    if not pending:
        return Counter()
    removed: list[str] = []
    by_reason: Counter[str] = Counter()
    for sha, reason in pending:
        try:
            snapshot_path(snapshots_dir, sha).unlink(missing_ok=True)
        except OSError as exc:
            log.warning("snapshot %s could not be deleted (%s): trying again later", sha, exc)
            continue
        removed.append(sha)
        by_reason[reason] += 1
    with store.transaction(conn):
        store.snapshot_files.done(conn, removed)
    log.info(
        "snapshots deleted: %s",
        ", ".join(f"{n} by {reason}" for reason, n in sorted(by_reason.items())),
    )
    return by_reason


@dataclass
class SweepResult:
    """What one retention sweep decided."""

    by_age: int = 0
    by_size: int = 0
    messages_pruned: int = 0
    threats_pruned: int = 0
    events_pruned: set[int] = field(default_factory=set)
    removed: Counter[str] = field(default_factory=Counter)
    more: bool = False  # database retention stopped at max_batches with more to delete


def _files(snapshots_dir: Path) -> list[tuple[float, int, str]]:
    """(mtime, bytes, sha256) of every snapshot file, oldest first."""
    found: list[tuple[float, int, str]] = []
    if not snapshots_dir.is_dir():
        return found
    for sub in os.scandir(snapshots_dir):
        if not sub.is_dir():
            continue
        for entry in os.scandir(sub.path):
            if entry.name.endswith(".jpg") and entry.is_file():
                st = entry.stat()
                found.append((st.st_mtime, st.st_size, entry.name.removesuffix(".jpg")))
    found.sort()
    return found


def over_size(
    conn: store.Connection, snapshots_dir: Path, *, max_bytes: int
) -> list[tuple[str, str]]:
    """The (sha256, 'size') files to delete to bring the folder under ``max_bytes``: oldest
    written first; an open event's never; an event's best snapshot only once nothing else is
    left (see the module's docstring)."""
    files = _files(snapshots_dir)
    total = sum(size for _, size, _ in files)
    if total <= max_bytes:
        return []
    doomed: list[tuple[str, str]] = []
    best: list[tuple[int, str]] = []
    for _, size, sha in files:
        if total <= max_bytes:
            break
        if store.snapshot_files.in_open_event(conn, sha):
            continue
        if store.snapshot_files.is_event_best(conn, sha):
            best.append((size, sha))
            continue
        doomed.append((sha, "size"))
        total -= size
    for size, sha in best:
        if total <= max_bytes:
            break
        doomed.append((sha, "size"))
        total -= size
    if total > max_bytes:
        log.warning(
            "snapshots take %d bytes, over store.snapshots.max_total_mb, and all that is left "
            "belongs to open events",
            total,
        )
    return doomed


def sweep(
    conn: store.Connection,
    config: StoreConfig,
    *,
    now_ts: float,
    max_batches: int | None = None,
) -> SweepResult:
    """Apply database retention, then the age and size limits of snapshots (each decision in a
    transaction of its own, files removed after it); the ingest's writer runs it every
    ``store.snapshots.sweep_interval_s``. With ``max_batches``, at most that many database
    retention batches: ``more`` says some are left (the snapshot limits wait for them), so the
    writer can store messages in between."""
    result = SweepResult()
    snapshots_dir = config.snapshots_dir
    result.removed += remove_decided(conn, snapshots_dir)  # what an earlier failure left
    retention = config.retention
    if retention.threats_days is not None:
        before_ts = now_ts - retention.threats_days * 86400
        batches = 0
        while True:
            if max_batches is not None and batches >= max_batches:
                result.more = True
                break
            batches += 1
            with store.transaction(conn):
                ids = store.prune.oldest_messages(
                    conn, before_ts=before_ts, limit=retention.batch_rows
                )
                if not ids:
                    break
                pruned = store.prune.delete_messages(conn, ids, now_ts=now_ts)
                gone = [
                    sha
                    for sha in store.prune.unreferenced(conn, pruned.snapshots)
                    if snapshot_path(snapshots_dir, sha).exists()
                ]
                store.snapshot_files.decide(
                    conn, [(sha, "retention") for sha in gone], now_ts=now_ts
                )
            result.messages_pruned += pruned.messages
            result.threats_pruned += pruned.threats
            result.events_pruned.update(pruned.event_ids)
            result.removed += remove_decided(conn, snapshots_dir)
        if result.messages_pruned:
            log.info(
                "database retention: %d message(s), %d threat(s) of %d event(s) captured before "
                "%.0f deleted; the events are kept",
                result.messages_pruned,
                result.threats_pruned,
                len(result.events_pruned),
                before_ts,
            )
        if result.more:
            return result
    days = config.snapshot_max_age_days
    if days is not None:
        with store.transaction(conn):
            old = [
                sha
                for sha in store.messages.snapshots_last_captured_before(
                    conn, now_ts - days * 86400
                )
                if snapshot_path(snapshots_dir, sha).exists()
            ]
            result.by_age = store.snapshot_files.decide(
                conn, [(sha, "age") for sha in old], now_ts=now_ts
            )
        result.removed += remove_decided(conn, snapshots_dir)
    max_mb = config.snapshots.max_total_mb
    if max_mb is not None:
        with store.transaction(conn):
            doomed = over_size(conn, snapshots_dir, max_bytes=int(max_mb * 1_000_000))
            result.by_size = store.snapshot_files.decide(conn, doomed, now_ts=now_ts)
        result.removed += remove_decided(conn, snapshots_dir)
    return result


def gone_reasons(conn: store.Connection, shas: Sequence[str]) -> dict[str, str]:
    """sha256 -> why its file was deleted (policy, age, size, retention), for those that were."""
    return store.snapshot_files.deleted_reasons(conn, shas)


def on_batch(
    conn: store.Connection,
    changes: Sequence[EventChange],
    written: Sequence[str],
    config: StoreConfig,
    *,
    now_ts: float,
) -> None:
    """In an ingest batch's transaction: the policy of the events it ended; a file written
    again for a sha256 whose earlier file was deleted is no longer reported deleted."""
    store.snapshot_files.written_again(conn, written)
    ended = [c.event_id for c in changes if c.type == "end"]
    if ended:
        apply_event_policy(conn, ended, config.snapshots, now_ts=now_ts)


def after_commit(
    conn: store.Connection, changes: Sequence[EventChange], config: StoreConfig
) -> None:
    """After the batch's COMMIT: delete the files its events' policy decided to delete. A
    failure here loses nothing (the decision is committed): it is logged, and the next sweep or
    start deletes them."""
    if config.snapshots.keep != "all" and any(c.type == "end" for c in changes):
        try:
            remove_decided(conn, config.snapshots_dir)
        except store.DatabaseError as exc:
            log.warning("snapshot deletions left for the next sweep: %s", exc)


def event_best_snapshot(conn: store.Connection, event: EventRow) -> str | None:
    """The sha256 of an event's best snapshot: its top threat's, or the one its summary kept
    when database retention pruned its threats."""
    sha = store.messages.snapshot_sha256(conn, event.top_message_id)
    return sha if sha is not None else store.prune.pruned_at(conn, event.id)[1]


def gone_detail(conn: store.Connection, sha256: str) -> str:
    """Why the file of this snapshot is not there, for an HTTP 410 or ``secagg reproduce``."""
    return reason_text(store.snapshot_files.deleted_reasons(conn, [sha256]).get(sha256))
