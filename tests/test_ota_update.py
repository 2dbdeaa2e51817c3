"""A good model update under live frames, with real secagg, secagent, Mosquitto and HTTP: the
release is signed, rolled out, downloaded, verified and switched between two frames; no frame is
lost or processed twice, the versions are right before and after, the switch is reported once,
and the history says which model was active when."""

from __future__ import annotations

from pathlib import Path

from demo.broker import Mosquitto
from tests.support import wait_for
from tests.support.ota import AgentProcess, OtaSite, StillFeeder, model_sha, tiny_model


def test_a_good_model_update_switches_between_two_frames(broker: Mosquitto, tmp_path: Path) -> None:
    site = OtaSite(tmp_path / "site", broker)
    old = tiny_model(tmp_path / "models", "old", x=200)
    new = tiny_model(tmp_path / "models", "new", x=400)
    release = site.add_release("model", new, tag="new-1")
    assert release["compat"]["layout"] == "yolov8"
    assert release["compat"]["labels"] == ["person", "person_fallen"]
    camera = tmp_path / "camera"
    feeder = StillFeeder(camera)
    feeder.write(20)
    config = site.agent_config(tmp_path / "agent", agent_id="edge-1", model=old, camera_dir=camera)
    agent = AgentProcess(config)
    site.aggregator.start()
    try:
        agent.start()
        wait_for(lambda: len(site.messages("edge-1")) >= 20, timeout_s=60, what="first frames")
        feeder.start()
        rollout = site.rollout(release["id"], "--agents", "edge-1", "--groups", "*")
        active = site.wait_report("edge-1", release_id=release["id"], state="active")
        site.wait_report("edge-1", release_id=release["id"], state="committed")
        written = feeder.stop()
        wait_for(lambda: len(site.messages("edge-1")) >= written, timeout_s=60, what="every frame")
        assert agent.stop() == 0
        site.wait_rollout(rollout["id"], "completed")
        reports = site.reports("edge-1")
        periods = site.history("edge-1")["periods"]
    finally:
        feeder.stop()
        agent.stop()
        site.aggregator.stop()
    messages = site.messages("edge-1")
    # every frame exactly once, none lost
    assert [m["frame_source"].rsplit("/", 1)[1] for m in messages] == [
        f"{i:05d}.jpg" for i in range(written)
    ]
    shas = [m["model_sha256"] for m in messages]
    switch = shas.index(model_sha(new))
    assert set(shas[:switch]) == {model_sha(old)} and switch >= 20
    assert set(shas[switch:]) == {model_sha(new)}, "an old frame after the switch"
    # the first frame after the switch is the one the report names
    assert messages[switch]["frame_id"] == active["frame_id"]
    states = [r["state"] for r in reports if r["release_id"] == release["id"]]
    assert states == ["downloading", "verifying", "staged", "switching", "active", "committed"]
    assert active["active"]["model"]["sha256"] == model_sha(new)
    models = [p for p in periods if p["kind"] == "model"]
    assert [(p["release_id"], p["sha256"]) for p in models][-1] == (
        release["id"],
        model_sha(new),
    )
    assert models[-1]["until"] is None
    text = site.secagg("history", "edge-1").stdout
    assert f"model   {release['id']:>7}" in text
