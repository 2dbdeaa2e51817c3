"""The SQLite store's migrations (sqlite-utils), m001 onwards: the schema every released
database is upgraded through, step by step. m001..m005 are kept exactly as they were first
released; new ones are appended, each with its PostgreSQL counterpart in :mod:`.pg_schema`
(``tests/test_store_backends.py`` compares the two schemas column for column).
:func:`.schema.migrate` applies them."""

from __future__ import annotations

import sqlite_utils

from aggregator.store.schema import savepoint

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
    from aggregator.store import messages

    conn = db.conn
    with savepoint(conn, "backfill"):  # one transaction, whether or not one is open
        for message in messages.all_by_arrival(conn):
            provenance.backfill_message(
                conn, message, event_ids=messages.event_ids_of(conn, message.message_id)
            )


@migrations()
def m006_one_message_per_frame(db: sqlite_utils.Database) -> None:
    """The same agent, camera, frame, model and rules make one threat message, whatever its
    message id: an agent restarted before it remembered a still sends it again with a new id.
    ``content_key`` names that identity (see :func:`aggregator.store.messages.content_key`).
    The first stored message of a key keeps it; later copies that an older store may already
    hold keep NULL (nothing is deleted), so the UNIQUE index builds on any existing database."""
    from aggregator.store import messages

    conn = db.conn
    conn.create_function("secagg_content_key", 7, messages.content_key, deterministic=True)
    conn.execute("ALTER TABLE messages ADD COLUMN content_key TEXT")
    conn.execute(
        "UPDATE messages SET content_key = secagg_content_key(agent_id, camera, frame_sha256, "
        "frame_kind, frame_source, model_sha256, rules_sha256)"
    )
    conn.execute(
        "UPDATE messages SET content_key = NULL WHERE rowid NOT IN "
        "(SELECT MIN(rowid) FROM messages GROUP BY content_key)"
    )
    conn.execute("CREATE UNIQUE INDEX messages_content_key ON messages (content_key)")


@migrations()
def m007_agent_clock(db: sqlite_utils.Database) -> None:
    """Each agent's own clock: the latest capture time or status ``sent_at`` seen from it.
    Events end on it (:mod:`aggregator.events`)."""
    conn = db.conn
    conn.execute("ALTER TABLE agents ADD COLUMN clock_ts REAL")
    conn.execute(
        "UPDATE agents SET clock_ts = (SELECT MAX(v) FROM ("
        "SELECT agents.status_sent_ts AS v UNION ALL "
        "SELECT MAX(m.captured_ts) FROM messages m WHERE m.agent_id = agents.agent_id))"
    )


@migrations()
def m008_row_counts(db: sqlite_utils.Database) -> None:
    """Row counts for ``/api/health``: five numbers to read instead of counting whole tables on
    every request. The writer keeps them in the transaction that changes the rows: messages and
    threats once per batch (:func:`aggregator.store.counters.add_rows`), events where they start
    and end (:mod:`aggregator.store.events`), agents by a trigger (a new agent is rare; triggers
    on the tables written for every message cost 5% of the ingest)."""
    conn = db.conn
    conn.execute("CREATE TABLE row_counts (name TEXT PRIMARY KEY, value INTEGER NOT NULL)")
    for name, table, where in (
        ("messages", "messages", ""),
        ("threats", "threats", ""),
        ("events", "events", ""),
        ("open_events", "events", " WHERE ended_ts IS NULL"),
        ("agents", "agents", ""),
    ):
        conn.execute(
            f"INSERT INTO row_counts (name, value) "
            f"VALUES ('{name}', (SELECT COUNT(*) FROM {table}{where}))"
        )
    conn.execute(
        "CREATE TRIGGER agents_counted AFTER INSERT ON agents BEGIN "
        "UPDATE row_counts SET value = value + 1 WHERE name = 'agents'; END"
    )
    conn.execute(
        "CREATE TRIGGER agents_uncounted AFTER DELETE ON agents BEGIN "
        "UPDATE row_counts SET value = value - 1 WHERE name = 'agents'; END"
    )


