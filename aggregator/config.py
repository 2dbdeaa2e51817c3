"""The aggregator's YAML config, one pydantic model per concern; refused at start when wrong."""

from __future__ import annotations

import functools
import os
import re
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from aggregator.ota.config import OtaServerConfig
from appcommon.configfile import ConfigError, load_yaml_model, resolve_path

__all__ = [
    "MOVED_SETTINGS",
    "AggregatorConfig",
    "ConfigError",
    "get_settings",
    "load_aggregator_config",
]


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


class SnapshotsConfig(_Section):
    keep: Literal["best", "all"] = Field(
        "best",
        description="'best': when an event ends, keep the snapshots of its keep_best "
        "highest-scoring frames, its first and last frame (and its top threat's), delete the "
        "others (their sha256 stay in the lineage); 'all': keep every snapshot",
    )
    keep_best: int = Field(
        3, ge=0, le=1000, description="how many of an ended event's best frames keep a snapshot"
    )
    max_age_days: float | None = Field(
        None,
        gt=0,
        le=36500,
        description="delete a snapshot once the newest threat that refers to it is this old "
        "(days of capture time); null: no age limit",
    )
    max_total_mb: float | None = Field(
        None,
        gt=0,
        le=1e9,
        description="delete snapshots, oldest written first, until all of them take at most "
        "this many MB (10^6 bytes); an open event's snapshots are never deleted, an event's "
        "best snapshot only once no other is left to delete; null: no size limit",
    )
    sweep_interval_s: float = Field(
        3600,
        ge=1,
        le=7 * 86400,
        description="how often the age and size limits and database retention are applied",
    )


class RetentionConfig(_Section):
    threats_days: float | None = Field(
        None,
        gt=0,
        le=36500,
        description="delete threats, their messages and per-message lineage captured this many "
        "days ago, in batches; events and their summaries (counts, times, top score, best "
        "snapshot sha256) are kept; null: keep them forever",
    )
    batch_rows: int = Field(
        2000,
        ge=10,
        le=100_000,
        description="messages deleted per transaction by database retention; a sweep of the "
        "store writer deletes at most 5 batches and stores incoming messages before the next",
    )


STORE_URL_SCHEMES = ("sqlite:///", "postgresql://", "postgres://")


SnapshotSync = Literal["file", "filesystem"]
"""How a batch's snapshot files are made durable (``store.snapshot_sync``)."""


