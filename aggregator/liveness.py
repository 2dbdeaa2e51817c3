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
            out.append("store writer not running")
        elif self.writer_stalled:
            out.append(
                f"store writer stalled: one batch or sweep has taken {self.writer_busy_s:.1f} s "
                f"(more than {self.writer_stall_s:g} s)"
            )
        return out

    @property
    def ok(self) -> bool:
        return not self.problems


NO_INGEST = Liveness()
"""An API without an ingest in its process (tests, a read-only API): degraded."""
