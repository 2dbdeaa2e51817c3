"""The latency budget (``ota.latency_budget_ms``), with real secagg, secagent, Mosquitto and
HTTP, and a model that is slow on purpose (a loop of MatMuls, calibrated on this machine to take
at least three times the budget on a bright frame, about 1 ms on a dark one):

- at trial: a candidate slower than the budget on the recorded frames is refused
  (``latency_budget``, with its time and the budget), and the active model keeps running;
- during probation: a candidate that passed its trial on dark frames and turns slow on bright
  ones (p95 of inference above the budget) is rolled back to the last known good model on its
  own, and says why.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from demo.broker import Mosquitto
from tests.support import wait_for
from tests.support.ota import (
    AgentProcess,
    OtaSite,
    StillFeeder,
    model_sha,
    slow_bright_model,
    tiny_model,
)

BUDGET_MS = 150.0
DARK, BRIGHT = (0, 60), (200, 255)


@pytest.fixture(scope="module")
def site(broker: Mosquitto, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OtaSite]:
    s = OtaSite(tmp_path_factory.mktemp("ota-latency"), broker)
    s.aggregator.start()
    try:
        yield s
    finally:
        s.aggregator.stop()


def agent_setup(
    site: OtaSite, tmp_path: Path, agent_id: str, *, levels: tuple[int, int], probation_s: float
) -> tuple[AgentProcess, StillFeeder, Path]:
    old = tiny_model(tmp_path / "models", "old", x=200)
    camera = tmp_path / "camera"
    feeder = StillFeeder(camera, every_s=0.1, levels=levels)
    feeder.write(3)
    config = site.agent_config(
        tmp_path / "agent",
        agent_id=agent_id,
        model=old,
        camera_dir=camera,
        ota={"latency_budget_ms": BUDGET_MS, "probation_s": probation_s},
    )
    return AgentProcess(config), feeder, old


def test_a_candidate_slower_than_the_budget_on_recent_frames_is_refused(
    site: OtaSite, tmp_path: Path
) -> None:
    agent_id = "slow-trial"
    agent, feeder, old = agent_setup(site, tmp_path, agent_id, levels=BRIGHT, probation_s=2)
    slow = slow_bright_model(tmp_path / "models", "slow-trial", x=400, bright_ms=3 * BUDGET_MS)
    release = site.add_release("model", slow, tag="slow-trial-1")
    agent.start()
    feeder.start()
    try:
        wait_for(lambda: site.messages(agent_id), timeout_s=60, what="the agent running")
        rollout = site.rollout(release["id"], "--agents", agent_id, "--groups", "*")
        refused = site.wait_report(agent_id, release_id=release["id"], state="failed")
        site.wait_rollout(rollout["id"], "halted")
        before = len(site.messages(agent_id))
        wait_for(
            lambda: len(site.messages(agent_id)) > before + 2, timeout_s=30, what="more frames"
        )
        last = site.messages(agent_id)[-1]
        states = [r["state"] for r in site.reports(agent_id) if r["release_id"] == release["id"]]
    finally:
        feeder.stop()
        agent.stop()
    reason = refused["reason"]
    assert reason.startswith("latency_budget: "), reason
    match = re.search(r"([0-9]+) ms a frame on ([0-9]+) recent frame", reason)
    assert match, reason
    assert float(match.group(1)) >= 3 * BUDGET_MS * 0.9 and int(match.group(2)) >= 1, reason
    assert f"the budget is {BUDGET_MS:g} ms" in reason
    assert states == ["downloading", "verifying", "failed"], states  # never switched to
    assert refused["active"]["model"]["sha256"] == model_sha(old)
    assert last["model_sha256"] == model_sha(old)


def test_a_candidate_over_the_budget_during_probation_is_rolled_back(
    site: OtaSite, tmp_path: Path
) -> None:
    """Fast on the dark frames of its trial, slow on the bright frames after its switch: the
    p95 of inference time passes the budget during probation, and the agent goes back to the
    model it had."""
    agent_id = "slow-probation"
    agent, feeder, old = agent_setup(site, tmp_path, agent_id, levels=DARK, probation_s=120)
    slow = slow_bright_model(tmp_path / "models", "slow-later", x=400, bright_ms=3 * BUDGET_MS)
    release = site.add_release("model", slow, tag="slow-later-1")
    agent.start()
    feeder.start()
    try:
        wait_for(lambda: site.messages(agent_id), timeout_s=60, what="the agent running")
        site.rollout(release["id"], "--agents", agent_id, "--groups", "*")
        active = site.wait_report(agent_id, release_id=release["id"], state="active")
        feeder.levels = BRIGHT
        back = site.wait_report(agent_id, release_id=release["id"], state="rolled_back")
        before = len(site.messages(agent_id))
        wait_for(
            lambda: len(site.messages(agent_id)) > before + 2, timeout_s=30, what="more frames"
        )
        last = site.messages(agent_id)[-1]
        states = [r["state"] for r in site.reports(agent_id) if r["release_id"] == release["id"]]
    finally:
        feeder.stop()
        agent.stop()
    assert active["active"]["model"]["sha256"] == model_sha(slow)
    reason = back["reason"]
    match = re.fullmatch(
        r"probation: inference p95 ([0-9]+) ms > the latency budget of ([0-9.]+) ms", reason
    )
    assert match, reason
    assert float(match.group(1)) > BUDGET_MS and float(match.group(2)) == BUDGET_MS
    assert "committed" not in states, states
    assert back["active"]["model"]["sha256"] == model_sha(old)
    assert last["model_sha256"] == model_sha(old)  # bright frames go through the old model
