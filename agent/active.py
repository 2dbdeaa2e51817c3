"""What the agent runs at one time: the model, the rules and the versions every result records,
switched together between two frames (:meth:`agent.engine.DetectionEngine.switch`)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from modelrt import Detector
from modelrt.rules import RuleSet
from wire.payloads import Versions


@dataclass
class ActiveSet:
    detector: Detector
    rules: RuleSet
    versions: Versions
    releases: dict[str, dict[str, object]] = field(default_factory=dict)
    """The release of each kind behind it (release id, sha256, tag; no id: as installed)."""
    first_frame_id: str | None = None
    """The first frame processed with this set (set once, by the results thread)."""
    first_frame: threading.Event = field(default_factory=threading.Event)

    def mark_first(self, frame_id: str) -> None:
        if self.first_frame_id is None:
            self.first_frame_id = frame_id
            self.first_frame.set()
