"""The rollout state machine on a real store, SQLite and PostgreSQL (what secagg serve's
controller runs every turn), with the agents' reports written as the ingest writes them:
groups, thresholds, pause, resume, promote (shadow and active) and abort, and the desired
state each agent gets."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from aggregator import store
from aggregator.ota import rollouts

AGENTS = ["a1", "a2", "a3", "a4"]


@pytest.fixture
def conn(store_target: store.schema.Target) -> Iterator[store.Connection]:
    """On each backend in turn (``store_target``: SQLite, PostgreSQL)."""
    c = store.connect(store_target)
    with store.transaction(c):
        for i, kind in enumerate(("model", "model")):
            store.releases.insert(
                c,
                release_id=i + 1,
                kind=kind,
                name="m",
                tag=f"t{i}",
                sha256=f"{i:064x}",
                size=10,
                seq=i + 1,
                target_path=f"model/{i + 1}-m.onnx",
                created_ts=0,
                compat={},
            )
    try:
        yield c
    finally:
        c.close()


def create(conn: store.Connection, **kw: Any) -> int:
    args: dict[str, Any] = {
        "release_id": 2,
        "agents": AGENTS,
        "groups": "1,1,*",
        "mode": "active",
        "shadow_fraction": 1.0,
        "success_threshold": 1.0,
        "error_threshold": 0.5,
        "now_ts": time.time(),
        **kw,
    }
    with store.transaction(conn):
        return rollouts.create(conn, **args)


def step(conn: store.Connection, rollout_id: int) -> dict[str, Any]:
    with store.transaction(conn):
        row = store.rollouts.get(conn, rollout_id)
        assert row is not None
        rollouts.advance(conn, row, now_ts=time.time())
    return rollouts.summary(conn, rollout_id)


def report(conn: store.Connection, agent: str, state: str, release_id: int = 2) -> None:
    with store.transaction(conn):
        store.ota.add_report(
            conn,
            report_id=uuid.uuid4().hex,
            agent_id=agent,
            kind="model",
            release_id=release_id,
            state=state,
            reason="because" if state in ("failed", "rolled_back") else None,
            rollout_id=None,
            at_ts=time.time() + 1,
            received_ts=time.time() + 1,
            active={},
            detail={},
        )


def states(doc: dict[str, Any]) -> dict[str, str]:
    return {a["agent_id"]: a["state"] for group in doc["groups"] for a in group}


def desired(conn: store.Connection, agent: str) -> dict[str, Any]:
    row = store.ota.get_desired(conn, agent)
    return {} if row is None else row.doc


def act(conn: store.Connection, rollout_id: int, action: str) -> None:
    with store.transaction(conn):
        rollouts.act(conn, rollout_id, action, now_ts=time.time())


def test_groups_start_one_after_the_other(conn: store.Connection) -> None:
    rid = create(conn)
    doc = step(conn, rid)
    assert [[a["agent_id"] for a in g] for g in doc["groups"]] == [["a1"], ["a2"], ["a3", "a4"]]
    assert states(doc) == {"a1": "updating", "a2": "pending", "a3": "pending", "a4": "pending"}
    assert desired(conn, "a1")["releases"][0]["release_id"] == 2
    assert desired(conn, "a2") == {}
    report(conn, "a1", "active")
    assert states(step(conn, rid))["a2"] == "pending"  # active is not committed yet
    report(conn, "a1", "committed")
    step(conn, rid)  # a1 succeeded: the next group
    assert states(step(conn, rid))["a2"] == "updating"
    report(conn, "a2", "committed")
    step(conn, rid)
    doc = step(conn, rid)
    assert states(doc)["a3"] == states(doc)["a4"] == "updating"
    report(conn, "a3", "committed")
    report(conn, "a4", "committed")
    step(conn, rid)
    assert step(conn, rid)["state"] == "completed"


def test_pause_holds_and_resume_goes_on(conn: store.Connection) -> None:
    rid = create(conn)
    step(conn, rid)
    act(conn, rid, "pause")
    report(conn, "a1", "committed")
    doc = step(conn, rid)
    assert doc["state"] == "paused" and states(doc)["a1"] == "updating"
    with pytest.raises(rollouts.RolloutError, match="not running"):
        act(conn, rid, "pause")
    act(conn, rid, "resume")
    step(conn, rid)
    assert states(step(conn, rid))["a2"] == "updating"


def test_the_error_threshold_halts_and_reverts_only_the_failed(conn: store.Connection) -> None:
    rid = create(conn, groups="2,*", error_threshold=0.5)
    step(conn, rid)
    report(conn, "a1", "committed")
    report(conn, "a2", "rolled_back")
    doc = step(conn, rid)
    assert doc["state"] == "halted" and "a2: because" in doc["reason"]
    assert states(doc) == {"a1": "succeeded", "a2": "reverted", "a3": "pending", "a4": "pending"}
    assert desired(conn, "a1")["releases"][0]["release_id"] == 2  # the healthy one keeps it
    assert desired(conn, "a2") == {"releases": [], "revert": ["model"]}
    assert desired(conn, "a3") == {}


def test_promote_a_shadow_rollout_then_abort(conn: store.Connection) -> None:
    rid = create(conn, mode="shadow", shadow_fraction=0.25, groups="*")
    step(conn, rid)
    entry = desired(conn, "a1")["releases"][0]
    assert (entry["mode"], entry["shadow_fraction"]) == ("shadow", 0.25)
    for agent in AGENTS:
        report(conn, agent, "shadow_report")
    assert step(conn, rid)["state"] == "completed"
    act(conn, rid, "promote")
    doc = step(conn, rid)
    assert (doc["mode"], doc["state"]) == ("active", "running")
    assert [r["mode"] for r in desired(conn, "a1")["releases"]] == ["active"]
    act(conn, rid, "abort")
    doc = rollouts.summary(conn, rid)
    assert doc["state"] == "aborted"
    assert set(states(doc).values()) == {"reverted"}
    assert desired(conn, "a1") == {"releases": [], "revert": ["model"]}


def test_promote_an_active_rollout_starts_every_group(conn: store.Connection) -> None:
    rid = create(conn)
    step(conn, rid)
    act(conn, rid, "promote")
    assert set(states(rollouts.summary(conn, rid)).values()) == {"updating"}


def test_an_agent_is_in_one_running_rollout_of_a_kind(conn: store.Connection) -> None:
    create(conn, agents=["a1"])
    with pytest.raises(rollouts.RolloutError, match="already in a running model rollout"):
        create(conn, agents=["a1", "a2"], release_id=1)


@pytest.mark.parametrize(
    ("spec", "groups"),
    [
        ("1,*", [["a1"], ["a2", "a3", "a4"]]),
        ("50%,*", [["a1", "a2"], ["a3", "a4"]]),
        ("1,1", [["a1"], ["a2"], ["a3", "a4"]]),
        ("*", [AGENTS]),
    ],
)
def test_group_sizes(spec: str, groups: list[list[str]]) -> None:
    assert rollouts.split_groups(AGENTS, spec) == groups


@pytest.mark.parametrize("spec", ["", "0", "x", "-1"])
def test_bad_group_sizes_are_refused(spec: str) -> None:
    with pytest.raises(rollouts.RolloutError):
        rollouts.split_groups(AGENTS, spec)
