"""Load a YAML file into a pydantic model, with errors that name the field path and the reason.

Shared by the agent's and the aggregator's config loaders.
"""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)


class ConfigError(ValueError):
    """A config file is missing, unreadable, not YAML, or fails validation."""


DATA_DIR_ENV = "SECAGENT_DATA_DIR"
"""Overrides the installation's data folder (the one holding ``models/`` and ``rules/``)."""


def installation_data_dir() -> Path:
    """The folder holding the installation's ``models/`` and ``rules/``: ``$SECAGENT_DATA_DIR``
    when set; else the release the program runs from (its virtualenv,
    ``/opt/secagent/current`` for the systemd units: deploy/install.sh puts them there); else
    the checkout the code runs from.

    Read when called, never at import time."""
    override = os.environ.get(DATA_DIR_ENV)
    if override:
        return Path(override).resolve()
    release = Path(sys.prefix)
    if (release / "models").is_dir() or (release / "rules").is_dir():
        return release
    return Path(__file__).resolve().parent.parent


def load_yaml_model(
    path: Path,
    model: type[M],
    *,
    what: str = "config",
    context: dict[str, Any] | None = None,
    moved: Mapping[str, str] | None = None,
) -> tuple[M, str]:
    """Parse ``path`` as ``model``; return it with the sha256 of the file bytes.

    ``what`` names the kind of file in errors ("agent config", "model manifest", "rules file");
    ``context`` is passed to the validators on top of ``base_dir`` (the file's folder, unless
    ``context`` names another: a config delivered elsewhere that keeps its paths' meaning);
    ``moved``: settings that moved, old path -> new path (``events.x`` -> ``notify.x``): a file
    that still has one is refused with where it went instead of "not permitted".
    """
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read {what}: {exc.strerror or exc}") from exc
    try:
        doc = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(doc).__name__}")
    try:
        parsed = model.model_validate(
            doc, context={"base_dir": path.parent.resolve(), **(context or {})}
        )
    except ValidationError as exc:
        errors = format_errors(exc, doc, moved=moved)
        raise ConfigError(f"{path}: invalid {what}:\n{errors}") from exc
    return parsed, hashlib.sha256(raw).hexdigest()


def yaml_path(loc: tuple[int | str, ...], doc: object) -> str:
    """The error location as the user wrote it: pydantic inserts the tag of a discriminated
    union (``source.video.fps``) where the YAML has none (``source.fps``); drop such parts."""
    parts: list[str] = []
    node = doc
    for i, part in enumerate(loc):
        if isinstance(node, dict):
            if part not in node and i < len(loc) - 1:
                continue  # a union tag, not a key of the file
            node = node.get(part)
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            node = node[part]
        else:
            node = None
        parts.append(str(part))
    return ".".join(parts) or "<root>"


def format_errors(
    exc: ValidationError, doc: object = None, *, moved: Mapping[str, str] | None = None
) -> str:
    """One line per error: ``  field.path: reason``; a key that is not permitted because it
    moved (``moved``: old path -> new path) says ``moved to new.path``."""
    lines = []
    for err in exc.errors():
        where = yaml_path(tuple(err["loc"]), doc)
        reason = err["msg"]
        if err["type"] == "extra_forbidden" and moved and where in moved:
            reason = f"moved to {moved[where]}"
        lines.append(f"  {where}: {reason}")
    return "\n".join(lines)


def resolve_path(value: Path, base_dir: Path | None) -> Path:
    """A relative path in a config file is relative to the file's folder."""
    if value.is_absolute() or base_dir is None:
        return value
    return (base_dir / value).resolve()


def find_data_file(value: Path, *, base_dir: Path | None, data_dir: Path | None, what: str) -> Path:
    """A relative path to an installation file (a model manifest, a rules file): next to the
    config file first, then in the installation's data folder. ValueError naming every place
    looked when it is in none of them."""
    if value.is_absolute() or base_dir is None:
        return value
    places = [(base_dir / value).resolve()]
    if data_dir is not None and (data_dir / value).resolve() not in places:
        places.append((data_dir / value).resolve())
    for place in places:
        if place.exists():  # a folder or an unreadable file: its loader says what is wrong
            return place
    raise ValueError(
        f"{what} {str(value)!r} not found; looked in: {', '.join(str(p) for p in places)}"
    )
