"""Bad releases are refused with a reason, by the agent's release client (python-tuf's ngclient
with the resumable fetcher) against a real ``secagg serve`` over HTTP: a desired state naming
another hash, a tampered artifact, a truncated one, metadata signed badly or by an unknown key,
expired metadata (a frozen feed), older metadata (a replay), no token. Downloads that drop are
resumed; a trickle is stopped at the deadline."""

from __future__ import annotations

import hashlib
import json
import shutil
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from securesystemslib.signer import CryptoSigner
from tuf.api import exceptions
from tuf.api.metadata import Metadata, Targets, Timestamp

from agent.ota.client import ReleaseClient, ReleaseRefused, SignedRelease
from agent.ota.config import OtaConfig
from agent.ota.fetcher import ResumableFetcher
from aggregator.ota.repository import Repository, load_key
from demo.broker import Mosquitto
from tests.support.ota import OtaSite, tiny_model


@pytest.fixture(scope="module")
def site(broker: Mosquitto, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OtaSite]:
    # refresh_interval_s long: the controller re-signs once at start, then leaves the
    # repository to the tests
    work = tmp_path_factory.mktemp("ota-refusals")
    s = OtaSite(work, broker, refresh_interval_s=3600)
    s.release = s.add_release("model", tiny_model(work / "models", "cand", x=300), tag="cand-1")
    s.aggregator.start()
    try:
        yield s
    finally:
        s.aggregator.stop()


def client(site: OtaSite, state: Path, *, token: bool = True, **fields: object) -> ReleaseClient:
    state.mkdir(parents=True, exist_ok=True)
    token_file = state / "token"
    token_file.write_text(site.token("edge-r") if token else "wrong")
    config = OtaConfig.model_validate(
        {
            "enabled": True,
            "url": f"{site.api}/ota/v1",
            "trusted_root": str(site.keys / "root.json"),
            "token_file": str(token_file),
            "state_dir": str(state),
            "socket_timeout_s": 2,
            "download_timeout_s": 10,
            **fields,
        }
    )
    return ReleaseClient(config, agent_id="edge-r")


def fetch(
    c: ReleaseClient, release: dict[str, Any], *, sha256: str | None = None
) -> tuple[SignedRelease, Path]:
    c.refresh()
    signed = c.lookup(
        target_path=release["target_path"], sha256=sha256 or release["sha256"], kind="model"
    )
    return signed, c.download(signed, c.config.state_dir / "out" / "model.onnx")


def refused(c: ReleaseClient, release: dict[str, Any], **kw: str) -> ReleaseRefused:
    with pytest.raises(ReleaseRefused) as info:
        fetch(c, release, **kw)
    return info.value


@pytest.fixture
def repo_backup(site: OtaSite, tmp_path: Path) -> Iterator[Repository]:
    """The repository, restored as it was after the test (tests tamper with it)."""
    repo = Repository(site.work / "ota")
    shutil.copytree(repo.dir, tmp_path / "backup")
    try:
        yield repo
    finally:
        shutil.rmtree(repo.dir)
        shutil.copytree(tmp_path / "backup", repo.dir)


def test_a_good_release_downloads_and_verifies(site: OtaSite, tmp_path: Path) -> None:
    signed, path = fetch(client(site, tmp_path), site.release)
    assert signed.kind == "model" and signed.seq == 1 and signed.tag == "cand-1"
    assert signed.manifest is not None and signed.manifest["layout"] == "yolov8"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == signed.sha256


@pytest.mark.parametrize(
    ("record", "size"),
    [
        ({"sha256": "0" * 64}, 100),  # a partial of other content
        ({"length": 5}, 100),  # of another length
        ({}, 10**6),  # longer than the artifact
        (None, 100),  # no record of what it was meant to be
    ],
    ids=["other-sha256", "other-length", "too-long", "no-record"],
)
def test_a_partial_download_of_something_else_is_discarded(
    site: OtaSite, tmp_path: Path, record: dict[str, Any] | None, size: int
) -> None:
    """What an earlier run left beside the destination is resumed only for the same signed
    sha256 and length; anything else starts over (and the download still succeeds)."""
    dest = tmp_path / "out" / "model.onnx"
    dest.parent.mkdir(parents=True)
    (dest.parent / ".model.onnx.part").write_bytes(b"\xff" * size)
    if record is not None:
        expected = {"sha256": site.release["sha256"], "length": site.release["size"]}
        (dest.parent / ".model.onnx.part.json").write_text(json.dumps({**expected, **record}))
    signed, path = fetch(client(site, tmp_path), site.release)
    assert path == dest
    assert hashlib.sha256(path.read_bytes()).hexdigest() == signed.sha256
    assert not list(dest.parent.glob(".*"))


