"""The sender thread: sends the notifications that are due, outside the ingest writer's
transactions (a slow or absent mail server never holds up ingest), and records every attempt.

Per notification: render the content once (in a transaction, so it reflects one committed state
of the event), send it, then record the attempt and the outcome in a second transaction. A
failed attempt is retried after a backoff (``backoff_base_s`` doubling up to ``backoff_max_s``)
until ``max_attempts`` or ``max_age_s``; then the notification is ``failed``. A crash between a
successful send and its record means one more send of the same content after a restart (same
Message-ID / Idempotency-Key, so receivers can drop it); never more.

Any number of senders may run on one store (each ``secagg serve`` process of ``--role all``,
``api`` or ``ingest`` runs one): a sender claims a notification before it attempts it
(:func:`aggregator.store.notifications.claim_due`, one ``UPDATE ... RETURNING`` in a write
transaction) for the lease :attr:`NotificationSender.lease_s`, and recording the attempt
releases it. A sender that dies holding a claim delays that notification by the lease; another
sender then takes it.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time

from aggregator import provenance, store
from aggregator.config import AggregatorConfig, SmtpNotifier, WebhookNotifier
from aggregator.notify.channels import DeliveryError, post_webhook, send_email
from aggregator.notify.content import (
    NotificationContent,
    email_message,
    notification_content_sha256,
    render,
)
from aggregator.store.models import AttemptRow, NotificationRow

log = logging.getLogger(__name__)
_BATCH = 50
_IDLE_WAIT_S = 5.0
_DEFER_S = 300.0
CLAIM_MARGIN_S = 60.0


class NotificationSender:
    """One thread, one connection of its own; the ingest writer wakes it after a decision."""

    def __init__(self, config: AggregatorConfig) -> None:
        self.config = config
        self.notifiers: dict[str, SmtpNotifier | WebhookNotifier] = {
            n.name: n for n in config.notify.notifiers
        }
        self.sent = 0
        self.failed_attempts = 0
        self.claimant = f"{socket.gethostname()}:{os.getpid()}"
        """Who this sender is in ``notifications.claimed_by``."""
        self.lease_s = CLAIM_MARGIN_S + max(
            (n.timeout_s for n in config.notify.notifiers), default=0.0
        )
        """How long a claim holds: one attempt's timeout and a margin. Another sender takes
        over a notification claimed by one that died once this has passed."""
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._conn: store.Connection | None = None
        self.died: str | None = None
        """Why the thread ended without being stopped (health reports it; the service exits)."""
        self._thread = threading.Thread(
            target=self._guarded_loop, name="notify-sender", daemon=True
        )

    def start(self) -> None:
        store.migrate(self.config.store.target)
        self._conn = store.connect(self.config.store.target)
        self._thread.start()

    def wake(self) -> None:
        """Look for due notifications now (called after a decision was committed)."""
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=max(n.timeout_s for n in self.notifiers.values()) + 5)
        if self._conn is not None:
            self._conn.close()

    def _guarded_loop(self) -> None:
        try:
            self._loop()
        except BaseException as exc:
            self.died = f"{type(exc).__name__}: {exc}"
            log.critical("the notification sender died: %s", self.died, exc_info=True)
            raise

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.send_due(time.time())
                wait_s = self._until_next_due(time.time())
            except Exception:
                log.exception("sending notifications failed; trying again shortly")
                wait_s = 1.0
            self._wake.wait(wait_s)
            self._wake.clear()

    def _until_next_due(self, now_ts: float) -> float:
        assert self._conn is not None
        due_ts = store.notifications.next_due_ts(self._conn, notifiers=list(self.notifiers))
        if due_ts is None:
            return _IDLE_WAIT_S
        return min(_IDLE_WAIT_S, max(0.0, due_ts - now_ts))

    def _claim(self, now_ts: float) -> int | None:
        """The next due notification, claimed for this sender (None: none is due or free)."""
        assert self._conn is not None
        with store.transaction(self._conn) as conn:
            claimed = store.notifications.claim_due(
                conn,
                now_ts=now_ts,
                notifiers=list(self.notifiers),
                by=self.claimant,
                lease_s=self.lease_s,
                limit=1,
            )
        return claimed[0] if claimed else None

    def send_due(self, now_ts: float) -> int:
        """Attempt every due notification once (up to a batch); return how many were sent.
        Each is claimed first, one at a time, so that any number of senders on one store
        (``secagg serve --role ingest`` workers) send each notification once."""
        sent = 0
        for _ in range(_BATCH):
            if self._stop.is_set():
                break
            notification_id = self._claim(max(now_ts, time.time()))
            if notification_id is None:
                break
            try:
                sent += self._attempt(notification_id)
            except Exception as exc:  # a bug, not a server's answer: keep it, try much later
                log.exception("notification=%d could not be attempted", notification_id)
                self._defer(notification_id, f"{type(exc).__name__}: {exc}"[:1000])
        return sent

    def _defer(self, notification_id: int, error: str) -> None:
        assert self._conn is not None
        with store.transaction(self._conn) as conn:
            store.notifications.defer(
                conn, notification_id, until_ts=time.time() + _DEFER_S, error=error
            )

    def _content(self, notification_id: int) -> tuple[NotificationRow, NotificationContent]:
        assert self._conn is not None
        with store.transaction(self._conn) as conn:
            row = store.notifications.get(conn, notification_id)
            if row is None:
                raise LookupError(f"notification {notification_id} is not stored")
            if row.content_json is None:
                content = render(conn, row, self.config)
                content_json = content.model_dump_json(by_alias=True)
                content_sha = notification_content_sha256(content_json)
                store.notifications.set_content(
                    conn, notification_id, content_json=content_json, content_sha256=content_sha
                )
                # Lineage: this notification was generated from its event (notify run).
                provenance.record_notification(
                    conn,
                    notification_id=notification_id,
                    event_id=row.event_id,
                    content_sha256=content_sha,
                    code_version=row.code_version,
                    channel=row.channel,
                )
                return row, content
        return row, NotificationContent.model_validate_json(row.content_json)

    def _deliver(
        self, notifier: SmtpNotifier | WebhookNotifier, content: NotificationContent
    ) -> None:
        if isinstance(notifier, SmtpNotifier):
            message = email_message(
                content, notifier=notifier, snapshots_dir=self.config.store.snapshots_dir
            )
            send_email(notifier, message)
        else:
            post_webhook(
                notifier,
                content.model_dump_json(by_alias=True).encode(),
                idempotency_key=f"secagg-notification-{content.notification_id}",
            )

    def _attempt(self, notification_id: int) -> bool:
        assert self._conn is not None
        row, content = self._content(notification_id)
        notifier = self.notifiers[row.notifier]
        started = time.time()
        error: str | None = None
        try:
            self._deliver(notifier, content)
        except DeliveryError as exc:
            error = str(exc)[:1000]
        except Exception as exc:  # e.g. a snapshot that cannot be read: recorded, retried
            log.exception("notification=%d: unexpected error while sending", notification_id)
            error = f"{type(exc).__name__}: {exc}"[:1000]
        finished = time.time()
        attempts = row.attempts + 1
        retry = notifier.retry
        if error is None:
            state, next_ts = "sent", None
        elif attempts >= retry.max_attempts or finished - row.created_ts >= retry.max_age_s:
            state, next_ts = "failed", None
        else:
            state = "pending"
            next_ts = finished + min(
                retry.backoff_max_s, retry.backoff_base_s * 2 ** (attempts - 1)
            )
        with store.transaction(self._conn) as conn:
            store.notifications.record_attempt(
                conn,
                AttemptRow(
                    notification_id=notification_id,
                    attempt=attempts,
                    started_ts=started,
                    finished_ts=finished,
                    outcome="sent" if error is None else "error",
                    error=error,
                ),
                state=state,
                next_attempt_ts=next_ts,
                sent_ts=finished if error is None else None,
            )
        if error is None:
            self.sent += 1
            log.info(
                "event=%d notification=%d %s/%s sent (attempt %d)",
                row.event_id,
                notification_id,
                notifier.name,
                row.kind,
                attempts,
            )
            return True
        self.failed_attempts += 1
        outlook = "given up" if next_ts is None else f"retry in {next_ts - finished:.1f} s"
        log.warning(
            "event=%d notification=%d %s/%s attempt %d failed (%s): %s",
            row.event_id,
            notification_id,
            notifier.name,
            row.kind,
            attempts,
            outlook,
            error,
        )
        return False
