"""The ingest's batches on PostgreSQL write side by side where they do not depend on each other
and take turns where they do (docs/scale.md, "Locking"; ``aggregator.store.locks``).

Batch A's transaction is held open at its last step (the real ``records.store_batch``, paused
in ``retention.on_batch`` on a threading.Event) while batch B runs on another connection: B of
another agent commits meanwhile; B of the same agent, of the same site's group key, or of the
same camera under a notifier's cool-down waits (seen in ``pg_stat_activity``: an advisory
lock) and, once A commits, joins A's event / sees A's notification. An exclusive writer waits
for A too. Then many threads store batches with colliding group keys and duplicates at once:
every message once, one event per group key, one notification per event, counters that add
up, run ids never shared, no deadlock."""

from __future__ import annotations

import itertools
import random
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from aggregator import events, retention, store
from aggregator.config import AggregatorConfig
from aggregator.threat_batch import RUNS_PER_MESSAGE
from demo.postgres import Postgres
from tests.support import wait_for
from tests.support.ingest import T0, make_config, status_payload, store_on, threat_payload

NOW_TS = T0.timestamp() + 3600
HELD = "batch-a"


def _store(conn: store.Connection, config: AggregatorConfig, payloads: list[Any]) -> Any:
    return store_on(conn, config, payloads, now_ts=NOW_TS)


_databases = itertools.count(1)


@pytest.fixture
def target(postgres: Postgres) -> str:
    url = postgres.create_database(f"locks_{next(_databases)}")
    store.migrate(url)
    return url


def _versions_known(target: str, config: AggregatorConfig) -> None:
    """Store one threat of agent a0 first: the artifacts every threat names (its model, rules,
    config and code versions) are then stored. (The first batches to name a version new to
    the store take turns on its row until one commits: aggregator.store.lineage.add_artifacts.)
    """
    conn = store.connect(target)
    try:
        _store(conn, config, [threat_payload(agent_id="a0", camera="porch")])
    finally:
        conn.close()


