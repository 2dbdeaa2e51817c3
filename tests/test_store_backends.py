"""The store on both backends: SQLite (the embedded default) and PostgreSQL (a private cluster
of the session, :mod:`demo.postgres`). The schemas match column for column; transactions and
savepoints behave alike; each store module listed as working on PostgreSQL in
``store.POSTGRES_MODULES`` gives the same answers on both (the ``store_conn`` fixture runs each
test once per backend); and while a module is missing, secagg refuses a PostgreSQL store."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner

from aggregator import records, store
from aggregator.api import create_app
from aggregator.cli import main
from aggregator.config import AggregatorConfig
from aggregator.ingest import Ingest
from aggregator.store.backend import is_postgres, to_native
from aggregator.store.models import PlotRow, StatusUpdate
from demo.postgres import Postgres
from tests.support.ingest import (
    JPEG_SHA,
    T0,
    make_config,
    payload,
    status_payload,
    store_on,
    threat_payload,
)

# the backend seam -----------------------------------------------------------------------------


_MANY = "".join(f"${i}, " for i in range(1, 2001))


@pytest.mark.parametrize(
    ("sql", "expected", "names"),
    [
        ("SELECT ? , ?", "SELECT $1 , $2", None),
        ("VALUES (:agent, :clock_max, :agent)", "VALUES ($1, $2, $1)", ("agent", "clock_max")),
        ("SELECT x::text WHERE a LIKE '5%?' OR ?", "SELECT x::text WHERE a LIKE '5%?' OR $1", None),
        ("SELECT 'a:b' || \"c?\" , ?", "SELECT 'a:b' || \"c?\" , $1", None),
        ("SELECT 100 % 7", "SELECT 100 % 7", None),
        ("SELECT " + "?, " * 2000 + "'%'", "SELECT " + _MANY + "'%'", None),  # long, quoted
        ("SELECT " + "?, " * 2000 + "1", "SELECT " + _MANY + "1", None),  # long, no quotes
    ],
)  # fmt: skip
def test_placeholders_become_numbered(
    sql: str, expected: str, names: tuple[str, ...] | None
) -> None:
    assert to_native(sql) == (expected, names)


def test_placeholders_of_both_kinds_are_refused() -> None:
    with pytest.raises(ValueError, match="both"):
        to_native("SELECT ?, :name")


def _sqlite_schema(path: Path) -> tuple[dict[str, list[tuple[str, str]]], set[str]]:
    conn = sqlite3.connect(path)
    try:
        tables = [
            r[0]
            for r in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE "
                "'sqlite_%' AND name != '_sqlite_migrations'"
            )
        ]
        columns = {
            t: [(r[1], str(r[2]).upper()) for r in conn.execute(f"PRAGMA table_info({t})")]
            for t in tables
        }
        indexes = {
            str(r[0])
            for r in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL "
                "AND name NOT LIKE 'idx__sqlite_migrations%'"
            )
        }
    finally:
        conn.close()
    return columns, indexes


PG_TYPE_OF = {"TEXT": "text", "REAL": "double precision", "INTEGER": "bigint"}
"""The PostgreSQL type of each SQLite declared type the schema uses."""


def test_the_schemas_match_column_for_column(tmp_path: Path, postgres: Postgres) -> None:
    """Every table, column (in order, with its type) and named index of SQLite's migrated
    schema exists on PostgreSQL: a SQLite migration without its PostgreSQL counterpart fails
    here."""
    sqlite_path = tmp_path / "s.sqlite"
    store.migrate(sqlite_path)
    sqlite_columns, sqlite_indexes = _sqlite_schema(sqlite_path)
    url = postgres.create_database("schema_parity")
    store.migrate(url)
    conn = store.connect(url)
    try:
        pg_columns: dict[str, list[tuple[str, str]]] = {}
        for table, column, data_type in conn.execute(
            "SELECT table_name, column_name, data_type FROM information_schema.columns "
            "WHERE table_schema = 'public' AND table_name != 'secagg_migrations' "
            "ORDER BY table_name, ordinal_position"
        ):
            pg_columns.setdefault(table, []).append((column, data_type))
        pg_indexes = {
            r[0]
            for r in conn.execute("SELECT indexname FROM pg_indexes WHERE schemaname = 'public'")
        }
    finally:
        conn.close()
    expected = {
        t: [(name, PG_TYPE_OF[kind]) for name, kind in cols] for t, cols in sqlite_columns.items()
    }
    assert pg_columns == expected
    assert sqlite_indexes <= pg_indexes


def test_migrating_again_changes_nothing(store_target: store.schema.Target) -> None:
    store.migrate(store_target)  # the fixture migrated it once
    conn = store.connect(store_target)
    try:
        assert store.counters.row_counts(conn) == store.models.StoreCounts(0, 0, 0, 0, 0)
        assert len(store.access.link_key(conn)) == 32
    finally:
        conn.close()


def test_a_transaction_is_all_or_nothing(store_conn: store.Connection) -> None:
    with store.transaction(store_conn):
        store.counters.bump(store_conn, {"stored": 1})
    with pytest.raises(RuntimeError), store.transaction(store_conn):
        store.counters.bump(store_conn, {"stored": 5})
        raise RuntimeError("undo")
    assert not store_conn.in_transaction
    assert store.counters.ingest_counters(store_conn) == {"stored": 1}


def test_a_savepoint_undoes_only_its_own_part(store_conn: store.Connection) -> None:
    with store.transaction(store_conn):
        store.counters.bump(store_conn, {"kept": 1})
        with pytest.raises(RuntimeError), store.savepoint(store_conn, "message"):
            store.counters.bump(store_conn, {"undone": 1})
            raise RuntimeError("one message fails")
        with store.savepoint(store_conn, "message"):
            store.counters.bump(store_conn, {"kept": 1})
    # Outside a transaction a savepoint is a transaction of its own, on both backends.
    with store.savepoint(store_conn, "alone"):
        store.counters.bump(store_conn, {"alone": 1})
    with pytest.raises(RuntimeError), store.savepoint(store_conn, "alone"):
        store.counters.bump(store_conn, {"alone": 1})
        raise RuntimeError("undo")
    assert not store_conn.in_transaction
    assert store.counters.ingest_counters(store_conn) == {"alone": 1, "kept": 2}


def test_a_failed_statement_leaves_the_savepoint_usable(store_conn: store.Connection) -> None:
    """PostgreSQL aborts the whole transaction on an error; the savepoint brings it back, as
    SQLite never lost it. The error is the store's (``store.DatabaseError``) on both."""
    with store.transaction(store_conn):
        with pytest.raises(store.DatabaseError), store.savepoint(store_conn, "bad"):
            store_conn.execute("INSERT INTO no_such_table VALUES (1)")
        store.counters.bump(store_conn, {"after": 1})
    assert store.counters.ingest_counters(store_conn) == {"after": 1}


