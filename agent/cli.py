"""``secagent``: the edge daemon and its one-shot tools."""

from __future__ import annotations

import json
import logging
import os
import signal
import sqlite3
import sys
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

import click
import numpy as np

from agent.capture import Frame
from agent.config import ValidateConfig
from agent.validate import FrameRejected, validate_frame
from appcommon.cli import config_option, log_format_option, log_level_option, setup_logging
from appcommon.configfile import ConfigError
from appcommon.systemd import Notifier
from modelrt import (
    Detector,
    DetectorError,
    ManifestError,
    load_model_argument,
)
from modelrt.frames import still_sha256

if TYPE_CHECKING:
    from agent.metrics import MetricsServer
    from agent.pipeline import Agent
    from agent.runlogs import RunLogs
from modelrt.rules import RulesError
from modelrt.runtime import RuntimeInstallError, load_onnxruntime

log = logging.getLogger("agent")


@click.group()
@click.version_option(package_name="secagent")
def main() -> None:
    """secagent: edge object detection for security cameras."""


def _start_metrics(agent: Agent) -> MetricsServer | None:
    """The Prometheus listener, when ``metrics.enabled``."""
    from agent.metrics import MetricsServer

    if not agent.config.metrics.enabled:
        return None
    server = MetricsServer(agent, agent.config.metrics)
    agent.engine.on_inference_ms = server.collector.observe_inference_ms
    try:
        server.start()
    except OSError as exc:
        raise click.ClickException(
            f"metrics listener on {agent.config.metrics.host}:{agent.config.metrics.port}: {exc}"
        ) from exc
    return server


def _start_run_logs(agent: Agent) -> RunLogs | None:
    """Warnings and errors to the aggregator, when ``run_logs.enabled``."""
    from agent.runlogs import RunLogs

    if not agent.config.run_logs.enabled:
        return None
    handler = RunLogs(agent, agent.config.run_logs)
    handler.start()
    return handler


@main.command()
@config_option("agent")
@click.option(
    "--exit-when-done",
    is_flag=True,
    help="exit once every source has finished and the outbox is drained",
)
@click.option(
    "--health-file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="write the agent's liveness here every 2 s, for 'secagent health' (containers)",
)
@log_level_option
@log_format_option
def run(
    config_path: Path,
    exit_when_done: bool,
    health_file: Path | None,
    log_level: str,
    log_format: str,
) -> None:
    """Run the daemon: capture, validate, gate, detect, apply rules, publish threats.

    Under systemd (Type=notify) it says READY=1 once the model is loaded, the outbox open and
    the broker connection attempted, pings the watchdog while every thread makes progress,
    and stops cleanly on SIGTERM (exit 0).
    """
    from agent.liveness import Supervisor
    from agent.pipeline import AgentDied, build_agent

    setup_logging(log_level, log_format)
    notifier = Notifier()
    notifier.status("loading the model")
    try:
        load_onnxruntime()  # exactly one ONNX Runtime, before anything starts
        agent = build_agent(config_path)
    except (RuntimeInstallError, ConfigError, DetectorError, OSError, sqlite3.Error) as exc:
        raise click.ClickException(str(exc)) from exc
    supervisor = Supervisor(agent, notifier, health_file=health_file)
    metrics = _start_metrics(agent)
    run_logs = _start_run_logs(agent)

    def _on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("agent=%s signal %d: stopping", agent.agent_id, signum)
        notifier.stopping("stopping: finishing the frames in hand")
        agent.stop()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    try:
        agent.run(exit_when_done=exit_when_done, tick=supervisor.tick)
    except AgentDied as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        if metrics is not None:
            metrics.stop()
        if run_logs is not None:
            run_logs.stop()
    log.info("agent=%s stopped cleanly", agent.agent_id)
    if agent.ota is not None and agent.ota.exit_code is not None:
        # an agent release was switched to: the service manager starts it (secagent-launch)
        log.info("agent=%s exits %d: start the new release", agent.agent_id, agent.ota.exit_code)
        sys.exit(agent.ota.exit_code)
    if agent.ota is not None and agent.ota.restart_into is not None:
        # a config release became active (or was rolled back): start again into it, same PID
        log.info("agent=%s restarting into config %s", agent.agent_id, agent.ota.restart_into)
        os.execv(sys.argv[0], sys.argv)
    click.echo(json.dumps({"summary": agent.summary()}))


@main.command()
@click.option(
    "--file",
    "health_file",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="the file 'secagent run --health-file' writes",
)
@click.option(
    "--max-age",
    "max_age_s",
    default=30.0,
    show_default=True,
    type=click.FloatRange(min=1),
    help="seconds after which an unchanged health file means a stuck or dead agent",
)
@click.option(
    "--require-broker/--allow-broker-down",
    default=True,
    show_default=True,
    help="whether a broker that cannot be reached makes the agent unhealthy",
)
def health(health_file: Path, max_age_s: float, require_broker: bool) -> None:
    """Exit 0 when the running agent is alive (a container's health check), else 1 with why."""
    from agent.liveness import HealthError, check_health

    try:
        state = check_health(health_file, max_age_s=max_age_s, require_broker=require_broker)
    except HealthError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(json.dumps(state))


