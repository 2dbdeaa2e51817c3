"""What a notification says: rendered once from the event as it stands at the first attempt,
stored as JSON on the notification row, and sent unchanged by every retry."""

from __future__ import annotations

import hashlib
import json
import time
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import formatdate
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from aggregator import events, store
from aggregator.auth import links
from aggregator.config import AggregatorConfig, SmtpNotifier
from aggregator.store.models import NotificationRow
from appcommon.version import code_version

SCHEMA_NOTIFICATION = "secagent.notification/1"
_KIND_SUFFIX = {"new": "", "update": " (severity rose)", "repeat": " (still going on)"}


class NotificationContent(BaseModel):
    """The webhook body, and what the email is made of."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    schema_: Literal["secagent.notification/1"] = Field("secagent.notification/1", alias="schema")
    notification_id: int = Field(ge=1)
    notifier: str
    kind: Literal["new", "update", "repeat"]
    state_key: str
    event: dict[str, Any] = Field(description="the event's secagent.event/1 message")
    summary: str
    subject: str
    body: str
    api_url: str
    snapshot_sha256: str | None
    code_version: str
    page_url: str | None = Field(None, description="the event's page (a login is needed)")
    snapshot_url: str | None = Field(
        None,
        description="the best snapshot, by a signed link that works without a login until "
        "it expires (auth.link_ttl_s)",
    )


def notification_content_sha256(content_json: str | bytes) -> str:
    """The sha256 of a notification's stored content (``notifications.content_sha256``)."""
    raw = content_json.encode() if isinstance(content_json, str) else content_json
    return hashlib.sha256(raw).hexdigest()


def snapshot_path(snapshots_dir: Path, sha256: str) -> Path:
    """Where the ingest stored the snapshot JPEG with this sha256."""
    return snapshots_dir / sha256[:2] / f"{sha256}.jpg"


class RenderError(LookupError):
    """The event of a notification is not in the store."""


def render(
    conn: store.Connection, notification: NotificationRow, config: AggregatorConfig
) -> NotificationContent:
    """The content of a notification, from its event as stored now."""
    event_id = notification.event_id
    event = store.events.get(conn, event_id)
    if event is None:
        raise RenderError(f"notification {notification.id}: event {event_id} is not stored")
    kind = notification.kind
    change_type: Literal["new", "update", "end"] = (
        "end" if event.ended_ts is not None else "new" if kind == "new" else "update"
    )
    message = events.event_message(conn, events.EventChange(change_type, event_id))
    snapshot_sha256 = store.messages.snapshot_sha256(conn, event.top_message_id)
    api_url = f"{config.api.base_url()}/api/events/{event_id}"
    page_url = f"{config.api.base_url()}/events/{event_id}"
    snapshot_url = None
    if snapshot_sha256 is not None:
        snapshot_url = links.snapshot_link(
            config.api.base_url(),
            store.access.link_key(conn),
            event_id,
            expires_ts=int(time.time() + config.auth.link_ttl_s),
        )
    cameras = ", ".join(message.cameras or [message.camera])
    started = message.started_at.astimezone(UTC)
    subject = (
        f"[secagent] {message.severity.upper()} {message.rule} on {cameras} at "
        f"{started:%Y-%m-%d %H:%M:%S} UTC{_KIND_SUFFIX[kind]}"
    )
    body = "\n".join(
        [
            f"{message.summary}",
            "",
            f"Event:    #{event_id} ({'ended' if message.ended_at else 'open'})",
            f"Cameras:  {cameras}",
            f"Agent:    {message.agent_id}",
            f"Rule:     {message.rule} (severity {message.severity})",
            f"Threats:  {message.threat_count}, top {message.label} {message.top_score:.2f}",
            f"Time:     {started:%Y-%m-%d %H:%M:%S} to "
            f"{message.last_seen_at.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC",
            f"Details:  {page_url}",
            "",
            f"Notification {notification.id} ({kind}, {notification.state_key}) "
            f"from secagg {code_version()}.",
        ]
    )
    return NotificationContent.model_validate(
        {
            "schema": SCHEMA_NOTIFICATION,
            "notification_id": notification.id,
            "notifier": notification.notifier,
            "kind": kind,
            "state_key": notification.state_key,
            "event": json.loads(message.model_dump_json(by_alias=True)),
            "summary": message.summary or "",
            "subject": subject,
            "body": body,
            "api_url": api_url,
            "page_url": page_url,
            "snapshot_url": snapshot_url,
            "snapshot_sha256": snapshot_sha256,
            "code_version": code_version(),
        }
    )


def email_message(
    content: NotificationContent, *, notifier: SmtpNotifier, snapshots_dir: Path
) -> EmailMessage:
    """The email of a notification, with the event's best snapshot attached when it exists.

    The Message-ID derives from the notification id and content, so a re-send after a crash
    between sending and recording carries the same id and mail systems can drop the copy.
    """
    msg = EmailMessage()
    msg["Subject"] = content.subject
    msg["From"] = notifier.from_addr
    msg["To"] = ", ".join(notifier.to)
    msg["Date"] = formatdate(datetime.now(UTC).timestamp(), usegmt=True)
    sha = notification_content_sha256(content.model_dump_json(by_alias=True))
    msg["Message-ID"] = f"<secagg.{content.notification_id}.{sha[:16]}@secagent.invalid>"
    msg["X-Secagent-Event"] = str(content.event["event_id"])
    msg["X-Secagent-Notification"] = str(content.notification_id)
    msg.set_content(content.body)
    if content.snapshot_sha256:
        path = snapshot_path(snapshots_dir, content.snapshot_sha256)
        if path.is_file():
            msg.add_attachment(
                path.read_bytes(),
                maintype="image",
                subtype="jpeg",
                filename=f"event-{content.event['event_id']}.jpg",
            )
    return msg
