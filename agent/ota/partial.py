"""A download in progress, kept on disk so that a restarted agent goes on from where it was
instead of starting over.

Beside the destination ``<dest>`` the bytes received so far are in ``.<dest>.part`` and what
they must become in ``.<dest>.part.json``: the signed sha256 and length, written (and fsynced)
before the first byte. A partial is resumed only for that very sha256 and length and when it is
not longer than that; anything else is discarded and the download starts over. The bytes
themselves are checked once complete, against the signed metadata: a partial that turns out
wrong (a disk that lost a write, a server that changed the file) is discarded then, and
downloaded again from the start (:meth:`agent.ota.client.ReleaseClient.download`).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable
from pathlib import Path

from tuf.api import exceptions

log = logging.getLogger(__name__)


class PartialDownload:
    def __init__(self, dest: Path, *, sha256: str, length: int) -> None:
        self.dest = dest
        self.sha256 = sha256
        self.length = length
        self.part = dest.with_name(f".{dest.name}.part")
        self.meta = dest.with_name(f".{dest.name}.part.json")

    def _expected(self) -> dict[str, object]:
        return {"sha256": self.sha256, "length": self.length}

    def resume_at(self) -> int:
        """The bytes already on disk for this artifact (0: none yet); a partial of anything
        else, or longer than the artifact, is discarded first."""
        try:
            recorded = json.loads(self.meta.read_text())
            size = self.part.stat().st_size
        except (OSError, ValueError):
            recorded, size = None, 0
        if recorded == self._expected() and size <= self.length:
            return size
        if recorded is not None or self.part.exists():
            log.warning(
                "ota: %s: a partial download of %d bytes that is not of sha256 %s…, %d bytes: "
                "discarded",
                self.part,
                size,
                self.sha256[:12],
                self.length,
            )
        self.discard()
        self.dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.meta.with_name(self.meta.name + ".tmp")
        with tmp.open("w") as out:
            json.dump(self._expected(), out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, self.meta)
        self.part.touch()
        return 0

    def append(self, chunks: Iterable[bytes]) -> int:
        """Write ``chunks`` after what is on disk, each one as it comes (a SIGKILL keeps every
        chunk written); the signed length caps it. Returns the size reached."""
        with self.part.open("ab") as out:
            size = out.tell()
            for chunk in chunks:
                size += len(chunk)
                if size > self.length:
                    raise exceptions.DownloadLengthMismatchError(
                        f"{self.part.name}: more than the signed {self.length} bytes"
                    )
                out.write(chunk)
                out.flush()
        return size

    def finish(self) -> Path:
        """The complete, verified download becomes ``dest``."""
        os.replace(self.part, self.dest)
        self.meta.unlink(missing_ok=True)
        return self.dest

    def discard(self) -> None:
        self.part.unlink(missing_ok=True)
        self.meta.unlink(missing_ok=True)