@migrations()
def m009_agent_configs(db: sqlite_utils.Database) -> None:
    """The agent configs in force, by the sha256 every result records
    (``versions.config_sha256``): what an agent's status message carries, kept so that
    ``secagg reproduce`` applies the camera zones the agent applied."""
    db.conn.execute(
        "CREATE TABLE agent_configs (sha256 TEXT PRIMARY KEY, agent_id TEXT NOT NULL, "
        "received_ts REAL NOT NULL, doc_json TEXT NOT NULL)"
    )


@migrations()
def m010_outbox_losses(db: sqlite_utils.Database) -> None:
    """What each agent reported lost with an outbox file it found broken at start and set aside
    (``secagent.status/1`` ``outbox_lost``), shown by ``GET /api/agents``."""
    db.conn.execute("ALTER TABLE agents ADD COLUMN outbox_lost_json TEXT NOT NULL DEFAULT '[]'")


@migrations()
def m011_ota(db: sqlite_utils.Database) -> None:
    """Over-the-air updates (:mod:`aggregator.ota`): signed releases, the desired state of each
    agent, the agents' reports (what was active when), shadow comparisons and rollouts."""
    db.executescript(
        """
        CREATE TABLE releases (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            kind TEXT NOT NULL,
            name TEXT NOT NULL,
            tag TEXT NOT NULL,
            sha256 TEXT NOT NULL,
            size INTEGER NOT NULL,
            seq INTEGER NOT NULL,
            target_path TEXT NOT NULL UNIQUE,
            created_ts REAL NOT NULL,
            compat_json TEXT NOT NULL,
            UNIQUE (kind, tag),
            UNIQUE (kind, seq)
        );
        CREATE TABLE ota_desired (
            agent_id TEXT PRIMARY KEY,
            generation INTEGER NOT NULL,
            doc_json TEXT NOT NULL,
            rollout_id INTEGER,
            published_generation INTEGER NOT NULL DEFAULT 0,
            updated_ts REAL NOT NULL
        );
        CREATE TABLE ota_reports (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            report_id TEXT NOT NULL UNIQUE,
            agent_id TEXT NOT NULL,
            kind TEXT,
            release_id INTEGER,
            state TEXT NOT NULL,
            reason TEXT,
            rollout_id INTEGER,
            at_ts REAL NOT NULL,
            received_ts REAL NOT NULL,
            active_json TEXT NOT NULL,
            detail_json TEXT NOT NULL DEFAULT '{}'
        );
        CREATE INDEX ota_reports_agent ON ota_reports (agent_id, id);
        CREATE TABLE rollouts (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            release_id INTEGER NOT NULL REFERENCES releases (id),
            mode TEXT NOT NULL,
            shadow_fraction REAL NOT NULL,
            state TEXT NOT NULL,
            reason TEXT,
            current_group INTEGER NOT NULL,
            success_threshold REAL NOT NULL,
            error_threshold REAL NOT NULL,
            created_ts REAL NOT NULL,
            updated_ts REAL NOT NULL
        );
        CREATE TABLE rollout_agents (
            rollout_id INTEGER NOT NULL REFERENCES rollouts (id),
            agent_id TEXT NOT NULL,
            group_index INTEGER NOT NULL,
            state TEXT NOT NULL,
            reason TEXT,
            previous_json TEXT NOT NULL DEFAULT '{}',
            updated_ts REAL NOT NULL,
            PRIMARY KEY (rollout_id, agent_id)
        );
        CREATE TABLE shadow_reports (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            report_id TEXT NOT NULL UNIQUE,
            agent_id TEXT NOT NULL,
            release_id INTEGER NOT NULL,
            rollout_id INTEGER,
            at_ts REAL NOT NULL,
            figures_json TEXT NOT NULL
        );
        CREATE INDEX shadow_reports_release ON shadow_reports (release_id, agent_id, id);
        """
    )


