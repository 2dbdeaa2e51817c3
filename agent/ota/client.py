"""Fetching a release through python-tuf's ngclient: the signed metadata is refreshed (root
chain, timestamp, snapshot, targets: signatures, thresholds, versions, expiry, all checked by
ngclient), the release's target entry is looked up, checked against the desired state, and its
artifact downloaded: capped at the signed length, kept on disk while it comes so that a
restarted agent goes on from there (:mod:`agent.ota.partial`), resumed and bounded in time by
:class:`agent.ota.fetcher.ResumableFetcher`, and checked against the signed length and sha256
by python-tuf (``TargetFile.verify_length_and_hashes``, what ngclient's own download does)."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuf.api import exceptions
from tuf.ngclient import Updater, UpdaterConfig

from agent.ota.config import OtaConfig
from agent.ota.fetcher import ResumableFetcher
from agent.ota.partial import PartialDownload

log = logging.getLogger(__name__)


class ReleaseRefused(Exception):
    """A release is refused: ``reason`` is a short name (counted, reported), ``detail`` says
    why in words."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class SignedRelease:
    """What the signed targets metadata says about a release (never the MQTT message)."""

    release_id: int
    kind: str
    name: str
    tag: str
    seq: int
    sha256: str
    length: int
    target_path: str
    compat: dict[str, Any]
    manifest: dict[str, Any] | None


def classify(exc: BaseException) -> ReleaseRefused:
    """A python-tuf or download error as a reason the operator reads."""
    text = str(exc) or type(exc).__name__
    if isinstance(exc, ReleaseRefused):
        return exc
    if isinstance(exc, exceptions.ExpiredMetadataError):
        return ReleaseRefused("expired_metadata", text)
    if isinstance(exc, exceptions.BadVersionNumberError):
        return ReleaseRefused("metadata_downgrade", text)
    if isinstance(exc, exceptions.UnsignedMetadataError):
        return ReleaseRefused("bad_signature", text)
    if isinstance(exc, exceptions.LengthOrHashMismatchError):
        return ReleaseRefused("hash_mismatch", text)
    if isinstance(exc, exceptions.DownloadLengthMismatchError):
        return ReleaseRefused("too_long", text)
    if isinstance(exc, exceptions.SlowRetrievalError):
        return ReleaseRefused("download_deadline", text)
    if isinstance(exc, exceptions.DownloadHTTPError):
        return ReleaseRefused("http_error", text)
    if isinstance(exc, exceptions.DownloadError):
        cause = exc.__cause__ or exc.__context__
        return ReleaseRefused("download_failed", f"{text}: {cause}" if cause else text)
    if isinstance(exc, exceptions.RepositoryError):
        return ReleaseRefused("bad_metadata", text)
    return ReleaseRefused("error", f"{type(exc).__name__}: {text}")


