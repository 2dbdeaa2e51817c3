"""The agent's YAML config: one pydantic model per concern, refused at start when wrong."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from agent.metrics import MetricsConfig
from agent.ota.config import OtaConfig
from agent.runlogs import RunLogsConfig
from appcommon.configfile import (
    ConfigError,
    find_data_file,
    installation_data_dir,
    load_yaml_model,
    resolve_path,
)
from wire.topics import AGENT_ID_PATTERN

__all__ = ["AgentConfig", "ConfigError", "in_force", "load_agent_config"]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _relative_to_config(value: Path | None, info: ValidationInfo) -> Path | None:
    if value is None:
        return None
    return resolve_path(value, (info.context or {}).get("base_dir"))


def _installation_file(what: str) -> Callable[[Path, ValidationInfo], Path]:
    """A validator: a relative path is looked up next to the config file, then in the
    installation's data folder (``models/``, ``rules/`` of /opt/secagent)."""

    def find(value: Path, info: ValidationInfo) -> Path:
        context = info.context or {}
        return find_data_file(
            value, base_dir=context.get("base_dir"), data_dir=context.get("data_dir"), what=what
        )

    return find


class MqttConfig(_Section):
    host: str = Field("127.0.0.1", min_length=1, description="broker host name or address")
    port: int = Field(1883, ge=1, le=65535, description="broker TCP port")
    username: str | None = Field(None, description="MQTT username (one per agent)")
    password: str | None = Field(None, description="MQTT password")
    keepalive_s: int = Field(30, ge=5, le=3600, description="MQTT keepalive interval")
    status_interval_s: float = Field(
        30.0, gt=0, le=3600, description="how often the retained status message is refreshed"
    )
    tls_ca_file: Path | None = Field(
        None, description="CA certificate: connect with TLS and verify the broker against it"
    )
    _resolve = field_validator("tls_ca_file")(_relative_to_config)
    receipt_timeout_s: float = Field(
        30.0,
        gt=0,
        le=3600,
        description="send again what the broker acknowledged but the aggregator has not "
        "receipted after this long (doubling up to 10 min while nothing is receipted)",
    )
    max_inflight: int = Field(
        100, ge=1, le=65535, description="QoS 1 messages published and not yet acknowledged"
    )


MAX_PIXELS_8K = 7680 * 4320


class ValidateConfig(_Section):
    max_file_bytes: int = Field(
        25 * 1024 * 1024, ge=1024, description="stills larger than this are rejected unread"
    )
    max_pixels: int = Field(
        MAX_PIXELS_8K,
        ge=1,
        description="width x height above which a frame is rejected before it is decoded "
        "(default: an 8K camera, 7680x4320; decoding one takes 100 MB)",
    )
    min_side_px: int = Field(16, ge=1, description="frames narrower or lower are rejected")
    max_side_px: int = Field(16384, ge=16, description="frames wider or higher are rejected")


Point = Annotated[
    tuple[Annotated[float, Field(ge=0, le=1)], Annotated[float, Field(ge=0, le=1)]],
    Field(description="[x, y] as fractions of the frame's width and height"),
]
Polygon = Annotated[list[Point], Field(min_length=3, max_length=256)]


class MotionConfig(_Section):
    enabled: bool = Field(True, description="false sends every valid frame to the model")
    height_px: int = Field(100, ge=16, le=1080, description="frames are downscaled to this height")
    blur_px: int = Field(5, ge=1, le=31, description="Gaussian blur kernel (odd) before diffing")
    threshold: int = Field(25, ge=1, le=255, description="grey-level change that counts as motion")
    min_area_px: int = Field(
        20, ge=1, description="smallest changed region, in downscaled pixels, that counts"
    )
    background_alpha: float = Field(
        0.1, gt=0, le=1, description="weight of each new frame in the running background"
    )
    recalibrate_fraction: float = Field(
        0.7,
        gt=0,
        le=1,
        description="when more than this fraction of the frame changes at once (lights on), the "
        "background is reset and the frame counts as no motion; 1 never recalibrates",
    )
    masks: list[Polygon] = Field(
        default_factory=list,
        max_length=64,
        description="areas that never count as motion: polygons of [x, y] corners, as fractions "
        "of the frame's width and height (0..1)",
    )

    @field_validator("blur_px")
    @classmethod
    def _odd_blur(cls, value: int) -> int:
        if value % 2 == 0:
            raise ValueError("must be odd")
        return value