def test_a_value_refused_is_the_messages_fault_a_failure_is_the_stores(
    store_conn: store.Connection,
) -> None:
    """The ingest refuses a message whose values the store refuses, and retries a batch the
    store failed (records.is_store_failure): PostgreSQL's errors fall on the same sides."""
    with store.transaction(store_conn):
        store.configs.save(store_conn, sha256="s", agent_id="a", received_ts=1, doc={})
    refused = []
    for statement, params in (
        (
            "INSERT INTO agent_configs (sha256, agent_id, received_ts, doc_json) "
            "VALUES ('s', 'a', 1, '{}')",
            (),
        ),  # unique
        (
            "INSERT INTO agent_configs (sha256, agent_id, received_ts, doc_json) "
            "VALUES ('t', NULL, 1, '{}')",
            (),
        ),  # not null
        ("SELECT * FROM no_such_table", ()),  # the store's fault
    ):
        with pytest.raises(store.DatabaseError) as caught, store.transaction(store_conn):
            store_conn.execute(statement, params)
        refused.append(records.is_store_failure(caught.value))
    assert refused == [False, False, True]
    assert isinstance(caught.value, sqlite3.Error)
    if is_postgres(store_conn):
        assert isinstance(caught.value.__cause__, psycopg.Error)


def test_many_rows_are_stored_as_given_or_none_of_them(store_conn: store.Connection) -> None:
    """``schema.insert_values``, the ingest's many-row insert (one ``COPY`` on PostgreSQL, one
    ``INSERT ... VALUES`` on SQLite): every value back as it went in (text with quotes, tabs,
    backslashes, newlines and COPY's own ``\\N``, None, floats to the last bit, big integers,
    the identity column's default); a row the table refuses refuses them all, and the
    savepoint is usable after."""
    insert = (
        "INSERT INTO run_logs (source, agent_id, level, logger, msg, at_ts, received_ts, "
        "lineage_id, event_id) VALUES"
    )
    odd = "a'b\"c\td\\e\nf %s ? $1 \\N é"
    lineage = [odd, None]
    rows = [
        ("agent", f"a-{i}", "info", odd, odd, 0.1 * i + 1e-12, 1e300, lineage[i % 2], 2**62 + i)
        for i in range(300)
    ]
    with store.transaction(store_conn):
        store.schema.insert_values(store_conn, insert, rows)
    found = store_conn.execute(
        "SELECT id, source, agent_id, level, logger, msg, at_ts, received_ts, lineage_id, "
        "event_id FROM run_logs ORDER BY id"
    ).fetchall()
    assert [tuple(r)[1:] for r in found] == rows
    assert len({r[0] for r in found}) == len(rows)  # ids from the identity, each its own
    row = ("agent", "after", "info", "x", "m", 2.0, 2.0, None, None)
    with store.transaction(store_conn):
        with pytest.raises(sqlite3.IntegrityError), store.savepoint(store_conn, "many"):
            store.schema.insert_values(
                store_conn,
                insert,
                [row, (*row[:4], None, *row[5:])],  # msg is NOT NULL
            )
        store.schema.insert_values(store_conn, insert, [row])
    after = store_conn.execute("SELECT agent_id FROM run_logs WHERE msg = 'm'").fetchall()
    assert [r[0] for r in after] == ["after"]


# counters ------------------------------------------------------------------------------------


def test_counters_add_up(store_conn: store.Connection) -> None:
    with store.transaction(store_conn):
        store.counters.bump(store_conn, {"stored": 2, "duplicate": 1})
        store.counters.bump(store_conn, {"stored": 3})
        store.counters.add_rows(store_conn, {"messages": 4, "threats": 6, "events": 0})
        store.counters.add_rows(store_conn, {"messages": -1})
    assert store.counters.ingest_counters(store_conn) == {"duplicate": 1, "stored": 5}
    counts = store.counters.row_counts(store_conn)
    assert (counts.messages, counts.threats, counts.events) == (3, 6, 0)


# configs -------------------------------------------------------------------------------------


def test_an_agent_config_is_kept_once(store_conn: store.Connection) -> None:
    doc = {"cameras": [{"name": "yard", "zones": []}], "b": 1}
    with store.transaction(store_conn):
        assert store.configs.save(store_conn, sha256="s1", agent_id="a", received_ts=1.5, doc=doc)
        assert not store.configs.save(
            store_conn, sha256="s1", agent_id="b", received_ts=2.0, doc={"other": True}
        )
    assert store.configs.get(store_conn, "s1") == doc
    assert store.configs.get(store_conn, "nothing") is None


# access --------------------------------------------------------------------------------------