@migrations()
def m012_operator(db: sqlite_utils.Database) -> None:
    """The operator's side (:mod:`aggregator.auth`, :mod:`aggregator.web`, agent logs): page
    users (argon2 password hashes), API tokens (sha256 of the secret only), login sessions (sha256
    of the cookie only), the key that signs snapshot links, who reviewed an event and when, and
    the warnings and errors logged about results by agents and by secagg."""
    db.executescript(
        """
        CREATE TABLE users (
            name TEXT PRIMARY KEY,
            role TEXT NOT NULL,
            password_hash TEXT NOT NULL,
            created_ts REAL NOT NULL
        );
        CREATE TABLE api_tokens (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            name TEXT NOT NULL,
            role TEXT NOT NULL,
            token_sha256 TEXT NOT NULL UNIQUE,
            hint TEXT NOT NULL,
            created_ts REAL NOT NULL,
            revoked_ts REAL
        );
        CREATE TABLE sessions (
            id_sha256 TEXT PRIMARY KEY,
            user_name TEXT NOT NULL,
            csrf TEXT NOT NULL,
            created_ts REAL NOT NULL,
            expires_ts REAL NOT NULL
        );
        CREATE INDEX sessions_user ON sessions (user_name);
        CREATE TABLE link_keys (
            name TEXT PRIMARY KEY,
            secret TEXT NOT NULL,
            created_ts REAL NOT NULL
        );
        ALTER TABLE events ADD COLUMN reviewed_ts REAL;
        ALTER TABLE events ADD COLUMN reviewed_by TEXT;
        ALTER TABLE agents ADD COLUMN inference_ms REAL;
        CREATE TABLE run_logs (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            source TEXT NOT NULL,
            agent_id TEXT,
            level TEXT NOT NULL,
            logger TEXT NOT NULL,
            msg TEXT NOT NULL,
            at_ts REAL NOT NULL,
            received_ts REAL NOT NULL,
            lineage_id TEXT,
            frame_id TEXT,
            camera TEXT,
            message_id TEXT,
            event_id INTEGER,
            release_id INTEGER
        );
        CREATE INDEX run_logs_lineage ON run_logs (lineage_id) WHERE lineage_id IS NOT NULL;
        CREATE INDEX run_logs_frame ON run_logs (frame_id) WHERE frame_id IS NOT NULL;
        CREATE INDEX run_logs_message ON run_logs (message_id) WHERE message_id IS NOT NULL;
        CREATE INDEX run_logs_event ON run_logs (event_id) WHERE event_id IS NOT NULL;
        CREATE INDEX run_logs_agent ON run_logs (agent_id, at_ts);
        """
    )
    db.conn.execute(
        "INSERT INTO link_keys (name, secret, created_ts) VALUES ('snapshot_links', "
        "lower(hex(randomblob(32))), (julianday('now') - 2440587.5) * 86400.0)"
    )


@migrations()
def m013_compact_lineage(db: sqlite_utils.Database) -> None:
    """Compact lineage and bounded storage.

    A threat message stored from now on keeps the lineage of its validate, detect, rules and
    group runs in its own row (:mod:`aggregator.store.lineage` derives the artifacts, runs,
    used and generated rows from it): ``run_base``, the first of four run ids reserved from
    the ``runs`` sequence; ``detections_sha256``; ``group_code``, the aggregator's code
    version. That replaces about 30 rows (4 KB) a message. Messages stored before keep their
    rows (``run_base`` NULL); the graph reads both.

    The indexes find a message by what its lineage names (frame, detections, snapshot, run),
    a threat by its message, and old messages by capture time (retention).
    ``snapshot_deletions`` holds the snapshot files a committed transaction decided to delete
    (an ended event's policy, retention) until they are gone."""
    db.executescript(
        """
        ALTER TABLE messages ADD COLUMN detections_sha256 TEXT;
        ALTER TABLE messages ADD COLUMN run_base INTEGER;
        ALTER TABLE messages ADD COLUMN group_code TEXT;
        CREATE INDEX messages_run_base ON messages (run_base) WHERE run_base IS NOT NULL;
        CREATE INDEX messages_frame ON messages (frame_sha256);
        CREATE INDEX messages_detections ON messages (detections_sha256)
            WHERE detections_sha256 IS NOT NULL;
        CREATE INDEX messages_snapshot ON messages (snapshot_sha256)
            WHERE snapshot_sha256 IS NOT NULL;
        CREATE INDEX messages_ts ON messages (captured_ts);
        CREATE INDEX threats_message ON threats (message_id);
        CREATE TABLE snapshot_deletions (
            sha256 TEXT PRIMARY KEY,
            reason TEXT NOT NULL
        ) WITHOUT ROWID;
        """
    )


