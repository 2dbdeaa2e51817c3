"""Which release of each kind an agent had active when, from its update reports (each carries
the releases active after it)."""

from __future__ import annotations

from dataclasses import dataclass

from aggregator.store.ota import ReportRow


@dataclass(frozen=True)
class Period:
    kind: str
    release_id: int | None
    sha256: str | None
    since_ts: float
    until_ts: float | None


def periods(reports: list[ReportRow]) -> list[Period]:
    """One period per kind and stretch of one active release, in time order."""
    out: list[Period] = []
    open_: dict[str, tuple[int | None, str | None, float]] = {}
    for report in reports:
        for kind, active in sorted(report.active.items()):
            key = (active.get("release_id"), active.get("sha256"))
            current = open_.get(kind)
            if current is not None and (current[0], current[1]) == key:
                continue
            if current is not None:
                out.append(Period(kind, current[0], current[1], current[2], report.at_ts))
            open_[kind] = (key[0], key[1], report.at_ts)
    for kind, (release_id, sha, since) in sorted(open_.items()):
        out.append(Period(kind, release_id, sha, since, None))
    return sorted(out, key=lambda p: (p.since_ts, p.kind))
