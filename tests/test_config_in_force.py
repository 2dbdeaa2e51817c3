"""The agent config in force: what the status message carries so that a result can be reproduced
with the camera zones the agent applied, its version (sha256 of its canonical JSON), and the
secrets it never carries."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.config import in_force, load_agent_config
from tests.support.configs import AGENT, edited, write
from wire.payloads import PayloadError, StatusMessage, canonical_sha256, dump_payload, parse_payload

SECRET_URL = "rtsp://admin:hunter2@10.0.0.7:554/stream1"


def agent_doc(**edits: object) -> str:
    doc = {
        **AGENT,
        "cameras": [
            *AGENT["cameras"],
            {"name": "gate", "source": {"type": "rtsp", "url": SECRET_URL}},
        ],
    }
    return edited(doc, dict(edits))


def status_with(config: dict[str, Any], *, config_sha256: str) -> bytes:
    return dump_payload(
        StatusMessage.model_validate(
            {
                "agent_id": "host-1",
                "state": "online",
                "versions": {
                    "code": "test",
                    "model_sha256": "a" * 64,
                    "rules_sha256": "b" * 64,
                    "config_sha256": config_sha256,
                },
                "config": config,
                "sent_at": datetime.now(UTC),
            }
        )
    )


def test_the_config_in_force_has_every_default_and_no_secret(tmp_path: Path) -> None:
    config, _ = load_agent_config(write(tmp_path, "secagent.yaml", agent_doc()))
    doc = in_force(config)
    assert doc["agent_id"] == "host-1"
    assert doc["cameras"][0]["motion"]["threshold"] == 25  # a default, filled in
    assert doc["cameras"][0]["zones"] == {}
    assert "password" not in doc["mqtt"]
    assert doc["cameras"][2]["source"]["url"] == "rtsp://***@10.0.0.7:554/stream1"
    text = str(doc)
    assert "hunter2" not in text and "admin" not in text and "'pw'" not in text


def test_its_version_ignores_comments_and_changes_with_the_zones(tmp_path: Path) -> None:
    base, _ = load_agent_config(write(tmp_path, "a.yaml", agent_doc()))
    commented, _ = load_agent_config(
        write(tmp_path, "b.yaml", "# installed by ops\n" + agent_doc())
    )
    zoned, _ = load_agent_config(
        write(
            tmp_path,
            "c.yaml",
            agent_doc(**{"cameras.0.zones": {"gate": [[0, 0], [1, 0], [1, 1]]}}),
        )
    )
    assert canonical_sha256(in_force(base)) == canonical_sha256(in_force(commented))
    assert canonical_sha256(in_force(base)) != canonical_sha256(in_force(zoned))


def test_a_status_carries_the_config_whose_sha256_it_names(tmp_path: Path) -> None:
    config, _ = load_agent_config(write(tmp_path, "secagent.yaml", agent_doc()))
    doc = in_force(config)
    raw = status_with(doc, config_sha256=canonical_sha256(doc))
    parsed = parse_payload(raw, StatusMessage)
    assert parsed.config == doc
    assert yaml.safe_dump(parsed.config)  # plain data, storable as it is


@pytest.mark.parametrize(
    ("config", "sha", "expected"),
    [
        ({"agent_id": "host-1"}, "c" * 64, "does not have the sha256"),
        ({"blob": "x" * 300_000}, canonical_sha256({"blob": "x" * 300_000}), "larger than"),
    ],
    ids=["wrong-sha256", "oversize"],
)
def test_a_status_whose_config_is_not_the_versioned_one_is_refused(
    config: dict[str, Any], sha: str, expected: str
) -> None:
    with pytest.raises(ValueError, match=expected):
        status_with(config, config_sha256=sha)
    raw = (
        b'{"schema":"secagent.status/1","agent_id":"host-1","state":"online","versions":'
        b'{"code":"t","model_sha256":"' + b"a" * 64 + b'","rules_sha256":"' + b"b" * 64 + b'",'
        b'"config_sha256":"' + sha.encode() + b'"},"config":{"agent_id":"host-2"},'
        b'"sent_at":"2026-11-30T00:00:00+00:00"}'
    )
    with pytest.raises(PayloadError) as info:
        parse_payload(raw, StatusMessage)
    assert info.value.reason == "schema_violation"
