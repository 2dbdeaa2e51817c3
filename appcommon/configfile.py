"""Load a YAML file into a pydantic model, with errors that name the field path and the reason.

Shared by the agent's and the aggregator's config loaders.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TypeVar

import yaml
from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)


class ConfigError(ValueError):
    """A config file is missing, unreadable, not YAML, or fails validation."""


def load_yaml_model(path: Path, model: type[M]) -> tuple[M, str]:
    """Parse ``path`` as ``model``; return it with the sha256 of the file bytes."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config: {exc.strerror or exc}") from exc
    try:
        doc = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(doc).__name__}")
    try:
        parsed = model.model_validate(doc, context={"base_dir": path.parent.resolve()})
    except ValidationError as exc:
        raise ConfigError(f"{path}: invalid config:\n{format_errors(exc, doc)}") from exc
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


def format_errors(exc: ValidationError, doc: object = None) -> str:
    """One line per error: ``  field.path: reason``."""
    return "\n".join(f"  {yaml_path(tuple(err['loc']), doc)}: {err['msg']}" for err in exc.errors())


def resolve_path(value: Path, base_dir: Path | None) -> Path:
    """A relative path in a config file is relative to the file's folder."""
    if value.is_absolute() or base_dir is None:
        return value
    return (base_dir / value).resolve()
