"""MQTT ingest: every message is validated and stored, and only then acknowledged to the broker
(paho ``manual_ack``). The session is persistent (fixed client id, no clean start, a session
expiry), so what arrives while the aggregator is down waits at the broker; a message whose id is
already stored is acknowledged and ignored.

One writer thread owns the database. It takes the messages waiting in its queue (up to
``batch_max``) and stores them in one transaction (:func:`aggregator.records.store_batch`), each
inside a savepoint so one bad message cannot undo the others; after COMMIT it acknowledges them
and publishes the event changes. The notifications those changes call for are decided in the
same transaction; a sender thread sends them afterwards (:mod:`aggregator.notify`).

Every message is stored or refused (acknowledged and receipted either way), so none can hold a
place in the broker's in-flight window. When the store itself cannot be written (a full disk),
the batch is rolled back, held unacknowledged and tried again with backoff until it commits;
health says so meanwhile. A writer thread that dies records why, and the service exits.

A failed connection attempt is logged with the broker's host and port, the reason and when paho
tries again; :meth:`Ingest.liveness` tells the health endpoint whether the broker is connected,
the writer is alive and not stalled, and the store writable.
"""

from __future__ import annotations

import logging
import os
import queue
import socket
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from aggregator import events, notify, records, retention, roles, snapshots, store
from aggregator.admission import Admission
from aggregator.config import AggregatorConfig
from aggregator.events import EventChange
from aggregator.liveness import Liveness
from aggregator.mqtt_client import IngestClient, Received
from aggregator.records import message_id_of
from aggregator.store.models import WorkerRow
from wire.payloads import PayloadError, ReceiptMessage, Refusal, dump_payload
from wire.topics import TopicError, Topics

log = logging.getLogger(__name__)


RETENTION_BATCHES = 5
"""Database retention batches (``store.retention.batch_rows`` each) per sweep of the writer."""

RECONNECT_MIN_S = 1
RECONNECT_MAX_S = 30
"""paho's reconnect backoff: the first wait, doubled after each failure up to the last."""


@dataclass
class IngestStats:
    """Counters since start, updated after each commit (persistent ones: ``ingest_counters``)."""

    received: int = 0
    stored: int = 0
    duplicates: int = 0
    statuses: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    batches: int = 0
    failed_batches: int = 0  # not committed (nothing acked: held and tried again)
    failed_sweeps: int = 0