class ReleaseClient:
    """One refresh of the signed metadata, then lookups and downloads (ngclient refreshes
    once per Updater: a new client is made for every check)."""

    def __init__(self, config: OtaConfig, *, agent_id: str) -> None:
        if config.trusted_root is None:
            raise ReleaseRefused("not_configured", "ota.trusted_root is not set")
        self.config = config
        metadata_dir = config.state_dir / "tuf"
        metadata_dir.mkdir(parents=True, exist_ok=True)
        token = config.token_file.read_text().strip() if config.token_file else ""
        self.fetcher = ResumableFetcher(
            authorization=f"Bearer {agent_id}:{token}" if token else None,
            socket_timeout_s=config.socket_timeout_s,
            deadline_s=config.download_timeout_s,
            attempts=config.download_attempts,
            ca_file=str(config.tls_ca_file) if config.tls_ca_file else None,
        )
        # The trusted root is the one given, until a newer one it signed was fetched.
        cached = metadata_dir / "root.json"
        bootstrap = None if cached.is_file() else config.trusted_root.read_bytes()
        base = config.url.rstrip("/")
        self.updater = Updater(
            metadata_dir=str(metadata_dir),
            metadata_base_url=f"{base}/metadata/",
            target_base_url=f"{base}/targets/",
            fetcher=self.fetcher,
            config=UpdaterConfig(targets_max_length=50_000_000),
            bootstrap=bootstrap,
        )

    def refresh(self) -> None:
        try:
            self.updater.refresh()
        except Exception as exc:
            raise classify(exc) from exc

    def lookup(self, *, target_path: str, sha256: str, kind: str) -> SignedRelease:
        """The signed entry of ``target_path``; refused when it is not signed, or when the
        desired state names another hash or kind than the signature (mix and match)."""
        try:
            info = self.updater.get_targetinfo(target_path)
        except Exception as exc:
            raise classify(exc) from exc
        if info is None:
            raise ReleaseRefused("not_signed", f"{target_path} is not in the signed releases")
        custom = (info.custom or {}).get("secagent") or {}
        signed_sha = info.hashes.get("sha256")
        if signed_sha != sha256:
            raise ReleaseRefused(
                "hash_mismatch",
                f"{target_path}: the desired state names sha256 {sha256[:12]}…, the signed "
                f"release is {str(signed_sha)[:12]}…",
            )
        if custom.get("kind") != kind:
            raise ReleaseRefused(
                "kind_mismatch", f"{target_path} is signed as {custom.get('kind')!r}, not {kind}"
            )
        if info.length > self.config.max_artifact_bytes:
            raise ReleaseRefused("too_long", f"{info.length} bytes > ota.max_artifact_bytes")
        manifest = custom.get("manifest_json")
        return SignedRelease(
            release_id=int(custom["release_id"]),
            kind=kind,
            name=str(custom.get("name", "")),
            tag=str(custom.get("tag", "")),
            seq=int(custom["seq"]),
            sha256=sha256,
            length=info.length,
            target_path=target_path,
            compat=dict(custom.get("compat") or {}),
            manifest=json.loads(manifest) if isinstance(manifest, str) else None,
        )

    def download(self, release: SignedRelease, dest: Path) -> Path:
        """The artifact, verified (length and sha256 against the signed metadata), at
        ``dest``. What an earlier run received is kept (:mod:`agent.ota.partial`) and the
        download goes on from there with ``Range``; a resumed download whose bytes turn out
        wrong is discarded and downloaded once more from the start."""
        try:
            info = self.updater.get_targetinfo(release.target_path)
            if info is None:
                raise ReleaseRefused("not_signed", release.target_path)
            partial = PartialDownload(dest, sha256=release.sha256, length=info.length)
            url = self._target_url(info.path, release.sha256)
            while True:
                offset = partial.resume_at()
                if offset:
                    log.info(
                        "ota: %s: going on from byte %d of %d, kept from an earlier run",
                        release.target_path,
                        offset,
                        info.length,
                    )
                try:
                    if offset < info.length:
                        partial.append(self.fetcher.stream(url, offset=offset))
                    with partial.part.open("rb") as received:
                        info.verify_length_and_hashes(received)
                except exceptions.LengthOrHashMismatchError:
                    partial.discard()  # wrong bytes are never resumed
                    if offset == 0:
                        raise
                    self._start_over(release, offset, "its bytes are not the signed ones")
                    continue
                except exceptions.DownloadHTTPError as exc:
                    if offset == 0 or exc.status_code != 416:
                        raise
                    partial.discard()
                    self._start_over(release, offset, "the server refused its range")
                    continue
                return partial.finish()
        except Exception as exc:
            raise classify(exc) from exc

    def _start_over(self, release: SignedRelease, offset: int, why: str) -> None:
        log.warning(
            "ota: %s: the %d bytes kept from an earlier run are discarded (%s); downloading "
            "it again from the start",
            release.target_path,
            offset,
            why,
        )

    def _target_url(self, path: str, sha256: str) -> str:
        """Where the repository serves a target: secagg's repository has consistent snapshots,
        each artifact under ``<kind>/<sha256>.<name>`` (as ngclient asks for it)."""
        folder, sep, name = path.rpartition("/")
        return f"{self.config.url.rstrip('/')}/targets/{folder}{sep}{sha256}.{name}"