class _RetryConfig(_Section):
    retry_min_s: float = Field(
        1.0,
        gt=0,
        le=600,
        description="first wait before trying again a folder or file that is missing",
    )
    retry_max_s: float = Field(
        60.0, gt=0, le=3600, description="the wait doubles after each failure, up to this"
    )

    @model_validator(mode="after")
    def _retry_order(self) -> _RetryConfig:
        if self.retry_max_s < self.retry_min_s:
            raise ValueError("retry_max_s must be at least retry_min_s")
        return self


class DirectorySourceConfig(_RetryConfig):
    type: Literal["directory"] = Field(description="stills dropped into a folder")
    path: Path = Field(description="folder the camera drops stills into")
    watch_mode: Literal["auto", "inotify", "poll"] = Field(
        "auto",
        description="how new files are noticed: inotify (the kernel tells, cost independent of "
        "the files kept), poll (scan every poll_s; for network shares, where inotify sees no "
        "remote writes), auto = inotify, or poll on a network file system (NFS, SMB/CIFS, "
        "sshfs, ...) or when inotify cannot watch",
    )
    recursive: bool = Field(
        False,
        description="take stills from subfolders too (cameras that write dated folders such "
        "as YYYY/MM/DD/); hidden folders are skipped",
    )
    poll_s: float = Field(
        0.2,
        gt=0,
        le=60,
        description="how often the folder is scanned when polling; with inotify, how often "
        "files still being written are looked at again",
    )
    rescan_s: float = Field(
        300.0,
        ge=1,
        le=86400,
        description="with inotify, a full scan this often as well: catches what an overflowing "
        "event queue lost, and forgets processed files that are gone",
    )
    settle_s: float = Field(
        1.0,
        ge=0,
        le=600,
        description="a file that is not a complete JPEG/PNG is taken once unchanged this long",
    )
    patterns: list[str] = Field(
        default_factory=lambda: ["*.jpg", "*.jpeg", "*.png"],
        min_length=1,
        description="file name patterns picked up (hidden, *.tmp and *.part files never are)",
    )
    existing: Literal["process", "skip"] = Field(
        "process",
        description="files already there at start: process those not processed before (the "
        "agent remembers processed files in its outbox database, across restarts), or skip them",
    )
    after: Literal["keep", "delete"] = Field("keep", description="what to do with a file once read")
    watch: bool = Field(
        True,
        description="keep watching for new files; false reads what is there (and was not "
        "processed before), then finishes",
    )
    _resolve = field_validator("path")(_relative_to_config)


class VideoSourceConfig(_RetryConfig):
    type: Literal["video"] = Field(description="a video file")
    path: Path = Field(description="video file (any container OpenCV reads)")
    fps: float = Field(2.0, gt=0, le=120, description="frames per second sampled from the video")
    realtime: bool = Field(False, description="pace reading to the video's own clock")
    loop: bool = Field(False, description="start again at the end instead of finishing")
    _resolve = field_validator("path")(_relative_to_config)


class _StreamConfig(_Section):
    fps: float = Field(
        5.0, gt=0, le=120, description="frames per second taken from the stream (the rest skipped)"
    )
    open_timeout_s: float = Field(10.0, gt=0, le=300, description="give up opening after this")
    read_timeout_s: float = Field(
        10.0, gt=0, le=300, description="a stream silent this long counts as broken"
    )
    reconnect_min_s: float = Field(
        1.0, gt=0, le=600, description="first wait before reopening a broken stream"
    )
    reconnect_max_s: float = Field(
        30.0, gt=0, le=3600, description="the wait doubles after each failure, up to this"
    )

    @model_validator(mode="after")
    def _backoff_order(self) -> _StreamConfig:
        if self.reconnect_max_s < self.reconnect_min_s:
            raise ValueError("reconnect_max_s must be at least reconnect_min_s")
        return self


