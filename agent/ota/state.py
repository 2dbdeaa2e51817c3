"""The agent's update state, one JSON file written atomically (temporary file, fsync, rename,
fsync of the folder): a restart, or a SIGKILL at any step, finds either the state before a
change or the state after it, never half of each.

- ``active``: the release of each kind in use (a kind left out: what the agent was installed
  with); ``last_good``: what a rollback returns to (kept on disk);
- ``update``: the update in progress (release, state, generation), if any;
- ``probation``: the release being watched since its switch, with the starts of the agent
  since then (crash loops);
- ``reports``: update reports not yet acknowledged by the broker, sent (again) after a restart;
- ``refused``: releases that failed here, by release id, with the reason (not tried again
  until the desired state names them anew).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Installed:
    """A verified release on disk."""

    release_id: int
    kind: str
    tag: str
    seq: int
    sha256: str
    path: str
    """The artifact (model: the manifest written beside the ONNX file)."""

    def describe(self) -> dict[str, Any]:
        return {"release_id": self.release_id, "sha256": self.sha256, "tag": self.tag}


@dataclass
class UpdateState:
    active: dict[str, Installed] = field(default_factory=dict)
    last_good: dict[str, Installed | None] = field(default_factory=dict)
    update: dict[str, Any] | None = None
    probation: dict[str, Any] | None = None
    reports: list[dict[str, Any]] = field(default_factory=list)
    refused: dict[str, str] = field(default_factory=dict)
    generation: int = 0
    """The last desired generation handled completely."""

    def to_json(self) -> bytes:
        doc = asdict(self)
        return json.dumps(doc, indent=1, sort_keys=True).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> UpdateState:
        doc = json.loads(raw)
        return cls(
            active={k: Installed(**v) for k, v in doc.get("active", {}).items()},
            last_good={
                k: (Installed(**v) if v else None) for k, v in doc.get("last_good", {}).items()
            },
            update=doc.get("update"),
            probation=doc.get("probation"),
            reports=list(doc.get("reports", [])),
            refused=dict(doc.get("refused", {})),
            generation=int(doc.get("generation", 0)),
        )


class StateFile:
    def __init__(self, state_dir: Path) -> None:
        self.dir = state_dir
        self.path = state_dir / "state.json"

    def load(self) -> UpdateState:
        try:
            return UpdateState.from_json(self.path.read_bytes())
        except FileNotFoundError:
            return UpdateState()

    def save(self, state: UpdateState) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(".state.json.tmp")
        with tmp.open("wb") as out:
            out.write(state.to_json())
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, self.path)
        fd = os.open(self.dir, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
