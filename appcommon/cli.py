"""Pieces both command-line tools share: the ``--config``, ``--log-level`` and ``--log-format``
options, logging."""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

ID_KEYS = ("agent", "camera", "frame", "lineage", "message", "event", "topic", "notification")
"""Ids that log lines carry as ``key=value``; the JSON format also gives them as fields."""
_ID_RE = re.compile(r"\b(" + "|".join(ID_KEYS) + r")=([^\s,;]+)")


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

log_format_option = click.option(
    "--log-format",
    default="text",
    show_default=True,
    type=click.Choice(["text", "json"]),
    help="text lines, or one JSON object per line (for journald and log shippers)",
)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``ts`` (UTC, ISO 8601), ``level``, ``logger``, ``msg``, the
    ids the message names (``agent``, ``camera``, ``frame``, ``lineage``, ...) as fields, and
    ``exc`` with the traceback when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        doc: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": message,
        }
        for key, value in _ID_RE.findall(message):
            doc.setdefault(key, value)
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, ensure_ascii=False)


def setup_logging(level: str, log_format: str = "text") -> None:
    """Log lines to stderr (journald adds its own time stamps; ours stay for plain files).

    Neither format shows where a line was logged from, nor the thread or process: records
    skip gathering those (the logging documentation's "Optimization"), which takes a fifth
    off each line (``secagg`` logs one for every message it stores)."""
    logging._srcfile = None  # no frame walk to find the caller
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(LOG_FORMAT))
    logging.basicConfig(level=level.upper(), handlers=[handler])
