"""The docs tell the truth: the generated references are current, and the README shows the two
commands first and documents every command."""

from __future__ import annotations

import re

from agent.cli import main as secagent_cli
from aggregator.cli import main as secagg_cli
from demo import docgen
from tests.support import ROOT

README = (ROOT / "README.md").read_text()


def test_configuration_reference_is_current() -> None:
    assert docgen.CONFIG_DOC.read_text() == docgen.configuration_md(), (
        "docs/configuration.md is stale: run `.venv/bin/python -m demo.docgen`"
    )


def test_command_reference_is_current() -> None:
    assert docgen.CLI_DOC.read_text() == docgen.cli_md(), (
        "docs/cli.md is stale: run `.venv/bin/python -m demo.docgen`"
    )


def test_every_config_field_is_in_the_reference() -> None:
    text = docgen.CONFIG_DOC.read_text()
    for _, model, _ in docgen.MODELS:
        for path, _, _, description in docgen.field_rows(model):
            assert f"`{path}`" in text
            if "(type:" not in path:
                assert description, f"field {path} of {model.__name__} has no description"


def test_readme_shows_the_two_commands_first() -> None:
    commands = re.findall(r"^make (\w+)", README, flags=re.MULTILINE)
    assert commands[:2] == ["demo", "test"]


def test_readme_mentions_every_cli_command() -> None:
    for prog, group in (("secagent", secagent_cli), ("secagg", secagg_cli)):
        for name in group.commands:
            assert f"{prog} {name}" in README, f"README does not mention `{prog} {name}`"
