"""``make demo-ota``: an over-the-air model update on the sample model and clip.

A private Mosquitto, ``secagg serve`` with its signed release repository (``secagg ota init``),
and ``secagent run`` on the sample clip played in real time, in a loop. Then:

1. a candidate is released: the sample model re-exported with a higher score threshold (its
   ONNX file carries a variant tag, so it has its own sha256), signed with the offline key;
2. shadow run: it runs beside the active model on every frame, never raising a threat;
3. comparison: ``secagg rollout compare`` (matched, only-active, only-candidate detections,
   threat-decision flips, latency of both);
4. promote: it becomes active between two frames, passes probation, and is committed;
5. rollback: ``secagg rollout abort`` takes the agent back to the model it was installed with;
   ``secagg history`` shows which model was active when.

    python -m demo.ota [--workdir var/demo-ota]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import onnx
import yaml

from demo.__main__ import ROOT, fresh_workdir, say, wait_until
from demo.broker import Mosquitto, free_port
from demo.footage import sample_clip
from modelrt import load_manifest

BIN = Path(sys.executable).parent


def candidate_model(folder: Path) -> Path:
    """The sample model with a ``variant`` metadata entry (another sha256, the same weights)
    and a manifest that keeps only detections scoring 0.6 or more."""
    manifest = load_manifest(ROOT / "models/fall-detection-yolov8.yaml")
    model = onnx.load(str(manifest.resolve_file()))
    entry = model.metadata_props.add()
    entry.key, entry.value = "variant", "demo-ota score>=0.6"
    onnx_path = folder / "fall-detection-v2.onnx"
    onnx.save(model, str(onnx_path))
    path = folder / "fall-detection-v2.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "name": "fall-detection-v2",
                "file": onnx_path.name,
                "sha256": hashlib.sha256(onnx_path.read_bytes()).hexdigest(),
                "layout": "yolov8",
                "input": {"width": 640, "height": 640},
                "labels": {0: "person", 1: "person_fallen"},
                "score_threshold": 0.6,
            }
        )
    )
    return path


HEADERS: dict[str, str] = {}
"""The demo's API token (made by ``secagg token create`` once the store exists)."""


