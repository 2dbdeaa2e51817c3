"""An agent config over the air, with real processes: the release is validated as at start
(the one load path), the agent restarts into it in the same process, its relative paths keep
their meaning (outbox, update state, token), results record the new config version; a config
that would not load is refused with the reason."""

from __future__ import annotations

from pathlib import Path

import yaml

from demo.broker import Mosquitto
from tests.support import wait_for
from tests.support.ota import AgentProcess, OtaSite, StillFeeder, tiny_model


def test_a_config_release_is_validated_then_taken_into_use(
    broker: Mosquitto, tmp_path: Path
) -> None:
    site = OtaSite(tmp_path / "site", broker)
    camera = tmp_path / "camera"
    feeder = StillFeeder(camera, every_s=0.1)
    feeder.write(3)
    config = site.agent_config(
        tmp_path / "agent",
        agent_id="configured",
        model=tiny_model(tmp_path / "models", "m", x=300),
        camera_dir=camera,
    )
    doc = yaml.safe_load(config.read_text())
    doc["snapshot"] = {"enabled": True, "jpeg_quality": 60}  # visible in the config in force
    good = tmp_path / "release" / "configured.yaml"
    good.parent.mkdir()
    good.write_text(yaml.safe_dump(doc))
    doc["cameras"][0]["source"]["fps"] = 0  # a directory source has no fps: refused at start
    bad = tmp_path / "release" / "broken.yaml"
    bad.write_text(yaml.safe_dump(doc))
    good_release = site.add_release("config", good, tag="cfg-2")
    bad_release = site.add_release("config", bad, tag="cfg-bad")
    agent = AgentProcess(config)
    site.aggregator.start()
    try:
        agent.start()
        feeder.start()
        wait_for(lambda: site.messages("configured"), timeout_s=60, what="the agent running")
        before = {m["frame_id"] for m in site.messages("configured")}
        old_config = site.messages("configured")[0]["config_sha256"]
        first = site.rollout(bad_release["id"], "--agents", "configured", "--groups", "*")
        refused = site.wait_report("configured", release_id=bad_release["id"], state="failed")
        site.wait_rollout(first["id"], "halted")
        site.rollout(good_release["id"], "--agents", "configured", "--groups", "*")
        site.wait_report("configured", release_id=good_release["id"], state="committed")
        wait_for(
            lambda: any(
                m["config_sha256"] != old_config
                for m in site.messages("configured")
                if m["frame_id"] not in before
            ),
            timeout_s=30,
            what="results with the new config",
        )
        # the process that started is the one running the new config (exec, same PID)
        assert agent.proc is not None and agent.proc.poll() is None and agent.starts == 1
    finally:
        feeder.stop()
        code = agent.stop()
        site.aggregator.stop()
    assert code == 0
    assert refused["reason"].startswith("invalid_config:") and "fps" in refused["reason"]
    log = agent.log()
    assert "restarting into config" in log
    # the same outbox and update state: the relative paths resolved from the installed folder
    assert (tmp_path / "agent" / "ota-state" / "state.json").is_file()
    assert not list((tmp_path / "agent" / "ota-state" / "releases").rglob("ota-state"))
    assert not list((tmp_path / "agent" / "ota-state" / "releases").rglob("outbox.sqlite"))
