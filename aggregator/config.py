"""The aggregator's YAML config, one pydantic model per concern; refused at start when wrong."""

from __future__ import annotations

import functools
import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from wire.configfile import ConfigError, load_yaml_model, resolve_path

__all__ = ["AggregatorConfig", "ConfigError", "get_settings", "load_aggregator_config"]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _relative_to_config(value: Path | None, info: ValidationInfo) -> Path | None:
    return None if value is None else resolve_path(value, (info.context or {}).get("base_dir"))


class MqttConfig(_Section):
    host: str = Field("127.0.0.1", min_length=1, description="broker host name or address")
    port: int = Field(1883, ge=1, le=65535, description="broker TCP port")
    username: str | None = Field(None, description="MQTT username of the aggregator")
    password: str | None = Field(None, description="MQTT password")
    client_id: str = Field(
        "secagg",
        min_length=1,
        max_length=64,
        description="fixed client id: the broker keeps this session's queue while it is away",
    )
    session_expiry_s: int = Field(
        7 * 24 * 3600,
        ge=0,
        le=0xFFFFFFFF,
        description="how long the broker keeps the session (and queued threats) after a disconnect",
    )
    keepalive_s: int = Field(30, ge=5, le=3600, description="MQTT keepalive interval")
    publish_events: bool = Field(True, description="publish event lifecycle on secagent/v1/events")
    tls_ca_file: Path | None = Field(
        None, description="CA certificate: connect with TLS and verify the broker against it"
    )
    _resolve = field_validator("tls_ca_file")(_relative_to_config)


class StoreConfig(_Section):
    path: Path = Field(
        Path("secagg.sqlite"), validate_default=True, description="SQLite database file"
    )
    snapshots_dir: Path = Field(
        Path("snapshots"),
        validate_default=True,
        description="folder of threat snapshots, stored by sha256",
    )
    snapshot_retention_days: float | None = Field(
        None,
        gt=0,
        le=36500,
        description="delete a snapshot once the newest threat that refers to it is this old "
        "(days of capture time); null keeps snapshots forever",
    )
    plots_dir: Path = Field(
        Path("plots"),
        validate_default=True,
        description="folder of rendered plots (PNG), stored by sha256",
    )
    _resolve = field_validator("path", "snapshots_dir", "plots_dir")(_relative_to_config)


class EventsConfig(_Section):
    cutoff_s: float = Field(
        30.0,
        gt=0,
        le=86400,
        description="a threat event ends after this many seconds without a threat",
    )
    sweep_interval_s: float = Field(
        1.0, gt=0, le=3600, description="how often open events are checked for their end"
    )


class IngestConfig(_Section):
    batch_max: int = Field(
        500, ge=1, le=100_000, description="most messages stored in one transaction"
    )
    queue_max: int = Field(
        10_000,
        ge=1,
        le=1_000_000,
        description="messages received and not yet stored before MQTT reading pauses",
    )


def _relative_list(value: list[Path], info: ValidationInfo) -> list[Path]:
    return [resolve_path(v, (info.context or {}).get("base_dir")) for v in value]


class ReproduceConfig(_Section):
    model_paths: list[Path] = Field(
        default_factory=list,
        description="model manifests (YAML) or folders of them that `secagg reproduce` looks "
        "recorded model sha256s up in; empty = the models/ folder of the secagent checkout",
    )
    rules_paths: list[Path] = Field(
        default_factory=list,
        description="rules files or folders of them (YAML) looked up by sha256; "
        "empty = the rules/ folder of the secagent checkout",
    )
    iou_min: float = Field(
        0.9,
        gt=0,
        le=1,
        description="a re-run detection on a decoded video frame matches when its box overlaps "
        "the recorded one at least this much (IoU)",
    )
    score_delta_max: float = Field(
        0.03,
        ge=0,
        le=1,
        description="... and its score differs from the recorded one by at most this much",
    )
    _resolve = field_validator("model_paths", "rules_paths")(_relative_list)


class ApiConfig(_Section):
    host: str = Field("127.0.0.1", description="address the REST API listens on")
    port: int = Field(8080, ge=0, le=65535, description="REST API port (0 = any free port)")
    page_size_max: int = Field(1000, ge=1, le=100000, description="largest ?limit= accepted")


class AggregatorConfig(_Section):
    mqtt: MqttConfig = Field(
        default_factory=dict, validate_default=True, description="broker connection and session"
    )
    store: StoreConfig = Field(
        default_factory=dict, validate_default=True, description="SQLite store and snapshots"
    )
    events: EventsConfig = Field(
        default_factory=dict,
        validate_default=True,
        description="grouping threats into threat events",
    )
    ingest: IngestConfig = Field(
        default_factory=dict, validate_default=True, description="the store writer"
    )
    api: ApiConfig = Field(default_factory=dict, validate_default=True, description="the REST API")
    reproduce: ReproduceConfig = Field(
        default_factory=dict,
        validate_default=True,
        description="re-running recorded models and rules (`secagg reproduce`)",
    )


def load_aggregator_config(path: Path) -> tuple[AggregatorConfig, str]:
    """Load and validate an aggregator config file; return it with the file's sha256."""
    return load_yaml_model(path, AggregatorConfig)


@functools.cache
def get_settings() -> AggregatorConfig:
    """FastAPI dependency for a standalone app: the file named by ``SECAGG_CONFIG``.

    ``secagg serve`` and the tests build the app with an explicit config instead.
    """
    path = os.environ.get("SECAGG_CONFIG")
    if not path:
        raise ConfigError("SECAGG_CONFIG is not set")
    return load_aggregator_config(Path(path))[0]