def secagg(conf: Path, *args: str) -> str:
    done = subprocess.run(
        [str(BIN / "secagg"), *args, "--config", str(conf)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=conf.parent,
    )
    if done.returncode != 0:
        raise SystemExit(f"secagg {' '.join(args)} failed: {done.stderr[-2000:]}")
    return done.stdout


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workdir", type=Path, default=ROOT / "var" / "demo-ota")
    parser.add_argument("--shadow-s", type=float, default=20.0, help="how long the shadow runs")
    args = parser.parse_args()
    work = fresh_workdir(args.workdir)
    clip = sample_clip(ROOT / "var/cache")
    with Mosquitto(work / "mosquitto") as broker:
        port = free_port()
        api = f"http://127.0.0.1:{port}"
        conf = work / "secagg.yaml"
        conf.write_text(
            f"mqtt: {{host: {broker.host}, port: {broker.port}, client_id: secagg-demo-ota}}\n"
            "store: {path: secagg.sqlite}\n"
            f"api: {{host: 127.0.0.1, port: {port}}}\n"
            "ota: {enabled: true, refresh_interval_s: 1}\n"
        )
        say("[1/6] secagg ota init: offline root and targets keys, the signed repository")
        say("      " + secagg(conf, "ota", "init", "--keys", str(work / "keys")).splitlines()[-1])
        say("[2/6] secagg release add model: a candidate, checked and signed")
        release = json.loads(
            secagg(
                conf,
                "release",
                "add",
                "model",
                str(candidate_model(work)),
                "--tag",
                "v2-demo",
                "--targets-key",
                str(work / "keys/targets.pem"),
            )
        )
        say(f"      release {release['id']}: sha256 {release['sha256'][:16]}…, {release['compat']}")
        (work / "token").write_text(secagg(conf, "ota", "token", "demo-host"))
        token = secagg(conf, "token", "create", "--name", "demo-ota", "--role", "viewer").strip()
        HEADERS["Authorization"] = f"Bearer {token}"  # the demo's own API calls
        agent_conf = work / "secagent.yaml"
        agent_conf.write_text(
            yaml.safe_dump(
                {
                    "agent_id": "demo-host",
                    "mqtt": {"host": broker.host, "port": broker.port, "status_interval_s": 2},
                    "detect": {
                        "model": str(ROOT / "models/fall-detection-yolov8.yaml"),
                        "providers": ["CPUExecutionProvider"],
                    },
                    "rules": str(ROOT / "rules/default.yaml"),
                    "cameras": [
                        {
                            "name": "yard",
                            "source": {
                                "type": "video",
                                "path": str(clip),
                                "fps": 2,
                                "realtime": True,
                                "loop": True,
                            },
                        }
                    ],
                    "ota": {
                        "enabled": True,
                        "url": f"{api}/ota/v1",
                        "trusted_root": str(work / "keys/root.json"),
                        "token_file": "token",
                        "probation_s": 10,
                        "check_interval_s": 5,
                    },
                }
            )
        )
        logs = (work / "secagg.log").open("w"), (work / "secagent.log").open("w")
        procs = [
            subprocess.Popen(
                [str(BIN / "secagg"), "serve", "--config", str(conf)],
                stdout=logs[0],
                stderr=subprocess.STDOUT,
            ),
            subprocess.Popen(
                [str(BIN / "secagent"), "run", "--config", str(agent_conf)],
                stdout=logs[1],
                stderr=subprocess.STDOUT,
                cwd=work,
            ),
        ]
        try:
            run(conf, api, release)
        finally:
            for proc in procs:
                proc.terminate()
                proc.wait(timeout=30)
    say(f"logs: {work / 'secagg.log'}, {work / 'secagent.log'}")
    return 0


def reports(api: str) -> list[dict[str, Any]]:
    try:
        r = httpx.get(f"{api}/api/agents/demo-host/history", headers=HEADERS, timeout=5)
    except httpx.HTTPError:
        return []
    return list(r.json()["reports"]) if r.status_code == 200 else []


def reported(api: str, release_id: int | None, state: str) -> dict[str, Any] | None:
    return next(
        (r for r in reports(api) if r["release_id"] == release_id and r["state"] == state), None
    )


def run(conf: Path, api: str, release: dict[str, Any]) -> None:
    def agent_up() -> bool:
        try:
            r = httpx.get(f"{api}/api/agents/demo-host", headers=HEADERS, timeout=2)
            return r.status_code == 200
        except httpx.HTTPError:
            return False

    wait_until("the agent", agent_up, timeout_s=120)
    say("[3/6] shadow run: the candidate beside the active model on every frame")
    rollout = json.loads(
        secagg(
            conf, "rollout", "create", str(release["id"]), "--agents", "demo-host", "--shadow", "1"
        )
    )
    wait_until("the shadow", lambda: reported(api, release["id"], "shadow"), timeout_s=120)

    def enough() -> bool:
        doc = json.loads(secagg(conf, "rollout", "compare", str(rollout["id"]), "--json"))
        return int(doc["frames"]) >= 20

    wait_until("20 shadowed frames", enough, timeout_s=300)
    say("[4/6] secagg rollout compare")
    say(secagg(conf, "rollout", "compare", str(rollout["id"])))
    say("[5/6] secagg rollout promote: active between two frames, then probation")
    secagg(conf, "rollout", "promote", str(rollout["id"]))
    active = wait_until("the switch", lambda: reported(api, release["id"], "active"), timeout_s=120)
    say(f"      active from frame {active['frame_id']}")
    wait_until("probation", lambda: reported(api, release["id"], "committed"), timeout_s=120)
    say("      committed: probation passed")
    say("[6/6] rollback: secagg rollout abort takes the agent back to its installed model")
    secagg(conf, "rollout", "abort", str(rollout["id"]))
    wait_until("the rollback", lambda: reported(api, None, "active"), timeout_s=120)
    say(secagg(conf, "history", "demo-host"))


if __name__ == "__main__":
    sys.exit(main())
