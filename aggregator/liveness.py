"""Is ``secagg`` doing its job? The broker connection and the store writer thread, as the
health endpoint reports them (``/api/health`` answers 503 unless both are fine)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Liveness:
    """A snapshot of the ingest's state."""

    broker_connected: bool = False
    writer_alive: bool = False
    writer_busy_s: float | None = None
    """How long the writer has been inside one batch or sweep (None: waiting for messages)."""
    writer_stall_s: float = 60.0
    """Busy for longer than this counts as stalled."""
    writer_died: str | None = None
    """Why the writer thread ended unasked (the service exits; systemd restarts it)."""
    store_error: str | None = None
    """Why the store cannot be written now (a full disk): what arrives stays at the broker."""
    sender_died: str | None = None
    """Why the notification sender ended unasked."""

    @property
    def writer_stalled(self) -> bool:
        return self.writer_busy_s is not None and self.writer_busy_s > self.writer_stall_s

    @property
    def problems(self) -> list[str]:
        """Why the service is degraded; empty when it is ok."""
        out: list[str] = []
        if not self.broker_connected:
            out.append("broker not connected")
        if not self.writer_alive:
            died = f": died of {self.writer_died}" if self.writer_died else ""
            out.append(f"store writer not running{died}")
        elif self.writer_stalled:
            out.append(
                f"store writer stalled: one batch or sweep has taken {self.writer_busy_s:.1f} s "
                f"(more than {self.writer_stall_s:g} s)"
            )
        if self.store_error is not None:
            out.append(
                f"store not writable: {self.store_error} (messages wait at the broker and in "
                "the agents' outboxes)"
            )
        if self.sender_died is not None:
            out.append(f"notification sender not running: died of {self.sender_died}")
        return out

    @property
    def fatal(self) -> str | None:
        """A thread that ended unasked: the process must end so that systemd restarts it."""
        if self.writer_died is not None:
            return f"the store writer died: {self.writer_died}"
        if self.sender_died is not None:
            return f"the notification sender died: {self.sender_died}"
        return None

    @property
    def ok(self) -> bool:
        return not self.problems


WORKER_STALE_S = 30.0
"""An ingest worker whose last heartbeat (every ``events.sweep_interval_s``) is older than this
is reported by ``/api/health`` as not heard from: killed, or its writer stuck."""

NO_INGEST = Liveness()
"""An API without an ingest in its process (tests, a read-only API): degraded."""