def test_users_tokens_and_sessions(store_conn: store.Connection) -> None:
    access = store.access
    with store.transaction(store_conn):
        assert access.add_user(store_conn, name="ana", role="admin", password_hash="h1", now_ts=1)
        assert not access.add_user(
            store_conn, name="ana", role="viewer", password_hash="h2", now_ts=2
        )
        assert access.set_password(store_conn, "ana", "h3")
        assert not access.set_password(store_conn, "bob", "h3")
        first = access.add_token(
            store_conn, name="ci", role="viewer", token_sha256="t1", hint="ab", now_ts=3
        )
        second = access.add_token(
            store_conn, name="ops", role="admin", token_sha256="t2", hint="cd", now_ts=4
        )
        access.add_session(
            store_conn, id_sha256="s1", user_name="ana", csrf="c", now_ts=5, expires_ts=100
        )
    assert (first, second) == (1, 2)
    assert access.get_user(store_conn, "ana") == access.UserRow("ana", "admin", "h3", 1.0)
    assert [u.name for u in access.list_users(store_conn)] == ["ana"]
    token = access.token_by_hash(store_conn, "t2")
    assert token is not None and (token.id, token.role, token.hint) == (2, "admin", "cd")
    with store.transaction(store_conn):
        assert access.revoke_token(store_conn, first, now_ts=6)
        assert not access.revoke_token(store_conn, first, now_ts=7)
    assert access.token_by_hash(store_conn, "t1") is None
    assert [t.id for t in access.list_tokens(store_conn)] == [2]
    assert [t.revoked_ts for t in access.list_tokens(store_conn, revoked=True)] == [6.0, None]
    assert access.get_token(store_conn, 1) is not None
    session = access.session_by_hash(store_conn, "s1", now_ts=50)
    assert session == access.SessionRow("ana", "admin", "c", 5.0, 100.0)
    assert access.session_by_hash(store_conn, "s1", now_ts=101) is None
    with store.transaction(store_conn):
        assert access.remove_user(store_conn, "ana")
        assert not access.remove_user(store_conn, "ana")
    assert access.session_by_hash(store_conn, "s1", now_ts=50) is None
    with store.transaction(store_conn):
        access.add_session(
            store_conn, id_sha256="s2", user_name="x", csrf="c", now_ts=5, expires_ts=9
        )
        access.end_session(store_conn, "s2")
    with pytest.raises(LookupError):
        access.link_key(store_conn, "no_such_kind")


# plots ---------------------------------------------------------------------------------------


def test_a_plot_is_recorded_once_and_found_by_its_inputs(store_conn: store.Connection) -> None:
    plot = PlotRow(
        id="p" * 64,
        kind="timeline",
        query={"camera": "yard", "since": None},
        data={"series": [1, 2.5]},
        event_ids=[3, 1],
        code_version="0.1.0+gtest",
        created_ts=12.25,
    )
    with store.transaction(store_conn):
        assert store.plots.insert(store_conn, plot)
        assert not store.plots.insert(store_conn, plot)
    assert store.plots.get(store_conn, plot.id) == plot
    assert store.plots.get(store_conn, "nothing") is None
    found = store.plots.find(
        store_conn, query=plot.query, data=plot.data, code_version=plot.code_version
    )
    assert found == plot.id
    assert store.plots.find(store_conn, query={}, data=plot.data, code_version="x") is None


# agents --------------------------------------------------------------------------------------


def _status(*, sent_ts: float, state: str = "online", captured: int = 0) -> StatusUpdate:
    return StatusUpdate(
        agent_id="cam-host",
        state=state,
        heard_ts=sent_ts + 0.5,
        sent_ts=sent_ts,
        versions_json='{"code": "x"}' if state == "online" else None,
        provider="CPUExecutionProvider",
        outbox_depth=2,
        outbox_dropped=0,
        outbox_oldest_age_s=1.5,
        cameras_json=f'[{{"name": "yard", "counters": {{"captured": {captured}}}}}]',
        inference_ms=12.5,
    )


def test_an_agents_status_and_clock(store_conn: store.Connection) -> None:
    agents = store.agents
    clock_max = 10_000.0
    with store.transaction(store_conn):
        agents.heard_from(
            store_conn, agent_id="cam-host", heard_ts=100, clock_ts=90, clock_max_ts=clock_max
        )
        agents.heard_from(  # older capture time: the clock stays
            store_conn, agent_id="cam-host", heard_ts=99, clock_ts=80, clock_max_ts=clock_max
        )
        agents.heard_from_many(
            store_conn,
            heard_ts=101,
            clocks={"cam-host": 95, "gate-host": 50},
            clock_max_ts=clock_max,
        )
    cam = agents.get(store_conn, "cam-host")
    assert cam is not None and (cam.state, cam.last_seen_ts, cam.clock_ts) == ("online", 101, 95)
    assert store.counters.row_counts(store_conn).agents == 2  # the trigger counts new agents
    with store.transaction(store_conn):
        assert agents.record_status(store_conn, _status(sent_ts=200), clock_max_ts=clock_max) == 200
        # 10 frames in 10 s of the agent's clock: 1 fps
        assert (
            agents.record_status(
                store_conn, _status(sent_ts=210, captured=10), clock_max_ts=clock_max
            )
            == 210
        )
    cam = agents.get(store_conn, "cam-host")
    assert cam is not None and cam.cameras[0]["fps"] == 1.0
    with store.transaction(store_conn):
        # an older status is refused, an offline one (the last will) always applies
        assert (
            agents.record_status(store_conn, _status(sent_ts=150), clock_max_ts=clock_max) is None
        )
        assert (
            agents.record_status(
                store_conn, _status(sent_ts=150, state="offline"), clock_max_ts=clock_max
            )
            == 210
        )
    cam = agents.get(store_conn, "cam-host")
    assert cam is not None
    assert (cam.state, cam.status_sent_ts, cam.versions, cam.inference_ms) == (
        "offline",
        210,
        {"code": "x"},  # an offline status without versions keeps the ones known
        12.5,
    )
    # a clock stored beyond clock_max (before times were checked) is replaced by the next one
    with store.transaction(store_conn):
        agents.heard_from(
            store_conn, agent_id="gate-host", heard_ts=102, clock_ts=20_000, clock_max_ts=30_000
        )
        agents.heard_from(
            store_conn, agent_id="gate-host", heard_ts=103, clock_ts=60, clock_max_ts=clock_max
        )
    gate = agents.get(store_conn, "gate-host")
    assert gate is not None and gate.clock_ts == 60
    assert [a.agent_id for a in agents.list_agents(store_conn)] == ["cam-host", "gate-host"]
    assert agents.get(store_conn, "nobody") is None