class Held:
    """Batch A on a thread of its own, paused inside its transaction (after its writes, before
    COMMIT) until :meth:`release`."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.inside = threading.Event()
        self.go = threading.Event()
        self.result: Any = None
        self.error: BaseException | None = None
        on_batch = retention.on_batch

        def paused(*args: Any, **kwargs: Any) -> None:
            on_batch(*args, **kwargs)
            if threading.current_thread().name == HELD:
                self.inside.set()
                if not self.go.wait(60):
                    raise TimeoutError("batch A was never released")

        monkeypatch.setattr(retention, "on_batch", paused)

    def start(self, target: str, config: AggregatorConfig, payloads: list[Any]) -> None:
        def run() -> None:
            conn = store.connect(target)
            try:
                self.result = _store(conn, config, payloads)
            except BaseException as exc:  # reported by release()
                self.error = exc
            finally:
                conn.close()

        self.thread = threading.Thread(target=run, name=HELD)
        self.thread.start()
        wait_for(self.inside.is_set, what="batch A inside its transaction")

    def release(self) -> Any:
        self.go.set()
        self.thread.join(30)
        assert not self.thread.is_alive()
        if self.error is not None:
            raise self.error
        return self.result


class Other:
    """A writer on a connection and thread of its own (``pid``: its server process)."""

    def __init__(self, target: str, work: Callable[[store.Connection], Any]) -> None:
        self.conn = store.connect(target)
        (self.pid,) = self.conn.execute("SELECT pg_backend_pid()").fetchone()
        self.result: Any = None
        self.error: BaseException | None = None
        self.done = threading.Event()

        def run() -> None:
            try:
                self.result = work(self.conn)
            except BaseException as exc:
                self.error = exc
            finally:
                self.done.set()

        self.thread = threading.Thread(target=run, name="batch-b")
        self.thread.start()

    def finish(self) -> Any:
        wait_for(self.done.is_set, what="batch B done")
        self.thread.join(10)
        self.conn.close()
        if self.error is not None:
            raise self.error
        return self.result


def _waiting_on(observer: store.Connection, pid: int) -> list[int]:
    """The advisory locks server process ``pid`` waits for (its ``pg_stat_activity`` says it
    waits on an advisory lock): the lock's namespace (first integer) in the two-integer form,
    the lock itself in the one-integer form (:data:`aggregator.store.schema.WRITE_LOCK`)."""
    rows = observer.execute(
        "SELECT CASE WHEN l.objsubid = 2 THEN l.classid ELSE l.objid END "
        "FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
        "WHERE l.pid = ? AND NOT l.granted AND l.locktype = 'advisory' "
        "AND a.wait_event_type = 'Lock' AND a.wait_event = 'advisory'",
        (pid,),
    ).fetchall()
    return [int(r[0]) for r in rows]


def _alone(conn: store.Connection) -> str:
    with store.transaction(conn):
        return "in"


@pytest.fixture
def observer(target: str) -> Iterator[store.Connection]:
    conn = store.connect(target)
    try:
        yield conn
    finally:
        conn.close()


def test_a_batch_of_another_agent_commits_while_one_is_open(
    tmp_path: Path, target: str, observer: store.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = make_config(tmp_path)
    _versions_known(target, config)
    held = Held(monkeypatch)
    held.start(target, config, [threat_payload(agent_id="a1", at_s=0)])
    other = Other(target, lambda conn: _store(conn, config, [threat_payload(agent_id="a2")]))
    assert other.finish().counts == {"stored": 1}  # while A is still open
    assert held.thread.is_alive()
    # a writer that holds the write lock alone (the sweep, the API) waits for A
    exclusive = Other(target, _alone)
    assert wait_for(lambda: _waiting_on(observer, exclusive.pid), what="the writer waits") == [
        store.schema.WRITE_LOCK
    ]
    assert held.release().counts == {"stored": 1}
    assert exclusive.finish() == "in"
    assert store.counters.row_counts(observer).events == 3  # a0's, a1's, a2's


@pytest.mark.parametrize(
    ("a", "b", "namespace"),
    [
        # the same agent (and group key): its lock
        (dict(agent_id="a1", at_s=0), dict(agent_id="a1", at_s=5), store.locks.AGENTS),
        # two agents' cameras of one site: one group key across agents
        (dict(agent_id="a1", at_s=0), dict(agent_id="a2", at_s=5), store.locks.GROUP_KEYS),
    ],
    ids=["same agent", "same site"],
)
def test_a_batch_of_the_same_group_key_waits_and_joins_the_event(
    tmp_path: Path,
    target: str,
    observer: store.Connection,
    monkeypatch: pytest.MonkeyPatch,
    a: dict[str, Any],
    b: dict[str, Any],
    namespace: int,
) -> None:
    config = make_config(tmp_path, events={"sites": {"door": "front"}})
    _versions_known(target, config)
    held = Held(monkeypatch)
    held.start(target, config, [threat_payload(camera="door", **a)])
    other = Other(target, lambda conn: _store(conn, config, [threat_payload(camera="door", **b)]))
    assert wait_for(lambda: _waiting_on(observer, other.pid), what="B waits") == [namespace]
    assert not other.done.is_set()
    first = held.release()
    second = other.finish()
    assert [c.type for c in first.changes] == ["new"]
    assert second.changes == [] and second.counts == {"stored": 1}  # joined A's event
    found = store.events.list_events(observer, limit=10, camera="door")
    assert [(e.threat_count, e.state) for e in found] == [(2, "open")]


def test_a_camera_cooling_down_sees_the_notification_of_a_batch_open_beside_it(
    tmp_path: Path, target: str, observer: store.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A notifier's cool-down is per camera name: a new event of agent a2's camera "yard" waits
    for a1's open batch, whose new event on "yard" was notified, and is suppressed."""
    config = make_config(
        tmp_path,
        notify={
            "cooldown_s": 300,
            "notifiers": [{"name": "soc", "type": "webhook", "url": "http://127.0.0.1:9/"}],
        },
    )
    held = Held(monkeypatch)
    held.start(target, config, [threat_payload(agent_id="a1", at_s=0)])
    other = Other(
        target, lambda conn: _store(conn, config, [threat_payload(agent_id="a2", at_s=5)])
    )
    assert wait_for(lambda: _waiting_on(observer, other.pid), what="B waits") == [
        store.locks.CAMERAS
    ]
    assert held.release().due == 1
    assert other.finish().due == 0
    states = observer.execute("SELECT state FROM notifications ORDER BY id").fetchall()
    assert [r[0] for r in states] == ["pending", "suppressed"]  # a0's: notified before the config


