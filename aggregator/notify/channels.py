"""Delivery of one notification over one channel: email over SMTP (stdlib smtplib) or a JSON
POST (httpx). Each raises :class:`DeliveryError` when the message was not accepted."""

from __future__ import annotations

import smtplib
import ssl
from email.message import EmailMessage

import httpx

from aggregator.config import SmtpNotifier, WebhookNotifier


class DeliveryError(Exception):
    """A notification was not accepted by its server; it will be retried."""


def _tls_context(notifier: SmtpNotifier) -> ssl.SSLContext:
    cafile = str(notifier.tls_ca_file) if notifier.tls_ca_file else None
    return ssl.create_default_context(cafile=cafile)


def send_email(notifier: SmtpNotifier, message: EmailMessage) -> None:
    """Hand the message to the SMTP server (SSL, STARTTLS and AUTH as configured)."""
    try:
        smtp: smtplib.SMTP
        if notifier.ssl:
            smtp = smtplib.SMTP_SSL(
                notifier.host,
                notifier.port,
                timeout=notifier.timeout_s,
                context=_tls_context(notifier),
            )
        else:
            smtp = smtplib.SMTP(notifier.host, notifier.port, timeout=notifier.timeout_s)
        with smtp:
            if notifier.starttls:
                smtp.starttls(context=_tls_context(notifier))
            if notifier.username is not None and notifier.password is not None:
                smtp.login(notifier.username, notifier.password)
            refused = smtp.send_message(message)
    except (OSError, smtplib.SMTPException) as exc:
        raise DeliveryError(
            f"smtp {notifier.host}:{notifier.port}: {type(exc).__name__}: {exc}"
        ) from exc
    if refused:
        raise DeliveryError(f"smtp {notifier.host}:{notifier.port} refused {sorted(refused)}")


def post_webhook(notifier: WebhookNotifier, body: bytes, *, idempotency_key: str) -> None:
    """POST the JSON body; any 2xx answer counts as delivered."""
    headers = {
        "Content-Type": "application/json",
        "Idempotency-Key": idempotency_key,
        **notifier.headers,
    }
    try:
        response = httpx.post(
            notifier.url, content=body, headers=headers, timeout=notifier.timeout_s
        )
    except httpx.HTTPError as exc:
        raise DeliveryError(f"webhook {notifier.name}: {type(exc).__name__}: {exc}") from exc
    if not response.is_success:
        raise DeliveryError(
            f"webhook {notifier.name}: HTTP {response.status_code} {response.text[:200]!r}"
        )
