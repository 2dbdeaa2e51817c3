"""The agent's config file (``secagent.yaml``): defaults, relative paths, refusals with the field
path and the reason, and ``secagent check-config``."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from agent.config import load_agent_config
from appcommon.configfile import ConfigError
from modelrt import load_manifest
from modelrt.rules import load_rules
from tests.support import DEFAULT_RULES, MODEL_MANIFEST, ROOT
from tests.support.configs import (
    AGENT,
    DELETE,
    MANIFEST,
    RULES,
    Loader,
    assert_refused,
    check_config,
    edited,
    write,
)


def test_the_example_agent_config_loads_and_passes_check_config() -> None:
    example = ROOT / "config" / "secagent.example.yaml"
    config, sha = load_agent_config(example)
    assert config.cameras
    assert load_manifest(config.detect.model).name
    assert load_rules(config.rules).rules
    assert sha == hashlib.sha256(example.read_bytes()).hexdigest()
    result = check_config("secagent", example)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"ok: {example}")


def test_agent_config_loads_with_defaults_and_relative_paths(tmp_path: Path) -> None:
    text = edited(AGENT, {"rules": "rules.yaml", "outbox": {"max_bytes": 1 << 20}})
    path = write(tmp_path, "secagent.yaml", text)
    config, sha = load_agent_config(path)

    assert sha == hashlib.sha256(path.read_bytes()).hexdigest()
    assert config.agent_id == "host-1"
    assert config.mqtt.port == 1883
    assert config.mqtt.keepalive_s == 30
    assert config.rules == tmp_path.resolve() / "rules.yaml"
    assert config.detect.model == MODEL_MANIFEST
    assert config.outbox.path == tmp_path.resolve() / "outbox.sqlite"
    assert [c.name for c in config.cameras] == ["door", "yard"]
    door, yard = (c.source for c in config.cameras)
    assert door.path == tmp_path.resolve() / "incoming" / "door"
    assert door.type == "directory" and door.settle_s == 1.0 and door.watch is True
    assert yard.type == "video" and yard.fps == 2
    assert config.cameras[0].motion.blur_px == 5
    assert config.cameras[1].motion.blur_px == 7
    assert config.validate_.min_side_px == 16


def test_the_default_outbox_path_is_relative_to_the_config_file(tmp_path: Path) -> None:
    config, _ = load_agent_config(write(tmp_path, "config.yaml", edited(AGENT, {})))
    assert config.outbox.path == tmp_path.resolve() / "outbox.sqlite"


BAD_AGENT_CONFIGS = [
    pytest.param(
        load_agent_config,
        edited(AGENT, {"colour": "red"}),
        ConfigError,
        ["colour: Extra inputs are not permitted"],
        id="agent-unknown-field",
    ),
    pytest.param(
        load_agent_config,
        edited(AGENT, {"mqtt.hostname": "x"}),
        ConfigError,
        ["mqtt.hostname: Extra inputs are not permitted"],
        id="agent-unknown-nested",
    ),
    pytest.param(
        load_agent_config,
        edited(AGENT, {"mqtt.port": "abc"}),
        ConfigError,
        ["mqtt.port: Input should be a valid integer"],
        id="agent-port-wrong-type",
    ),
    pytest.param(
        load_agent_config,
        edited(AGENT, {"mqtt.port": 70000}),
        ConfigError,
        ["mqtt.port: Input should be less than or equal to 65535"],
        id="agent-port-too-high",
    ),
    pytest.param(
        load_agent_config,
        edited(AGENT, {"mqtt.port": 0}),
        ConfigError,
        ["mqtt.port: Input should be greater than or equal to 1"],
        id="agent-port-0",
    ),
    pytest.param(
        load_agent_config,
        edited(AGENT, {"mqtt": "localhost"}),
        ConfigError,
        ["mqtt: Input should be a valid dictionary"],
        id="agent-section-not-mapping",
    ),
    pytest.param(
        load_agent_config,
        edited(AGENT, {"cameras.0.motion.blur_px": 4}),
        ConfigError,
        ["cameras.0.motion.blur_px: Value error, must be odd"],
        id="agent-even-blur",
    ),
    pytest.param(
        load_agent_config,
        edited(AGENT, {"cameras.1.name": "door"}),
        ConfigError,
        ["camera names must be unique, repeated: door"],
        id="agent-duplicate-cameras",
    ),
    pytest.param(
        load_agent_config,
        edited(AGENT, {"cameras": DELETE}),
        ConfigError,
        ["cameras: Field required"],
        id="agent-missing-cameras",
    ),
    pytest.param(
        load_agent_config,
        edited(AGENT, {"cameras": []}),
        ConfigError,
        ["cameras: List should have at least 1 item"],
        id="agent-no-cameras",
    ),
    pytest.param(
        load_agent_config,
        edited(AGENT, {"agent_id": "bad id/+"}),
        ConfigError,
        ["agent_id: String should match pattern"],
        id="agent-bad-agent-id",
    ),
    pytest.param(
        load_agent_config,
        edited(AGENT, {"agent_id": "#"}),
        ConfigError,
        ["agent_id: String should match pattern"],
        id="agent-wildcard-agent-id",
    ),
    pytest.param(
        load_agent_config,
        edited(AGENT, {"cameras.0.name": "front door"}),
        ConfigError,
        ["cameras.0.name: String should match pattern"],
        id="agent-bad-camera-name",
    ),
    pytest.param(
        load_agent_config,
        edited(AGENT, {"cameras.0.source.type": "onvif"}),
        ConfigError,
        ["cameras.0.source: Input tag 'onvif'", "'directory', 'video', 'rtsp', 'usb'"],
        id="agent-unknown-source-type",
    ),
    pytest.param(
        load_agent_config,
        edited(AGENT, {"cameras.0.source": {"type": "rtsp", "url": "ftp://cam/x"}}),
        ConfigError,
        ["cameras.0.source.url: String should match pattern"],
        id="agent-rtsp-url-not-a-stream",
    ),
    pytest.param(
        load_agent_config,
        edited(
            AGENT,
            {
                "cameras.0.source": {
                    "type": "rtsp",
                    "url": "rtsp://cam/x",
                    "reconnect_min_s": 10,
                    "reconnect_max_s": 5,
                }
            },
        ),
        ConfigError,
        ["reconnect_max_s must be at least reconnect_min_s"],
        id="agent-rtsp-backoff-reversed",
    ),
    pytest.param(
        load_agent_config,
        edited(AGENT, {"cameras.0.source": {"type": "usb", "device": "video0"}}),
        ConfigError,
        ["cameras.0.source.device", "device path must start with /dev/"],
        id="agent-usb-device-not-a-path",
    ),
    pytest.param(
        load_agent_config,
        edited(AGENT, {"cameras.0.queue_size": 0}),
        ConfigError,
        ["cameras.0.queue_size: Input should be greater than or equal to 1"],
        id="agent-queue-size-0",
    ),
    pytest.param(
        load_agent_config,
        edited(AGENT, {"cameras.0.source.type": DELETE}),
        ConfigError,
        ["cameras.0.source: Unable to extract tag"],
        id="agent-source-without-type",
    ),
    pytest.param(
        load_agent_config,
        edited(AGENT, {"cameras.1.source.fps": 0}),
        ConfigError,
        ["cameras.1.source.", "fps: Input should be greater than 0"],
        id="agent-fps-0",
    ),
    pytest.param(
        load_agent_config,
        edited(AGENT, {"cameras.0.source.watch": "maybe"}),
        ConfigError,
        ["cameras.0.source.", "watch: Input should be a valid boolean"],
        id="agent-watch-not-bool",
    ),
    pytest.param(
        load_agent_config,
        edited(AGENT, {"validate.min_side_px": 0}),
        ConfigError,
        ["validate.min_side_px: Input should be greater than or equal to 1"],
        id="agent-validate-min-side",
    ),
    pytest.param(
        load_agent_config,
        edited(AGENT, {"detect": DELETE}),
        ConfigError,
        ["detect: Field required"],
        id="agent-missing-detect",
    ),
    pytest.param(
        load_agent_config,
        "agent_id: [unclosed\n",
        ConfigError,
        ["not valid YAML"],
        id="agent-not-yaml",
    ),
    pytest.param(
        load_agent_config,
        "- a\n- b\n",
        ConfigError,
        ["top level must be a mapping, got list"],
        id="agent-not-a-mapping",
    ),
    pytest.param(
        load_agent_config,
        "",
        ConfigError,
        ["top level must be a mapping, got NoneType"],
        id="agent-empty-file",
    ),
    pytest.param(
        load_agent_config,
        None,
        ConfigError,
        ["cannot read config: No such file or directory"],
        id="agent-missing-file",
    ),
]


@pytest.mark.parametrize(("load", "text", "expected_exception", "expected"), BAD_AGENT_CONFIGS)
def test_bad_agent_config_is_refused_with_field_path_and_reason(
    tmp_path: Path,
    load: Loader,
    text: str | None,
    expected_exception: type[ConfigError],
    expected: list[str],
) -> None:
    assert_refused(tmp_path, load, text, expected_exception, expected)


def test_error_path_inside_a_source_is_the_yaml_path(tmp_path: Path) -> None:
    text = edited(AGENT, {"cameras.1.source.fps": 0})
    with pytest.raises(ConfigError) as info:
        load_agent_config(write(tmp_path, "secagent.yaml", text))
    assert "  cameras.1.source.fps: Input should be greater than 0" in str(info.value)


def test_all_errors_are_reported_at_once(tmp_path: Path) -> None:
    text = edited(AGENT, {"mqtt.port": 0, "cameras.0.motion.blur_px": 2, "colour": "red"})
    with pytest.raises(ConfigError) as info:
        load_agent_config(write(tmp_path, "secagent.yaml", text))
    lines = str(info.value).splitlines()
    assert lines[0] == f"{tmp_path / 'secagent.yaml'}: invalid config:"
    assert sorted(line.split(":")[0].strip() for line in lines[1:]) == [
        "cameras.0.motion.blur_px",
        "colour",
        "mqtt.port",
    ]


def test_secagent_check_config_accepts_a_good_config(tmp_path: Path) -> None:
    path = write(tmp_path, "secagent.yaml", edited(AGENT, {}))
    result = check_config("secagent", path)
    assert result.returncode == 0, result.stderr
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    rules_sha = hashlib.sha256(DEFAULT_RULES.read_bytes()).hexdigest()
    assert result.stdout.strip() == (
        f"ok: {path} sha256={sha} cameras=2 rules=1 rules_sha256={rules_sha}"
    )


@pytest.mark.parametrize(
    ("files", "expected_stderr"),
    [
        pytest.param(
            {"secagent.yaml": edited(AGENT, {"mqtt.port": 70000})},
            ["mqtt.port: Input should be less than or equal to 65535"],
            id="bad-port",
        ),
        pytest.param(
            {"secagent.yaml": edited(AGENT, {"cameras.0.motion.blur_px": 4})},
            ["cameras.0.motion.blur_px: Value error, must be odd"],
            id="even-blur",
        ),
        pytest.param(
            {"secagent.yaml": "[1, 2]\n"}, ["top level must be a mapping"], id="not-a-mapping"
        ),
        pytest.param({}, ["secagent.yaml: cannot read config"], id="missing-file"),
        pytest.param(
            {
                "secagent.yaml": edited(AGENT, {"detect.model": "model.yaml"}),
                "model.yaml": edited(MANIFEST, {"layout": "yolov7"}),
            },
            ["model.yaml: invalid config", "layout: Input should be"],
            id="bad-manifest",
        ),
        pytest.param(
            {
                "secagent.yaml": edited(AGENT, {"rules": "rules.yaml"}),
                "rules.yaml": edited(RULES, {"rules.1.severity": "urgent"}),
            },
            ["rules.yaml: invalid config", "rules.1.severity: Input should be"],
            id="bad-rules",
        ),
        pytest.param(
            {"secagent.yaml": edited(AGENT, {"rules": "missing-rules.yaml"})},
            ["missing-rules.yaml: cannot read config"],
            id="missing-rules",
        ),
    ],
)
def test_secagent_check_config_refuses_bad_files(
    tmp_path: Path, files: dict[str, str], expected_stderr: list[str]
) -> None:
    for name, text in files.items():
        write(tmp_path, name, text)
    result = check_config("secagent", tmp_path / "secagent.yaml")
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.startswith("Error: ")
    for part in expected_stderr:
        assert part in result.stderr
