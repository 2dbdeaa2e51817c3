"""The aggregator's SQLite store (WAL, one writer): threat messages with their provenance, the
threats in them, threat events, and ingest counters. Readers open their own connections.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlite_utils

from wire.payloads import ThreatMessage

migrations = sqlite_utils.Migrations("secagg")


@migrations()
def m001_initial(db: sqlite_utils.Database) -> None:
    db.executescript(
        """
        CREATE TABLE messages (
            message_id TEXT PRIMARY KEY,
            agent_id TEXT NOT NULL,
            camera TEXT NOT NULL,
            lineage_id TEXT NOT NULL,
            frame_id TEXT NOT NULL,
            frame_sha256 TEXT NOT NULL,
            frame_kind TEXT NOT NULL,
            frame_source TEXT NOT NULL,
            frame_width INTEGER NOT NULL,
            frame_height INTEGER NOT NULL,
            captured_at TEXT NOT NULL,
            captured_ts REAL NOT NULL,
            received_at TEXT NOT NULL,
            code_version TEXT NOT NULL,
            model_sha256 TEXT NOT NULL,
            rules_sha256 TEXT NOT NULL,
            config_sha256 TEXT NOT NULL,
            snapshot_sha256 TEXT,
            detections_json TEXT NOT NULL
        );
        CREATE INDEX messages_camera_ts ON messages (agent_id, camera, captured_ts);
        CREATE TABLE events (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            agent_id TEXT NOT NULL,
            camera TEXT NOT NULL,
            rule TEXT NOT NULL,
            label TEXT NOT NULL,
            severity TEXT NOT NULL,
            started_ts REAL NOT NULL,
            last_seen_ts REAL NOT NULL,
            ended_ts REAL,
            threat_count INTEGER NOT NULL,
            top_score REAL NOT NULL,
            top_message_id TEXT NOT NULL
        );
        CREATE INDEX events_key ON events (agent_id, camera, rule, last_seen_ts);
        CREATE INDEX events_open ON events (ended_ts) WHERE ended_ts IS NULL;
        CREATE TABLE threats (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            message_id TEXT NOT NULL REFERENCES messages (message_id),
            event_id INTEGER NOT NULL REFERENCES events (id),
            agent_id TEXT NOT NULL,
            camera TEXT NOT NULL,
            rule TEXT NOT NULL,
            severity TEXT NOT NULL,
            label TEXT NOT NULL,
            class_id INTEGER NOT NULL,
            score REAL NOT NULL,
            x1 REAL NOT NULL, y1 REAL NOT NULL, x2 REAL NOT NULL, y2 REAL NOT NULL,
            captured_ts REAL NOT NULL
        );
        CREATE INDEX threats_event ON threats (event_id);
        CREATE INDEX threats_ts ON threats (captured_ts);
        CREATE TABLE ingest_counters (
            name TEXT PRIMARY KEY,
            value INTEGER NOT NULL
        );
        """
    )


@migrations()
def m002_agents(db: sqlite_utils.Database) -> None:
    db.executescript(
        """
        CREATE TABLE agents (
            agent_id TEXT PRIMARY KEY,
            state TEXT NOT NULL,
            last_seen_ts REAL NOT NULL,
            last_status_ts REAL,
            status_sent_ts REAL,
            versions_json TEXT,
            provider TEXT,
            outbox_depth INTEGER NOT NULL DEFAULT 0,
            outbox_dropped INTEGER NOT NULL DEFAULT 0,
            outbox_oldest_age_s REAL NOT NULL DEFAULT 0,
            cameras_json TEXT NOT NULL DEFAULT '[]'
        );
        """
    )


@migrations()
def m003_event_grouping(db: sqlite_utils.Database) -> None:
    # group_key: what threats share to join an event (events.group_key); cameras: JSON list of
    # the cameras seen (several for a site); cutoff_s: the inactivity that ends this event.
    db.executescript(
        """
        ALTER TABLE events ADD COLUMN group_key TEXT;
        ALTER TABLE events ADD COLUMN cameras TEXT;
        ALTER TABLE events ADD COLUMN cutoff_s REAL;
        UPDATE events SET
            group_key = 'agent_id=' || agent_id || '|camera=' || camera || '|rule=' || rule,
            cameras = json_array(camera);
        CREATE INDEX events_group ON events (group_key, last_seen_ts);
        """
    )


@migrations()
def m004_notifications(db: sqlite_utils.Database) -> None:
    # One row per notification decided (aggregator/notify); UNIQUE makes "never twice for the
    # same event state" structural. One row per delivery attempt in notification_attempts.
    db.executescript(
        """
        CREATE TABLE notifications (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            event_id INTEGER NOT NULL REFERENCES events (id),
            notifier TEXT NOT NULL,
            channel TEXT NOT NULL,
            kind TEXT NOT NULL,
            state_key TEXT NOT NULL,
            state TEXT NOT NULL,
            created_ts REAL NOT NULL,
            next_attempt_ts REAL,
            sent_ts REAL,
            attempts INTEGER NOT NULL DEFAULT 0,
            content_json TEXT,
            content_sha256 TEXT,
            code_version TEXT NOT NULL,
            last_error TEXT,
            UNIQUE (event_id, notifier, kind, state_key)
        );
        CREATE INDEX notifications_due ON notifications (next_attempt_ts)
            WHERE state = 'pending';
        CREATE TABLE notification_attempts (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            notification_id INTEGER NOT NULL REFERENCES notifications (id),
            attempt INTEGER NOT NULL,
            started_ts REAL NOT NULL,
            finished_ts REAL NOT NULL,
            outcome TEXT NOT NULL,
            error TEXT
        );
        CREATE INDEX notification_attempts_of ON notification_attempts (notification_id);
        """
    )


@migrations()
def m005_provenance(db: sqlite_utils.Database) -> None:
    """Lineage (W3C PROV on SQLite): content-addressed artifacts, the runs that used and
    generated them, and the plots. Messages stored before this migration are backfilled.
    (Numbered 5: m003/m004 are the event-grouping and notification migrations of the notify
    branch; this one goes after them.)"""
    db.executescript(
        """
        CREATE TABLE artifacts (
            id TEXT PRIMARY KEY,
            kind TEXT NOT NULL,
            created_ts REAL NOT NULL,
            meta_json TEXT NOT NULL DEFAULT '{}'
        );
        CREATE TABLE runs (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            kind TEXT NOT NULL,
            lineage_id TEXT,
            agent_id TEXT,
            code_version TEXT NOT NULL,
            at_ts REAL NOT NULL,
            meta_json TEXT NOT NULL DEFAULT '{}'
        );
        CREATE INDEX runs_lineage ON runs (lineage_id);
        CREATE TABLE used (
            run_id INTEGER NOT NULL REFERENCES runs (id),
            artifact_id TEXT NOT NULL REFERENCES artifacts (id),
            role TEXT NOT NULL,
            PRIMARY KEY (run_id, artifact_id)
        );
        CREATE INDEX used_artifact ON used (artifact_id);
        CREATE TABLE generated (
            run_id INTEGER NOT NULL REFERENCES runs (id),
            artifact_id TEXT NOT NULL REFERENCES artifacts (id),
            PRIMARY KEY (run_id, artifact_id)
        );
        CREATE INDEX generated_artifact ON generated (artifact_id);
        CREATE TABLE plots (
            id TEXT PRIMARY KEY,
            kind TEXT NOT NULL,
            query_json TEXT NOT NULL,
            data_json TEXT NOT NULL,
            event_ids_json TEXT NOT NULL,
            code_version TEXT NOT NULL,
            created_ts REAL NOT NULL
        );
        """
    )
    from aggregator import provenance  # the backfill uses the same code as the ingest

    conn = db.conn
    conn.execute("SAVEPOINT backfill")  # one transaction, whether or not one is open
    for row in conn.execute("SELECT * FROM messages ORDER BY received_at").fetchall():
        provenance.backfill_message(conn, row)
    conn.execute("RELEASE backfill")


def connect(path: Path, *, readonly: bool = False) -> sqlite3.Connection:
    """A connection in autocommit mode (transactions are explicit), rows as sqlite3.Row."""
    if readonly:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA busy_timeout=5000")
    conn.row_factory = sqlite3.Row
    return conn


def migrate(path: Path) -> None:
    """Create or upgrade the schema."""
    conn = connect(path)
    try:
        migrations.apply(sqlite_utils.Database(conn))
    finally:
        conn.close()


@contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """BEGIN IMMEDIATE ... COMMIT, rolled back on any error."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def insert_message(
    conn: sqlite3.Connection, msg: ThreatMessage, *, received_at: str, snapshot_sha256: str | None
) -> bool:
    """Insert the message row; False if this message id is already stored (a redelivery)."""
    cur = conn.execute(
        """INSERT INTO messages (message_id, agent_id, camera, lineage_id, frame_id, frame_sha256,
               frame_kind, frame_source, frame_width, frame_height, captured_at, captured_ts,
               received_at, code_version, model_sha256, rules_sha256, config_sha256,
               snapshot_sha256, detections_json)
           VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
           ON CONFLICT (message_id) DO NOTHING""",
        (
            msg.message_id,
            msg.agent_id,
            msg.camera,
            msg.lineage_id,
            msg.frame.frame_id,
            msg.frame.sha256,
            msg.frame.kind,
            msg.frame.source,
            msg.frame.width,
            msg.frame.height,
            msg.frame.captured_at.isoformat(),
            msg.frame.captured_at.timestamp(),
            received_at,
            msg.versions.code,
            msg.versions.model_sha256,
            msg.versions.rules_sha256,
            msg.versions.config_sha256,
            snapshot_sha256,
            json.dumps([d.model_dump(mode="json") for d in msg.detections]),
        ),
    )
    return cur.rowcount == 1


def bump_counter(conn: sqlite3.Connection, name: str, by: int = 1) -> None:
    conn.execute(
        "INSERT INTO ingest_counters (name, value) VALUES (?, ?) "
        "ON CONFLICT (name) DO UPDATE SET value = value + excluded.value",
        (name, by),
    )


def counters(conn: sqlite3.Connection) -> dict[str, int]:
    return {r["name"]: r["value"] for r in conn.execute("SELECT name, value FROM ingest_counters")}
