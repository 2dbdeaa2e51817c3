"""``make demo``: the whole pipeline on embedded defaults.

A private Mosquitto on a free port, ``secagg serve`` (SQLite under var/demo/), and ``secagent run``
on the sample model with two cameras: ``yard`` (the sample clip) and ``door`` (a folder of stills,
some of them corrupt). ``secagg`` emails each threat event to a local SMTP server that saves
the emails under var/demo/mail/. Ends with a summary; ``--serve`` keeps the API up until Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx

from demo.broker import Mosquitto, free_port
from demo.footage import sample_clip, write_door_stills
from demo.mailbox import Mailbox

ROOT = Path(__file__).resolve().parent.parent
CUTOFF_S = 10
GROUP_WAIT_S = 5  # the first email of an event waits this long and sums up the burst
MARKER = ".secagent-demo"
"""A file in every work folder the demo made: only such a folder is emptied by the next run."""
T = TypeVar("T")


def say(text: str) -> None:
    print(text, flush=True)


def wait_until(what: str, check: Callable[[], T | None], *, timeout_s: float) -> T:
    """Poll ``check()`` until it returns a truthy value; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise SystemExit(f"demo: timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(0.2)  # poll interval of a deadline wait


def write_configs(
    work: Path, *, broker: Mosquitto, api_port: int, clip: Path, door: Path, smtp_port: int
) -> tuple[Path, Path]:
    agg = work / "secagg.yaml"
    agg.write_text(
        f"mqtt: {{host: {broker.host}, port: {broker.port}, client_id: secagg-demo}}\n"
        f"store: {{path: secagg.sqlite, snapshots_dir: snapshots}}\n"
        f"events: {{cutoff_s: {CUTOFF_S}}}\n"
        f"api: {{host: 127.0.0.1, port: {api_port}}}\n"
        f"notify:\n  group_wait_s: {GROUP_WAIT_S}\n  notifiers:\n"
        f"    - {{name: guard, type: smtp, host: 127.0.0.1, port: {smtp_port}, "
        "from_addr: secagg@demo.invalid, to: [guard@demo.invalid]}\n"
    )
    agent = work / "secagent.yaml"
    agent.write_text(
        "agent_id: demo-host\n"
        f"mqtt: {{host: {broker.host}, port: {broker.port}, status_interval_s: 5}}\n"
        f"detect: {{model: {ROOT / 'models/fall-detection-yolov8.yaml'}}}\n"
        f"rules: {ROOT / 'rules/default.yaml'}\n"
        "outbox: {path: outbox.sqlite}\n"
        "cameras:\n"
        f"  - name: yard\n    source: {{type: video, path: {clip}, fps: 2}}\n"
        f"  - name: door\n    source: {{type: directory, path: {door}, watch: false}}\n"
    )
    return agg, agent


def shown(path: Path) -> str:
    """``path`` relative to the checkout when it lies inside it, else as it is."""
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def fresh_workdir(work: Path) -> Path:
    """Empty ``work`` (absolute from here on) for a new run. Only a folder an earlier demo made
    (it holds :data:`MARKER`), one under the checkout's ``var/``, or an empty one is emptied:
    ``--workdir ~`` must not wipe a home folder."""
    work = work.expanduser().resolve()
    if work.exists() and not work.is_dir():
        raise SystemExit(f"demo: --workdir {work} is not a folder")
    if work.is_dir() and any(work.iterdir()):
        if not (work / MARKER).is_file() and not work.is_relative_to(ROOT / "var"):
            raise SystemExit(
                f"demo: --workdir {work} is not empty and no demo made it; "
                "give an empty or new folder"
            )
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    (work / MARKER).write_text("made by python -m demo; emptied by its next run\n")
    return work


def prepare(work: Path) -> tuple[Path, Path]:
    """Step 1: the sample clip (cached in the checkout) and the door's stills under ``work``."""
    say("[1/5] sample footage: compositing the clip from photos shipped by installed packages")
    clip = sample_clip(ROOT / "var/cache")
    door = work / "incoming/door"
    expected = write_door_stills(door)
    say(f"      clip {shown(clip)}; {len(expected)} stills in {shown(door)}")
    return clip, door


def first_admin(bindir: Path, agg_conf: Path, work: Path) -> tuple[tuple[str, str], dict[str, str]]:
    """The demo's first admin: a page login (user ``admin``, a generated password) and an API
    token, made with ``secagg user add`` and ``secagg token create`` as an operator would."""

    def secagg(*args: str) -> str:
        done = subprocess.run(
            [str(bindir / "secagg"), *args, "--config", str(agg_conf)],
            capture_output=True,
            text=True,
            check=True,
        )
        return done.stdout

    out = secagg("user", "add", "admin", "--role", "admin", "--generate")
    password = out.split("password: ", 1)[1].strip()
    token = secagg("token", "create", "--name", "demo", "--role", "admin").strip()
    creds = work / "credentials.txt"
    creds.write_text(f"page login: admin / {password}\nAPI token (admin): {token}\n")
    creds.chmod(0o600)
    return ("admin", password), {"Authorization": f"Bearer {token}"}


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m demo", description=__doc__)
    parser.add_argument("--serve", action="store_true", help="keep the API up until Ctrl-C")
    parser.add_argument(
        "--workdir",
        type=Path,
        default=ROOT / "var/demo",
        help="folder for the run's databases, logs and mail (emptied first; default var/demo)",
    )
    args = parser.parse_args()
    work = fresh_workdir(args.workdir)
    bindir = Path(sys.executable).parent

    clip, door = prepare(work)

    say("[2/5] starting a private Mosquitto")
    broker = Mosquitto(work / "broker").start()
    say(f"      mqtt://{broker.host}:{broker.port}")
    mailbox = Mailbox(work / "mail").start()
    api_port = free_port()
    agg_conf, agent_conf = write_configs(
        work, broker=broker, api_port=api_port, clip=clip, door=door, smtp_port=mailbox.port
    )
    api = f"http://127.0.0.1:{api_port}"
    login, headers = first_admin(bindir, agg_conf, work)
    agg_log = (work / "secagg.log").open("w")
    aggregator = subprocess.Popen(
        [str(bindir / "secagg"), "serve", "--config", str(agg_conf)],
        stdout=agg_log,
        stderr=subprocess.STDOUT,
    )
    try:
        say("[3/5] starting the aggregator (secagg serve)")

        def healthy() -> dict[str, Any] | None:
            if aggregator.poll() is not None:
                raise SystemExit(f"secagg exited early; see {work / 'secagg.log'}")
            try:
                body = httpx.get(f"{api}/api/health", headers=headers, timeout=2).json()
            except httpx.HTTPError:
                return None
            return body if body.get("broker_connected") else None

        wait_until("the aggregator's API", healthy, timeout_s=60)
        say(f"      pages {api}/ (log in as {login[0]}), API {api}/docs")

        say("[4/5] running the agent (secagent run) on the sample model")
        summary = run_agent(bindir, agent_conf, work)

        say("[5/5] waiting for the aggregator to store every threat message")
        health = wait_until(
            "all threat messages stored",
            lambda: (h := healthy()) and h["messages"] >= summary["threat_messages"] and h,
            timeout_s=60,
        )
        events = httpx.get(
            f"{api}/api/events", params={"limit": 100}, headers=headers, timeout=5
        ).json()
        wait_until(
            "one email per threat event",
            lambda: len(mailbox.messages) >= len(events),
            timeout_s=60,
        )
        print_summary(summary, health, events, work=work, api=api, mailbox=mailbox)
        say(f"review page       {api}/   user {login[0]}, password {login[1]}")
        say(f"API token (admin) {headers['Authorization'][7:]}")
        say(f"                  (both also in {work / 'credentials.txt'})")
        if args.serve:
            say(f"\nServing {api} (Ctrl-C to stop)")
            stop = {signal.SIGINT, signal.SIGTERM}
            signal.pthread_sigmask(signal.SIG_BLOCK, stop)
            signal.sigwait(stop)
            say("stopping")
    finally:
        aggregator.terminate()
        try:
            aggregator.wait(timeout=15)
        except subprocess.TimeoutExpired:
            aggregator.kill()
        broker.stop()
        mailbox.stop()
        agg_log.close()
    return 0


def run_agent(bindir: Path, config: Path, work: Path) -> dict[str, Any]:
    """Run the agent to completion, echoing a progress line per 10 frames sent to the model."""
    log_path = work / "secagent.log"
    proc = subprocess.Popen(
        [str(bindir / "secagent"), "run", "--config", str(config), "--exit-when-done"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=work,
    )
    detected = threats = 0
    assert proc.stderr is not None and proc.stdout is not None
    with log_path.open("w") as log:
        for line in proc.stderr:
            log.write(line)
            if " threats=" in line:
                detected += 1
                threats += int(line.rsplit(" threats=", 1)[1].split()[0])
                if detected % 10 == 0:
                    say(f"      {detected} frames through the model, {threats} threats so far")
            elif "rejected:" in line:
                say("      " + line.split("source=", 1)[-1].strip())
            elif " ERROR " in line:
                say("      " + line.strip())
    out = proc.stdout.read()
    if proc.wait() != 0:
        raise SystemExit(f"secagent failed (exit {proc.returncode}); see {log_path}")
    summary: dict[str, Any] = json.loads(out.strip().splitlines()[-1])["summary"]
    return summary


def print_summary(
    summary: dict[str, Any],
    health: dict[str, Any],
    events: list[dict[str, Any]],
    *,
    work: Path,
    api: str,
    mailbox: Mailbox,
) -> None:
    rejected = summary["frames_rejected"]
    say("\n=== secagent demo summary ===")
    say(f"model             {summary['versions']['model_sha256'][:16]}… on {summary['provider']}")
    say(f"rules version     {summary['versions']['rules_sha256'][:16]}…")
    say(f"code version      {summary['versions']['code']}")
    say(f"frames read       {summary['frames_read']}")
    say(
        f"frames rejected   {sum(rejected.values())} "
        + (
            "(" + ", ".join(f"{k}: {v}" for k, v in sorted(rejected.items())) + ")"
            if rejected
            else ""
        )
    )
    say(f"no motion         {summary['frames_no_motion']} (never reached the model)")
    say(f"to the model      {summary['frames_detected']}")
    say(f"detections        {summary['detections']}")
    say(
        f"threats           {summary['threats']} in {summary['threat_messages']} messages "
        f"({summary['acknowledged']} acknowledged by the broker)"
    )
    say(f"stored            {health['messages']} messages, {health['threats']} threats")
    say(f"threat events     {health['events']}")
    for e in sorted(events, key=lambda e: e["id"]):
        say(
            f"  #{e['id']:<3} {e['camera']:<6} {e['rule']:<20} {e['severity']:<8} "
            f"{e['threat_count']:>3} threats  {e['started_at'][11:19]}-{e['last_seen_at'][11:19]}"
            f"  top {e['top_score']:.2f}  {e['state']}"
        )
    attached = sum(1 for m in mailbox.messages if any(m.iter_attachments()))
    say(
        f"emails            {len(mailbox.messages)} ({attached} with the snapshot attached), "
        f"saved in {mailbox.folder}"
    )
    for m in mailbox.messages:
        say(f"  {m['Subject']}")
    say(f"database          {work / 'secagg.sqlite'}")
    say(f"logs              {work / 'secagent.log'}, {work / 'secagg.log'}")
    say("query the API     make demo SERVE=1, then e.g. (TOKEN: the API token below)")
    say(f"                  curl -s -H 'Authorization: Bearer TOKEN' {api}/api/events")
    say(f"                  curl -s -H 'Authorization: Bearer TOKEN' {api}/api/events/1")


if __name__ == "__main__":
    sys.exit(main())
