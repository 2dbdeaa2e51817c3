"""What one ``secagg serve`` process does (``--role``), for many processes on one store.

- ``all`` (the default): everything in one process, as ``make demo`` runs it.
- ``ingest``: an ingest worker. It takes the threat messages on the MQTT 5 shared subscription
  :data:`SHARED_THREATS` (the broker hands each message to one member of group ``secagg``),
  stores them, publishes the event changes and receipts, and sends due notifications. It
  serves no API. Run as many as the load asks for, each with its own ``--worker`` name: it
  connects as ``<mqtt.client_id>-<worker>`` (and ``<mqtt.username>-<worker>``, the account
  ``secagg broker-config`` makes for each of the spec's ``ingest_workers``).
- ``api``: the REST API and what there is one of per site: the agents' statuses, update
  reports and run logs (retained statuses are never delivered on a shared subscription), the
  periodic sweep (events that end on the aggregator's clock, repeat notifications, retention),
  OTA and the Home Assistant bridge; it sends due notifications too. It keeps the plain
  ``mqtt.client_id`` and account.

Correct however many run, because everything they share is in the store and every write is a
``BEGIN IMMEDIATE`` transaction that reads what it depends on again: threats of one group key
that reach two workers are grouped one batch after the other, each reading the open event the
other committed; a notification is claimed before it is sent
(:func:`aggregator.store.notifications.claim_due`). A worker killed mid-batch committed
nothing of it and acknowledged nothing: Mosquitto does not hand its in-flight messages to the
other members, but the agents send again every message that has no receipt.
"""

from __future__ import annotations

from typing import Literal

from wire.topics import TopicError, Topics, check_agent_id

Role = Literal["all", "ingest", "api"]
ROLES: tuple[Role, ...] = ("all", "ingest", "api")

SHARE_GROUP = "secagg"
SHARED_THREATS = f"$share/{SHARE_GROUP}/{Topics.ALL_THREATS}"
"""The ingest workers' subscription: each threat message goes to one of them."""


class RoleError(ValueError):
    """A role and a worker name that do not go together."""


def check(role: Role, worker: str | None) -> None:
    """RoleError unless an ingest worker has a name and no other role has one."""
    if role == "ingest" and not worker:
        raise RoleError("--role ingest needs --worker NAME (each worker its own name)")
    if role != "ingest" and worker:
        raise RoleError(f"--worker is for --role ingest, not --role {role}")
    if worker is not None:
        try:
            check_agent_id(worker)  # a name that fits a client id and an account
        except TopicError as exc:
            raise RoleError(f"--worker {worker!r}: {exc}") from exc


def subscriptions(role: Role, extra: list[str]) -> list[str]:
    """The topics (QoS 1) a process of this role subscribes to; ``extra``: those of other
    components on its client (the run logs), which only one process may take."""
    if role == "ingest":
        return [SHARED_THREATS]
    threats = [Topics.ALL_THREATS] if role == "all" else []
    return [*threats, Topics.ALL_STATUS, Topics.ALL_OTA_REPORTS, *extra]


def suffixed(name: str | None, worker: str | None) -> str | None:
    """A client id or account name of a worker: ``<name>-<worker>``."""
    if name is None or worker is None:
        return name
    return f"{name}-{worker}"


def persistent_session(role: Role) -> bool:
    """Does this role keep its MQTT session while it is away? An ingest worker does not: a
    member of a shared subscription whose session outlives its connection keeps its share of
    the messages queued for it (Mosquitto 2.0, measured: a third of them with three workers)
    until it comes back or the session expires, so a worker stopped for good or scaled away
    would hold its share until the agents send it again. Without a session, the broker gives
    every message to a connected member; what a worker held unacknowledged when it died, the
    agents send again (resend until receipt)."""
    return role != "ingest"


def sweeps(role: Role) -> bool:
    """Does this role run the periodic sweep (once per site)?"""
    return role != "ingest"


__all__ = [
    "ROLES",
    "SHARED_THREATS",
    "Role",
    "RoleError",
    "check",
    "persistent_session",
    "subscriptions",
    "suffixed",
    "sweeps",
]
