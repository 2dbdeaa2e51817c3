"""``secagg``: the central aggregator."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

from aggregator.config import AggregatorConfig, load_aggregator_config
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
@click.option(
    "--config",
    "config_path",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="aggregator config (YAML)",
)
@click.option(
    "--log-level",
    default="info",
    show_default=True,
    type=click.Choice(["debug", "info", "warning", "error"]),
)
def serve(config_path: Path, log_level: str) -> None:
    """Ingest threats from MQTT and serve the REST API until SIGINT/SIGTERM."""
    import uvicorn

    from aggregator.api import create_app
    from aggregator.ingest import Ingest

    logging.basicConfig(
        level=log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
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
@click.option(
    "--config",
    "config_path",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="aggregator config (YAML)",
)
def check_config(config_path: Path) -> None:
    """Validate a config file and print the settings it resolves to."""
    config = _load(config_path)
    click.echo(f"ok: {config_path}")
    click.echo(config.model_dump_json(indent=2, exclude={"mqtt": {"password"}}))
