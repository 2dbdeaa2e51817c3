"""Config files for the config tests: good documents of each kind, edits of them, and the
``check-config`` commands."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from appcommon.configfile import ConfigError
from tests.support import DEFAULT_RULES, MODEL_MANIFEST

BIN = Path(sys.executable).parent
AGENT: dict[str, Any] = {
    "agent_id": "host-1",
    "mqtt": {"host": "broker.local", "port": 1883, "username": "host-1", "password": "pw"},
    "detect": {"model": str(MODEL_MANIFEST), "providers": ["CPUExecutionProvider"]},
    "rules": str(DEFAULT_RULES),
    "cameras": [
        {"name": "door", "source": {"type": "directory", "path": "incoming/door"}},
        {
            "name": "yard",
            "source": {"type": "video", "path": "yard.avi", "fps": 2},
            "motion": {"blur_px": 7},
        },
    ],
}
AGGREGATOR: dict[str, Any] = {
    "mqtt": {"host": "broker.local", "port": 8883, "password": "s3cret-pw"},
    "store": {"path": "db/secagg.sqlite"},
    "events": {"cutoff_s": 10},
    "api": {"host": "0.0.0.0", "port": 8080},
}
RULES: dict[str, Any] = {
    "rules": [
        {"name": "person_on_premises", "labels": ["person"], "min_score": 0.5, "severity": "high"},
        {
            "name": "fallen",
            "labels": ["person_fallen"],
            "severity": "critical",
            "cameras": ["yard"],
        },
    ],
}
MANIFEST: dict[str, Any] = yaml.safe_load(MODEL_MANIFEST.read_text())

DELETE = object()


def edited(base: dict[str, Any], edits: dict[str, object]) -> str:
    """YAML of ``base`` with ``{"dotted.path.0.key": value}`` edits (``DELETE`` removes a key)."""
    doc = copy.deepcopy(base)
    for dotted, value in edits.items():
        *parents, last = dotted.split(".")
        node: Any = doc
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node.setdefault(key, {})
        index: Any = int(last) if isinstance(node, list) else last
        if value is DELETE:
            del node[index]
        else:
            node[index] = value
    return yaml.safe_dump(doc)


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(text)
    return path


Loader = Callable[[Path], object]


def assert_refused(
    tmp_path: Path,
    load: Loader,
    text: str | None,
    expected_exception: type[ConfigError],
    expected: list[str],
) -> None:
    """``load`` refuses the file holding ``text`` (no file when None): the error names the file
    first, then each of ``expected``."""
    path = tmp_path / "config.yaml"
    if text is not None:
        path.write_text(text)
    with pytest.raises(expected_exception) as info:
        load(path)
    assert isinstance(info.value, ConfigError)
    message = str(info.value)
    assert message.startswith(f"{path}: ")
    for part in expected:
        assert part in message


def check_config(
    program: str, config: Path, *, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``secagent check-config`` or ``secagg check-config`` as a real process (``env`` is added
    to this process's environment)."""
    return subprocess.run(
        [str(BIN / program), "check-config", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, **(env or {})},
    )
