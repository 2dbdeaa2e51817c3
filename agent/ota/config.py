"""The ``ota:`` section of ``secagent.yaml``: where signed releases come from, which keys the
agent trusts, and the limits an update must keep (download, checks, probation)."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from appcommon.configfile import resolve_path


def _relative_to_config(value: Path | None, info: ValidationInfo) -> Path | None:
    if value is None:
        return None
    return resolve_path(value, (info.context or {}).get("base_dir"))


class OtaConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = Field(
        False, description="follow the desired state the aggregator publishes on the ota topic"
    )
    url: str = Field(
        "http://127.0.0.1:8080/ota/v1",
        pattern=r"^https?://\S+$",
        description="the aggregator's release repository (metadata/ and targets/ below it)",
    )
    trusted_root: Path | None = Field(
        None,
        description="the root metadata this agent trusts first (root.json from `secagg ota "
        "init`): its keys sign everything else; later roots are followed when it signs them",
    )
    token_file: Path | None = Field(
        None, description="file holding this agent's download token (`secagg ota token`)"
    )
    tls_ca_file: Path | None = Field(None, description="CA certificate for an https url")
    state_dir: Path = Field(
        Path("ota-state"),
        validate_default=True,
        description="update state, verified releases and the last known good ones",
    )
    labels: list[str] = Field(
        default_factory=list,
        max_length=32,
        description="labels a rollout can choose this agent by (`secagg rollout create --label`)",
    )
    socket_timeout_s: float = Field(
        10.0, gt=0, le=300, description="longest silence of the server during a download"
    )
    download_timeout_s: float = Field(
        600.0,
        gt=0,
        le=86400,
        description="deadline for one artifact, all resumed attempts included: a slow trickle "
        "that stays under the socket timeout is stopped here",
    )
    download_attempts: int = Field(
        5, ge=1, le=100, description="connections one artifact may take (each resumes)"
    )
    max_artifact_bytes: int = Field(
        1024**3, ge=1024, description="larger artifacts are refused before they are fetched"
    )
    verify_frames: int = Field(
        5, ge=0, le=100, description="recent frames a candidate model is tried on before use"
    )
    latency_budget_ms: float = Field(
        1000.0,
        gt=0,
        description="a candidate model slower than this per frame (mean of its trial; p95 "
        "during probation) is refused or rolled back",
    )
    probation_s: float = Field(
        300.0,
        ge=0,
        le=86400,
        description="after a switch, inference errors, latency and crash loops are watched "
        "this long; a breach rolls back to the last known good release",
    )
    probation_max_errors: int = Field(
        3, ge=0, description="inference errors during probation that roll back"
    )
    crash_loop_restarts: int = Field(
        3,
        ge=1,
        le=100,
        description="starts within crash_loop_window_s of a switch that count "
        "as a crash loop (the release is rolled back before it is loaded again)",
    )
    crash_loop_window_s: float = Field(600.0, gt=0, le=86400, description="see crash_loop_restarts")
    check_interval_s: float = Field(
        60.0, gt=0, le=86400, description="how often the desired state is checked again"
    )
    software_prefix: Path | None = Field(
        None,
        description="where releases are installed (/opt/secagent, as deploy/install.sh does): "
        "agent software releases go to <prefix>/releases/<version> and the agent must be "
        "started by <prefix>/secagent-launch; unset: agent software releases are refused",
    )
    software_pip_args: list[str] = Field(
        default_factory=list,
        description="pip arguments to install an agent wheel with its dependencies (e.g. "
        "--no-index, --find-links=DIR); empty: only the wheel, the dependencies being those "
        "of the running release",
    )
    software_attempts: int = Field(
        3, ge=1, le=100, description="starts a new agent release gets before it is taken back"
    )
    software_health_deadline_s: float = Field(
        300.0,
        gt=0,
        le=86400,
        description="a new agent release must report itself active within this, or it is "
        "taken back",
    )
    _resolve = field_validator(
        "trusted_root", "token_file", "tls_ca_file", "state_dir", "software_prefix"
    )(_relative_to_config)
