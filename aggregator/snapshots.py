"""Threat snapshots on the aggregator's disk, content-addressed (``<dir>/<sha[:2]>/<sha>.jpg``),
kept for ``store.snapshot_retention_days`` after the newest threat that refers to them."""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

log = logging.getLogger(__name__)


def snapshot_path(snapshots_dir: Path, sha256: str) -> Path:
    """Where the snapshot with this sha256 is (or was) stored."""
    return snapshots_dir / sha256[:2] / f"{sha256}.jpg"


def prune_snapshots(
    conn: sqlite3.Connection, snapshots_dir: Path, *, older_than_ts: float
) -> list[str]:
    """Delete the snapshots whose newest referring message was captured before
    ``older_than_ts``; return their sha256s. The rows keep the sha256 (the lineage stays whole);
    the API answers 410 for a snapshot that retention removed."""
    rows = conn.execute(
        "SELECT snapshot_sha256 FROM messages WHERE snapshot_sha256 IS NOT NULL "
        "GROUP BY snapshot_sha256 HAVING MAX(captured_ts) < ?",
        (older_than_ts,),
    ).fetchall()
    deleted: list[str] = []
    for row in rows:
        path = snapshot_path(snapshots_dir, row[0])
        if path.exists():
            path.unlink()
            deleted.append(row[0])
    if deleted:
        log.info("retention: deleted %d snapshot(s) older than %.0f", len(deleted), older_than_ts)
    return deleted