# not yet on PostgreSQL: secagg refuses it ----------------------------------------------------


def test_secagg_refuses_a_postgresql_store_while_a_module_is_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every module works on PostgreSQL now; a module (or a part of secagg) added later that
    does not yet is marked so, and then every command, Ingest and create_app refuse a
    PostgreSQL store with what is missing, never half a service."""
    url = "postgresql://secagg:hunter2@127.0.0.1:1/secagg"
    assert all(store.POSTGRES_MODULES.values())
    assert store.schema.POSTGRES_MISSING_OUTSIDE_THE_STORE == ()
    store.require_complete(url)  # nothing missing: accepted
    monkeypatch.setitem(store.POSTGRES_MODULES, "events", False)
    config_path = tmp_path / "secagg.yaml"
    config_path.write_text(f"store:\n  url: {url}\n")
    for command in (["serve"], ["notifications"], ["history", "cam-host"], ["user", "list"]):
        result = CliRunner().invoke(main, [*command, "--config", str(config_path)])
        assert result.exit_code == 1, (command, result.output)
        assert "the PostgreSQL backend is not complete yet" in result.output
        assert "what does not work on it yet: events" in result.output
        assert "hunter2" not in result.output  # the password is not shown
    config = AggregatorConfig.model_validate({"store": {"url": url}})
    with pytest.raises(store.BackendIncomplete):
        Ingest(config)
    with pytest.raises(store.BackendIncomplete):
        create_app(config)
    store.require_complete(tmp_path / "secagg.sqlite")  # SQLite: never refused


def test_check_config_never_prints_the_password_of_a_postgresql_url(tmp_path: Path) -> None:
    config_path = tmp_path / "secagg.yaml"
    config_path.write_text("store:\n  url: postgresql://secagg:hunter2@db.example.org/secagg\n")
    result = CliRunner().invoke(main, ["check-config", "--config", str(config_path)])
    assert result.exit_code == 0, result.output
    assert "hunter2" not in result.output
    assert "postgresql://secagg:***@db.example.org/secagg" in result.output


def test_a_sqlite_url_is_the_same_as_a_path(tmp_path: Path) -> None:
    config = AggregatorConfig.model_validate(
        {"store": {"url": "sqlite:///secagg.sqlite"}}, context={"base_dir": tmp_path}
    )
    assert config.store.target == config.store.path == tmp_path / "secagg.sqlite"
    store.require_complete(config.store.target)  # SQLite: nothing refused


# releases, rollouts, ota ---------------------------------------------------------------------


def _release(conn: store.Connection, *, kind: str, tag: str) -> store.releases.ReleaseRow:
    release_id = store.releases.next_id(conn)
    return store.releases.insert(
        conn,
        release_id=release_id,
        kind=kind,
        name=f"{kind}-{tag}",
        tag=tag,
        sha256=f"{release_id:064x}",
        size=1000 + release_id,
        seq=store.releases.next_seq(conn, kind),
        target_path=f"{kind}/{tag}",
        created_ts=10.0 * release_id,
        compat={"min_code": "0.1.0"},
    )


def test_releases_get_ids_and_seqs_never_reused(store_conn: store.Connection) -> None:
    releases = store.releases
    with store.transaction(store_conn):
        assert releases.next_id(store_conn) == 1
        first = _release(store_conn, kind="model", tag="v1")
        second = _release(store_conn, kind="model", tag="v2")
        rules = _release(store_conn, kind="rules", tag="v1")
    assert (first.id, first.seq, second.id, second.seq, rules.id, rules.seq) == (1, 1, 2, 2, 3, 1)
    assert first.compat == {"min_code": "0.1.0"} and first.size == 1001
    assert releases.by_tag(store_conn, "model", "v2") == second
    assert releases.by_tag(store_conn, "model", "v9") is None
    assert [r.id for r in releases.list_releases(store_conn)] == [3, 2, 1]
    assert [r.id for r in releases.list_releases(store_conn, kind="model")] == [2, 1]
    with store.transaction(store_conn):
        store_conn.execute("DELETE FROM releases WHERE id = 3")
    assert releases.next_id(store_conn) == 4  # AUTOINCREMENT: a deleted id is not given again
    with store.transaction(store_conn):
        assert _release(store_conn, kind="rules", tag="v2").id == 4


def test_a_rollout_and_its_agents(store_conn: store.Connection) -> None:
    rollouts = store.rollouts
    with store.transaction(store_conn):
        release = _release(store_conn, kind="model", tag="v1")
        rollout_id = rollouts.create(
            store_conn,
            release_id=release.id,
            mode="shadow",
            shadow_fraction=0.5,
            groups=[["b-host"], ["a-host", "c-host"]],
            success_threshold=0.9,
            error_threshold=0.1,
            now_ts=1.0,
        )
        second = rollouts.create(
            store_conn,
            release_id=release.id,
            mode="active",
            shadow_fraction=0.0,
            groups=[["a-host"]],
            success_threshold=0.9,
            error_threshold=0.1,
            now_ts=2.0,
        )
    assert (rollout_id, second) == (1, 2)
    with store.transaction(store_conn):
        rollouts.update(store_conn, rollout_id, now_ts=3.0, current_group=1)
        rollouts.update(store_conn, second, now_ts=4.0, state="aborted", reason="operator")
        rollouts.set_agent(
            store_conn, rollout_id, "a-host", state="done", now_ts=5.0, previous={"model": 7}
        )
        rollouts.set_agent(store_conn, rollout_id, "a-host", state="done", now_ts=6.0)
    got = rollouts.get(store_conn, rollout_id)
    assert got is not None
    assert (got.state, got.current_group, got.mode, got.updated_ts) == ("running", 1, "shadow", 3)
    aborted = rollouts.get(store_conn, second)
    assert aborted is not None and (aborted.state, aborted.reason) == ("aborted", "operator")
    assert rollouts.get(store_conn, 99) is None
    assert [r.id for r in rollouts.list_rollouts(store_conn)] == [2, 1]
    assert [r.id for r in rollouts.list_rollouts(store_conn, states=["running"])] == [1]
    members = rollouts.agents(store_conn, rollout_id)
    assert [(a.agent_id, a.group_index, a.state) for a in members] == [
        ("b-host", 0, "pending"),
        ("a-host", 1, "done"),
        ("c-host", 1, "pending"),
    ]
    assert members[1].previous == {"model": 7} and members[1].updated_ts == 6.0


def test_desired_states_reports_and_shadow_comparisons(store_conn: store.Connection) -> None:
    ota = store.ota
    doc = {"model": {"release_id": 1, "mode": "shadow"}}
    with store.transaction(store_conn):
        assert ota.set_desired(store_conn, agent_id="a", doc=doc, rollout_id=None, now_ts=1) == 1
        assert ota.set_desired(store_conn, agent_id="a", doc=doc, rollout_id=None, now_ts=2) == 1
        assert ota.set_desired(store_conn, agent_id="a", doc={}, rollout_id=3, now_ts=3) == 2
        assert ota.set_desired(store_conn, agent_id="b", doc=doc, rollout_id=None, now_ts=4) == 1
    assert [d.agent_id for d in ota.unpublished(store_conn)] == ["a", "b"]
    with store.transaction(store_conn):
        ota.mark_published(store_conn, "a", 2)
        ota.mark_published(store_conn, "a", 1)  # never backwards
    desired = ota.get_desired(store_conn, "a")
    assert desired is not None
    assert (desired.generation, desired.published_generation, desired.doc) == (2, 2, {})
    assert desired.rollout_id == 3 and ota.get_desired(store_conn, "z") is None
    assert [d.agent_id for d in ota.unpublished(store_conn)] == ["b"]
    with store.transaction(store_conn):
        for i, state in enumerate(("downloading", "active", "active")):
            added = ota.add_report(
                store_conn,
                report_id=f"r{min(i, 1)}",  # the third is a redelivery of the second
                agent_id="a",
                kind="model",
                release_id=1,
                state=state,
                reason=None,
                rollout_id=3,
                at_ts=10.0 + i,
                received_ts=11.0 + i,
                active={"model": 1},
                detail={"step": i},
            )
            assert added == (i < 2)
        first = ota.add_shadow(
            store_conn,
            report_id="s1",
            agent_id="a",
            release_id=1,
            rollout_id=3,
            at_ts=1,
            figures={"frames": 10},
        )
        again = ota.add_shadow(
            store_conn,
            report_id="s1",
            agent_id="a",
            release_id=1,
            rollout_id=3,
            at_ts=1,
            figures={"frames": 10},
        )
        later = ota.add_shadow(
            store_conn,
            report_id="s2",
            agent_id="a",
            release_id=1,
            rollout_id=3,
            at_ts=2,
            figures={"frames": 20},
        )
    assert first == 1 and again is None and later is not None and later > first
    found = ota.reports(store_conn, "a")
    assert [(r.report_id, r.state, r.detail) for r in found] == [
        ("r0", "downloading", {"step": 0}),
        ("r1", "active", {"step": 1}),
    ]
    assert ota.reports(store_conn, "a", release_id=2) == []
    latest = ota.latest_report(store_conn, "a", release_id=1)
    assert latest is not None and latest.report_id == "r1"
    shadows = ota.shadow_reports(store_conn, release_id=1)
    assert [(s.report_id, s.figures) for s in shadows] == [("s2", {"frames": 20})]


# notifications -------------------------------------------------------------------------------


def _event(conn: store.Connection, *, camera: str, started_ts: float, ended: bool = False) -> int:
    """An event row as the grouping writes it (the events module is not on PostgreSQL yet)."""
    (event_id,) = conn.execute(
        "INSERT INTO events (agent_id, camera, rule, label, severity, started_ts, last_seen_ts, "
        "ended_ts, threat_count, top_score, top_message_id) "
        "VALUES ('cam-host', ?, 'person', 'person', 'high', ?, ?, ?, 1, 0.9, 'm') RETURNING id",
        (camera, started_ts, started_ts + 5, started_ts + 5 if ended else None),
    ).fetchone()
    return int(event_id)


def _decided(event_id: int, *, kind: str = "new", state: str = "pending", at: float = 10.0):  # type: ignore[no-untyped-def]
    return store.models.NewNotification(
        event_id=event_id,
        notifier="mail",
        channel="email",
        kind=kind,
        state_key=f"{kind}-{at}",
        state=state,
        created_ts=at,
        next_attempt_ts=at if state == "pending" else None,
        code_version="0.1.0+gtest",
    )


def test_notifications_their_attempts_and_what_is_due(store_conn: store.Connection) -> None:
    n = store.notifications
    with store.transaction(store_conn):
        yard = _event(store_conn, camera="yard", started_ts=100)
        door = _event(store_conn, camera="yard", started_ts=103)
        ended = _event(store_conn, camera="gate", started_ts=50, ended=True)
        assert n.insert(store_conn, _decided(yard))
        # the same event state: never twice (its refused insert takes id 2, on both backends)
        assert not n.insert(store_conn, _decided(yard))
        assert n.insert(store_conn, _decided(door, at=12.0))
        assert n.insert(store_conn, _decided(ended, state="sent", at=5.0))
    first = n.first_of(store_conn, event_id=yard, notifier="mail")
    assert first is not None and (first.id, first.state, first.attempts) == (1, "pending", 0)
    assert n.get(store_conn, 99) is None
    assert n.camera_notified_within(
        store_conn,
        camera="yard",
        other_than_event=door,
        notifier="mail",
        started_ts=103,
        window_s=10,
    )
    assert not n.camera_notified_within(
        store_conn,
        camera="gate",
        other_than_event=ended,
        notifier="mail",
        started_ts=50,
        window_s=10,
    )
    assert n.next_due_ts(store_conn, notifiers=["mail"]) == 10.0
    assert n.next_due_ts(store_conn, notifiers=["hook"]) is None
    with store.transaction(store_conn):  # a sender claims what is due, for 60 s
        assert n.claim_due(
            store_conn, now_ts=11, notifiers=["mail"], by="a", lease_s=60, limit=10
        ) == [1]
    with store.transaction(store_conn):  # another sender: 1 is a's until 71
        assert n.claim_due(
            store_conn, now_ts=20, notifiers=["mail", "hook"], by="b", lease_s=60, limit=10
        ) == [3]
    assert n.next_due_ts(store_conn, notifiers=["mail"]) == 71.0  # when a's claim of 1 ends
    with store.transaction(store_conn):  # a died: its claim ran out
        assert n.claim_due(
            store_conn, now_ts=72, notifiers=["mail"], by="c", lease_s=60, limit=10
        ) == [1]
    with store.transaction(store_conn):
        n.defer(store_conn, 3, until_ts=30.0, error="busy")
        n.set_content(store_conn, 1, content_json='{"a": 1}', content_sha256="c" * 64)
        n.record_attempt(
            store_conn,
            store.models.AttemptRow(1, 1, 11.0, 11.5, "sent", None),
            state="sent",
            next_attempt_ts=None,
            sent_ts=11.5,
        )
    sent = n.get(store_conn, 1)
    assert sent is not None
    assert (sent.state, sent.attempts, sent.sent_ts, sent.content_json) == (
        "sent",
        1,
        11.5,
        '{"a": 1}',
    )
    assert n.attempts_of(store_conn, 1) == [store.models.AttemptRow(1, 1, 11.0, 11.5, "sent", None)]
    # 3 deferred (its claim released) to 30, 1 sent: nothing is due at 20
    assert (
        n.claim_due(store_conn, now_ts=20, notifiers=["mail"], by="d", lease_s=60, limit=10) == []
    )
    assert n.next_due_ts(store_conn, notifiers=["mail"]) == 30.0
    # the yard event's only notification is sent and old: a repeat is due; the door event's
    # is still pending; the gate event has ended
    assert n.repeats_due(store_conn, last_before_ts=100) == [
        store.models.RepeatDue(event_id=yard, notifier="mail", repeats=0)
    ]
    with store.transaction(store_conn):
        assert n.insert(store_conn, _decided(yard, kind="repeat", state="sent", at=40.0))
    assert n.repeats_due(store_conn, last_before_ts=100)[0].repeats == 1
    assert n.repeats_due(store_conn, last_before_ts=30) == []
    assert [r.id for r in n.list_notifications(store_conn, limit=10)] == [5, 4, 3, 1]
    assert [r.id for r in n.list_notifications(store_conn, limit=10, before_id=3)] == [1]
    assert [r.id for r in n.list_notifications(store_conn, limit=10, state="pending")] == [3]
    assert [r.id for r in n.list_notifications(store_conn, limit=10, event_id=yard)] == [5, 1]
    assert n.count_by_state(store_conn) == {"pending": 1, "sent": 3}


# logs ----------------------------------------------------------------------------------------


def _line(i: int, **ids: object) -> store.logs.LogRow:
    values: dict[str, object] = {
        "id": 0,
        "source": "agent",
        "agent_id": "cam-host",
        "level": "WARNING",
        "logger": "agent.capture",
        "msg": f"line {i} 100% done?",
        "at_ts": 100.0 + i // 2,  # two lines share each time: the id orders them
        "received_ts": 200.0 + i,
        "lineage_id": None,
        "frame_id": None,
        "camera": "yard",
        "message_id": None,
        "event_id": None,
        "release_id": None,
    }
    values.update(ids)
    return store.logs.LogRow(**values)  # type: ignore[arg-type]


def test_log_lines_by_ids_by_agent_in_pages_and_pruned(store_conn: store.Connection) -> None:
    logs = store.logs
    lines = [_line(i) for i in range(6)]
    lines[1] = _line(1, lineage_id="L1", event_id=7)
    lines[4] = _line(4, frame_id="F4", agent_id="gate-host")
    with store.transaction(store_conn):
        logs.insert(store_conn, lines)
    about = logs.about(store_conn, lineage_ids=["L1"], frame_ids=["F4"], event_ids=[99])
    assert [(r.id, r.msg) for r in about] == [(2, "line 1 100% done?"), (5, "line 4 100% done?")]
    assert logs.about(store_conn) == []
    of_cam = logs.of_agent(store_conn, "cam-host", since_ts=100, until_ts=102)
    assert [r.id for r in of_cam] == [1, 2, 3, 4]
    page = logs.of_agent(store_conn, "cam-host", limit=2, after=(of_cam[1].at_ts, of_cam[1].id))
    assert [r.id for r in page] == [3, 4]
    assert [r.id for r in logs.recent(store_conn, limit=3)] == [4, 5, 6]
    assert [r.id for r in logs.recent(store_conn, limit=2, before_id=4)] == [2, 3]
    with store.transaction(store_conn):
        assert logs.prune(store_conn, keep_rows=2) == 4
    assert [r.id for r in logs.recent(store_conn, limit=10)] == [5, 6]


# the ingest path: messages, threats, events, lineage, snapshots, retention -------------------


def _store_batch(target: store.schema.Target, config: AggregatorConfig, payloads: list[Any]) -> Any:
    """What the ingest writer does with a batch (tests/support/ingest.py's store_payloads), on
    the store at ``target``, at a fixed time so both backends store the same rows."""
    conn = store.connect(target)
    try:
        return store_on(conn, config, payloads, now_ts=T0.timestamp() + 3600)
    finally:
        conn.close()


def _answers(conn: store.Connection) -> dict[str, Any]:
    """What the API, the pages, the plots and the lineage read, on one backend."""
    listed = store.events.list_events(conn, limit=100)
    first = listed[-1].id
    message = store.messages.of_event(conn, first)[0]
    frame = f"frame:{message.frame_sha256}"
    return {
        "row_counts": store.counters.row_counts(conn),
        "ingest_counters": store.counters.ingest_counters(conn),
        "events": listed,
        "open": store.events.list_events(conn, limit=100, state="open"),
        "of_cameras": store.events.list_events(conn, limit=100, cameras=["door"]),
        "no_cameras": store.events.list_events(conn, limit=100, cameras=[]),
        "started": store.events.started_between(conn, since_ts=T0.timestamp()),
        "distinct": store.events.distinct_values(conn),
        "camera_stats": store.events.camera_stats(conn),
        "latest_id": store.events.latest_id(conn),
        # (when an agent was heard is secagg's wall clock: left out)
        "open_clocks": [
            (c.event_id, c.last_seen_ts, c.agent_clock_ts)
            for c in store.events.open_with_clocks(conn)
        ],
        "rules": store.events.rules_of_agent(conn, "cam-host"),
        "threats": store.messages.list_threats(conn, limit=100),
        "threats_of_yard": store.messages.list_threats(conn, limit=100, camera="yard"),
        "of_event": store.messages.threats_of_event(conn, first),
        "messages_of_event": store.messages.of_event(conn, first),
        "cards": (  # a page of event cards: their top messages and those messages' threats
            store.messages.get_many(conn, [e.top_message_id for e in listed] + ["gone"]),
            store.messages.threats_of_messages(conn, [e.top_message_id for e in listed]),
            {
                e.top_message_id: store.messages.threats_of_message(conn, e.top_message_id)
                for e in listed
            },
        ),
        "hourly": store.messages.hourly_threat_counts(conn),
        # ties of arrival: by rowid on SQLite, message id on PostgreSQL (m005's backfill only)
        "by_arrival": sorted(store.messages.all_by_arrival(conn)),
        "frames": store.snapshot_files.frames_of_event(conn, first),
        "upstream": store.lineage.walk(conn, f"event:{first}", direction="upstream"),
        "closure": sorted(store.lineage.closure_ids(conn, f"event:{first}", direction="upstream")),
        "prefix": store.lineage.ids_with_prefix(conn, "frame:", limit=5),
        "agents": [
            (a.agent_id, a.state, a.clock_ts, a.cameras) for a in store.agents.list_agents(conn)
        ],
        "oldest": store.prune.oldest_messages(conn, before_ts=T0.timestamp() + 40, limit=10),
        "downstream": store.lineage.walk(conn, frame, direction="downstream"),
        "by_code": store.compact_lineage.by_code(conn, "test", limit=3),
        "by_run": store.compact_lineage.by_run(conn, [1, 2, 5, 9]),
        "key_range": store.compact_lineage.key_range(conn, "frame", "", limit=3),
        "stored": store.messages.stored(
            conn, message_ids=[message.message_id, "nothing"], content_keys=["nothing"]
        ),
        "snapshot_last": store.messages.snapshots_last_captured_before(conn, 2e9),
        "referring": store.messages.referring_to_snapshot(conn, "x" * 64),
        "in_open_event": store.snapshot_files.in_open_event(conn, "x" * 64),
        "is_event_best": store.snapshot_files.is_event_best(conn, "x" * 64),
        "last_captured": store.snapshot_files.last_captured(conn, ["x" * 64]),
        "unreferenced": store.prune.unreferenced(conn, ["x" * 64]),
        "reviews": store.events.reviews_of(conn, [first]),
    }


def test_the_ingest_path_answers_the_same_on_both_backends(
    tmp_path: Path, postgres: Postgres
) -> None:
    """The same batches stored through the ingest's own code (records.store_batch: messages,
    threats, events, compact lineage, agents, counters) into a SQLite file and a PostgreSQL
    database give the same answers to every read; then retention and the snapshot bookkeeping
    do the same on both."""
    config = make_config(tmp_path)
    first = threat_payload(at_s=0)
    batches = [
        [
            first,
            threat_payload(at_s=1),
            threat_payload(at_s=50, camera="door"),
            threat_payload(agent_id="gate-host", at_s=3),
            first,  # a redelivery
            threat_payload(at_s=4000, camera="door"),  # another hour
        ],
        [status_payload(), threat_payload(at_s=4100)],
    ]
    targets: list[store.schema.Target] = [
        tmp_path / "secagg.sqlite",
        postgres.create_database("ingest_path"),
    ]
    found = []
    for target in targets:
        store.migrate(target)
        results = [_store_batch(target, config, batch).counts for batch in batches]
        conn = store.connect(target)
        try:
            found.append((results, _answers(conn)))
        finally:
            conn.close()
    (sqlite_results, on_sqlite), (pg_results, on_pg) = found
    assert pg_results == sqlite_results
    assert sqlite_results == [{"stored": 5, "duplicate": 1}, {"status": 1, "stored": 1}]
    for name in on_sqlite:
        assert on_pg[name] == on_sqlite[name], name
    assert on_sqlite["row_counts"].events == 5 and len(on_sqlite["hourly"][0]) == 4
    assert on_sqlite["no_cameras"] == [] and on_sqlite["closure"]
    assert len(on_sqlite["downstream"][0]) > 1 and on_sqlite["by_code"] and on_sqlite["by_run"]
    assert len(on_sqlite["stored"]) == 1 and on_sqlite["key_range"]
    cards, card_threats, one_by_one = on_sqlite["cards"]
    assert sorted(cards) == sorted({e.top_message_id for e in on_sqlite["events"]})
    assert card_threats == one_by_one and all(card_threats.values())

    # retention and the snapshots' bookkeeping, the same on both
    after = []
    for target in targets:
        conn = store.connect(target)
        try:
            with store.transaction(conn):
                ended = [e.id for e in store.events.list_events(conn, limit=100, state="open")]
                store.events.end(conn, ended[:2])
                store.snapshot_files.keep(conn, ended[0], [("s" * 64, "top"), ("s" * 64, "top")])
                store.snapshot_files.decide(conn, [("d" * 64, "policy")], now_ts=5.0)
                store.snapshot_files.decide(conn, [("d" * 64, "age")], now_ts=6.0)
                old = store.prune.oldest_messages(conn, before_ts=T0.timestamp() + 40, limit=10)
                pruned = store.prune.delete_messages(conn, old, now_ts=7.0)
                token = store.events.change_token(conn)
                reviewed = store.events.mark_reviewed(conn, [ended[0], 999], by="ana", now_ts=8.0)
            after.append(
                (
                    pruned,
                    store.counters.row_counts(conn),
                    store.snapshot_files.kept_by_event(conn, ended[0]),
                    store.snapshot_files.pending(conn),
                    store.snapshot_files.deleted_reasons(conn, ["d" * 64]),
                    store.snapshot_files.protected(conn, "s" * 64, ending=[]),
                    store.prune.pruned_at(conn, pruned.event_ids[0]) if pruned.event_ids else None,
                    store.events.list_events(conn, limit=100),
                    (token[0], token[1]),
                    token[2] is not None,
                    reviewed,
                    store.events.reviews_of(conn, [ended[0]]),
                )
            )
        finally:
            conn.close()
    assert after[1] == after[0]
    assert after[0][0].messages > 0


def test_writers_run_one_at_a_time(store_target: store.schema.Target) -> None:
    """A second writer's transaction starts only once the first has committed (SQLite:
    BEGIN IMMEDIATE; PostgreSQL: the write lock), so what a store function read stays true
    until it writes. Readers never wait."""
    import threading
    import time

    first, second, reader = (store.connect(store_target) for _ in range(3))
    order: list[str] = []
    started = threading.Event()

    def write_second() -> None:
        started.set()
        with store.transaction(second):
            order.append("second in")
            store.counters.bump(second, {"n": 1})

    try:
        with store.transaction(first):
            store.counters.bump(first, {"n": 1})
            thread = threading.Thread(target=write_second)
            thread.start()
            started.wait(5)
            time.sleep(0.3)  # give the second writer time to (wrongly) get in
            assert store.counters.ingest_counters(reader) == {}  # a reader does not wait
            order.append("first out")
        thread.join(10)
        assert order == ["first out", "second in"]
        assert store.counters.ingest_counters(reader) == {"n": 2}
    finally:
        for conn in (first, second, reader):
            conn.close()


def test_ingest_workers_beat_and_leave(store_conn: store.Connection) -> None:
    w = store.workers
    assert w.all_of(store_conn) == []
    beat = store.models.WorkerRow("w2", "host-b", 12, 100.0, 101.0, True, [])
    with store.transaction(store_conn):
        w.beat(store_conn, beat)
        w.beat(store_conn, beat._replace(name="w1", host="host-a", pid=11))
    with store.transaction(store_conn):  # a later beat replaces the row
        w.beat(
            store_conn,
            beat._replace(heartbeat_ts=131.0, broker_connected=False, problems=["broker down"]),
        )
    assert w.all_of(store_conn) == [
        store.models.WorkerRow("w1", "host-a", 11, 100.0, 101.0, True, []),
        store.models.WorkerRow("w2", "host-b", 12, 100.0, 131.0, False, ["broker down"]),
    ]
    with store.transaction(store_conn):
        w.leave(store_conn, "w1")
    assert [r.name for r in w.all_of(store_conn)] == ["w2"]


def test_a_snapshot_of_an_event_without_a_policy_stays_whatever_else_ends(
    tmp_path: Path, postgres: Postgres
) -> None:
    """snapshot_files.protected with no event ending (NOT IN (NULL) was never true, so such a
    snapshot was not protected) and with its own event ending, on both backends."""
    config = make_config(tmp_path)
    targets: list[store.schema.Target] = [
        tmp_path / "protected.sqlite",
        postgres.create_database("protected"),
    ]
    for target in targets:
        store.migrate(target)
        _store_batch(target, config, [payload(at_s=0)])
        conn = store.connect(target)
        try:
            (event,) = store.events.list_events(conn, limit=10)
            assert store.snapshot_files.protected(conn, JPEG_SHA, ending=[]), target
            assert not store.snapshot_files.protected(conn, JPEG_SHA, ending=[event.id]), target
        finally:
            conn.close()