@migrations()
def m014_bounded_storage(db: sqlite_utils.Database) -> None:
    """Bounded storage (:mod:`aggregator.retention`).

    ``snapshots_kept``: the snapshots an ended event's policy kept (its best N, first and last
    frame, its top threat's), one row per event and role; a snapshot kept by any event is never
    deleted by another's policy. ``snapshots_deleted``: why a snapshot file was deleted (policy,
    age, size, database retention) and when, for the API, the pages and ``secagg reproduce``;
    a file written again for the same sha256 removes its row. ``events.best_snapshot_sha256``
    keeps the top threat's snapshot once its message is pruned; ``events.pruned_ts``: when the
    event's threats and per-message lineage were deleted by database retention (the event and
    its summary stay)."""
    db.executescript(
        """
        CREATE TABLE snapshots_kept (
            sha256 TEXT NOT NULL,
            event_id INTEGER NOT NULL,
            role TEXT NOT NULL,
            PRIMARY KEY (sha256, event_id, role)
        ) WITHOUT ROWID;
        CREATE INDEX snapshots_kept_event ON snapshots_kept (event_id);
        CREATE TABLE snapshots_deleted (
            sha256 TEXT PRIMARY KEY,
            reason TEXT NOT NULL,
            deleted_ts REAL NOT NULL
        ) WITHOUT ROWID;
        ALTER TABLE events ADD COLUMN best_snapshot_sha256 TEXT;
        ALTER TABLE events ADD COLUMN pruned_ts REAL;
        CREATE INDEX events_best_snapshot ON events (best_snapshot_sha256)
            WHERE best_snapshot_sha256 IS NOT NULL;
        CREATE INDEX events_top_message ON events (top_message_id);
        """
    )


@migrations()
def m015_event_list_indexes(db: sqlite_utils.Database) -> None:
    """Indexes for the lists at scale (1M threats, 100k events): a camera's events and a
    camera's threats newest first (the camera filter with the keyset cursor, ``ORDER BY id
    DESC``: without them, a camera with few threats scans the whole table for a page), and the
    distinct cameras, labels and severities the review page offers as filters, each found by a
    few index seeks (:func:`aggregator.store.events.distinct_values`) instead of a scan of
    every event. ``events_camera`` and ``threats_camera`` also hold the times the API filters on
    (an event's last threat and start, a threat's capture time), so a camera's page in a time
    range reads only the index until it finds its rows (6 ms to 0.8 ms for a camera's oldest
    day of 12,500 threats). The event indexes are written once per event; ``threats_camera``
    once per threat, appended at the end of its camera's range. (m014 is the retention
    work's.)"""
    db.executescript(
        """
        CREATE INDEX IF NOT EXISTS events_camera ON events (camera, id, last_seen_ts, started_ts);
        CREATE INDEX IF NOT EXISTS events_label ON events (label);
        CREATE INDEX IF NOT EXISTS events_severity ON events (severity);
        CREATE INDEX IF NOT EXISTS threats_camera ON threats (camera, id, captured_ts);
        """
    )


@migrations()
def m016_notification_claims(db: sqlite_utils.Database) -> None:
    """Many senders on one store (ingest workers, ``secagg serve --role``): a sender claims a
    due notification before it sends it (``claimed_by``: who, ``claimed_until``: its lease);
    another sender takes it only once the lease ran out (a claimer that died)."""
    db.executescript(
        """
        ALTER TABLE notifications ADD COLUMN claimed_by TEXT;
        ALTER TABLE notifications ADD COLUMN claimed_until REAL;
        """
    )


@migrations()
def m017_ingest_workers(db: sqlite_utils.Database) -> None:
    """The ingest workers running on this store (``secagg serve --role ingest``), each with its
    last heartbeat: what ``/api/health`` of the api process reports of them."""
    db.executescript(
        """
        CREATE TABLE ingest_workers (
            name TEXT PRIMARY KEY,
            host TEXT NOT NULL,
            pid INTEGER NOT NULL,
            started_ts REAL NOT NULL,
            heartbeat_ts REAL NOT NULL,
            broker_connected INTEGER NOT NULL,
            problems TEXT NOT NULL
        ) WITHOUT ROWID;
        """
    )