def test_a_desired_state_naming_another_hash_is_refused(site: OtaSite, tmp_path: Path) -> None:
    error = refused(client(site, tmp_path), site.release, sha256="0" * 64)
    assert error.reason == "hash_mismatch" and "desired state names" in error.detail


def test_a_tampered_artifact_is_refused(
    site: OtaSite, tmp_path: Path, repo_backup: Repository
) -> None:
    blob = repo_backup.blob(site.release["sha256"])
    assert blob is not None
    data = bytearray(blob.read_bytes())
    data[-1] ^= 0xFF
    blob.write_bytes(bytes(data))
    error = refused(client(site, tmp_path), site.release)
    assert error.reason == "hash_mismatch", error


def test_a_truncated_artifact_is_refused(
    site: OtaSite, tmp_path: Path, repo_backup: Repository
) -> None:
    blob = repo_backup.blob(site.release["sha256"])
    assert blob is not None
    blob.write_bytes(blob.read_bytes()[:100])
    error = refused(client(site, tmp_path), site.release)
    assert error.reason == "hash_mismatch", error
    assert "length" in error.detail.lower()


def _latest_targets(repo: Repository) -> Path:
    version = repo.targets().signed.version
    return repo.metadata_dir / f"{version}.targets.json"


def test_metadata_with_a_broken_signature_is_refused(
    site: OtaSite, tmp_path: Path, repo_backup: Repository
) -> None:
    path = _latest_targets(repo_backup)
    md: Metadata[Targets] = Metadata.from_file(str(path))
    md.signed.expires += timedelta(days=1)  # a change the signature does not cover
    md.to_file(str(path))
    error = refused(client(site, tmp_path), site.release)
    assert error.reason == "bad_signature", error
    assert "targets" in error.detail


def test_metadata_signed_by_an_unknown_key_is_refused(
    site: OtaSite, tmp_path: Path, repo_backup: Repository
) -> None:
    path = _latest_targets(repo_backup)
    md: Metadata[Targets] = Metadata.from_file(str(path))
    md.signatures.clear()
    md.sign(CryptoSigner.generate_ed25519())  # well formed, but not a key the root names
    md.to_file(str(path))
    error = refused(client(site, tmp_path), site.release)
    assert error.reason == "bad_signature", error


def test_expired_metadata_is_refused(
    site: OtaSite, tmp_path: Path, repo_backup: Repository
) -> None:
    """A frozen feed: the timestamp stops being re-signed and runs out."""
    path = repo_backup.metadata_dir / "timestamp.json"
    md: Metadata[Timestamp] = Metadata.from_file(str(path))
    md.signed.expires = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=1)
    md.signed.version += 1
    md.signatures.clear()
    md.sign(load_key(site.work / "ota-keys" / "online.pem"))
    md.to_file(str(path))
    error = refused(client(site, tmp_path), site.release)
    assert error.reason == "expired_metadata", error
    assert "timestamp" in error.detail


def test_older_metadata_is_refused_once_newer_was_seen(
    site: OtaSite, tmp_path: Path, repo_backup: Repository
) -> None:
    """A replay: an agent that saw timestamp N is served N-1 (validly signed)."""
    path = repo_backup.metadata_dir / "timestamp.json"
    old = path.read_bytes()
    online = load_key(site.work / "ota-keys" / "online.pem")
    md: Metadata[Timestamp] = Metadata.from_bytes(old)
    md.signed.version += 1
    md.signatures.clear()
    md.sign(online)
    md.to_file(str(path))
    fetch(client(site, tmp_path), site.release)
    path.write_bytes(old)
    error = refused(client(site, tmp_path), site.release)
    assert error.reason == "metadata_downgrade", error


def test_an_agent_without_its_token_gets_nothing(site: OtaSite, tmp_path: Path) -> None:
    with pytest.raises(ReleaseRefused) as info:
        client(site, tmp_path, token=False).refresh()
    assert info.value.reason == "http_error" and "401" in info.value.detail


