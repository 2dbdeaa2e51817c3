"""The ``ota:`` section of ``secagg.yaml``: where the signed release repository is, the online
key that keeps its timestamp fresh, and the secret that derives each agent's download token."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from appcommon.configfile import resolve_path


def _relative_to_config(value: Path | None, info: ValidationInfo) -> Path | None:
    if value is None:
        return None
    return resolve_path(value, (info.context or {}).get("base_dir"))


class OtaServerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = Field(
        False,
        description="serve releases to agents (/ota/v1/...), keep the repository's timestamp "
        "fresh and publish each agent's desired state; `secagg ota init` sets it up",
    )
    repo_dir: Path = Field(
        Path("ota"),
        validate_default=True,
        description="the signed release repository: TUF metadata and artifacts by sha256",
    )
    online_key: Path = Field(
        Path("ota-keys/online.pem"),
        validate_default=True,
        description="private key of the snapshot and timestamp roles (the only key on the "
        "aggregator; the root and targets keys stay offline)",
    )
    token_secret_file: Path = Field(
        Path("ota-keys/token-secret"),
        validate_default=True,
        description="secret from which each agent's download token is derived "
        "(`secagg ota token AGENT`)",
    )
    timestamp_expiry_s: float = Field(
        86400.0,
        ge=10,
        le=30 * 86400,
        description="lifetime of a timestamp signature; secagg serve re-signs it at half-life. "
        "An agent whose feed is frozen or replayed refuses it once it expires",
    )
    snapshot_expiry_s: float = Field(
        7 * 86400.0, ge=10, le=365 * 86400, description="lifetime of a snapshot signature"
    )
    targets_expiry_s: float = Field(
        90 * 86400.0,
        ge=60,
        le=3 * 365 * 86400,
        description="lifetime of the signed list of releases; re-signed by each "
        "`secagg release add` (offline key)",
    )
    root_expiry_s: float = Field(
        365 * 86400.0, ge=3600, le=10 * 365 * 86400, description="lifetime of a root version"
    )
    refresh_interval_s: float = Field(
        5.0,
        gt=0,
        le=3600,
        description="how often secagg serve publishes desired states, "
        "advances rollouts and checks the timestamp",
    )
    _resolve = field_validator("repo_dir", "online_key", "token_secret_file")(_relative_to_config)