class RtspSourceConfig(_StreamConfig):
    type: Literal["rtsp"] = Field(description="a network camera stream (RTSP, or HTTP MJPEG)")
    url: str = Field(
        pattern=r"^(rtsps?|https?)://\S+$",
        max_length=2048,
        description="stream URL; credentials in it are never logged nor sent",
    )


class UsbSourceConfig(_StreamConfig):
    type: Literal["usb"] = Field(description="a camera attached to this host (V4L2)")
    device: int | str = Field(
        0, description="device index (0 = /dev/video0) or a device path such as /dev/video2"
    )
    width: int | None = Field(None, ge=16, le=8192, description="capture width to ask the camera")
    height: int | None = Field(None, ge=16, le=8192, description="capture height to ask for")

    @field_validator("device")
    @classmethod
    def _device(cls, value: int | str) -> int | str:
        if isinstance(value, int) and not 0 <= value <= 63:
            raise ValueError("device index must be 0..63")
        if isinstance(value, str) and not value.startswith("/dev/"):
            raise ValueError("device path must start with /dev/")
        return value


SourceConfig = Annotated[
    DirectorySourceConfig | VideoSourceConfig | RtspSourceConfig | UsbSourceConfig,
    Field(discriminator="type"),
]


class CameraConfig(_Section):
    name: str = Field(
        pattern=r"^[A-Za-z0-9_.:-]{1,64}$", description="camera name, unique on this agent"
    )
    source: SourceConfig = Field(description="where frames come from (by type)")
    motion: MotionConfig = Field(
        default_factory=dict, validate_default=True, description="the motion gate of this camera"
    )
    zones: dict[Annotated[str, Field(pattern=r"^[A-Za-z0-9_.:-]{1,64}$")], Polygon] = Field(
        default_factory=dict,
        max_length=64,
        description="named areas of the view (polygons of [x, y] fractions) that rules can be "
        "limited to: a detection is in a zone when the bottom centre of its box is",
    )
    queue_size: int = Field(
        1, ge=1, le=64, description="frames of this camera waiting for the model, at most"
    )
    when_busy: Literal["auto", "drop_oldest", "wait"] = Field(
        "auto",
        description="when its queue is full: drop_oldest (latest frame wins, drops counted) or "
        "wait (read on only when the model catches up); auto = drop_oldest for live sources "
        "(rtsp, usb, realtime video), wait for files",
    )

    def drops_when_busy(self) -> bool:
        """True when a full queue drops its oldest frame rather than waiting."""
        if self.when_busy != "auto":
            return self.when_busy == "drop_oldest"
        source = self.source
        return not isinstance(source, DirectorySourceConfig) and (
            not isinstance(source, VideoSourceConfig) or source.realtime
        )


class OutboxConfig(_Section):
    path: Path = Field(
        Path("outbox.sqlite"), validate_default=True, description="SQLite file of unsent messages"
    )
    max_bytes: int = Field(
        256 * 1024 * 1024, ge=64 * 1024, description="oldest messages are dropped beyond this"
    )
    delete_on: Literal["receipt", "puback"] = Field(
        "receipt",
        description="delete a message on the aggregator's receipt (nothing lost even if the "
        "broker crashes) or on the broker's PUBACK (for deployments without secagg)",
    )
    _resolve = field_validator("path")(_relative_to_config)


class SnapshotConfig(_Section):
    enabled: bool = Field(True, description="attach a JPEG of the frame to each threat message")
    max_width_px: int = Field(1280, ge=64, le=8192, description="snapshots are scaled down to this")
    jpeg_quality: int = Field(85, ge=10, le=100, description="JPEG quality of re-encoded snapshots")
    wire: Literal["envelope", "base64"] = Field(
        "envelope",
        description="how a snapshot travels: 'envelope' as raw bytes after the message's JSON "
        "(secagent.threat/2); 'base64' inside the JSON (secagent.threat/1, a third larger), "
        "for an aggregator older than secagent.threat/2",
    )