class FlakyServer:
    """A real HTTP server for one file: the first response stops after ``cut`` bytes (the
    connection closes), or every chunk comes ``trickle_s`` apart; Range requests honoured."""

    def __init__(self, data: bytes, *, cut: int | None = None, trickle_s: float = 0.0) -> None:
        self.data, self.cut, self.trickle_s = data, cut, trickle_s
        self.requests: list[str | None] = []
        stop = threading.Event()
        self.stop_event = stop
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                rng = self.headers.get("Range")
                outer.requests.append(rng)
                start = int(rng.split("=")[1].rstrip("-")) if rng else 0
                body = outer.data[start:]
                self.send_response(206 if rng else 200)
                if rng:
                    total = len(outer.data)
                    self.send_header("Content-Range", f"bytes {start}-{total - 1}/{total}")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if outer.cut is not None and len(outer.requests) == 1:
                    self.wfile.write(body[: outer.cut])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                step = 1000 if outer.trickle_s else len(body)
                for i in range(0, len(body), step):
                    if stop.wait(outer.trickle_s) if outer.trickle_s else False:
                        return
                    self.wfile.write(body[i : i + step])
                    self.wfile.flush()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/file"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FlakyServer:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop_event.set()
        self.server.shutdown()
        self.server.server_close()


def test_a_dropped_download_is_resumed_with_a_range_request() -> None:
    data = bytes(range(256)) * 4000
    with FlakyServer(data, cut=300_000) as server:
        fetcher = ResumableFetcher(
            authorization=None, socket_timeout_s=5, deadline_s=30, attempts=3
        )
        got = fetcher.download_bytes(server.url, len(data))
    assert got == data
    assert fetcher.resumes == 1
    first, second = server.requests
    assert first is None and second is not None
    resumed_at = int(second.removeprefix("bytes=").rstrip("-"))
    assert 0 < resumed_at <= 300_000  # from the last whole chunk received, not from 0


def test_a_trickle_is_stopped_at_the_deadline() -> None:
    data = b"x" * 100_000  # 1000 bytes every 0.2 s: under the socket timeout, 20 s in all
    with FlakyServer(data, trickle_s=0.2) as server:
        fetcher = ResumableFetcher(
            authorization=None, socket_timeout_s=5, deadline_s=1.5, attempts=3
        )
        with pytest.raises(exceptions.SlowRetrievalError, match="deadline"):
            fetcher.download_bytes(server.url, len(data))


def test_a_rotated_targets_key_is_followed_and_the_revoked_one_refused(
    site: OtaSite, tmp_path: Path, repo_backup: Repository
) -> None:
    """Rotation = a root that lists two keys: agents that trust root v1 follow v2 (signed by
    the root key), accept releases signed with the new key, and once the old key is revoked
    (v3) it signs nothing more."""
    new_key = site.keys / "targets-2.pem"
    root_key = str(site.keys / "root.pem")
    try:
        site.secagg("ota", "rotate-key", "targets", "--root-key", root_key, "--add", str(new_key))
        done = site.secagg(
            "release",
            "add",
            "model",
            str(tiny_model(tmp_path / "m", "rotated", x=111)),
            "--tag",
            "rotated-1",
            "--targets-key",
            str(new_key),
        )
        rotated = json.loads(done.stdout)
        signed, _ = fetch(client(site, tmp_path / "agent"), rotated)
        assert signed.release_id == rotated["id"]
        old_keyid = load_key(site.keys / "targets.pem").public_key.keyid
        site.secagg("ota", "rotate-key", "targets", "--root-key", root_key, "--revoke", old_keyid)
        refused_add = site.secagg(
            "release",
            "add",
            "model",
            str(tiny_model(tmp_path / "m", "old-key", x=122)),
            "--tag",
            "old-key-1",
            "--targets-key",
            str(site.keys / "targets.pem"),
            check=False,
        )
        assert refused_add.returncode == 1 and "not a targets key" in refused_add.stderr
        # an agent that trusted root v1 follows the chain to v3 and still verifies
        signed, _ = fetch(client(site, tmp_path / "agent"), rotated)
        assert Repository(site.work / "ota").root().signed.version == 3
    finally:
        new_key.unlink(missing_ok=True)
