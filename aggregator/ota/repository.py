"""The signed release repository: TUF metadata (python-tuf's ``tuf.api.metadata``) and the
release artifacts, content-addressed, in one folder.

```
<repo_dir>/metadata/1.root.json, 2.root.json, ...   root, every version (agents walk the chain)
<repo_dir>/metadata/<N>.targets.json                 the releases: path, length, sha256, custom
<repo_dir>/metadata/<N>.snapshot.json                which targets version is current
<repo_dir>/metadata/timestamp.json                   which snapshot version is current; short-lived
<repo_dir>/blobs/<sha256>                            the artifacts, by content
```

Four roles, each with its own key (ed25519):

- ``root`` (offline) names the keys of every role; a key is rotated by a new root version that
  lists the old and the new key during the overlap, signed by the root keys of both versions.
- ``targets`` (offline: ``secagg release add --targets-key``) signs the list of releases, with
  their kind, tag, sequence number and compatibility in each target's ``custom`` field.
- ``snapshot`` and ``timestamp`` share the aggregator's *online* key: ``secagg serve`` re-signs
  the timestamp before it expires. A feed that stops (frozen, or replayed) expires on the agents.

Consistent snapshots are on: metadata versions are separate files and targets are fetched as
``<dir>/<sha256>.<name>``, so a release added while an agent downloads never mixes two states.
Every change happens under an exclusive lock on ``<repo_dir>/lock`` and each file is written to a
temporary name, fsynced and renamed.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.serialization import load_pem_private_key
from securesystemslib.signer import CryptoSigner, Signer
from tuf.api.metadata import (
    Metadata,
    MetaFile,
    Role,
    Root,
    Snapshot,
    TargetFile,
    Targets,
    Timestamp,
)
from tuf.api.serialization.json import JSONSerializer

ROLES = ("root", "targets", "snapshot", "timestamp")
METADATA_NAME = re.compile(r"^(?:[0-9]{1,12}\.)?(root|targets|snapshot|timestamp)\.json$")
TARGET_URL_PATH = re.compile(
    r"^(model|rules|config|agent)/([0-9a-f]{64})\.([A-Za-z0-9_.+-]{1,200})$"
)
SPEC_VERSION = "1.0.31"


class RepositoryError(Exception):
    """The repository cannot do what was asked (missing, not initialised, wrong key)."""


def generate_key(path: Path) -> CryptoSigner:
    """A new ed25519 key written to ``path`` (PEM, PKCS#8, mode 0600); never overwrites."""
    signer = CryptoSigner.generate_ed25519()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(signer.private_bytes)
    return signer


def load_key(path: Path) -> CryptoSigner:
    """The signer of a PEM private key file; RepositoryError names the file on any problem."""
    try:
        private = load_pem_private_key(path.read_bytes(), None)
        return CryptoSigner(private)
    except (OSError, ValueError, TypeError) as exc:
        raise RepositoryError(f"{path}: not a usable private key: {exc}") from exc


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)


def _expiry(seconds: float) -> datetime:
    return (datetime.now(UTC) + timedelta(seconds=seconds)).replace(microsecond=0)


def _keyid(signer: Signer) -> str:
    return signer.public_key.keyid


