"""Notifications of threat events: decided inside the ingest writer's transaction
(:mod:`.decide`), rendered and sent with retries by a sender thread (:mod:`.sender`) over email
or webhook (:mod:`.channels`), every attempt recorded in SQLite."""

from aggregator.notify.content import NotificationContent, notification_content_sha256
from aggregator.notify.decide import on_changes, schedule_repeats
from aggregator.notify.sender import NotificationSender

__all__ = [
    "NotificationContent",
    "NotificationSender",
    "notification_content_sha256",
    "on_changes",
    "schedule_repeats",
]