def test_a_batch_of_statuses_waits_only_for_the_batches_of_its_agents(
    tmp_path: Path, target: str, observer: store.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Statuses (the api process's batches) hold the write lock shared too: another agent's
    status commits beside batch A; a status of A's agent, whose clock ends A's event, waits
    for A and then ends the event A committed."""
    config = make_config(tmp_path)
    _versions_known(target, config)
    later = T0 + timedelta(seconds=60)  # past the 10 s cutoff of A's event
    held = Held(monkeypatch)
    held.start(target, config, [threat_payload(agent_id="a1", at_s=0)])
    other = Other(
        target, lambda conn: _store(conn, config, [status_payload(agent_id="a2", sent_at=later)])
    )
    assert other.finish().counts == {"status": 1}  # while A is still open
    mine = Other(
        target, lambda conn: _store(conn, config, [status_payload(agent_id="a1", sent_at=later)])
    )
    assert wait_for(lambda: _waiting_on(observer, mine.pid), what="a1's status waits") == [
        store.locks.AGENTS
    ]
    (new,) = held.release().changes
    assert mine.finish().changes == [events.EventChange("end", new.event_id)]


def test_run_ids_are_reserved_beside_an_open_batch_never_twice(target: str) -> None:
    first, second = store.connect(target), store.connect(target)
    try:
        with store.transaction(first, shared=True):
            a = store.lineage.reserve_runs(first, 10)
            with store.transaction(second, shared=True):  # does not wait for the first
                b = store.lineage.reserve_runs(second, 10)
        assert abs(a - b) >= 10
        with store.transaction(first, shared=True):  # after both: beyond both
            assert store.lineage.reserve_runs(first, 1) == max(a, b) + 10
    finally:
        first.close()
        second.close()


def test_counters_of_each_server_process_add_up_and_fold(target: str) -> None:
    conns = [store.connect(target) for _ in range(2)]
    try:
        for i, conn in enumerate(conns):
            with store.transaction(conn, shared=True):
                store.counters.bump(conn, {"stored": 2, "duplicate": i})
                store.counters.add_rows(conn, {"messages": 2, "threats": 3})
        names = {r[0] for r in conns[0].execute("SELECT name FROM ingest_counters")}
        assert len(names) == 4  # stored@PID and duplicate@PID of each
        assert store.counters.ingest_counters(conns[0]) == {"duplicate": 1, "stored": 4}
        counts = store.counters.row_counts(conns[0])
        with store.transaction(conns[0]):
            store.counters.fold(conns[0])
        assert {r[0] for r in conns[0].execute("SELECT name FROM ingest_counters")} == {
            "duplicate",
            "stored",
        }
        assert store.counters.ingest_counters(conns[0]) == {"duplicate": 1, "stored": 4}
        assert store.counters.row_counts(conns[0]) == counts
        assert (counts.messages, counts.threats) == (4, 6)
        assert not conns[0].execute("SELECT name FROM row_counts WHERE name LIKE '%@%'").fetchall()
    finally:
        for conn in conns:
            conn.close()


def test_many_workers_at_once_store_each_message_once_in_one_event_per_group_key(
    tmp_path: Path, target: str
) -> None:
    """Eight threads, each a connection, store 48 batches at once: three agents with a camera
    of their own and one of a shared site (four group keys), every message sent twice, some
    frames sent again under another message id (a duplicate by content)."""
    config = make_config(
        tmp_path,
        events={"sites": {"door": "front"}},
        notify={"notifiers": [{"name": "soc", "type": "webhook", "url": "http://127.0.0.1:9/"}]},
    )
    rng = random.Random(13)
    unique: list[dict[str, Any]] = []
    for agent in ("a1", "a2", "a3"):
        for i in range(24):
            unique.append(
                threat_payload(agent_id=agent, camera="door" if i % 2 == 0 else "yard", at_s=i / 3)
            )
    again = {  # every sixth frame again under another message id
        p["message_id"]: {**p, "message_id": uuid.uuid4().hex, "lineage_id": uuid.uuid4().hex}
        for p in unique[::6]
    }
    sent = unique * 2 + list(again.values())
    rng.shuffle(sent)
    halves = [(sent[i : i + 4], sent[i + 4 : i + 8]) for i in range(0, len(sent), 8)]
    batches = [mixed for mixed, _ in halves]  # of several agents
    for agent in ("a1", "a2", "a3"):  # of one agent: beside the other agents' batches
        theirs = [p for _, rest in halves for p in rest if p["agent_id"] == agent]
        batches += [theirs[i : i + 4] for i in range(0, len(theirs), 4)]
    rng.shuffle(batches)
    assert sorted(p["message_id"] for b in batches for p in b) == sorted(
        p["message_id"] for p in sent
    )
    start = threading.Barrier(8)
    failures: list[BaseException] = []
    results: list[Any] = []

    def worker(mine: list[list[dict[str, Any]]]) -> None:
        conn = store.connect(target)
        try:
            start.wait(30)
            for batch in mine:
                results.append(_store(conn, config, batch))
        except BaseException as exc:
            failures.append(exc)
        finally:
            conn.close()

    threads = [threading.Thread(target=worker, args=(batches[i::8],)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not failures, failures  # no deadlock, no failure of the store
    assert all(not t.is_alive() for t in threads)

    counts: Counter[str] = Counter()
    for r in results:
        counts.update(r.counts)
    conn = store.connect(target)
    try:
        stored = {r[0] for r in conn.execute("SELECT message_id FROM messages")}
        assert len(stored) == len(unique)
        for p in unique:  # of a frame sent under two ids, the first to arrive
            copy = again.get(p["message_id"])
            ids = {p["message_id"]} | ({copy["message_id"]} if copy else set())
            assert len(ids & stored) == 1, ids
        assert counts == {"stored": len(unique), "duplicate": len(sent) - len(unique)}
        assert store.counters.ingest_counters(conn) == dict(sorted(counts.items()))
        keys = conn.execute("SELECT group_key, COUNT(*) FROM events GROUP BY group_key").fetchall()
        assert sorted(keys) == [
            ("agent_id=a1|camera=yard|rule=person_on_premises", 1),
            ("agent_id=a2|camera=yard|rule=person_on_premises", 1),
            ("agent_id=a3|camera=yard|rule=person_on_premises", 1),
            ("site=front|rule=person_on_premises", 1),
        ]
        (threat_count,) = conn.execute("SELECT SUM(threat_count) FROM events").fetchone()
        assert threat_count == len(unique)
        news = conn.execute("SELECT event_id, COUNT(*) FROM notifications GROUP BY event_id")
        assert sorted(n for _, n in news) == [1, 1, 1, 1]
        real = {
            name: conn.execute(sql).fetchone()[0]
            for name, sql in (
                ("messages", "SELECT COUNT(*) FROM messages"),
                ("threats", "SELECT COUNT(*) FROM threats"),
                ("events", "SELECT COUNT(*) FROM events"),
                ("open_events", "SELECT COUNT(*) FROM events WHERE ended_ts IS NULL"),
                ("agents", "SELECT COUNT(*) FROM agents"),
            )
        }
        assert store.counters.row_counts(conn) == store.models.StoreCounts(**real)
        bases = sorted(r[0] for r in conn.execute("SELECT run_base FROM messages"))
        assert all(b - a >= RUNS_PER_MESSAGE for a, b in itertools.pairwise(bases))
    finally:
        conn.close()


def test_a_worker_whose_machine_died_mid_batch_leaves_its_locks_to_the_others(
    tmp_path: Path, target: str, observer: store.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A connection that holds a batch's locks and then never speaks again (what the server
    sees of a machine that lost power: no close) is ended after
    ``schema.IDLE_IN_TRANSACTION_S``; the batch of the same agent waiting behind it goes on."""
    monkeypatch.setattr(store.schema, "IDLE_IN_TRANSACTION_S", 1)
    config = make_config(tmp_path)
    _versions_known(target, config)
    dead = store.connect(target)
    try:
        dead.execute("BEGIN")
        dead.execute("SELECT pg_advisory_xact_lock_shared(?)", (store.schema.WRITE_LOCK,))
        store.locks.agents(dead, ["a1"])  # and silence from here on
        other = Other(target, lambda conn: _store(conn, config, [threat_payload(agent_id="a1")]))
        assert other.finish().counts == {"stored": 1}
        with pytest.raises(store.DatabaseError):
            dead.execute("SELECT 1")
    finally:
        dead.close()
