"""Many ``secagg serve`` processes on one store: one ``--role api`` and three ingest workers on
a SQLite file (two on a PostgreSQL database, as workers on several machines would run) on the
MQTT 5 shared subscription, three agents whose threats share group keys (their
cameras belong to two sites), one worker SIGKILLed mid-stream. Every message stored once, one
event per group key, one notification per event, and the API process counts what the workers
stored. Then the notification claim on its own, on both backends (``store_target``: SQLite, then
PostgreSQL): two senders, one notification each; a dead claimer's notification taken over once
its lease ran out; four threads claiming at once."""

from __future__ import annotations

import sqlite3
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from aggregator import store
from aggregator.api.routes.health import worker_problems
from aggregator.api.schemas import WorkerHealth
from aggregator.config import AggregatorConfig
from aggregator.notify.sender import NotificationSender
from aggregator.store.models import NewEvent, NewNotification
from demo.broker import Mosquitto
from tests.support import wait_for
from tests.support.auth import HEADERS, seed_tokens
from tests.support.processes import (
    ServeProcess,
    finish,
    start_test_threats,
    write_agent_config,
    write_aggregator_config,
)
from tests.support.servers import WebhookServer

AGENTS = ("gate-a", "gate-b", "gate-c")
PER_AGENT = 300
SITES = "{test-0: north, test-1: north, test-2: south}"


def rows(db: store.schema.Target, sql: str) -> list[tuple[object, ...]]:
    if isinstance(db, str):  # a PostgreSQL URL
        with psycopg.connect(db, autocommit=True) as pg:
            try:
                return list(pg.execute(sql).fetchall())
            except psycopg.errors.UndefinedTable:
                return []
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return conn.execute(sql).fetchall()
    except sqlite3.OperationalError:
        return []  # not migrated yet
    finally:
        conn.close()


def stored(db: store.schema.Target) -> int:
    found = rows(db, "SELECT COUNT(*) FROM messages")
    return int(str(found[0][0])) if found else 0


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    with Mosquitto(tmp_path / "broker") as running:
        yield running


