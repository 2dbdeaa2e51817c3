"""A staged rollout with real processes: group after group; an agent that cannot use the
release fails, the error threshold halts the rollout and gives the failed agent its previous
state back, and the healthy group keeps the release. The API lists and shows rollouts."""

from __future__ import annotations

from pathlib import Path

import httpx

from demo.broker import Mosquitto
from tests.support import wait_for
from tests.support.auth import HEADERS
from tests.support.ota import AgentProcess, OtaSite, StillFeeder, model_sha, tiny_model


def test_a_rollout_halts_at_its_error_threshold_and_leaves_healthy_groups(
    broker: Mosquitto, tmp_path: Path
) -> None:
    site = OtaSite(tmp_path / "site", broker)
    old = tiny_model(tmp_path / "models", "old", x=200)
    new = tiny_model(tmp_path / "models", "new", x=400)
    release = site.add_release("model", new, tag="staged-1")
    car_rules = tmp_path / "car-rules.yaml"  # an agent whose rules the new model cannot serve
    car_rules.write_text(
        "rules:\n  - {name: anyone, labels: [person, car], min_score: 0.5, severity: low}\n"
        "  - {name: car_seen, labels: [car], min_score: 0.5, severity: low}\n"
    )
    old_cars = tiny_model(tmp_path / "models-cars", "old", x=200, names="['person', 'car']")
    agents: dict[str, AgentProcess] = {}
    feeders = []
    # by label, in id order: groups [a-canary], [b-good], [c-bad]
    for agent_id in ("a-canary", "b-good", "c-bad"):
        camera = tmp_path / f"camera-{agent_id}"
        feeder = StillFeeder(camera, every_s=0.2)
        feeder.write(2)
        feeders.append(feeder)
        bad = agent_id == "c-bad"
        config = site.agent_config(
            tmp_path / agent_id,
            agent_id=agent_id,
            model=old_cars if bad else old,
            camera_dir=camera,
            ota={"labels": ["site-a"]},
            **({"rules": car_rules} if bad else {}),
        )
        agents[agent_id] = AgentProcess(config)
    site.aggregator.start()
    try:
        for agent in agents.values():
            agent.start()
        for f in feeders:
            f.start()
        wait_for(lambda: all(site.agent_known(a) for a in agents), timeout_s=60, what="statuses")
        rollout = site.rollout(
            release["id"], "--label", "site-a", "--groups", "1,1,*", "--error-threshold", "0.3"
        )
        assert [[a["agent_id"] for a in g] for g in rollout["groups"]] == [
            ["a-canary"],
            ["b-good"],
            ["c-bad"],
        ]
        wait_for(
            lambda: (
                httpx.get(f"{site.api}/api/rollouts/{rollout['id']}", headers=HEADERS).json()[
                    "state"
                ]
                == "halted"
            ),
            timeout_s=90,
            what="the rollout halted",
        )
        doc = httpx.get(f"{site.api}/api/rollouts/{rollout['id']}", headers=HEADERS).json()
        listed = httpx.get(f"{site.api}/api/rollouts", headers=HEADERS).json()
        failed = site.wait_report("c-bad", release_id=release["id"], state="failed")
        history = {a: site.history(a) for a in agents}
    finally:
        for f in feeders:
            f.stop()
        for agent in agents.values():
            agent.stop()
        site.aggregator.stop()
    assert [r["id"] for r in listed] == [rollout["id"]]
    states = {a["agent_id"]: a for g in doc["groups"] for a in g}
    assert states["c-bad"]["state"] == "reverted"
    assert states["c-bad"]["reason"].startswith("incompatible_model")
    assert "incompatible_model" in doc["reason"]
    assert failed["reason"].startswith("incompatible_model")
    # the healthy groups keep the release: the halt did not touch them
    for agent_id in ("a-canary", "b-good"):
        assert states[agent_id]["state"] == "succeeded"
        last = [p for p in history[agent_id]["periods"] if p["kind"] == "model"][-1]
        assert last["sha256"] == model_sha(new) and last["until"] is None
    last_bad = [p for p in history["c-bad"]["periods"] if p["kind"] == "model"][-1]
    assert last_bad["release_id"] is None
