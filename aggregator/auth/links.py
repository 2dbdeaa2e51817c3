"""Signed, expiring links to a snapshot, for receivers that hold no credential of ours (a
webhook's receiver, a chat message): ``/api/links/events/<id>/snapshot.jpg?exp=<epoch>&sig=<hmac>``.
The signature is HMAC-SHA256 over the event id and the expiry, keyed by a secret kept in the
store (made at migration)."""

from __future__ import annotations

import hashlib
import hmac


def signature(key: bytes, event_id: int, expires_ts: int) -> str:
    return hmac.new(key, f"snapshot:{event_id}:{expires_ts}".encode(), hashlib.sha256).hexdigest()


def snapshot_link(base_url: str, key: bytes, event_id: int, *, expires_ts: int) -> str:
    sig = signature(key, event_id, expires_ts)
    return f"{base_url}/api/links/events/{event_id}/snapshot.jpg?exp={expires_ts}&sig={sig}"


def valid(key: bytes, event_id: int, *, expires_ts: int, sig: str, now_ts: float) -> bool:
    """Is this the link's signature, and the link not expired?"""
    expected = signature(key, event_id, expires_ts)
    return hmac.compare_digest(expected, sig) and now_ts <= expires_ts