@pytest.mark.parametrize(
    ("backend", "names"), [("sqlite", ("w1", "w2", "w3")), ("postgresql", ("w1", "w2"))]
)
def test_workers_and_an_api_on_one_store(
    tmp_path: Path,
    broker: Mosquitto,
    backend: str,
    names: tuple[str, ...],
    request: pytest.FixtureRequest,
) -> None:
    """Three workers on a SQLite file; two on a PostgreSQL database (writers on any machine)."""
    with WebhookServer() as hook:
        config, api = write_aggregator_config(
            tmp_path,
            broker,
            cutoff_s=120,
            client_id="secagg-scale",
            extra_yaml=(
                "notify:\n  notifiers:\n"
                f"    - {{name: soc, type: webhook, url: '{hook.url}', "
                "retry: {backoff_base_s: 0.2}}\n"
            ),
        )
        # every agent's cameras belong to two sites: the group keys of three agents collide
        config.write_text(config.read_text().replace("events: {", f"events: {{sites: {SITES}, "))
        db: store.schema.Target = tmp_path / "secagg.sqlite"
        if backend == "postgresql":
            db = request.getfixturevalue("postgres").create_database("workers")
            seed_tokens(db)
            config.write_text(
                config.read_text().replace("store: {path: secagg.sqlite", f"store: {{url: '{db}'")
            )
        api_proc = ServeProcess(config, role="api")
        workers = [ServeProcess(config, role="ingest", worker=name) for name in names]
        procs = [api_proc, *workers]
        try:
            for proc in procs:  # started together: they migrate the new store in turn
                proc.start(wait=False)
            for proc in procs:
                wait_for(proc.ready, timeout_s=60, what=f"secagg {proc.name} to be ready")
            gens = []
            for agent in AGENTS:
                work = tmp_path / agent
                work.mkdir()
                agent_conf = write_agent_config(
                    work,
                    broker,
                    agent_id=agent,
                    cameras=f"  - name: unused\n    source: {{type: directory, path: {work}}}\n",
                )
                gens.append(start_test_threats(agent_conf, count=PER_AGENT, rate_hz=150))
            wait_for(lambda: stored(db) >= PER_AGENT, timeout_s=60, what="a third stored")
            workers[1].kill()  # mid-stream: what it held unacknowledged the agents send again
            for gen in gens:
                summary = finish(gen)
                assert summary["outbox_depth"] == 0, summary

            # every message once (the agents drained their outboxes: all receipted)
            messages = rows(db, "SELECT agent_id, frame_id FROM messages")
            assert len(messages) == len(AGENTS) * PER_AGENT
            assert len(set(messages)) == len(messages)
            # one event per group key, though three workers stored the threats of each
            keys = Counter(str(r[0]) for r in rows(db, "SELECT group_key FROM events"))
            assert sorted(keys) == [
                "site=north|rule=person_on_premises",
                "site=south|rule=person_on_premises",
            ]
            assert set(keys.values()) == {1}, keys

            # one notification per event, sent once, though four processes run a sender
            def notified() -> list[int]:
                ids = [body["event"]["event_id"] for _, body in hook.requests]
                return ids if len(ids) >= len(keys) else []

            event_ids = wait_for(notified, timeout_s=30, what="the notifications")
            assert sorted(event_ids) == sorted(
                int(str(r[0])) for r in rows(db, "SELECT id FROM events")
            )
            states = rows(db, "SELECT state, claimed_by FROM notifications")
            assert states == [("sent", None)] * len(keys)

            # the killed worker back; the API process counts what the workers stored, and
            # sees the workers by their heartbeats (w2's from its new process)
            workers[1].start()
            assert workers[1].proc is not None
            pid = workers[1].proc.pid

            def healthy() -> dict[str, Any] | None:
                health: dict[str, Any] = httpx.get(
                    f"{api}/api/health", headers=HEADERS, timeout=5
                ).json()
                beats = {w["name"]: w["pid"] for w in health["workers"]}
                ok = health["status"] == "ok" and sorted(beats) == list(names)
                return health if ok and beats["w2"] == pid else None

            health = wait_for(healthy, timeout_s=30, what="health with every worker")
            assert health["messages"] == len(AGENTS) * PER_AGENT
            assert health["events"] == health["open_events"] == len(keys)
            assert health["counters"]["stored"] == len(AGENTS) * PER_AGENT
            assert all(w["broker_connected"] and not w["problems"] for w in health["workers"])
            assert stored(db) == len(AGENTS) * PER_AGENT
        finally:
            codes = {proc.name: proc.stop() for proc in reversed(procs)}
        assert codes == dict.fromkeys(codes, 0), codes
        assert rows(db, "SELECT name FROM ingest_workers") == []  # stopped, not expected
        assert len(hook.requests) == len(keys)
        for proc in procs:
            assert "Traceback" not in proc.log.read_text(), proc.log.read_text()[-3000:]


def pending(conn: store.Connection, count: int, *, now_ts: float) -> list[int]:
    """``count`` events, each with a ``new`` notification due now on notifier ``soc``."""
    ids = []
    with store.transaction(conn):
        for i in range(count):
            event_id = store.events.create(
                conn,
                NewEvent(
                    agent_id="gate-a",
                    camera=f"cam-{i}",
                    rule="person_on_premises",
                    label="person",
                    severity="low",
                    captured_ts=now_ts,
                    score=0.9,
                    message_id=f"m{i}",
                    group_key=f"agent_id=gate-a|camera=cam-{i}|rule=person_on_premises",
                    cutoff_s=30,
                ),
            )
            ids.append(event_id)
            store.notifications.insert(
                conn,
                NewNotification(
                    event_id=event_id,
                    notifier="soc",
                    channel="webhook",
                    kind="new",
                    state_key="low",
                    state="pending",
                    created_ts=now_ts,
                    next_attempt_ts=now_ts,
                    code_version="test",
                ),
            )
    return ids