@main.command("check-config")
@config_option("agent")
def check_config(config_path: Path) -> None:
    """Load a config as `run` does, without starting cameras or connecting to the broker.

    The config, the model manifest, the model file (sha256) in ONNX Runtime, the rules file and
    its zones, the cameras' folders and video files. A folder that does not exist (yet) is a
    warning; a missing video file is an error. Exit 1 on any error.
    """
    from agent.loader import load_agent

    setup_logging("error")
    try:
        loaded = load_agent(config_path)
    except (ConfigError, DetectorError) as exc:
        raise click.ClickException(str(exc)) from exc
    for problem in loaded.problems:
        if not problem.fatal:
            click.echo(f"warning: {problem}", err=True)
    errors = [str(p) for p in loaded.problems if p.fatal]
    if errors:
        raise click.ClickException(f"{config_path}: " + "; ".join(errors))
    config, rules = loaded.config, loaded.rules
    click.echo(
        f"ok: {config_path} sha256={loaded.file_sha256} config_sha256={loaded.config_sha256} "
        f"cameras={len(config.cameras)} "
        f"model_sha256={loaded.detector.sha256} rules={len(rules.rules)} "
        f"rules_sha256={rules.sha256}"
    )


@main.command()
@click.option(
    "--model",
    "model_path",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="model manifest (YAML), or a bare .onnx file (layout and labels auto-detected)",
)
@click.option(
    "--labels",
    "labels_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="text file of class names, one per line (when the model has no 'names' metadata)",
)
@click.option(
    "--provider",
    "providers",
    multiple=True,
    default=["auto"],
    show_default=True,
    help="ONNX Runtime execution provider (repeatable)",
)
@click.argument("images", nargs=-1, type=click.Path(dir_okay=False, path_type=Path))
def detect(
    model_path: Path, labels_path: Path | None, providers: tuple[str, ...], images: tuple[Path, ...]
) -> None:
    """Load a model and detect objects in IMAGES, one JSON object per image.

    Without IMAGES, print what was recognised about the model (layout, input, batch, labels,
    provider). Exit 1 if the model cannot be loaded or any image failed.
    """
    setup_logging("warning")
    try:
        manifest = load_model_argument(model_path, labels_file=labels_path)
        detector = Detector(manifest, providers=list(providers))
    except (ManifestError, DetectorError) as exc:
        raise click.ClickException(str(exc)) from exc
    if not images:
        click.echo(json.dumps(model_summary(detector)))
        return
    failed = 0
    limits = ValidateConfig()
    for path in images:
        record: dict[str, object] = {"path": str(path)}
        try:
            data = path.read_bytes()
            record["sha256"] = still_sha256(data)
            frame = Frame(
                camera="cli", kind="file", source=str(path), captured_at=_mtime(path), data=data
            )
            image = validate_frame(frame, limits)
            found = detector.detect(image)
            record.update(
                {
                    "width": image.shape[1],
                    "height": image.shape[0],
                    "model_sha256": detector.sha256,
                    "provider": detector.provider,
                    "layout": detector.layout,
                    "inference_ms": round(detector.last_inference_ms, 2),
                    "detections": [d.model_dump(mode="json") for d in found.to_wire()],
                }
            )
        except OSError as exc:
            failed += 1
            record["error"] = f"unreadable: {exc.strerror or exc}"
        except FrameRejected as exc:
            failed += 1
            record["error"] = str(exc)
        click.echo(json.dumps(record))
    if failed:
        sys.exit(1)


def model_summary(detector: Detector) -> dict[str, object]:
    """What ``secagent detect --model`` recognised, as one JSON-ready dict."""
    return {
        "model": detector.manifest.name,
        "path": str(detector.path),
        "sha256": detector.sha256,
        "layout": detector.layout,
        "input": {
            "name": detector.input_name,
            "width": detector.input_size.width,
            "height": detector.input_size.height,
            "dtype": np.dtype(detector.input_dtype).name,
            "batch": detector.batch_size or "dynamic",
        },
        "classes": detector.num_classes,
        "labels": {str(k): v for k, v in sorted(detector.labels.items())},
        "provider": detector.provider,
        "warmup_inference_ms": round(detector.last_inference_ms, 2),
    }


def _mtime(path: Path) -> datetime:
    return datetime.fromtimestamp(path.stat().st_mtime, UTC)


@main.command("send-test-threats")
@config_option("agent")
@click.option(
    "--count",
    default=100,
    show_default=True,
    type=click.IntRange(min=0),
    help="threats to commit to the outbox (0: only deliver what is already there)",
)
@click.option(
    "--start",
    default=0,
    show_default=True,
    type=click.IntRange(min=0),
    help="serial number of the first threat",
)
@click.option(
    "--cameras",
    default=1,
    show_default=True,
    type=click.IntRange(min=1),
    help="spread serials over this many cameras (test-0, test-1, ...)",
)
@click.option(
    "--rate",
    "rate_hz",
    default=0.0,
    show_default=True,
    type=click.FloatRange(min=0),
    help="threats per second (0: as fast as possible)",
)
@click.option(
    "--drain-timeout",
    "drain_timeout_s",
    default=60.0,
    show_default=True,
    type=click.FloatRange(min=0),
    help="seconds to wait for the outbox to drain",
)
@log_level_option
def send_test_threats_command(
    config_path: Path,
    count: int,
    start: int,
    cameras: int,
    rate_hz: float,
    drain_timeout_s: float,
    log_level: str,
) -> None:
    """Send numbered synthetic threats through the outbox and MQTT, as the daemon would.

    Checks the path to the aggregator without a camera. Run it with its own outbox path
    (or with the daemon stopped): it uses the agent's MQTT client id.
    """
    from agent.config import load_agent_config
    from agent.synthetic import send_test_threats

    setup_logging(log_level)
    try:
        config, _ = load_agent_config(config_path)
        result = send_test_threats(
            config,
            count=count,
            start=start,
            cameras=cameras,
            rate_hz=rate_hz,
            drain_timeout_s=drain_timeout_s,
        )
    except (ConfigError, ManifestError, RulesError) as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(json.dumps({"summary": result}))
    if result["outbox_depth"]:
        sys.exit(3)
