"""What an agent may report, beyond what the wire contract checks on its own: times within a
window around the aggregator's clock, and only the rules it is known to run. A message that
fails is refused with a counted reason (:class:`wire.payloads.PayloadError`), like an invalid
one.

- ``time_out_of_window``: a capture or status time more than ``ingest.max_clock_ahead_s`` ahead
  of the aggregator's clock, or ``ingest.max_clock_behind_s`` behind it. Events end on the
  agent's clock: one time far in the future would end every later event at once, and freeze
  the agent's record (statuses are ordered by their time).
- ``unknown_rule``: the message's rules file (by its sha256) is among
  ``reproduce.rules_paths`` and has no such rule, or not with this severity, or not for this
  camera.
- ``too_many_rules``: more distinct rules in one message than ``ingest.max_rules_per_message``,
  or, while the rules file is not known here, more distinct rule names from one agent than
  ``ingest.max_rules_per_agent``. Each rule of a message can start an event and its
  notifications: one message can cause no more than this many.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime
from pathlib import Path

from aggregator import store
from aggregator.config import AggregatorConfig
from modelrt.rules import RulesError, RuleSet, load_rules
from wire.payloads import PayloadError, ThreatFields

log = logging.getLogger(__name__)

CHECKOUT = Path(__file__).resolve().parent.parent
RESCAN_S = 60.0
"""How often the rules folders are read again when a message names an unknown rules sha256."""


def _files(paths: list[Path]) -> list[Path]:
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found += sorted(p for p in path.iterdir() if p.suffix.lower() in (".yaml", ".yml"))
        elif path.is_file():
            found.append(path)
    return found


def known_rules(paths: list[Path]) -> dict[str, RuleSet]:
    """sha256 -> rules of every valid rules file among ``paths`` (empty: the checkout's
    ``rules/``)."""
    found: dict[str, RuleSet] = {}
    for path in _files(paths or [CHECKOUT / "rules"]):
        try:
            rules = load_rules(path)
        except RulesError:
            continue
        found.setdefault(rules.sha256, rules)
    return found


class Admission:
    """The checks of one ingest (it caches the rules files and each agent's rule names: the
    names are read from the store again whenever a message names one not cached, so ingest
    workers on one store count each other's)."""

    def __init__(self, config: AggregatorConfig) -> None:
        self.ingest = config.ingest
        self.rules_paths = config.reproduce.rules_paths
        self._rules: dict[str, RuleSet] = {}
        self._next_scan = 0.0
        self._agent_rules: dict[str, set[str]] = {}

    def check_time(self, what: str, value: datetime, *, now_ts: float) -> float:
        """``value`` as epoch seconds; PayloadError ``time_out_of_window`` outside the window."""
        ts = value.timestamp()
        if ts > now_ts + self.ingest.max_clock_ahead_s:
            raise PayloadError(
                "time_out_of_window",
                f"{what} {value.isoformat()} is more than {self.ingest.max_clock_ahead_s:g} s "
                "ahead of the aggregator's clock",
            )
        if ts < now_ts - self.ingest.max_clock_behind_s:
            raise PayloadError(
                "time_out_of_window",
                f"{what} {value.isoformat()} is more than {self.ingest.max_clock_behind_s:g} s "
                "behind the aggregator's clock",
            )
        return ts

    def rules_file(self, sha256: str) -> RuleSet | None:
        """The rules file with this sha256, when the aggregator has it."""
        if sha256 not in self._rules and time.monotonic() >= self._next_scan:
            self._next_scan = time.monotonic() + RESCAN_S
            self._rules = known_rules(self.rules_paths)
        return self._rules.get(sha256)

    def check_rules(self, conn: store.Connection, threat: ThreatFields) -> None:
        """PayloadError ``too_many_rules`` or ``unknown_rule`` (see the module's docstring)."""
        names = {t.rule for t in threat.threats}
        if len(names) > self.ingest.max_rules_per_message:
            raise PayloadError(
                "too_many_rules",
                f"{len(names)} distinct rules in one message, at most "
                f"{self.ingest.max_rules_per_message}",
            )
        rules = self.rules_file(threat.versions.rules_sha256)
        if rules is not None:
            by_name = {r.name: r for r in rules.rules}
            for t in threat.threats:
                rule = by_name.get(t.rule)
                if rule is None or rule.severity != t.severity:
                    raise PayloadError(
                        "unknown_rule",
                        f"rules {threat.versions.rules_sha256[:12]} have no rule {t.rule!r} "
                        f"of severity {t.severity}",
                    )
                if rule.cameras is not None and threat.camera not in rule.cameras:
                    raise PayloadError(
                        "unknown_rule", f"rule {t.rule!r} does not apply to camera {threat.camera}"
                    )
            return
        seen = self._agent_rules.get(threat.agent_id)
        if seen is None or not names <= seen:
            # Read again whenever a rule is new to this process: other ingest workers on the
            # same store (``secagg serve --role ingest``) add rules this cache has not seen.
            seen = self._agent_rules[threat.agent_id] = set(
                store.events.rules_of_agent(conn, threat.agent_id)
            ) | (seen or set())
        new = names - seen
        if new and len(seen) + len(new) > self.ingest.max_rules_per_agent:
            raise PayloadError(
                "too_many_rules",
                f"agent {threat.agent_id} would report {len(seen) + len(new)} distinct rules, "
                f"at most {self.ingest.max_rules_per_agent} while its rules file "
                f"{threat.versions.rules_sha256[:12]} is not known here",
            )
        seen |= new
