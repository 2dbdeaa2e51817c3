"""Threat snapshots on the aggregator's disk, content-addressed (``<dir>/<sha[:2]>/<sha>.jpg``),
kept for ``store.snapshot_retention_days`` after the newest threat that refers to them."""

from __future__ import annotations

import logging
from pathlib import Path

from aggregator import store

log = logging.getLogger(__name__)


def snapshot_path(snapshots_dir: Path, sha256: str) -> Path:
    """Where the snapshot with this sha256 is (or was) stored."""
    return snapshots_dir / sha256[:2] / f"{sha256}.jpg"


def prune_snapshots(
    conn: store.Connection, snapshots_dir: Path, *, older_than_ts: float
) -> list[str]:
    """Delete the snapshots whose newest referring message was captured before
    ``older_than_ts``; return their sha256s. The rows keep the sha256 (the lineage stays whole);
    the API answers 410 for a snapshot that retention removed."""
    deleted: list[str] = []
    for sha in store.messages.snapshots_last_captured_before(conn, older_than_ts):
        path = snapshot_path(snapshots_dir, sha)
        if path.exists():
            path.unlink()
            deleted.append(sha)
    if deleted:
        log.info("retention: deleted %d snapshot(s) older than %.0f", len(deleted), older_than_ts)
    return deleted
