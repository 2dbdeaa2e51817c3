"""``secagg``: the central aggregator."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import click

from aggregator.config import AggregatorConfig, load_aggregator_config
from wire.cli import config_option, log_level_option, setup_logging
from wire.configfile import ConfigError

log = logging.getLogger("aggregator")


def _load(config_path: Path) -> AggregatorConfig:
    try:
        config, _ = load_aggregator_config(config_path)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc
    return config


@click.group()
@click.version_option(package_name="secagent")
def main() -> None:
    """secagg: collects threats from secagent agents, groups them into events, serves the API."""


@main.command()
@config_option("aggregator")
@log_level_option
def serve(config_path: Path, log_level: str) -> None:
    """Ingest threats from MQTT and serve the REST API until SIGINT/SIGTERM."""
    import uvicorn

    from aggregator.api import create_app
    from aggregator.ingest import Ingest

    setup_logging(log_level)
    config = _load(config_path)
    ingest = Ingest(config)
    ingest.start()
    app = create_app(config, broker_connected=ingest.connected.is_set)
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=config.api.host,
            port=config.api.port,
            log_level=log_level,
            access_log=log_level == "debug",
        )
    )
    try:
        server.run()
    finally:
        ingest.stop()


@main.command("check-config")
@config_option("aggregator")
def check_config(config_path: Path) -> None:
    """Validate a config file and print the settings it resolves to."""
    config = _load(config_path)
    click.echo(f"ok: {config_path}")
    settings = config.model_dump(mode="json", exclude={"mqtt": {"password"}})
    for notifier in settings["notify"]["notifiers"]:  # secrets: shown as set, never printed
        if notifier.get("password") is not None:
            notifier["password"] = "***"
        if notifier.get("headers"):
            notifier["headers"] = dict.fromkeys(notifier["headers"], "***")
    click.echo(json.dumps(settings, indent=2))


@main.command()
@config_option("aggregator")
@click.option("--limit", default=20, show_default=True, type=click.IntRange(1, 10_000))
@click.option("--event", "event_id", type=int, default=None, help="only this event's")
def notifications(config_path: Path, limit: int, event_id: int | None) -> None:
    """List the latest notifications (newest first): event, notifier, kind, state, attempts."""
    import sqlite3

    from aggregator import store

    config = _load(config_path)
    try:
        conn = store.connect(config.store.path, readonly=True)
        where, args = ("WHERE event_id = ?", [event_id]) if event_id is not None else ("", [])
        rows = conn.execute(
            f"SELECT * FROM notifications {where} ORDER BY id DESC LIMIT ?", [*args, limit]
        ).fetchall()
    except sqlite3.Error as exc:
        raise click.ClickException(f"{config.store.path}: {exc}") from exc
    click.echo(
        f"{'id':>6} {'event':>6} {'notifier':<12} {'kind':<7} {'for':<18} {'state':<10} "
        f"{'tries':>5}  last error"
    )
    for r in rows:
        click.echo(
            f"{r['id']:>6} {r['event_id']:>6} {r['notifier']:<12} {r['kind']:<7} "
            f"{r['state_key']:<18} {r['state']:<10} {r['attempts']:>5}  {r['last_error'] or ''}"
        )


@main.command("broker-config")
@click.option(
    "--spec",
    "spec_path",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="deployment spec (YAML): agents, readers, listener, TLS files",
)
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="folder for mosquitto.conf, passwd, acl and credentials.yaml",
)
def broker_config(spec_path: Path, out_dir: Path) -> None:
    """Write a Mosquitto config for a deployment: an account and ACL per agent, no anonymous.

    Re-run it after adding an agent to the spec: existing passwords are kept. Then reload
    Mosquitto (systemctl reload mosquitto) and give the agent its password.
    """
    from aggregator.broker_config import BrokerConfigError, load_spec, write_broker_config

    try:
        creds = write_broker_config(load_spec(spec_path), out_dir)
    except (ConfigError, BrokerConfigError) as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(
        f"wrote {out_dir}/mosquitto.conf, passwd, acl, credentials.yaml ({len(creds)} accounts)"
    )
