"""``secagg``: the central aggregator."""

from __future__ import annotations

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
    click.echo(config.model_dump_json(indent=2, exclude={"mqtt": {"password"}}))