class Ingest:
    """The MQTT side of ``secagg``: one paho client, one writer thread owning the database."""

    def __init__(
        self, config: AggregatorConfig, *, role: roles.Role = "all", worker: str | None = None
    ) -> None:
        roles.check(role, worker)
        self.config = config
        self.role = role
        """What this process does among others on the store (:mod:`aggregator.roles`)."""
        self.worker = worker
        self.stats = IngestStats()
        self.connected = threading.Event()
        self._queue: queue.Queue[Received | None] = queue.Queue(maxsize=config.ingest.queue_max)
        self._stop = threading.Event()
        self._last_reject_log: dict[str, float] = {}
        self.grouping = events.Grouping.from_config(config.events)
        self.admission = Admission(config)
        self._held: list[Received] = []
        """A batch the store could not take (disk full): tried again until it can."""
        self.store_error: str | None = None
        """Why the store cannot be written now (None: it can)."""
        self.died: str | None = None
        """Why the writer thread ended without being stopped (the service then exits)."""
        self.sender = notify.NotificationSender(config) if config.notify.notifiers else None
        self._next_prune = 0.0
        self._busy_since: float | None = None  # monotonic; the writer is inside a transaction
        self._listening_since: float | None = None  # wall clock; subscribed since
        self._broker_up = False
        self._reconnect_waits = 0
        store.require_complete(config.store.target)  # BackendIncomplete: never half a service
        if config.store.check_on_start and not config.store.is_postgres:
            store.check(config.store.path)  # StoreCorrupt: refuse to start, with the steps
        store.migrate(config.store.target)
        self._conn = store.connect(config.store.target)
        self._turns = store.WriteTurns(config.store.target)  # a no-op on PostgreSQL
        self._started_ts = time.time()
        if roles.sweeps(role):  # once per site: not under a worker's feet mid-batch
            snapshots.recover(self._conn, config.store.snapshots_dir)
            retention.remove_decided(self._conn, config.store.snapshots_dir)  # what a crash left
        client = IngestClient(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=roles.suffixed(config.mqtt.client_id, worker) or "",
            protocol=mqtt.MQTTv5,
            manual_ack=True,
        )
        if config.mqtt.username:
            client.username_pw_set(
                roles.suffixed(config.mqtt.username, worker), config.mqtt.password
            )
        if config.mqtt.tls_ca_file:
            client.tls_set(ca_certs=str(config.mqtt.tls_ca_file))
        client.reconnect_delay_set(min_delay=RECONNECT_MIN_S, max_delay=RECONNECT_MAX_S)
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_subscribe = self._on_subscribe
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        self.client = client
        self.on_batch: Callable[[int, float], None] | None = None
        """Told each committed batch's size and seconds (the metrics' histogram), when set."""
        self.extra_subscriptions: list[str] = []
        """More topics (QoS 1) whose messages another component takes on this client through
        paho's ``message_callback_add`` (the agents' run logs): one session, one account."""
        self._writer = threading.Thread(target=self._guarded_loop, name="store-writer", daemon=True)

    # paho callbacks (network thread) -------------------------------------------------------
    def _retry_in_s(self) -> float:
        """How long paho waits before its next attempt (it doubles the wait after each failure
        and starts again from RECONNECT_MIN_S once connected)."""
        wait_s = min(RECONNECT_MIN_S * 2**self._reconnect_waits, RECONNECT_MAX_S)
        self._reconnect_waits += 1
        return float(wait_s)

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: object,
        flags: mqtt.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason_code.is_failure:
            log.error(
                "broker %s:%d refused the aggregator: %s; retrying in %.0f s",
                self.config.mqtt.host,
                self.config.mqtt.port,
                reason_code,
                self._retry_in_s(),
            )
            return
        self._broker_up = True
        self._reconnect_waits = 0
        log.info(
            "connected to broker %s:%d (session present: %s)",
            self.config.mqtt.host,
            self.config.mqtt.port,
            flags.session_present,
        )
        client.subscribe([(t, 1) for t in roles.subscriptions(self.role, self.extra_subscriptions)])

    def _on_connect_fail(self, client: mqtt.Client, userdata: object) -> None:
        error = self.client.last_connect_error
        reason = f"{type(error).__name__}: {error}" if error is not None else "unknown error"
        log.error(
            "broker %s:%d unreachable: %s; retrying in %.0f s",
            self.config.mqtt.host,
            self.config.mqtt.port,
            reason,
            self._retry_in_s(),
        )

    def _on_subscribe(
        self,
        client: mqtt.Client,
        userdata: object,
        mid: int,
        reason_codes: list[ReasonCode],
        properties: object,
    ) -> None:
        failed = [str(rc) for rc in reason_codes if rc.is_failure]
        if failed:
            log.error("broker refused the subscriptions: %s", ", ".join(failed))
            return
        self._listening_since = time.time()
        self.connected.set()  # connected *and* subscribed: nothing published from now is missed

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: object,
        flags: object,
        reason_code: ReasonCode,
        properties: object,
    ) -> None:
        was_up, self._broker_up = self._broker_up, False
        self._listening_since = None
        self.connected.clear()
        if was_up and not self._stop.is_set():
            log.warning(
                "disconnected from broker %s:%d: %s; reconnecting in %.0f s",
                self.config.mqtt.host,
                self.config.mqtt.port,
                reason_code,
                self._retry_in_s(),
            )

    def _on_message(
        self, client: mqtt.Client, userdata: object, msg: Received | mqtt.MQTTMessage
    ) -> None:
        received = msg if isinstance(msg, Received) else Received.of(msg)
        self._queue.put(received)  # blocks the network thread when the writer is far behind

    # writer thread ---------------------------------------------------------------------------
    def _take_batch(self, timeout_s: float) -> list[Received]:
        try:
            first = self._queue.get(timeout=timeout_s)
        except queue.Empty:
            return []
        batch = [] if first is None else [first]
        while len(batch) < self.config.ingest.batch_max:
            try:
                more = self._queue.get_nowait()
            except queue.Empty:
                break
            if more is not None:
                batch.append(more)
        return batch

    def _guarded_loop(self) -> None:
        """The writer thread: never half-alive. Whatever ends it unasked is recorded (health and
        the service's main loop see it, and the service exits so systemd restarts it)."""
        try:
            self._write_loop()
        except BaseException as exc:
            self.died = f"{type(exc).__name__}: {exc}"
            log.critical("the store writer died: %s", self.died, exc_info=True)
            raise

    def _write_loop(self) -> None:
        next_sweep = time.monotonic()
        retry_s = 1.0
        while True:
            now = time.monotonic()
            stopping = self._stop.is_set()
            if self._held:
                if stopping:
                    return  # unacknowledged: the broker delivers it again after a restart
                batch, self._held = self._held, []
            else:
                # On stop, store what is already in hand (received), then end; what arrives
                # later stays unacknowledged and the broker delivers it again after a restart.
                batch = self._take_batch(0.0 if stopping else max(0.0, next_sweep - now))
            if stopping and not batch:
                return
            if batch:
                self._busy_since = time.monotonic()
                try:
                    self._write_batch(batch)
                except records.StoreFailure as exc:
                    # Nothing committed or acked: hold the batch and try it again, later.
                    self.stats.failed_batches += 1
                    self._held = batch
                    if self.store_error is None:
                        log.error(
                            "store %s cannot be written: %s; %d message(s) held unacknowledged, "
                            "trying again every %.0f s at most",
                            self.config.store.where,
                            exc,
                            len(batch),
                            self.config.ingest.store_retry_max_s,
                        )
                    self.store_error = str(exc)
                except Exception:
                    self.stats.failed_batches += 1
                    log.exception("a batch of %d message(s) failed after its commit", len(batch))
                else:
                    if self.on_batch is not None and self._busy_since is not None:
                        self.on_batch(len(batch), time.monotonic() - self._busy_since)
                    if self.store_error is not None:
                        log.info("store %s writable again", self.config.store.where)
                    self.store_error = None
                    retry_s = 1.0
                finally:
                    self._busy_since = None
            if self._held:
                self._stop.wait(retry_s)
                retry_s = min(retry_s * 2, self.config.ingest.store_retry_max_s)
                continue
            if time.monotonic() >= next_sweep:
                self._busy_since = time.monotonic()
                try:
                    # an ingest worker leaves the sweep to the api process and says it is alive
                    self._sweep() if roles.sweeps(self.role) else self._beat()
                except Exception:
                    self.stats.failed_sweeps += 1
                    log.exception("the sweep failed; trying again at the next one")
                finally:
                    self._busy_since = None
                next_sweep = time.monotonic() + self.config.events.sweep_interval_s

    def _write_batch(self, batch: list[Received]) -> None:
        with self._turns.turn():  # the store's writers on this machine, one after the other
            result = records.store_batch(
                self._conn,
                [(msg.topic, msg.payload) for msg in batch],
                attachment_sha256s=[msg.attachment_sha256 for msg in batch],
                config=self.config,
                grouping=self.grouping,
                now_ts=time.time(),
                admission=self.admission,
            )
        stored = [
            o for o in result.results if isinstance(o, records.Outcome) and o.kind == "stored"
        ]
        if result.due and self.sender is not None:
            self.sender.wake()
        for o in stored:
            log.info(
                "stored message=%s agent=%s camera=%s lineage=%s threats=%d",
                o.message_id,
                o.agent_id,
                o.camera,
                o.lineage_id,
                o.threats,
            )
        # Committed: now, and only now, the broker and the agents may forget these messages.
        receipts: dict[str, list[str]] = defaultdict(list)
        rejects: list[tuple[Received, PayloadError]] = []
        acks: list[tuple[int, int]] = []
        for msg, outcome in zip(batch, result.results, strict=True):
            if outcome is None:
                continue  # not stored: left unacknowledged
            if msg.qos > 0:
                acks.append((msg.mid, msg.qos))
            if isinstance(outcome, PayloadError):
                rejects.append((msg, outcome))
            elif outcome.message_id is not None:
                receipts[outcome.agent_id].append(outcome.message_id)
        self.client.ack_all(acks)
        self._send_receipts(receipts, rejects)
        self._count(len(batch), result.counts, rejects)
        self._publish_changes(result.changes)

    def _send_receipts(
        self, receipts: dict[str, list[str]], rejects: list[tuple[Received, PayloadError]]
    ) -> None:
        refused: dict[str, list[Refusal]] = defaultdict(list)
        for msg, exc in rejects:
            mid = message_id_of(msg.payload) if msg.topic.endswith("/threats") else None
            if mid is None:
                continue
            try:
                refused[Topics.agent_of(msg.topic)].append(
                    Refusal(message_id=mid, reason=exc.reason)
                )
            except TopicError:
                continue
        for agent_id in receipts.keys() | refused.keys():
            receipt = ReceiptMessage.model_validate(
                {
                    "agent_id": agent_id,
                    "stored": receipts.get(agent_id, []),
                    "refused": refused.get(agent_id, []),
                    "sent_at": datetime.now(UTC),
                }
            )
            self.client.publish(Topics(agent_id).receipts, dump_payload(receipt), qos=1)

    def _count(
        self,
        received: int,
        counts: Counter[str],
        rejects: list[tuple[Received, PayloadError]],
    ) -> None:
        s = self.stats
        s.batches += 1
        s.received += received
        s.stored += counts["stored"]
        s.duplicates += counts["duplicate"]
        s.statuses += counts["status"]
        now = time.monotonic()
        for msg, exc in rejects:
            s.rejected[exc.reason] += 1
            if now - self._last_reject_log.get(exc.reason, -1e9) >= 60:
                self._last_reject_log[exc.reason] = now
                log.warning(
                    "topic=%s rejected (%s): %s [logged once a minute per reason]",
                    msg.topic,
                    exc.reason,
                    exc.detail,
                )

    def _sweep(self) -> None:
        with self._turns.turn(), store.transaction(self._conn) as conn:
            now_ts = time.time()
            changes = events.end_idle(
                conn,
                now_ts=now_ts,
                cutoff_s=self.config.events.cutoff_s,
                listening_since_ts=self._listening_since,
            )
            due = notify.schedule_repeats(conn, self.config, now_ts=now_ts)
            retention.on_batch(conn, changes, (), self.config.store, now_ts=now_ts)
            store.counters.fold(conn)  # PostgreSQL: the processes' own counter rows
        retention.after_commit(self._conn, changes, self.config.store)
        if due and self.sender is not None:
            self.sender.wake()
        self._publish_changes(changes)
        if time.monotonic() >= self._next_prune:
            swept = retention.sweep(
                self._conn, self.config.store, now_ts=time.time(), max_batches=RETENTION_BATCHES
            )
            # A backlog of old threats goes a few batches a sweep, messages stored in between.
            wait_s = 0.0 if swept.more else self.config.store.snapshots.sweep_interval_s
            self._next_prune = time.monotonic() + wait_s

    def _beat(self) -> None:
        """An ingest worker's heartbeat in the store (``/api/health`` of the api process)."""
        worker = WorkerRow(
            name=self.worker or self.config.mqtt.client_id,
            host=socket.gethostname(),
            pid=os.getpid(),
            started_ts=self._started_ts,
            heartbeat_ts=time.time(),
            broker_connected=self.connected.is_set(),
            problems=self.liveness().problems,
        )
        # its own row only: beside the batches on PostgreSQL (the write lock shared)
        with self._turns.turn(), store.transaction(self._conn, shared=True) as conn:
            store.workers.beat(conn, worker)

    def _publish_changes(self, changes: list[EventChange]) -> None:
        for change in changes:
            message = events.event_message(self._conn, change)
            log.info(
                "event=%d %s agent=%s camera=%s rule=%s threats=%d",
                change.event_id,
                change.type,
                message.agent_id,
                message.camera,
                message.rule,
                message.threat_count,
            )
            if self.config.mqtt.publish_events:
                self.client.publish(Topics.EVENTS, dump_payload(message), qos=1)

    # lifecycle -------------------------------------------------------------------------------
    def liveness(self) -> Liveness:
        """The broker connection and the store writer, for the health endpoint."""
        busy_since = self._busy_since
        return Liveness(
            broker_connected=self.connected.is_set(),
            writer_alive=self._writer.is_alive(),
            writer_died=self.died,
            store_error=self.store_error,
            sender_died=None if self.sender is None else self.sender.died,
            writer_busy_s=None if busy_since is None else time.monotonic() - busy_since,
            writer_stall_s=self.config.ingest.writer_stall_s,
        )

    def start(self) -> None:
        props = Properties(PacketTypes.CONNECT)
        persistent = roles.persistent_session(self.role)
        props.SessionExpiryInterval = self.config.mqtt.session_expiry_s if persistent else 0
        self._writer.start()
        if self.sender is not None:
            self.sender.start()
        self.client.connect_async(
            self.config.mqtt.host,
            self.config.mqtt.port,
            self.config.mqtt.keepalive_s,
            clean_start=not persistent,
            properties=props,
        )
        self.client.loop_start()

    def stop(self) -> None:
        """Store and acknowledge what is in hand, checkpoint the WAL into the database, then
        disconnect (what the broker sends meanwhile is delivered again after a restart)."""
        self._stop.set()
        self._queue.put(None)  # wake the writer
        self._writer.join(timeout=10)
        if self.sender is not None:
            self.sender.stop()
        if self.worker is not None:  # stopped, not dead: no longer expected
            try:
                with store.transaction(self._conn) as conn:
                    store.workers.leave(conn, self.worker)
            except store.DatabaseError as exc:
                log.warning("could not remove worker %s from the store: %s", self.worker, exc)
        try:
            store.checkpoint(self._conn)
        except store.DatabaseError as exc:
            log.warning("WAL checkpoint at stop failed: %s", exc)
        self.client.disconnect()  # after the acks of the last batch (paho sends in order)
        self.client.loop_stop()
        self._conn.close()
        self._turns.close()
