"""Pieces both command-line tools share: the ``--config`` and ``--log-level`` options, logging."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def config_option(what: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``--config FILE`` (required), passed as ``config_path``."""
    return click.option(
        "--config",
        "config_path",
        required=True,
        type=click.Path(dir_okay=False, path_type=Path),
        help=f"{what} config (YAML)",
    )


log_level_option = click.option(
    "--log-level",
    default="info",
    show_default=True,
    type=click.Choice(["debug", "info", "warning", "error"]),
)


def setup_logging(level: str) -> None:
    """Log lines to stderr (journald adds its own time stamps; ours stay for plain files)."""
    logging.basicConfig(level=level.upper(), stream=sys.stderr, format=LOG_FORMAT)