class Repository:
    """One release repository folder (see the module docstring)."""

    def __init__(self, repo_dir: Path) -> None:
        self.dir = repo_dir
        self.metadata_dir = repo_dir / "metadata"
        self.blobs_dir = repo_dir / "blobs"

    # reading ---------------------------------------------------------------------------------
    @property
    def initialised(self) -> bool:
        return (self.metadata_dir / "1.root.json").is_file()

    def metadata_file(self, name: str) -> Path | None:
        """The file of a metadata URL name (``timestamp.json``, ``3.targets.json``); None when
        the name is not one or no such version exists."""
        if not METADATA_NAME.match(name):
            return None
        path = self.metadata_dir / name
        return path if path.is_file() else None

    def blob(self, sha256: str) -> Path | None:
        path = self.blobs_dir / sha256
        return path if re.fullmatch(r"[0-9a-f]{64}", sha256) and path.is_file() else None

    def target_file(self, url_path: str) -> Path | None:
        """The artifact a target URL path (``model/<sha256>.<name>``) asks for."""
        match = TARGET_URL_PATH.match(url_path)
        return None if match is None else self.blob(match.group(2))

    def _load(self, role: str) -> Metadata[Any]:
        if role == "timestamp":
            return Metadata.from_file(str(self.metadata_dir / "timestamp.json"))
        version = self._current_version(role)
        return Metadata.from_file(str(self.metadata_dir / f"{version}.{role}.json"))

    def _current_version(self, role: str) -> int:
        if role == "root":
            versions = [int(p.name.split(".")[0]) for p in self.metadata_dir.glob("*.root.json")]
            if not versions:
                raise RepositoryError(f"{self.dir}: not initialised (secagg ota init)")
            return max(versions)
        if role == "targets":
            snapshot: Metadata[Snapshot] = self._load("snapshot")
            return snapshot.signed.meta["targets.json"].version
        timestamp: Metadata[Timestamp] = self._load("timestamp")
        return timestamp.signed.snapshot_meta.version

    def root(self) -> Metadata[Root]:
        return self._load("root")

    def targets(self) -> Metadata[Targets]:
        return self._load("targets")

    def timestamp(self) -> Metadata[Timestamp]:
        return self._load("timestamp")

    def root_bytes(self, version: int | None = None) -> bytes:
        """A root version's file (the latest by default): what agents are given to trust."""
        version = version or self._current_version("root")
        return (self.metadata_dir / f"{version}.root.json").read_bytes()

    # writing ---------------------------------------------------------------------------------
    @contextmanager
    def locked(self) -> Iterator[None]:
        """Exclusive for writers (``secagg release add`` and ``secagg serve``'s re-signing)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        with (self.dir / "lock").open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _save(self, role: str, md: Metadata[Any]) -> bytes:
        data = md.to_bytes(JSONSerializer(compact=False))
        name = "timestamp.json" if role == "timestamp" else f"{md.signed.version}.{role}.json"
        _write_atomic(self.metadata_dir / name, data)
        return data

    def init(
        self,
        *,
        root: Signer,
        targets: Signer,
        online: Signer,
        root_expiry_s: float,
        targets_expiry_s: float,
        snapshot_expiry_s: float,
        timestamp_expiry_s: float,
    ) -> bytes:
        """Create version 1 of every role; return the root file agents are to trust."""
        with self.locked():
            if self.initialised:
                raise RepositoryError(f"{self.dir}: already initialised")
            self.metadata_dir.mkdir(parents=True, exist_ok=True)
            self.blobs_dir.mkdir(parents=True, exist_ok=True)
            signed_root = Root(expires=_expiry(root_expiry_s), consistent_snapshot=True)
            signed_root.roles = {r: Role([], 1) for r in ROLES}
            signed_root.add_key(root.public_key, "root")
            signed_root.add_key(targets.public_key, "targets")
            signed_root.add_key(online.public_key, "snapshot")
            signed_root.add_key(online.public_key, "timestamp")
            root_md = Metadata(signed_root)
            root_md.sign(root)
            root_bytes = self._save("root", root_md)
            targets_md = Metadata(Targets(expires=_expiry(targets_expiry_s)))
            targets_md.sign(targets)
            self._save("targets", targets_md)
            self._resign_snapshot(
                online,
                targets_version=1,
                snapshot_expiry_s=snapshot_expiry_s,
                timestamp_expiry_s=timestamp_expiry_s,
                first=True,
            )
            return root_bytes

    def _resign_snapshot(
        self,
        online: Signer,
        *,
        targets_version: int,
        snapshot_expiry_s: float,
        timestamp_expiry_s: float,
        first: bool = False,
    ) -> None:
        version = 1 if first else self._current_version("snapshot") + 1
        snapshot = Metadata(
            Snapshot(
                version=version,
                expires=_expiry(snapshot_expiry_s),
                meta={"targets.json": MetaFile(version=targets_version)},
            )
        )
        snapshot.sign(online)
        self._save("snapshot", snapshot)
        self._resign_timestamp(
            online, snapshot_version=version, timestamp_expiry_s=timestamp_expiry_s, first=first
        )

    def _resign_timestamp(
        self, online: Signer, *, snapshot_version: int, timestamp_expiry_s: float, first: bool
    ) -> None:
        version = 1 if first else self.timestamp().signed.version + 1
        timestamp = Metadata(
            Timestamp(
                version=version,
                expires=_expiry(timestamp_expiry_s),
                snapshot_meta=MetaFile(version=snapshot_version),
            )
        )
        timestamp.sign(online)
        self._save("timestamp", timestamp)

    def add_target(
        self,
        *,
        path: str,
        data: bytes,
        custom: dict[str, Any],
        targets_signer: Signer,
        online: Signer,
        targets_expiry_s: float,
        snapshot_expiry_s: float,
        timestamp_expiry_s: float,
    ) -> TargetFile:
        """Store ``data`` by content and sign a new targets version that lists it at ``path``
        (replacing an entry of that path), then a new snapshot and timestamp."""
        with self.locked():
            targets_md = self.targets()
            self._check_signer("targets", targets_signer)
            self._check_signer("snapshot", online)
            sha = hashlib.sha256(data).hexdigest()
            blob = self.blobs_dir / sha
            if not blob.is_file():
                self.blobs_dir.mkdir(parents=True, exist_ok=True)
                _write_atomic(blob, data)
            target = TargetFile(
                length=len(data),
                hashes={"sha256": sha},
                path=path,
                unrecognized_fields={"custom": custom},
            )
            signed = targets_md.signed
            signed.targets[path] = target
            signed.version += 1
            signed.expires = _expiry(targets_expiry_s)
            targets_md.signatures.clear()
            targets_md.sign(targets_signer)
            self._save("targets", targets_md)
            self._resign_snapshot(
                online,
                targets_version=signed.version,
                snapshot_expiry_s=snapshot_expiry_s,
                timestamp_expiry_s=timestamp_expiry_s,
            )
            return target

    def refresh_timestamp(
        self, online: Signer, *, timestamp_expiry_s: float, snapshot_expiry_s: float
    ) -> bool:
        """Re-sign what the online key signs when half its lifetime is gone: a new snapshot
        (same targets) when the snapshot is, a new timestamp when it is. True when it did."""
        with self.locked():
            now = datetime.now(UTC)
            timestamp = self.timestamp().signed
            snapshot: Metadata[Snapshot] = self._load("snapshot")
            if snapshot.signed.expires - now < timedelta(seconds=snapshot_expiry_s / 2):
                self._resign_snapshot(
                    online,
                    targets_version=snapshot.signed.meta["targets.json"].version,
                    snapshot_expiry_s=snapshot_expiry_s,
                    timestamp_expiry_s=timestamp_expiry_s,
                )
                return True
            if timestamp.expires - now < timedelta(seconds=timestamp_expiry_s / 2):
                self._resign_timestamp(
                    online,
                    snapshot_version=timestamp.snapshot_meta.version,
                    timestamp_expiry_s=timestamp_expiry_s,
                    first=False,
                )
                return True
            return False

    def rotate(
        self,
        role: str,
        *,
        add: Signer | None,
        revoke_keyid: str | None,
        root_signers: Sequence[Signer],
        root_expiry_s: float,
    ) -> bytes:
        """A new root version that adds a key to ``role`` and/or revokes one, signed by every
        signer given (the current root keys, and the new ones when ``role`` is root). Agents
        follow it at their next refresh. Returns the new root file."""
        if role not in ROLES:
            raise RepositoryError(f"role must be one of {', '.join(ROLES)}")
        with self.locked():
            root_md = self.root()
            signed = root_md.signed
            if add is not None:
                signed.add_key(add.public_key, role)
            if revoke_keyid is not None:
                if revoke_keyid not in signed.roles[role].keyids:
                    raise RepositoryError(f"key {revoke_keyid} is not a {role} key")
                if len(signed.roles[role].keyids) <= signed.roles[role].threshold:
                    raise RepositoryError(f"revoking {revoke_keyid} leaves {role} too few keys")
                signed.revoke_key(revoke_keyid, role)
            signed.version += 1
            signed.expires = _expiry(root_expiry_s)
            root_md.signatures.clear()
            for signer in root_signers:
                root_md.sign(signer, append=True)
            return self._save("root", root_md)

    def _check_signer(self, role: str, signer: Signer) -> None:
        keyids = self.root().signed.roles[role].keyids
        if _keyid(signer) not in keyids:
            raise RepositoryError(
                f"that key ({_keyid(signer)[:12]}…) is not a {role} key of this repository "
                f"(those are {', '.join(k[:12] + '…' for k in keyids)})"
            )
