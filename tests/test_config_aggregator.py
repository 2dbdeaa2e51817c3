"""The aggregator's config file (``secagg.yaml``): defaults, relative paths, refusals with the
field path and the reason, and ``secagg check-config``."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from aggregator.config import load_aggregator_config
from appcommon.configfile import ConfigError
from tests.support import ROOT
from tests.support.configs import AGGREGATOR, Loader, assert_refused, check_config, edited, write


def test_the_example_configs_are_one_per_program() -> None:
    examples = [*(ROOT / "config").glob("*.yaml"), *(ROOT / "config").glob("*.yml")]
    assert sorted(p.name for p in examples) == ["secagent.example.yaml", "secagg.example.yaml"]


def test_the_example_aggregator_config_loads_and_passes_check_config() -> None:
    example = ROOT / "config" / "secagg.example.yaml"
    config, sha = load_aggregator_config(example)
    assert config.api.port >= 0
    assert sha == hashlib.sha256(example.read_bytes()).hexdigest()
    result = check_config("secagg", example)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"ok: {example}")


def test_aggregator_config_loads_with_defaults_and_relative_paths(tmp_path: Path) -> None:
    path = write(tmp_path, "secagg.yaml", edited(AGGREGATOR, {}))
    config, sha = load_aggregator_config(path)

    assert sha == hashlib.sha256(path.read_bytes()).hexdigest()
    assert config.mqtt.port == 8883
    assert config.mqtt.client_id == "secagg"
    assert config.store.path == tmp_path.resolve() / "db" / "secagg.sqlite"
    assert config.store.snapshots_dir == tmp_path.resolve() / "snapshots"
    assert config.events.cutoff_s == 10
    assert config.api.port == 8080


def test_notification_timing_is_set_under_notify(tmp_path: Path) -> None:
    text = edited(
        AGGREGATOR,
        {"notify.group_wait_s": 10, "notify.repeat_interval_s": 3600, "notify.cooldown_s": 300},
    )
    config, _ = load_aggregator_config(write(tmp_path, "secagg.yaml", text))
    timing = (config.notify.group_wait_s, config.notify.repeat_interval_s, config.notify.cooldown_s)
    assert timing == (10, 3600, 300)


def test_aggregator_config_may_be_empty_mapping(tmp_path: Path) -> None:
    config, _ = load_aggregator_config(write(tmp_path, "secagg.yaml", "store: {}\n"))
    assert config.api.port == 8080
    assert config.mqtt.host == "127.0.0.1"
    assert config.store.path == tmp_path.resolve() / "secagg.sqlite"


def test_default_store_paths_are_relative_to_the_config_file(tmp_path: Path) -> None:
    config, _ = load_aggregator_config(write(tmp_path, "config.yaml", "{}\n"))
    assert config.store.path == tmp_path.resolve() / "secagg.sqlite"
    assert config.store.snapshots_dir == tmp_path.resolve() / "snapshots"


BAD_AGGREGATOR_CONFIGS = [
    pytest.param(
        load_aggregator_config,
        edited(AGGREGATOR, {"api.port": 70000}),
        ConfigError,
        ["api.port: Input should be less than or equal to 65535"],
        id="agg-port-too-high",
    ),
    pytest.param(
        load_aggregator_config,
        edited(AGGREGATOR, {"mqtt.port": "x"}),
        ConfigError,
        ["mqtt.port: Input should be a valid integer"],
        id="agg-port-wrong-type",
    ),
    pytest.param(
        load_aggregator_config,
        edited(AGGREGATOR, {"mqtt.client_id": ""}),
        ConfigError,
        ["mqtt.client_id: String should have at least 1 character"],
        id="agg-empty-client-id",
    ),
    pytest.param(
        load_aggregator_config,
        edited(AGGREGATOR, {"events.cutoff_s": 0}),
        ConfigError,
        ["events.cutoff_s: Input should be greater than 0"],
        id="agg-cutoff-0",
    ),
    pytest.param(
        load_aggregator_config,
        edited(AGGREGATOR, {"events.group_wait_s": 10}),
        ConfigError,
        ["events.group_wait_s: moved to notify.group_wait_s"],
        id="agg-group-wait-moved-to-notify",
    ),
    pytest.param(
        load_aggregator_config,
        edited(AGGREGATOR, {"events.repeat_interval_s": 3600, "events.cooldown_s": 300}),
        ConfigError,
        [
            "events.repeat_interval_s: moved to notify.repeat_interval_s",
            "events.cooldown_s: moved to notify.cooldown_s",
        ],
        id="agg-repeat-and-cooldown-moved-to-notify",
    ),
    pytest.param(
        load_aggregator_config,
        edited(AGGREGATOR, {"store.dir": "x"}),
        ConfigError,
        ["store.dir: Extra inputs are not permitted"],
        id="agg-unknown-field",
    ),
    pytest.param(
        load_aggregator_config,
        edited(AGGREGATOR, {"cameras": []}),
        ConfigError,
        ["cameras: Extra inputs are not permitted"],
        id="agg-agent-field",
    ),
    pytest.param(
        load_aggregator_config,
        "just a string\n",
        ConfigError,
        ["top level must be a mapping, got str"],
        id="agg-not-a-mapping",
    ),
    pytest.param(
        load_aggregator_config,
        "api: {port: 80\n",
        ConfigError,
        ["not valid YAML"],
        id="agg-not-yaml",
    ),
    pytest.param(
        load_aggregator_config, None, ConfigError, ["cannot read config"], id="agg-missing-file"
    ),
]


@pytest.mark.parametrize(("load", "text", "expected_exception", "expected"), BAD_AGGREGATOR_CONFIGS)
def test_bad_aggregator_config_is_refused_with_field_path_and_reason(
    tmp_path: Path,
    load: Loader,
    text: str | None,
    expected_exception: type[ConfigError],
    expected: list[str],
) -> None:
    assert_refused(tmp_path, load, text, expected_exception, expected)


def test_secagg_check_config_prints_settings_without_the_password(tmp_path: Path) -> None:
    path = write(tmp_path, "secagg.yaml", edited(AGGREGATOR, {}))
    result = check_config("secagg", path)
    assert result.returncode == 0, result.stderr
    first, _, rest = result.stdout.partition("\n")
    assert first == f"ok: {path}"
    settings = json.loads(rest)
    assert settings["mqtt"]["port"] == 8883
    assert settings["store"]["path"] == str(tmp_path.resolve() / "db" / "secagg.sqlite")
    assert "password" not in settings["mqtt"]
    assert "s3cret-pw" not in result.stdout


@pytest.mark.parametrize(
    ("text", "expected_stderr"),
    [
        (
            edited(AGGREGATOR, {"api.port": 70000}),
            "api.port: Input should be less than or equal to 65535",
        ),
        (edited(AGGREGATOR, {"events.cutoff_s": -1}), "events.cutoff_s: Input should be greater"),
        (
            edited(AGGREGATOR, {"events.cooldown_s": 300}),
            "events.cooldown_s: moved to notify.cooldown_s",
        ),
        ("mqtt: [\n", "not valid YAML"),
    ],
)
def test_secagg_check_config_refuses_bad_files(
    tmp_path: Path, text: str, expected_stderr: str
) -> None:
    result = check_config("secagg", write(tmp_path, "secagg.yaml", text))
    assert result.returncode == 1
    assert result.stderr.startswith(f"Error: {tmp_path / 'secagg.yaml'}: ")
    assert expected_stderr in result.stderr
