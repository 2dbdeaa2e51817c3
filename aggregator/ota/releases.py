"""Setting up the release repository and adding signed releases to it (``secagg ota init``,
``secagg release add``). Both run where the offline keys are; they need the aggregator's store
and repository folder (on the aggregator host, or a copy synchronised to it)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aggregator import provenance, store
from aggregator.config import AggregatorConfig
from aggregator.ota import tokens
from aggregator.ota.artifacts import (
    Artifact,
    ArtifactError,
    check_tag,
    check_version,
    default_tag,
    read_artifact,
)
from aggregator.ota.repository import Repository, RepositoryError, generate_key, load_key
from aggregator.store.releases import ReleaseRow
from appcommon.version import code_version

log = logging.getLogger(__name__)


class ReleaseError(ValueError):
    """A release cannot be added; the message says why."""


@dataclass(frozen=True)
class InitResult:
    keys_dir: Path
    root_file: Path
    """The root metadata agents are to trust (``ota.trusted_root`` in secagent.yaml)."""


def init_repository(config: AggregatorConfig, *, keys_dir: Path) -> InitResult:
    """Make the keys (root and targets into ``keys_dir``, to be kept offline; the online key
    and the token secret where the config says), and version 1 of the repository."""
    ota = config.ota
    repo = Repository(ota.repo_dir)
    if repo.initialised:
        raise ReleaseError(f"{ota.repo_dir} is initialised already")
    try:
        root = generate_key(keys_dir / "root.pem")
        targets = generate_key(keys_dir / "targets.pem")
        online = generate_key(ota.online_key)
        if not ota.token_secret_file.exists():
            tokens.make_secret(ota.token_secret_file)
    except FileExistsError as exc:
        raise ReleaseError(f"{exc.filename} exists already: not overwriting a key") from exc
    root_bytes = repo.init(
        root=root,
        targets=targets,
        online=online,
        root_expiry_s=ota.root_expiry_s,
        targets_expiry_s=ota.targets_expiry_s,
        snapshot_expiry_s=ota.snapshot_expiry_s,
        timestamp_expiry_s=ota.timestamp_expiry_s,
    )
    root_file = keys_dir / "root.json"
    root_file.write_bytes(root_bytes)
    return InitResult(keys_dir=keys_dir, root_file=root_file)


def add_release(
    config: AggregatorConfig,
    *,
    kind: str,
    path: Path,
    tag: str | None,
    targets_key: Path,
    min_agent: str | None = None,
) -> ReleaseRow:
    """Check the artifact, store it by content, sign it into the repository, record it.

    The tag defaults to ``git describe --always --dirty`` of the artifact's repository, else
    its short sha256. A tag that names other content of the same kind is refused; the same
    content under the same tag returns the existing release."""
    try:
        artifact = read_artifact(kind, path)
        tag = check_tag(tag) if tag else (default_tag(artifact) or artifact.sha256[:12])
        if min_agent is not None:
            artifact.compat["min_agent"] = check_version(min_agent)
    except ArtifactError as exc:
        raise ReleaseError(str(exc)) from exc
    ota = config.ota
    repo = Repository(ota.repo_dir)
    if not repo.initialised:
        raise ReleaseError(f"{ota.repo_dir}: no release repository (secagg ota init)")
    try:
        signer = load_key(targets_key)
        online = load_key(ota.online_key)
    except RepositoryError as exc:
        raise ReleaseError(str(exc)) from exc
    store.migrate(config.store.target)
    conn = store.connect(config.store.target)
    try:
        with store.transaction(conn):
            existing = store.releases.by_tag(conn, artifact.kind, tag)
            if existing is not None:
                if existing.sha256 == artifact.sha256:
                    return existing
                raise ReleaseError(
                    f"tag {tag!r} already names {artifact.kind} release {existing.id} with "
                    f"other content (sha256 {existing.sha256[:12]}…, this is "
                    f"{artifact.sha256[:12]}…): choose another tag"
                )
            release_id = store.releases.next_id(conn)
            seq = store.releases.next_seq(conn, artifact.kind)
            now = time.time()
            target_path = f"{artifact.kind}/{release_id}-{artifact.file_name}"
            custom = release_custom(
                artifact, release_id=release_id, tag=tag, seq=seq, created_ts=now
            )
            try:
                repo.add_target(
                    path=target_path,
                    data=artifact.data,
                    custom=custom,
                    targets_signer=signer,
                    online=online,
                    targets_expiry_s=ota.targets_expiry_s,
                    snapshot_expiry_s=ota.snapshot_expiry_s,
                    timestamp_expiry_s=ota.timestamp_expiry_s,
                )
            except RepositoryError as exc:
                raise ReleaseError(str(exc)) from exc
            row = store.releases.insert(
                conn,
                release_id=release_id,
                kind=artifact.kind,
                name=artifact.name,
                tag=tag,
                sha256=artifact.sha256,
                size=len(artifact.data),
                seq=seq,
                target_path=target_path,
                created_ts=now,
                compat=artifact.compat,
            )
            record_release(conn, row)
    finally:
        conn.close()
    log.info(
        "release %d: %s %s tag %s sha256 %s signed as %s",
        row.id,
        row.kind,
        row.name,
        row.tag,
        row.sha256,
        row.target_path,
    )
    return row


def release_custom(
    artifact: Artifact, *, release_id: int, tag: str, seq: int, created_ts: float
) -> dict[str, Any]:
    """What is signed with the target beside its length and hash: the agent trusts these
    fields, never the desired-state message, for what a release is."""
    return {
        "secagent": {
            "release_id": release_id,
            "kind": artifact.kind,
            "name": artifact.name,
            "tag": tag,
            "seq": seq,
            "created_at": datetime.fromtimestamp(created_ts, UTC).isoformat(),
            "compat": artifact.compat,
            **artifact.extra,
        }
    }


ARTIFACT_OF_KIND = {"model": "model", "rules": "rules", "config": "config", "agent": "software"}


def release_artifact_id(row: ReleaseRow) -> str:
    """The lineage id of a release's content: ``model:<sha256>`` (what every threat records),
    ``rules:<sha256>``, ``config:<sha256>`` (the file, not the config in force), or
    ``software:<sha256>`` (the wheel)."""
    return f"{ARTIFACT_OF_KIND[row.kind]}:{row.sha256}"


def record_release(conn: store.Connection, row: ReleaseRow) -> None:
    """Lineage: a ``release`` run used the content and generated ``release:<id>``."""
    kind, key = release_artifact_id(row).split(":", 1)
    content = provenance.artifact(kind, key, at_ts=row.created_ts)
    release = provenance.artifact(
        "release",
        row.id,
        at_ts=row.created_ts,
        meta={"kind": row.kind, "name": row.name, "tag": row.tag, "seq": row.seq},
    )
    code = provenance.artifact("code", code_version(), at_ts=row.created_ts)
    store.lineage.add_artifacts(conn, [content, release, code])
    store.lineage.add_run(
        conn,
        provenance.run(
            kind="release",
            code_version=code_version(),
            at_ts=row.created_ts,
            used=[(content.id, "input"), (code.id, "code")],
            generated=[release.id],
            meta={"target_path": row.target_path},
        ),
    )


__all__ = ["ArtifactError", "InitResult", "ReleaseError", "add_release", "init_repository"]
