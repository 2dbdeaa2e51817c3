"""The binary envelope of a threat message with a snapshot, and the one function that reads a
threat payload of any version on receipt.

MQTT payloads are bytes, so a JPEG need not travel as base64 inside JSON (a third larger, and
decoded again at the other end). A ``secagent.threat/2`` message with a snapshot is::

    b"\\x00SE" + version (1 byte, 1) + header length (4 bytes, big-endian) + header + JPEG

The header is the message's JSON (``schema: secagent.threat/2``) and names the attachment by
sha256 and size (:class:`wire.payloads.SnapshotRef`). No JSON text starts with a NUL byte, so a
receiver tells an envelope from plain JSON by its first byte. A message without a snapshot is
plain JSON. ``secagent.threat/1`` (plain JSON, the snapshot in base64) is still read.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import struct
from dataclasses import dataclass

from wire.payloads import (
    MAX_PAYLOAD_BYTES,
    PayloadError,
    SnapshotRef,
    ThreatFields,
    ThreatMessage,
    ThreatMessageV1,
    dump_payload,
    parse_payload,
    parse_payload_of,
)

MAGIC = b"\x00SE"
VERSION = 1
_HEAD = struct.Struct(">3sBI")  # magic, version, header length
_MESSAGE_ID = re.compile(r"[0-9a-f]{32}")


@dataclass(frozen=True, slots=True)
class ReceivedThreat:
    """A threat message as received, whatever its version: what it says about its frame, and
    its snapshot.

    ``snapshot`` holds the JPEG bytes and ``snapshot_sha256`` their sha256 when one came and
    matched what was announced; otherwise ``snapshot`` is None and ``snapshot_problem`` says
    (reason, detail) why it cannot be kept (``not_base64``, ``sha256_mismatch``, ``missing``),
    the threat being valid all the same."""

    message: ThreatFields
    snapshot: bytes | None
    snapshot_sha256: str | None = None
    snapshot_problem: tuple[str, str] | None = None


def pack_threat(message: ThreatMessage, snapshot: bytes | None) -> bytes:
    """The payload of ``message``: an envelope with ``snapshot`` attached (``message.snapshot``
    must name it), or plain JSON without one."""
    if snapshot is None:
        if message.snapshot is not None:
            raise ValueError("the message announces a snapshot but none is given")
        return dump_payload(message)
    ref = message.snapshot
    if ref is None or ref.size != len(snapshot):
        raise ValueError("message.snapshot must announce the attached snapshot")
    header = dump_payload(message)
    return _HEAD.pack(MAGIC, VERSION, len(header)) + header + snapshot


def snapshot_ref(jpeg: bytes) -> SnapshotRef:
    """How a message announces ``jpeg``."""
    return SnapshotRef(sha256=hashlib.sha256(jpeg).hexdigest(), size=len(jpeg))


def is_envelope(raw: bytes) -> bool:
    return raw[:3] == MAGIC


def unpack(raw: bytes) -> tuple[bytes, bytes]:
    """(header, attachment) of an envelope; PayloadError ``bad_envelope`` when it is not one."""
    if len(raw) > MAX_PAYLOAD_BYTES:
        raise PayloadError("oversize", f"{len(raw)} bytes > {MAX_PAYLOAD_BYTES}")
    if len(raw) < _HEAD.size:
        raise PayloadError("bad_envelope", f"{len(raw)} bytes, shorter than an envelope's head")
    magic, version, header_len = _HEAD.unpack_from(raw)
    if magic != MAGIC or version != VERSION:
        raise PayloadError("bad_envelope", f"envelope version {version}, this code reads 1")
    end = _HEAD.size + header_len
    if end > len(raw):
        raise PayloadError("bad_envelope", f"header of {header_len} bytes past the payload's end")
    return raw[_HEAD.size : end], raw[end:]


def attachment_sha256(raw: bytes) -> str | None:
    """The sha256 (hex) of an envelope's attachment, or None when ``raw`` is no envelope with
    one. A receiver may compute it on another thread than the one that reads the message
    (hashlib lets other threads run meanwhile) and hand it to :func:`parse_threat`."""
    try:
        attachment = unpack(raw)[1] if is_envelope(raw) else b""
    except PayloadError:
        return None
    return hashlib.sha256(attachment).hexdigest() if attachment else None


def parse_threat(raw: bytes, *, sha256_of_attachment: str | None = None) -> ReceivedThreat:
    """Read a payload of the threats topic: an envelope (``secagent.threat/2`` with its
    snapshot), plain JSON ``secagent.threat/2`` (no snapshot) or ``secagent.threat/1`` (the
    snapshot in base64). PayloadError with a counted reason when it must be refused (see
    :func:`wire.payloads.parse_payload`, plus ``bad_envelope``). A snapshot that does not
    match what the message announced is no reason to refuse the threat: it comes back as a
    ``snapshot_problem``. ``sha256_of_attachment``: :func:`attachment_sha256` of ``raw``,
    when the caller has it already (it is computed here otherwise)."""
    if is_envelope(raw):
        header, attachment = unpack(raw)
        message = parse_payload(header, ThreatMessage)
        return _attached(message, attachment, sha256_of_attachment)
    parsed = parse_payload_of(raw, (ThreatMessage, ThreatMessageV1))
    if isinstance(parsed, ThreatMessage):
        return _attached(parsed, b"")
    assert isinstance(parsed, ThreatMessageV1)
    return _from_v1(parsed)


def _attached(
    message: ThreatMessage, attachment: bytes, sha256: str | None = None
) -> ReceivedThreat:
    ref = message.snapshot
    if ref is None:
        return ReceivedThreat(message, None)  # an unannounced attachment is ignored
    if not attachment:
        problem = ("missing", "the message announces a snapshot and has no attachment")
        return ReceivedThreat(message, None, None, problem)
    if sha256 is None:
        sha256 = hashlib.sha256(attachment).hexdigest()
    if len(attachment) != ref.size or sha256 != ref.sha256:
        detail = f"{len(attachment)} bytes do not match {ref.sha256[:12]}"
        return ReceivedThreat(message, None, None, ("sha256_mismatch", detail))
    return ReceivedThreat(message, attachment, ref.sha256)


def _from_v1(v1: ThreatMessageV1) -> ReceivedThreat:
    if not v1.snapshot_jpeg_b64:
        return ReceivedThreat(v1, None)
    try:
        jpeg = base64.b64decode(v1.snapshot_jpeg_b64, validate=True)
    except (binascii.Error, ValueError) as exc:
        return ReceivedThreat(v1, None, None, ("not_base64", str(exc)))
    return ReceivedThreat(v1, jpeg, hashlib.sha256(jpeg).hexdigest())


def message_id_of(raw: bytes) -> str | None:
    """The message id of a threat payload that may be refused, if one can be read at all (for
    the refusal's receipt)."""
    try:
        doc = json.loads(unpack(raw)[0] if is_envelope(raw) else raw)
    except (ValueError, RecursionError, PayloadError):
        return None
    mid = doc.get("message_id") if isinstance(doc, dict) else None
    return mid if isinstance(mid, str) and _MESSAGE_ID.fullmatch(mid) else None
