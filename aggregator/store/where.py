"""WHERE clauses built from optional filters. Column names come from the store's own code,
never from a caller's input; values always travel as parameters."""

from __future__ import annotations

from typing import Any


class Where:
    """``Where().equals("camera", camera).at_least("ts", since)``: a filter is added only when
    its value is not None."""

    def __init__(self) -> None:
        self.clauses: list[str] = []
        self.args: list[Any] = []

    def _add(self, clause: str, value: object) -> Where:
        if value is not None:
            self.clauses.append(clause)
            self.args.append(value)
        return self

    def equals(self, column: str, value: object) -> Where:
        return self._add(f"{column} = ?", value)

    def at_least(self, column: str, value: float | None) -> Where:
        return self._add(f"{column} >= ?", value)

    def below(self, column: str, value: float | None) -> Where:
        return self._add(f"{column} < ?", value)

    def holds(self, clause: str, when: bool = True) -> Where:
        """A clause without a parameter (``ended_ts IS NULL``), added when ``when``."""
        if when:
            self.clauses.append(clause)
        return self

    @property
    def sql(self) -> str:
        """`` WHERE a AND b`` or nothing."""
        return (" WHERE " + " AND ".join(self.clauses)) if self.clauses else ""
