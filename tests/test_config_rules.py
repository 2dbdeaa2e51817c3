"""Rules files: their sha256 is their version; a bad one is refused with the field path and the
reason."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from appcommon.configfile import ConfigError
from modelrt.rules import RulesError, load_rules
from tests.support import DEFAULT_RULES
from tests.support.configs import DELETE, RULES, Loader, assert_refused, edited, write


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


BAD_RULES = [
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
    pytest.param(load_rules, None, RulesError, ["cannot read rules file"], id="rules-missing-file"),
]


@pytest.mark.parametrize(("load", "text", "expected_exception", "expected"), BAD_RULES)
def test_bad_rules_file_is_refused_with_field_path_and_reason(
    tmp_path: Path,
    load: Loader,
    text: str | None,
    expected_exception: type[ConfigError],
    expected: list[str],
) -> None:
    assert_refused(tmp_path, load, text, expected_exception, expected)