class StoreConfig(_Section):
    path: Path = Field(
        Path("secagg.sqlite"), validate_default=True, description="SQLite database file"
    )
    url: str | None = Field(
        None,
        description="where the store lives, instead of store.path: sqlite:///PATH (the same as "
        "store.path: PATH) or postgresql://USER[:PASSWORD]@HOST[:PORT]/DATABASE (the PostgreSQL "
        "backend, see docs/scale.md)",
    )
    snapshots_dir: Path = Field(
        Path("snapshots"),
        validate_default=True,
        description="folder of threat snapshots, stored by sha256",
    )
    snapshot_sync: SnapshotSync = Field(
        "file",
        description="how a batch's snapshot files are made durable before its COMMIT (and "
        "so before it is acknowledged): 'file' fsyncs each file (concurrently); "
        "'filesystem' writes them all, then one syncfs(2) of the snapshots' filesystem, "
        "which also writes out whatever else is waiting to be written on that filesystem "
        "(cheaper per snapshot where nothing else writes much there; see docs/scale.md)",
    )
    snapshot_retention_days: float | None = Field(
        None,
        gt=0,
        le=36500,
        description="deprecated, the same as snapshots.max_age_days (still read, so older "
        "configs load); setting both is refused",
    )
    snapshots: SnapshotsConfig = Field(
        default_factory=dict,
        validate_default=True,
        description="which snapshots are kept: per event, by age, by total size",
    )
    retention: RetentionConfig = Field(
        default_factory=dict,
        validate_default=True,
        description="how long threats and their per-message lineage are kept",
    )
    check_on_start: bool = Field(
        True,
        description="run SQLite's quick_check on the database at start and refuse a corrupt "
        "one with the recovery steps (it reads the whole file: about 1 s per GB)",
    )
    plots_dir: Path = Field(
        Path("plots"),
        validate_default=True,
        description="folder of rendered plots (PNG), stored by sha256",
    )
    _resolve = field_validator("path", "snapshots_dir", "plots_dir")(_relative_to_config)

    @field_validator("url")
    @classmethod
    def _known_scheme(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(STORE_URL_SCHEMES):
            raise ValueError(f"use one of {', '.join(s + '...' for s in STORE_URL_SCHEMES)}")
        if value is not None and value.startswith("sqlite:///") and len(value) == 10:
            raise ValueError("sqlite:/// needs a path: sqlite:///secagg.sqlite")
        return value

    @model_validator(mode="before")
    @classmethod
    def _url_or_path(cls, data: object) -> object:
        """``url: sqlite:///PATH`` is ``path: PATH`` (resolved like it); never both."""
        if not isinstance(data, dict) or data.get("url") is None:
            return data
        if "path" in data:
            raise ValueError("store.url and store.path are both set: keep one")
        url = data["url"]
        if isinstance(url, str) and url.startswith("sqlite:///") and len(url) > 10:
            return {**data, "path": url.removeprefix("sqlite:///")}
        return data

    @property
    def is_postgres(self) -> bool:
        """Whether the store is the PostgreSQL backend (``store.url: postgresql://...``)."""
        return self.url is not None and not self.url.startswith("sqlite:///")

    @property
    def where(self) -> str:
        """The store for messages and logs: the SQLite file, or the URL without its password."""
        if not self.is_postgres or self.url is None:
            return str(self.path)
        parts = urlsplit(self.url)
        if parts.password is None:
            return self.url
        return parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@")).geturl()

    @property
    def target(self) -> Path | str:
        """What :func:`aggregator.store.connect` opens: the SQLite file or the PostgreSQL URL."""
        return self.url if self.is_postgres and self.url is not None else self.path

    @model_validator(mode="after")
    def _one_snapshot_age(self) -> StoreConfig:
        if self.snapshot_retention_days is not None and self.snapshots.max_age_days is not None:
            raise ValueError(
                "store.snapshot_retention_days (deprecated) and store.snapshots.max_age_days are "
                "both set: keep store.snapshots.max_age_days only"
            )
        return self

    @property
    def snapshot_max_age_days(self) -> float | None:
        """The age limit of snapshots in force (the deprecated setting when the new one is
        unset)."""
        return self.snapshots.max_age_days or self.snapshot_retention_days


YEAR_S = 365.25 * 86400

GroupKey = Literal["agent_id", "camera", "rule"]
DEFAULT_GROUP_BY: tuple[GroupKey, ...] = ("agent_id", "camera", "rule")
Name = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")]


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
    group_by: list[GroupKey] = Field(
        default_factory=lambda: list(DEFAULT_GROUP_BY),
        min_length=1,
        max_length=3,
        description="threats that share these keys group into one event "
        "(agent_id, camera, rule; a camera of a site groups by its site instead)",
    )
    sites: dict[str, str] = Field(
        default_factory=dict,
        description="camera name -> site name: threats of the cameras of one site (and one "
        "rule) correlate into one event",
    )
    site_window_s: float | None = Field(
        None,
        gt=0,
        le=86400,
        description="site events: a threat from any camera of the site within this many "
        "seconds of the event's last threat joins it (null: cutoff_s)",
    )

    @field_validator("sites")
    @classmethod
    def _site_names(cls, value: dict[str, str]) -> dict[str, str]:
        for camera, site in value.items():
            for name in (camera, site):
                if not re.fullmatch(r"[A-Za-z0-9_.:-]{1,64}", name):
                    raise ValueError(f"{name!r} is not a camera or site name")
        return value

    @field_validator("group_by")
    @classmethod
    def _distinct_keys(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("group_by lists a key twice")
        return value


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
    writer_stall_s: float = Field(
        60.0,
        gt=0,
        le=3600,
        description="the store writer counts as stalled (GET /api/health answers 503) when one "
        "batch or sweep takes longer than this",
    )
    max_clock_ahead_s: float = Field(
        86400.0,
        gt=0,
        le=10 * YEAR_S,
        description="a capture or status time more than this ahead of the aggregator's clock is "
        "refused (reason time_out_of_window): an agent clock far in the future would end every "
        "event at once and freeze its record",
    )
    max_clock_behind_s: float = Field(
        10 * YEAR_S,
        gt=0,
        le=100 * YEAR_S,
        description="a capture or status time more than this behind the aggregator's clock is "
        "refused (reason time_out_of_window)",
    )
    max_rules_per_message: int = Field(
        16,
        ge=1,
        le=1000,
        description="most distinct rules one threat message may name; each can start an event "
        "and its notifications, so this bounds what one message can cause (more: refused as "
        "too_many_rules)",
    )
    max_rules_per_agent: int = Field(
        64,
        ge=1,
        le=100_000,
        description="most distinct rule names an agent may report while its rules file (by "
        "sha256) is not among reproduce.rules_paths; a further name is refused as "
        "too_many_rules. With the file known, only its rules and severities are accepted "
        "(unknown_rule)",
    )
    snapshot_max_side_px: int = Field(
        8192,
        ge=16,
        le=65535,
        description="a snapshot whose JPEG header is wider or higher than this is dropped (the "
        "threat is kept; counted as snapshot_dropped_bad_dimensions)",
    )
    snapshot_check: Literal["structure", "decode"] = Field(
        "structure",
        description="how a snapshot is checked before it is kept: 'structure' reads its JPEG "
        "markers (header, tables, scan, end of image; microseconds), 'decode' also decodes it "
        "at an eighth of its size (about 0.4 ms for a 70 KB snapshot, 1.6 ms for 220 KB, more "
        "than the rest of a message's ingest); one that fails is dropped, the threat kept "
        "(snapshot_dropped_undecodable)",
    )
    store_retry_max_s: float = Field(
        30.0,
        gt=0,
        le=3600,
        description="while the store cannot be written (disk full, I/O error), the batch in "
        "hand is tried again after 1 s, doubling up to this; it stays unacknowledged meanwhile",
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
    plots_per_minute: int = Field(
        10,
        ge=1,
        le=10_000,
        description="POST /api/plots draws at most this many new plots a minute (more: 429 "
        "with Retry-After); a query already drawn on the same data returns its plot",
    )
    graph_nodes_max: int = Field(
        500,
        ge=10,
        le=100_000,
        description="largest ?limit= of GET /api/provenance: artifacts in one page of a graph",
    )
    public_url: str | None = Field(
        None,
        pattern=r"^https?://[^\s]+$",
        max_length=2000,
        description="base URL of this API as users reach it, for links in notifications "
        "(null: http://host:port)",
    )

    def base_url(self) -> str:
        """The API's base URL for links, without a trailing slash."""
        return (self.public_url or f"http://{self.host}:{self.port}").rstrip("/")


class RunLogsConfig(_Section):
    enabled: bool = Field(True, description="store the agents' and secagg's warnings and errors")
    keep_rows: int = Field(
        1_000_000, ge=1000, le=100_000_000, description="the newest lines kept (older deleted)"
    )
    max_lines_per_minute: int = Field(
        600,
        ge=1,
        le=1_000_000,
        description="most lines stored a minute per agent (more: dropped and counted)",
    )
    queue_max: int = Field(
        10_000, ge=100, le=1_000_000, description="lines received and not yet stored"
    )


class HomeAssistantConfig(_Section):
    enabled: bool = Field(
        False,
        description="publish Home Assistant MQTT discovery and per-camera state and snapshot "
        "topics (retained) on secagg's broker connection",
    )
    discovery_prefix: str = Field(
        "homeassistant",
        pattern=r"^[A-Za-z0-9_-]+(/[A-Za-z0-9_-]+)*$",
        description="Home Assistant's discovery prefix",
    )
    state_prefix: str = Field(
        "secagent/ha",
        pattern=r"^[A-Za-z0-9_-]+(/[A-Za-z0-9_-]+)*$",
        description="where the availability, state and snapshot topics go",
    )
    interval_s: float = Field(
        1.0, gt=0, le=3600, description="how often the store is checked for changes"
    )


class AuthConfig(_Section):
    public_health: bool = Field(
        False,
        description="GET /api/health and /api/ping answer without a credential (a load "
        "balancer's or container's check); otherwise they need a viewer token too",
    )
    public_metrics: bool = Field(
        False,
        description="GET /metrics answers without a credential (a Prometheus on a trusted "
        "network); otherwise Prometheus sends a viewer token (authorization: credentials)",
    )
    session_ttl_s: float = Field(
        12 * 3600.0, ge=60, le=30 * 86400, description="a page login lasts this long"
    )
    login_max_failures: int = Field(
        5,
        ge=1,
        le=1000,
        description="failed logins from one address, or for one user name, within "
        "login_window_s before further logins are refused (429, logged)",
    )
    login_window_s: float = Field(
        300.0, gt=0, le=86400, description="the window in which failed logins are counted"
    )
    cookie_secure: bool | None = Field(
        None,
        description="send the session cookie over HTTPS only (null: when api.public_url is "
        "https://)",
    )
    link_ttl_s: float = Field(
        7 * 86400.0,
        ge=60,
        le=365 * 86400,
        description="how long a signed snapshot link in a webhook notification works",
    )


class RetryConfig(_Section):
    max_attempts: int = Field(
        50, ge=1, le=100_000, description="attempts before a notification is given up (failed)"
    )
    max_age_s: float = Field(
        86400.0,
        gt=0,
        le=30 * 86400,
        description="a notification not sent this long after it was decided is given up",
    )
    backoff_base_s: float = Field(
        2.0, gt=0, le=3600, description="wait after the first failed attempt; doubles each time"
    )
    backoff_max_s: float = Field(
        300.0, gt=0, le=86400, description="longest wait between two attempts"
    )

    @model_validator(mode="after")
    def _backoff_order(self) -> RetryConfig:
        if self.backoff_max_s < self.backoff_base_s:
            raise ValueError("backoff_max_s must be >= backoff_base_s")
        return self


class _Notifier(_Section):
    name: Name = Field(description="notifier name, recorded on each notification")
    timeout_s: float = Field(30.0, gt=0, le=600, description="network timeout of one attempt")
    retry: RetryConfig = Field(
        default_factory=dict, validate_default=True, description="retries with backoff"
    )


class SmtpNotifier(_Notifier):
    type: Literal["smtp"] = Field(description="email over SMTP")
    host: str = Field(min_length=1, description="SMTP server host name or address")
    port: int = Field(25, ge=1, le=65535, description="SMTP server port (587 STARTTLS, 465 SSL)")
    starttls: bool = Field(False, description="upgrade the connection with STARTTLS")
    ssl: bool = Field(False, description="connect with TLS from the start (SMTPS)")
    tls_ca_file: Path | None = Field(
        None, description="CA certificate to verify the server (null: the system's CAs)"
    )
    username: str | None = Field(None, min_length=1, description="SMTP AUTH user name")
    password: str | None = Field(None, description="SMTP AUTH password")
    from_addr: str = Field(
        min_length=3, max_length=320, pattern=r"^[^@\s]+@[^@\s]+$", description="sender address"
    )
    to: list[str] = Field(min_length=1, max_length=100, description="recipient addresses")
    _resolve = field_validator("tls_ca_file")(_relative_to_config)

    @field_validator("to")
    @classmethod
    def _addresses(cls, value: list[str]) -> list[str]:
        for address in value:
            if not re.fullmatch(r"[^@\s]{1,64}@[^@\s]{1,255}", address):
                raise ValueError(f"{address!r} is not an email address")
        return value

    @model_validator(mode="after")
    def _tls_and_auth(self) -> SmtpNotifier:
        if self.ssl and self.starttls:
            raise ValueError("choose ssl or starttls, not both")
        if (self.username is None) != (self.password is None):
            raise ValueError("username and password go together")
        return self


class WebhookNotifier(_Notifier):
    type: Literal["webhook"] = Field(description="JSON POST to a URL")
    url: str = Field(
        pattern=r"^https?://[^\s]+$", max_length=2000, description="URL the JSON is POSTed to"
    )
    headers: dict[str, str] = Field(
        default_factory=dict, description="extra HTTP headers (e.g. Authorization)"
    )


Notifier = Annotated[SmtpNotifier | WebhookNotifier, Field(discriminator="type")]


class NotifyConfig(_Section):
    notifiers: list[Notifier] = Field(
        default_factory=list,
        max_length=32,
        description="where notifications go; every event is notified on each of them",
    )
    group_wait_s: float = Field(
        0.0,
        ge=0,
        le=3600,
        description="wait this long after an event starts before its first notification, "
        "so it carries the first burst and its highest severity",
    )
    repeat_interval_s: float | None = Field(
        None,
        gt=0,
        le=7 * 86400,
        description="notify again every this many seconds while an event stays open (null: never)",
    )
    cooldown_s: float = Field(
        0.0,
        ge=0,
        le=7 * 86400,
        description="a new event of a camera starting within this many seconds of the end "
        "of its last notified event is not notified",
    )

    @field_validator("notifiers")
    @classmethod
    def _unique_names(cls, value: list[Notifier]) -> list[Notifier]:
        names = [n.name for n in value]
        if len(set(names)) != len(names):
            raise ValueError("notifier names must be unique")
        return value


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
    run_logs: RunLogsConfig = Field(
        default_factory=dict,
        validate_default=True,
        description="the agents' and secagg's warnings and errors, stored with their ids",
    )
    homeassistant: HomeAssistantConfig = Field(
        default_factory=dict,
        validate_default=True,
        description="Home Assistant MQTT discovery, per-camera state and snapshot topics",
    )
    auth: AuthConfig = Field(
        default_factory=dict,
        validate_default=True,
        description="who may use the API and the pages: tokens, logins, roles (docs/security.md)",
    )
    notify: NotifyConfig = Field(
        default_factory=dict,
        validate_default=True,
        description="notifications of threat events (email, webhook)",
    )
    reproduce: ReproduceConfig = Field(
        default_factory=dict,
        validate_default=True,
        description="re-running recorded models and rules (`secagg reproduce`)",
    )
    ota: OtaServerConfig = Field(
        default_factory=dict,
        validate_default=True,
        description="over-the-air releases: signed repository, rollouts (docs/ota.md)",
    )


MOVED_SETTINGS: dict[str, str] = {
    f"events.{name}": f"notify.{name}"
    for name in ("group_wait_s", "repeat_interval_s", "cooldown_s")
}
"""Settings that moved, old path -> new path: a file that still has one is refused with where it
went. (Notification timing lives with the code that reads it, ``aggregator/notify/decide.py``.)"""


def load_aggregator_config(path: Path) -> tuple[AggregatorConfig, str]:
    """Load and validate an aggregator config file; return it with the file's sha256."""
    return load_yaml_model(path, AggregatorConfig, moved=MOVED_SETTINGS)


@functools.cache
def get_settings() -> AggregatorConfig:
    """FastAPI dependency for a standalone app: the file named by ``SECAGG_CONFIG``.

    ``secagg serve`` and the tests build the app with an explicit config instead.
    """
    path = os.environ.get("SECAGG_CONFIG")
    if not path:
        raise ConfigError("SECAGG_CONFIG is not set")
    return load_aggregator_config(Path(path))[0]
