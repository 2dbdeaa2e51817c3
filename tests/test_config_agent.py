"""The agent's config file (``secagent.yaml``): defaults, relative paths, refusals with the field
path and the reason, and ``secagent check-config``."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from agent.config import DirectorySourceConfig, VideoSourceConfig, in_force, load_agent_config
from appcommon.configfile import DATA_DIR_ENV, ConfigError, installation_data_dir
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
from wire.payloads import canonical_sha256

EXAMPLE = ROOT / "config" / "secagent.example.yaml"


def test_the_example_agent_config_loads_in_the_checkout() -> None:
    config, sha = load_agent_config(EXAMPLE)
    assert config.cameras
    assert config.detect.model == ROOT / "models" / "fall-detection-yolov8.yaml"
    assert config.rules == ROOT / "rules" / "default.yaml"
    assert load_manifest(config.detect.model).name
    assert load_rules(config.rules).rules
    assert sha == hashlib.sha256(EXAMPLE.read_bytes()).hexdigest()


def installed_layout(tmp_path: Path) -> tuple[Path, Path]:
    """``<tmp>/etc/secagent/secagent.yaml`` (the example, its /var/lib/secagent under <tmp>)
    and ``<tmp>/opt/secagent/{models,rules}``, as the systemd units expect them."""
    etc, opt = tmp_path / "etc" / "secagent", tmp_path / "opt" / "secagent"
    etc.mkdir(parents=True)
    for folder in ("models", "rules"):
        shutil.copytree(ROOT / folder, opt / folder)
    var = tmp_path / "var" / "lib" / "secagent"
    (var / "recordings").mkdir(parents=True)
    (var / "recordings" / "backyard.mp4").write_bytes(b"")
    config = etc / "secagent.yaml"
    config.write_text(EXAMPLE.read_text().replace("/var/lib/secagent", str(var)))
    return config, opt


def test_a_config_in_etc_finds_the_installations_model_and_rules(tmp_path: Path) -> None:
    config_path, opt = installed_layout(tmp_path)
    config, _ = load_agent_config(config_path, data_dir=opt)
    assert config.detect.model == opt / "models" / "fall-detection-yolov8.yaml"
    assert config.rules == opt / "rules" / "default.yaml"
    assert config.outbox.path == tmp_path / "var" / "lib" / "secagent" / "outbox.sqlite"
    # next to the config file first: a site's own rules win
    (config_path.parent / "rules").mkdir()
    shutil.copy(opt / "rules" / "default.yaml", config_path.parent / "rules" / "default.yaml")
    config, _ = load_agent_config(config_path, data_dir=opt)
    assert config.rules == config_path.parent / "rules" / "default.yaml"


def test_check_config_passes_for_the_example_installed_in_etc(tmp_path: Path) -> None:
    config_path, opt = installed_layout(tmp_path)
    result = check_config("secagent", config_path, env={DATA_DIR_ENV: str(opt)})
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"ok: {config_path} ")
    driveway = tmp_path / "var" / "lib" / "secagent" / "incoming" / "driveway"
    assert result.stderr.strip() == (
        f"warning: camera driveway: folder {driveway} does not exist (yet): the camera is "
        "reported down and tried again until it is there"
    )


def test_a_missing_manifest_names_every_place_looked(tmp_path: Path) -> None:
    config_path, opt = installed_layout(tmp_path)
    shutil.rmtree(opt / "models")
    with pytest.raises(ConfigError) as info:
        load_agent_config(config_path, data_dir=opt)
    assert str(info.value) == (
        f"{config_path}: invalid agent config:\n"
        "  detect.model: Value error, model manifest 'models/fall-detection-yolov8.yaml' not "
        f"found; looked in: {config_path.parent / 'models' / 'fall-detection-yolov8.yaml'}, "
        f"{opt / 'models' / 'fall-detection-yolov8.yaml'}"
    )


def test_the_systemd_units_paths_agree_with_the_installation() -> None:
    unit = (ROOT / "systemd" / "secagent.service").read_text()
    commands = dict(
        line.split("=", 1) for line in unit.splitlines() if line.startswith("ExecStart")
    )
    prefix, config = Path("/opt/secagent"), Path("/etc/secagent/secagent.yaml")
    # the launcher (installed at the prefix) starts the release `current` names
    assert commands["ExecStart"] == f"{prefix}/secagent-launch run --config {config}"
    assert "Environment=SECAGENT_PREFIX=/opt/secagent" in unit
    launcher = (ROOT / "deploy" / "secagent-launch").read_text()
    assert "PREFIX=${SECAGENT_PREFIX:-/opt/secagent}" in launcher
    assert 'exec "$PREFIX/current/bin/secagent" "$@"' in launcher
    # deploy/install.sh makes each release a virtualenv holding models/ and rules/ (the
    # installed program's data folder, sys.prefix); from a checkout, the checkout is
    install = (ROOT / "deploy" / "install.sh").read_text()
    assert '"$ROOT/models"' in install and '"$ROOT/rules"' in install
    assert installation_data_dir() == ROOT
    example = yaml.safe_load(EXAMPLE.read_text())
    for relative in (example["detect"]["model"], example["rules"]):
        assert not Path(relative).is_absolute()
        assert (ROOT / relative).is_file()


def test_an_installed_release_is_its_own_data_folder(tmp_path: Path) -> None:
    """Run by a release's interpreter (sys.prefix holds models/), the data folder is the
    release, whatever the checkout."""
    release = tmp_path / "releases" / "0.1.0+gabc"
    (release / "models").mkdir(parents=True)
    code = (
        "import sys; sys.prefix = sys.argv[1]\n"
        "from appcommon.configfile import installation_data_dir\n"
        "print(installation_data_dir())\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(release)],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
        env={k: v for k, v in os.environ.items() if k != "SECAGENT_DATA_DIR"},
    )
    assert out.stdout.strip() == str(release)


def test_agent_config_loads_with_defaults_and_relative_paths(tmp_path: Path) -> None:
    write(tmp_path, "rules.yaml", edited(RULES, {}))
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
    assert isinstance(door, DirectorySourceConfig) and isinstance(yard, VideoSourceConfig)
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
        ["cannot read agent config: No such file or directory"],
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
    assert lines[0] == f"{tmp_path / 'secagent.yaml'}: invalid agent config:"
    assert sorted(line.split(":")[0].strip() for line in lines[1:]) == [
        "cameras.0.motion.blur_px",
        "colour",
        "mqtt.port",
    ]


def test_secagent_check_config_accepts_a_good_config(tmp_path: Path) -> None:
    path = write(tmp_path, "secagent.yaml", edited(AGENT, {}))
    (tmp_path / "incoming" / "door").mkdir(parents=True)
    (tmp_path / "yard.avi").write_bytes(b"")
    result = check_config("secagent", path)
    assert result.returncode == 0, result.stderr
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    rules_sha = hashlib.sha256(DEFAULT_RULES.read_bytes()).hexdigest()
    model_sha = MANIFEST["sha256"]
    config, _ = load_agent_config(path)
    in_force_sha = canonical_sha256(in_force(config))
    assert result.stdout.strip() == (
        f"ok: {path} sha256={sha} config_sha256={in_force_sha} cameras=2 "
        f"model_sha256={model_sha} rules=1 rules_sha256={rules_sha}"
    )
    assert result.stderr == ""


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
        pytest.param({}, ["secagent.yaml: cannot read agent config"], id="missing-file"),
        pytest.param(
            {
                "secagent.yaml": edited(AGENT, {"detect.model": "model.yaml"}),
                "model.yaml": edited(MANIFEST, {"layout": "yolov7"}),
            },
            ["model.yaml: invalid model manifest", "layout: Input should be"],
            id="bad-manifest",
        ),
        pytest.param(
            {
                "secagent.yaml": edited(AGENT, {"rules": "rules.yaml"}),
                "rules.yaml": edited(RULES, {"rules.1.severity": "urgent"}),
            },
            ["rules.yaml: invalid rules file", "rules.1.severity: Input should be"],
            id="bad-rules",
        ),
        pytest.param(
            {"secagent.yaml": edited(AGENT, {"rules": "missing-rules.yaml"})},
            [
                "rules: Value error, rules file 'missing-rules.yaml' not found; looked in: ",
                str(ROOT / "missing-rules.yaml"),
            ],
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


# ---------------------------------------------------------------- check-config = run's load path

SHA_ZERO = "0" * 64
MODEL_SHA = MANIFEST["sha256"]


@pytest.mark.parametrize(
    ("files", "folders", "outcome", "expected"),
    [
        pytest.param({}, ["incoming/door"], "ok", [], id="good"),
        pytest.param(
            {},
            [],
            "warning",
            ["warning: camera door: folder ", "incoming/door does not exist (yet)"],
            id="folder-missing-is-a-warning",
        ),
        pytest.param(
            {"yard.avi": None},
            ["incoming/door"],
            "error",
            ["camera yard: video ", "yard.avi does not exist"],
            id="video-missing",
        ),
        pytest.param(
            {"incoming/door": ""},
            [],
            "error",
            ["camera door: folder ", "incoming/door is not a folder"],
            id="folder-is-a-file",
        ),
        pytest.param(
            {
                "secagent.yaml": edited(AGENT, {"detect.model": "model.yaml"}),
                "model.yaml": edited(MANIFEST, {"sha256": SHA_ZERO}),
            },
            ["incoming/door"],
            "error",
            [f"has sha256 {MODEL_SHA}, manifest says {SHA_ZERO}"],
            id="model-sha256-mismatch",
        ),
        pytest.param(
            {
                "secagent.yaml": edited(AGENT, {"detect.model": "model.yaml"}),
                "model.yaml": edited(MANIFEST, {"file.package": "secagent-no-such-model"}),
            },
            ["incoming/door"],
            "error",
            ["package 'secagent-no-such-model' is not installed"],
            id="model-package-not-installed",
        ),
        pytest.param(
            {
                "secagent.yaml": edited(AGENT, {"detect.model": "model.yaml"}),
                "model.yaml": edited(MANIFEST, {"file": "missing.onnx"}),
            },
            ["incoming/door"],
            "error",
            ["missing.onnx does not exist"],
            id="model-file-missing",
        ),
        pytest.param(
            {"secagent.yaml": edited(AGENT, {"rules": "rules.yaml"})},
            ["incoming/door", "rules.yaml"],
            "error",
            ["rules.yaml: cannot read rules file: Is a directory"],
            id="rules-unreadable",
        ),
        pytest.param(
            {
                "secagent.yaml": edited(AGENT, {"rules": "rules.yaml"}),
                "rules.yaml": "rules: [unclosed\n",
            },
            ["incoming/door"],
            "error",
            ["rules.yaml: not valid YAML"],
            id="rules-not-yaml",
        ),
        pytest.param(
            {
                "secagent.yaml": edited(AGENT, {"rules": "rules.yaml"}),
                "rules.yaml": edited(RULES, {"rules.0.zones": ["driveway"]}),
            },
            ["incoming/door"],
            "error",
            ["rule person_on_premises names zone(s) driveway that no camera"],
            id="rules-unknown-zone",
        ),
    ],
)
def test_check_config_refuses_what_run_refuses(
    tmp_path: Path,
    files: dict[str, str | None],
    folders: list[str],
    outcome: str,
    expected: list[str],
) -> None:
    """The same load path as ``run`` (model file, sha256, ONNX session, rules, zones, sources):
    ok, ok with a warning printed (a folder that may appear later), or an error (exit 1)."""
    layout: dict[str, str | None] = {"secagent.yaml": edited(AGENT, {}), "yard.avi": "", **files}
    for folder in folders:
        (tmp_path / folder).mkdir(parents=True)
    for name, text in layout.items():
        if text is not None:
            (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
            write(tmp_path, name, text)
    result = check_config("secagent", tmp_path / "secagent.yaml")
    if outcome == "error":
        assert result.returncode == 1, result.stdout
        assert result.stdout == ""
        assert result.stderr.startswith("Error: ")
    else:
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith(f"ok: {tmp_path / 'secagent.yaml'} ")
        assert result.stderr.startswith("warning: ") if outcome == "warning" else not result.stderr
    for part in expected:
        assert part in result.stderr
