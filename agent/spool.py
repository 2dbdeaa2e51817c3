"""Large outbox payloads as files, written once: the bodies of threat messages with a snapshot
(:mod:`agent.outbox`).

A row of the outbox database is rewritten whole when any of its columns changes, and SQLite
journals the pages it changes and (with ``secure_delete``, as Debian builds it) overwrites
what it deletes: a 250 KB snapshot in a row was written five to seven times on its way
through the outbox. As a file of its own it is written once, made durable (the file, then its
folder) before the row that names it commits, read when it is published, and unlinked after
the row is deleted. A file no row names (a crash between the two) is deleted at the next start.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable
from pathlib import Path

log = logging.getLogger(__name__)

SUFFIX = ".msg"
_NAME = re.compile(r"[0-9a-f]{32}\.msg")


class Spool:
    """The folder of payload files next to the outbox database (``<outbox>.d``)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    @staticmethod
    def name_of(message_id: str) -> str:
        if not re.fullmatch(r"[0-9a-f]{32}", message_id):
            raise ValueError(f"message id {message_id!r} is not 32 hex digits")
        return message_id + SUFFIX

    def write(self, name: str, payload: bytes) -> None:
        """Write ``payload`` as ``name`` and make it durable: the file's data and its entry in
        the folder are on disk when this returns."""
        path = self.folder / name
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            view = memoryview(payload)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        self._sync_folder()

    def read(self, name: str) -> bytes | None:
        """The payload, or None when its file is gone."""
        try:
            return (self.folder / name).read_bytes()
        except FileNotFoundError:
            return None

    def remove(self, names: Iterable[str]) -> None:
        """Unlink these files (their rows are deleted and committed)."""
        for name in names:
            try:
                (self.folder / name).unlink(missing_ok=True)
            except OSError as exc:
                log.warning("outbox payload %s cannot be deleted: %s", name, exc)

    def sweep(self, known: set[str]) -> int:
        """Delete the payload files that no row names (written before a crash, never
        committed); returns how many."""
        gone = [
            e.name
            for e in os.scandir(self.folder)
            if _NAME.fullmatch(e.name) and e.name not in known
        ]
        self.remove(gone)
        if gone:
            log.info("outbox: deleted %d payload file(s) that no message names", len(gone))
        return len(gone)

    def _sync_folder(self) -> None:
        fd = os.open(self.folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
