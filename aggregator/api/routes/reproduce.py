"""Reproduce an event from the API (operator): the recorded model and rules run again on its
frames, the verdict returned (what ``secagg reproduce --json`` prints)."""

from __future__ import annotations

import logging
import threading
from typing import Any

from fastapi import APIRouter, HTTPException, Request

from aggregator.api.access import AUTH_RESPONSES, OPERATOR, Who
from aggregator.api.deps import Db, EventId, Settings
from aggregator.reproduce import ReproduceError, reproduce_event
from modelrt import DetectorError

log = logging.getLogger(__name__)
router = APIRouter(tags=["provenance"], dependencies=[OPERATOR], responses=AUTH_RESPONSES)


class ReproduceLock:
    """One re-run at a time per process: each loads a model and runs it on every frame."""

    def __init__(self) -> None:
        self.lock = threading.Lock()


@router.post(
    "/api/events/{event_id}/reproduce",
    summary="Run the recorded model and rules again on the event's frames; the verdict per "
    "frame (exact, or within the tolerance for re-encoded frames)",
    responses={
        404: {"description": "no such event"},
        409: {"description": "another reproduce runs now; try again when it is done"},
        503: {"description": "the recorded model cannot be loaded here"},
    },
)
def reproduce(
    request: Request, conn: Db, settings: Settings, who: Who, event_id: EventId
) -> dict[str, Any]:
    lock: ReproduceLock = request.app.state.reproduce_lock
    if not lock.lock.acquire(blocking=False):
        raise HTTPException(409, "another reproduce is running; try again when it is done")
    try:
        report = reproduce_event(
            conn,
            event_id,
            config=settings.reproduce,
            snapshots_dir=settings.store.snapshots_dir,
            frames_dir=None,
            use_originals=True,
            providers=["CPUExecutionProvider"],
        )
    except ReproduceError as exc:
        raise HTTPException(404, str(exc)) from exc
    except DetectorError as exc:
        raise HTTPException(503, f"the model cannot be loaded: {exc}") from exc
    finally:
        lock.lock.release()
    log.info("event=%d reproduced by %s: %s", event_id, who.name, "ok" if report.ok else "DIFFERS")
    return {
        "event_id": report.event_id,
        "ok": report.ok,
        "iou_min": report.iou_min,
        "score_delta_max": report.score_delta_max,
        "frames": [f.as_dict() for f in report.frames],
        "notes": report.notes,
    }
