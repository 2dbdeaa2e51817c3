"""The over-the-air loop of ``secagg serve`` (when ``ota.enabled``), every
``ota.refresh_interval_s``:

1. re-sign the repository's timestamp (and snapshot) with the online key at half-life, so a
   live feed never expires and a frozen one does;
2. advance every running rollout (:func:`aggregator.ota.rollouts.advance`);
3. publish each agent's desired state that changed, retained, on ``secagent/v1/<agent>/ota``.

It writes the store with short transactions of its own, beside the ingest writer (WAL, busy
timeout), as plots do."""

from __future__ import annotations

import logging
import threading
import time
from datetime import UTC, datetime

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode

from aggregator import store
from aggregator.config import AggregatorConfig
from aggregator.ota import rollouts
from aggregator.ota.repository import Repository, RepositoryError, load_key
from wire.ota import OtaDesired
from wire.payloads import dump_payload
from wire.topics import Topics

log = logging.getLogger(__name__)


class OtaController:
    def __init__(
        self, config: AggregatorConfig, client: mqtt.Client, *, connected: threading.Event
    ) -> None:
        self.config = config
        self.client = client
        self.connected = connected
        self.repo = Repository(config.ota.repo_dir)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="ota", daemon=True)
        self.beat = time.monotonic()
        self.published = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def alive(self) -> bool:
        return self._thread.is_alive()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.beat = time.monotonic()
            try:
                self.turn()
            except Exception:
                log.exception("ota: this turn failed; trying again at the next one")
            self._stop.wait(self.config.ota.refresh_interval_s)

    def turn(self) -> None:
        self.refresh_timestamp()
        conn = store.connect(self.config.store.target)
        try:
            now = time.time()
            with store.transaction(conn):
                for rollout in store.rollouts.list_rollouts(conn, states=("running",)):
                    rollouts.advance(conn, rollout, now_ts=now)
            self.publish(conn)
        finally:
            conn.close()

    def refresh_timestamp(self) -> None:
        ota = self.config.ota
        if not self.repo.initialised:
            return
        try:
            online = load_key(ota.online_key)
            if self.repo.refresh_timestamp(
                online,
                timestamp_expiry_s=ota.timestamp_expiry_s,
                snapshot_expiry_s=ota.snapshot_expiry_s,
            ):
                log.info(
                    "ota: timestamp re-signed (version %d)", self.repo.timestamp().signed.version
                )
        except RepositoryError as exc:
            log.error("ota: cannot re-sign the timestamp: %s", exc)

    def publish(self, conn: store.Connection) -> None:
        if not self.connected.is_set():
            return
        for desired in store.ota.unpublished(conn):
            message = OtaDesired.model_validate(
                {
                    "agent_id": desired.agent_id,
                    "generation": desired.generation,
                    "rollout_id": desired.rollout_id,
                    "releases": desired.doc.get("releases", []),
                    "revert": desired.doc.get("revert", []),
                    "sent_at": datetime.now(UTC),
                }
            )
            info = self.client.publish(
                Topics(desired.agent_id).ota, dump_payload(message), qos=1, retain=True
            )
            if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                log.warning("ota: desired state of %s not published: %s", desired.agent_id, info.rc)
                return
            with store.transaction(conn):
                store.ota.mark_published(conn, desired.agent_id, desired.generation)
            self.published += 1
            log.info(
                "ota: agent=%s desired generation %d published: %s",
                desired.agent_id,
                desired.generation,
                ", ".join(
                    f"{r['kind']} release {r['release_id']} ({r['mode']})"
                    for r in desired.doc.get("releases", [])
                )
                or "nothing",
            )