class DetectConfig(_Section):
    model: Path = Field(
        description="model manifest (YAML); a relative path is looked up next to this file, "
        "then in the installation's data folder (models/ of /opt/secagent)"
    )
    providers: list[str] = Field(
        default_factory=lambda: ["auto"],
        description="ONNX Runtime execution providers in order; 'auto' = TensorRT, CUDA, CPU",
    )
    intra_op_threads: int = Field(
        0, ge=0, le=256, description="threads one inference uses; 0 lets ONNX Runtime decide"
    )
    inter_op_threads: int = Field(
        0, ge=0, le=256, description="threads for parallel graph branches; 0 = ONNX Runtime decides"
    )
    spin_wait: bool = Field(
        False,
        description="ONNX Runtime's threads spin between inferences instead of sleeping: a "
        "little lower latency, but they take CPU that capture and decoding need",
    )
    max_batch: int = Field(
        8,
        ge=1,
        le=64,
        description="most frames (of different cameras) in one inference, when the model's "
        "batch dimension is dynamic",
    )
    _resolve = field_validator("model")(_installation_file("model manifest"))


class AgentConfig(_Section):
    agent_id: str = Field(pattern=AGENT_ID_PATTERN, description="this host's id in MQTT topics")
    mqtt: MqttConfig = Field(
        default_factory=dict, validate_default=True, description="broker connection"
    )
    detect: DetectConfig = Field(description="the model and how it runs")
    rules: Path = Field(
        description="threat rules file (YAML), its sha256 is its version; a relative path is "
        "looked up next to this file, then in the installation's data folder (rules/)"
    )
    outbox: OutboxConfig = Field(
        default_factory=dict, validate_default=True, description="durable queue of unsent threats"
    )
    validate_: ValidateConfig = Field(
        default_factory=dict,
        validate_default=True,
        alias="validate",
        description="limits every frame is checked against before detection",
    )
    snapshot: SnapshotConfig = Field(
        default_factory=dict, validate_default=True, description="JPEG snapshot in each threat"
    )
    cameras: list[CameraConfig] = Field(min_length=1, description="the cameras this agent serves")
    ota: OtaConfig = Field(
        default_factory=dict,
        validate_default=True,
        description="over-the-air updates: signed releases from the aggregator (docs/ota.md)",
    )
    metrics: MetricsConfig = Field(
        default_factory=dict,
        validate_default=True,
        description="Prometheus metrics on a small HTTP listener (off by default; loopback)",
    )
    run_logs: RunLogsConfig = Field(
        default_factory=dict,
        validate_default=True,
        description="warnings and errors sent to the aggregator with their ids (secagg logs)",
    )
    _resolve = field_validator("rules")(_installation_file("rules file"))

    @model_validator(mode="after")
    def _unique_camera_names(self) -> AgentConfig:
        names = [c.name for c in self.cameras]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"camera names must be unique, repeated: {', '.join(dupes)}")
        return self


def in_force(config: AgentConfig) -> dict[str, Any]:
    """The config as the agent applies it: every default filled in, paths resolved, and no
    secret (the MQTT password and credentials in stream URLs are left out). Its canonical JSON's
    sha256 is the config version recorded on every result; the status message carries it, so
    ``secagg reproduce`` applies the same camera zones the agent did."""
    doc = config.model_dump(mode="json", by_alias=True)
    doc["mqtt"].pop("password", None)
    for camera in doc["cameras"]:
        source = camera["source"]
        if isinstance(source.get("url"), str):
            source["url"] = redact_url(source["url"])
    return doc


_CREDENTIALS = re.compile(r"^([a-z][a-z0-9+.-]*://)[^/@\s]*@", re.IGNORECASE)


def redact_url(url: str) -> str:
    """``rtsp://user:secret@host/x`` -> ``rtsp://***@host/x``: URLs go into logs and messages."""
    return _CREDENTIALS.sub(r"\1***@", url)


def load_agent_config(
    path: Path, *, data_dir: Path | None = None, base_dir: Path | None = None
) -> tuple[AgentConfig, str]:
    """Load and validate an agent config file; return it with the file's sha256.

    Relative paths are relative to the file's folder (or ``base_dir``: a config delivered over
    the air resolves them as the installed one does); the model manifest and the rules file are
    looked up there first, then in ``data_dir`` (default: the installation's data folder)."""
    context: dict[str, Any] = {"data_dir": data_dir or installation_data_dir()}
    if base_dir is not None:
        context["base_dir"] = base_dir.resolve()
    return load_yaml_model(path, AgentConfig, what="agent config", context=context)
