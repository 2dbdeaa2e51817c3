"""SQL lives in aggregator/store/ only: ingest, events, notifications, provenance, plots, the
CLI and every API route call the store's typed functions. The check reads every string literal
(f-string parts and docstrings too) of the installed packages."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from tests.support import ROOT

PACKAGES = ("agent", "aggregator", "modelrt", "wire", "appcommon")
STORE = ROOT / "aggregator" / "store"
ALLOWED = {
    # The agent's outbox is a SQLite database of its own (the durable queue on the camera
    # host), not the aggregator's store: it keeps its SQL next to the queue it implements, and
    # so does the ledger of processed files that lives in the same database.
    ROOT / "agent" / "outbox.py",
    ROOT / "agent" / "ledger.py",
}
SQL = re.compile(
    r"\b(SELECT\b|INSERT\s+(OR\s+\w+\s+)?INTO\b|UPDATE\s+\w+\s+SET\b|DELETE\s+FROM\b"
    r"|CREATE\s+(UNIQUE\s+)?(TABLE|INDEX|TRIGGER|VIEW)\b|ALTER\s+TABLE\b|DROP\s+(TABLE|INDEX)\b"
    r"|PRAGMA\b|SAVEPOINT\b|ROLLBACK\b|BEGIN(\s+(IMMEDIATE|EXCLUSIVE|DEFERRED))?\s*$"
    r"|WITH\s+RECURSIVE\b)"
)


def sql_literals(path: Path) -> list[tuple[int, str]]:
    """(line, text) of every string literal in ``path`` that holds SQL."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            match = SQL.search(node.value)
            if match:
                found.append((node.lineno, node.value.strip()[:60]))
    return sorted(found)


def test_no_sql_outside_the_store() -> None:
    offenders: list[str] = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if path.is_relative_to(STORE) or path in ALLOWED:
                continue
            for line, text in sql_literals(path):
                offenders.append(f"{path.relative_to(ROOT)}:{line}: {text!r}")
    assert not offenders, "SQL outside aggregator/store/:\n" + "\n".join(offenders)


def test_the_check_sees_sql(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text(
        'A = "SELECT id FROM events"\n'
        'B = f"INSERT INTO {t} (a) VALUES (?)"\n'
        'C = "UPDATE events SET ended_ts = 1"\n'
        'D = "DELETE FROM x"\n'
        'E = "PRAGMA journal_mode=WAL"\n'
        'F = "BEGIN IMMEDIATE"\n'
        'G = "SAVEPOINT message"\n'
        'H = "after COMMIT it acknowledges them; select a camera"\n'  # prose: not SQL
    )
    assert [line for line, _ in sql_literals(module)] == [1, 2, 3, 4, 5, 6, 7]


def test_the_exceptions_are_real_files_with_sql() -> None:
    """An exception that no longer exists (or no longer holds SQL) is removed from the list."""
    for path in ALLOWED:
        assert sql_literals(path), f"{path} is allowed SQL but has none"
    assert sql_literals(STORE / "messages.py")  # the check does see the store's own SQL