def sender_config(target: store.schema.Target, url: str) -> AggregatorConfig:
    """A notifier on ``target`` (a migrated store on each backend in turn: ``store_target``)."""
    where = {"url": target} if isinstance(target, str) else {"path": str(target)}
    return AggregatorConfig.model_validate(
        {"store": where, "notify": {"notifiers": [{"name": "soc", "type": "webhook", "url": url}]}}
    )


def test_two_senders_send_each_notification_once(store_target: store.schema.Target) -> None:
    with WebhookServer() as hook:
        config = sender_config(store_target, hook.url)
        conn = store.connect(config.store.target)
        events = pending(conn, 40, now_ts=1_000.0)
        senders = [NotificationSender(config), NotificationSender(config)]
        for i, sender in enumerate(senders):
            sender.claimant = f"sender-{i}"
            sender.start()  # its thread sends what is due at once
        try:
            wait_for(lambda: len(hook.requests) >= len(events), what="40 notifications")
        finally:
            for sender in senders:
                sender.stop()
        sent = [body["event"]["event_id"] for _, body in hook.requests]
        assert sorted(sent) == events  # each once
        assert all(s.sent > 0 for s in senders), [s.sent for s in senders]
        conn.close()


def claim(conn: store.Connection, *, now_ts: float, by: str) -> list[int]:
    with store.transaction(conn):
        return store.notifications.claim_due(
            conn, now_ts=now_ts, notifiers=["soc"], by=by, lease_s=60.0, limit=10
        )


def test_a_dead_claimers_notification_is_taken_over_after_its_lease(
    store_target: store.schema.Target,
) -> None:
    conn = store.connect(store_target)
    (event,) = pending(conn, 1, now_ts=1_000.0)
    (held,) = claim(conn, now_ts=1_000.0, by="dead:1")
    # ...and the claimer dies without recording an attempt
    assert claim(conn, now_ts=1_059.0, by="live:2") == []
    assert store.notifications.next_due_ts(conn, notifiers=["soc"]) == 1_060.0
    assert claim(conn, now_ts=1_061.0, by="live:2") == [held]
    assert store.notifications.first_of(conn, event_id=event, notifier="soc") is not None
    conn.close()


def test_claims_from_threads_never_overlap(store_target: store.schema.Target) -> None:
    setup = store.connect(store_target)
    ids = pending(setup, 200, now_ts=1_000.0)
    setup.close()
    claimed: dict[str, list[int]] = {}

    def claimer(name: str) -> None:
        conn = store.connect(store_target)
        mine: list[int] = []
        while True:
            with store.transaction(conn):
                got = store.notifications.claim_due(
                    conn, now_ts=1_000.0, notifiers=["soc"], by=name, lease_s=60, limit=3
                )
            if not got:
                break
            mine += got
        claimed[name] = mine
        conn.close()

    threads = [threading.Thread(target=claimer, args=(f"c{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    everything = [i for mine in claimed.values() for i in mine]
    assert sorted(everything) == ids


def test_a_worker_not_heard_from_or_in_trouble_degrades_health() -> None:
    def worker(age_s: float, problems: list[str]) -> WorkerHealth:
        return WorkerHealth(
            name="w1",
            host="h",
            pid=7,
            heartbeat_age_s=age_s,
            broker_connected=True,
            problems=problems,
        )

    assert worker_problems([worker(1.0, [])]) == []
    assert worker_problems([worker(45.0, [])]) == [
        "ingest worker w1 (pid 7 on h) not heard from for 45 s"
    ]
    assert worker_problems([worker(1.0, ["broker not connected"])]) == [
        "ingest worker w1: broker not connected"
    ]
