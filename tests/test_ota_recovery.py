"""Updates that go wrong, with real secagg, secagent, Mosquitto and HTTP: a SIGKILL of the agent
at each step of an update leaves exactly one complete release active after the restart, reported
once; a crash loop during probation rolls the release back on its own; releases the agent
cannot use (a model without the labels the rules need, rules naming labels the model lacks, an
older release) are refused, and the reason reaches the operator (history, rollout status)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from demo.broker import Mosquitto
from tests.support import DEFAULT_RULES, wait_for
from tests.support.ota import (
    AgentProcess,
    OtaSite,
    StillFeeder,
    bright_failing_model,
    model_sha,
    tiny_model,
)


@pytest.fixture(scope="module")
def site(broker: Mosquitto, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OtaSite]:
    work = tmp_path_factory.mktemp("ota-recovery")
    s = OtaSite(work, broker)
    s.aggregator.start()
    try:
        yield s
    finally:
        s.aggregator.stop()


def agent_setup(
    site: OtaSite, tmp_path: Path, agent_id: str, **ota: Any
) -> tuple[AgentProcess, StillFeeder, Path]:
    old = tiny_model(tmp_path / "models", "old", x=200)
    camera = tmp_path / "camera"
    feeder = StillFeeder(camera, every_s=0.1)
    feeder.write(3)
    config = site.agent_config(
        tmp_path / "agent", agent_id=agent_id, model=old, camera_dir=camera, ota=ota or None
    )
    return AgentProcess(config), feeder, old


def states_of(site: OtaSite, agent_id: str, release_id: int) -> list[str]:
    return [r["state"] for r in site.reports(agent_id) if r["release_id"] == release_id]


@pytest.mark.parametrize("step", ["downloading", "verifying", "staged", "switching", "active"])
def test_a_sigkill_at_each_step_leaves_one_complete_release(
    site: OtaSite, tmp_path: Path, step: str
) -> None:
    agent_id = f"kill-{step}"
    agent, feeder, old = agent_setup(site, tmp_path, agent_id)
    new = tiny_model(tmp_path / "models", f"new-{step}", x=400)
    release = site.add_release("model", new, tag=f"kill-{step}")
    agent.start(env={"SECAGENT_OTA_CRASH_AT": step})
    feeder.start()
    try:
        wait_for(lambda: site.messages(agent_id), timeout_s=60, what="the agent running")
        site.rollout(release["id"], "--agents", agent_id, "--groups", "*")
        assert agent.wait_exit(60) == -9, "the fault injection did not kill the agent"
        agent.start()  # as systemd would: no fault this time
        site.wait_report(agent_id, release_id=release["id"], state="committed")
        before = len(site.messages(agent_id))
        wait_for(
            lambda: len(site.messages(agent_id)) > before + 2, timeout_s=30, what="more frames"
        )
        states = states_of(site, agent_id, release["id"])
    finally:
        feeder.stop()
        agent.stop()
    assert states.count("active") == 1, states
    assert states[-2:] == ["active", "committed"], states
    last = site.messages(agent_id)[-1]
    assert last["model_sha256"] == model_sha(new)
    if step != "active":  # killed before the switch: the restart started the update again
        assert states.count("downloading") == 2, states
    state = json.loads((tmp_path / "agent" / "ota-state" / "state.json").read_text())
    assert state["active"]["model"]["release_id"] == release["id"]
    assert state["update"] is None and state["probation"] is None
    assert old.exists()


def test_a_crash_loop_during_probation_rolls_back(site: OtaSite, tmp_path: Path) -> None:
    agent_id = "crashloop"
    agent, feeder, old = agent_setup(
        site, tmp_path, agent_id, probation_s=600, crash_loop_restarts=2
    )
    new = tiny_model(tmp_path / "models", "new-crash", x=400)
    release = site.add_release("model", new, tag="crashy")
    agent.start()
    feeder.start()
    try:
        wait_for(lambda: site.messages(agent_id), timeout_s=60, what="the agent running")
        rollout = site.rollout(release["id"], "--agents", agent_id, "--groups", "*")
        site.wait_report(agent_id, release_id=release["id"], state="active")
        assert agent.proc is not None
        agent.proc.kill()  # the release crashes the agent...
        agent.wait_exit()
        agent.start()  # start 1 of 2 within the window: still on probation
        wait_for(lambda: "start 1 of 2" in agent.log(), timeout_s=60, what="start counted")
        agent.proc.kill()  # ...again
        agent.wait_exit()
        agent.start()  # start 2: a crash loop, rolled back before the model is loaded
        back = site.wait_report(agent_id, release_id=release["id"], state="rolled_back")
        before = len(site.messages(agent_id))
        wait_for(
            lambda: len(site.messages(agent_id)) > before + 2, timeout_s=30, what="more frames"
        )
        wait_for(
            lambda: (
                '"state": "halted"' in site.secagg("rollout", "status", str(rollout["id"])).stdout
            ),
            timeout_s=30,
            what="the rollout halted",
        )
        status = site.secagg("rollout", "status", str(rollout["id"])).stdout
    finally:
        feeder.stop()
        agent.stop()
    assert "crash loop" in back["reason"]
    assert back["active"]["model"]["sha256"] == model_sha(old)
    assert site.messages(agent_id)[-1]["model_sha256"] == model_sha(old)
    assert "crash loop" in status


def test_inference_errors_during_probation_roll_back(site: OtaSite, tmp_path: Path) -> None:
    """A model that passes its trial on the dark frames of the evening and breaks on the
    bright frames of the morning: the errors during probation roll it back."""
    agent_id = "probation"
    agent, feeder, old = agent_setup(
        site, tmp_path, agent_id, probation_s=120, probation_max_errors=2
    )
    feeder.levels = (0, 60)
    new = bright_failing_model(tmp_path / "models", "brittle", x=400)
    release = site.add_release("model", new, tag="brittle-1")
    agent.start()
    feeder.start()
    try:
        wait_for(lambda: site.messages(agent_id), timeout_s=60, what="the agent running")
        site.rollout(release["id"], "--agents", agent_id, "--groups", "*")
        site.wait_report(agent_id, release_id=release["id"], state="active")
        feeder.levels = (200, 255)  # morning
        back = site.wait_report(agent_id, release_id=release["id"], state="rolled_back")
        before = len(site.messages(agent_id))
        wait_for(
            lambda: len(site.messages(agent_id)) > before + 2, timeout_s=30, what="more frames"
        )
        last = site.messages(agent_id)[-1]
    finally:
        feeder.stop()
        agent.stop()
    assert back["reason"].startswith("probation: ") and "inference errors" in back["reason"]
    assert back["active"]["model"]["sha256"] == model_sha(old)
    assert last["model_sha256"] == model_sha(old)  # bright frames go through the old model


def test_unusable_releases_are_refused_and_the_reason_reaches_the_operator(
    site: OtaSite, tmp_path: Path
) -> None:
    agent_id = "refuser"
    agent, feeder, _old = agent_setup(site, tmp_path, agent_id)
    cars = tiny_model(tmp_path / "models", "cars", x=300, names="['car']")
    bad_rules = tmp_path / "car-rules.yaml"
    bad_rules.write_text(
        "rules:\n  - {name: car_seen, labels: [car], min_score: 0.5, severity: low}\n"
    )
    older = site.add_release("model", tiny_model(tmp_path / "models", "v1", x=250), tag="ref-v1")
    newer = site.add_release("model", tiny_model(tmp_path / "models", "v2", x=350), tag="ref-v2")
    incompatible = site.add_release("model", cars, tag="cars-1")
    invalid = site.add_release("rules", bad_rules, tag="car-rules-1")
    future = site.add_release("rules", DEFAULT_RULES, "--min-agent", "99.0", tag="future-1")
    assert future["compat"]["min_agent"] == "99.0"
    agent.start()
    feeder.start()
    try:
        wait_for(lambda: site.messages(agent_id), timeout_s=60, what="the agent running")
        first = site.rollout(incompatible["id"], "--agents", agent_id, "--groups", "*")
        model_fail = site.wait_report(agent_id, release_id=incompatible["id"], state="failed")
        site.wait_rollout(first["id"], "halted")
        second = site.rollout(invalid["id"], "--agents", agent_id, "--groups", "*")
        rules_fail = site.wait_report(agent_id, release_id=invalid["id"], state="failed")
        site.wait_rollout(second["id"], "halted")
        site.rollout(future["id"], "--agents", agent_id, "--groups", "*")
        too_new = site.wait_report(agent_id, release_id=future["id"], state="failed")
        third = site.rollout(newer["id"], "--agents", agent_id, "--groups", "*")
        site.wait_report(agent_id, release_id=newer["id"], state="committed")
        site.wait_rollout(third["id"], "completed")
        site.rollout(older["id"], "--agents", agent_id, "--groups", "*")
        downgrade = site.wait_report(agent_id, release_id=older["id"], state="failed")
        history = site.secagg("history", agent_id).stdout
    finally:
        feeder.stop()
        agent.stop()
    assert model_fail["reason"].startswith("incompatible_model:")
    assert "person" in model_fail["reason"]  # what the active rules need
    assert rules_fail["reason"].startswith("invalid_rules:") and "car" in rules_fail["reason"]
    assert too_new["reason"].startswith("incompatible_agent:") and "99.0" in too_new["reason"]
    assert downgrade["reason"].startswith("downgrade:")
    assert downgrade["active"]["model"]["release_id"] == newer["id"]
    assert "downgrade" in history and "incompatible_model" in history
