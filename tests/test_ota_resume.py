"""A release download survives an agent restart, with real secagg, secagent, Mosquitto and
HTTP: the agent is SIGKILLed halfway through a slow download (a forwarder paces secagg's
answers); started again, it asks secagg for the rest only (``Range: bytes=N-``, N the bytes it
kept on disk) and takes the release into use. When the kept bytes turn out wrong (a disk that
lost a write), the partial file is discarded and the download starts over, and the release is
still taken into use, not refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from demo.broker import Mosquitto
from tests.support import wait_for
from tests.support.ota import AgentProcess, OtaSite, StillFeeder, model_sha, tiny_model
from tests.support.throttle import ThrottlingProxy

PADDING_BYTES = 4_000_000
SLOW_BYTES_S = 500_000


@pytest.mark.parametrize("damaged", [False, True], ids=["intact", "damaged"])
def test_a_download_goes_on_after_the_agent_is_killed(
    broker: Mosquitto, tmp_path: Path, damaged: bool
) -> None:
    # an agent id of its own per case: the session's broker keeps the retained desired state
    # that the other case's secagg published for its agent
    agent_id = f"resumer-{'damaged' if damaged else 'intact'}"
    site = OtaSite(tmp_path / "site", broker)
    proxy = ThrottlingProxy(site.api)
    old = tiny_model(tmp_path / "models", "old", x=200)
    big = tiny_model(tmp_path / "models", "big", x=400, padding_bytes=PADDING_BYTES)
    release = site.add_release("model", big, tag="big-1")
    length = int(release["size"])
    assert length > PADDING_BYTES
    camera = tmp_path / "camera"
    feeder = StillFeeder(camera, every_s=0.1)
    feeder.write(3)
    agent_dir = tmp_path / "agent"
    config = site.agent_config(
        agent_dir,
        agent_id=agent_id,
        model=old,
        camera_dir=camera,
        ota={"url": f"{proxy.url}/ota/v1", "download_timeout_s": 120},
    )
    agent = AgentProcess(config)
    part = agent_dir / "ota-state" / "releases" / "model" / release["sha256"] / ".model.onnx.part"
    site.aggregator.start()
    try:
        agent.start()
        feeder.start()
        wait_for(lambda: site.messages(agent_id), timeout_s=60, what="the agent running")
        proxy.rate_bytes_s = SLOW_BYTES_S
        site.rollout(release["id"], "--agents", agent_id, "--groups", "*")
        wait_for(
            lambda: part.is_file() and part.stat().st_size >= length // 4,
            timeout_s=60,
            what="a quarter of the download on disk",
        )
        assert agent.proc is not None
        agent.proc.kill()
        agent.wait_exit()
        kept = part.stat().st_size
        assert 0 < kept < length
        if damaged:
            with part.open("r+b") as f:  # a byte the disk lost
                f.seek(kept // 2)
                byte = f.read(1)
                f.seek(kept // 2)
                f.write(bytes([byte[0] ^ 0xFF]))
        proxy.rate_bytes_s = None
        agent.start()
        site.wait_report(agent_id, release_id=release["id"], state="committed", timeout_s=120)
        before = len(site.messages(agent_id))
        wait_for(
            lambda: len(site.messages(agent_id)) > before + 2, timeout_s=30, what="more frames"
        )
        last = site.messages(agent_id)[-1]
        states = [r["state"] for r in site.reports(agent_id) if r["release_id"] == release["id"]]
    finally:
        feeder.stop()
        agent.stop()
        site.aggregator.stop()
        proxy.close()
    first, second, *rest = proxy.targets()
    assert first.range is None and first.status == 200 and first.delivered < length
    assert second.range == f"bytes={kept}-", proxy.targets()
    assert second.status == 206 and second.delivered == second.length == length - kept
    if damaged:
        assert [(e.range, e.status, e.delivered) for e in rest] == [(None, 200, length)]
        assert f"the {kept} bytes kept from an earlier run are discarded" in agent.log()
    else:
        assert rest == [], proxy.targets()
    assert states.count("downloading") == 2 and states[-2:] == ["active", "committed"], states
    assert "failed" not in states
    assert last["model_sha256"] == model_sha(big)
    assert not list((agent_dir / "ota-state").rglob("*.part*"))
