"""The folder source: stills a motion-triggered camera drops into a folder (FTP, SMB upload).

- New files are noticed through inotify (the ``watchfiles`` library), whose cost does not grow
  with the files kept in the folder; on a network share, where inotify sees no remote writes,
  or when inotify cannot watch, the folder is scanned every ``poll_s`` instead.
- A file is taken when it is a complete JPEG/PNG, or once its size and mtime have not changed
  for ``settle_s`` (validation then decides, e.g. "truncated"). Hidden files and temp names
  (``*.tmp``, ``*.part``) are ignored, so writers that rename into place are safe.
- What was processed is remembered in a ledger (:mod:`agent.ledger`, the outbox database), so a
  restart takes only what is new or changed; rows of files that are gone are pruned.
- A named pipe, a symbolic link, a folder or a device whose name matches ``patterns`` is
  reported rejected (``not_a_file``) once, and never opened: nothing here can block on a FIFO.
- A missing folder is reported ``down`` and tried again with backoff (see
  :class:`agent.capture.RetryingSource`).
"""

from __future__ import annotations

import fnmatch
import logging
import os
import re
import stat
import threading
import time
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import watchfiles

from agent.capture import (
    IGNORED_SUFFIXES,
    Frame,
    RetryingSource,
    SourceError,
    looks_complete,
    safe_text,
)
from agent.config import DirectorySourceConfig
from agent.filesystems import NETWORK_FILE_SYSTEMS, entry_kind, filesystem_type
from agent.ledger import CHUNK, FileLedger, FileMark, MemoryLedger, Signature, all_rows

log = logging.getLogger(__name__)

NOT_A_FILE = "not_a_file"
"""The rejection reason of a matching entry that is no regular file."""

WATCH_STEP_MS = 20
WATCH_DEBOUNCE_MS = 100


class DirectorySource(RetryingSource):
    """Stills dropped into a folder (and its subfolders when ``recursive``), oldest first."""

    def __init__(
        self,
        camera: str,
        config: DirectorySourceConfig,
        *,
        stop: threading.Event | None = None,
        ledger: FileLedger | None = None,
        max_file_bytes: int | None = None,
    ) -> None:
        super().__init__(
            camera, retry_min_s=config.retry_min_s, retry_max_s=config.retry_max_s, stop=stop
        )
        self.config = config
        self.root = config.path
        self.ledger: FileLedger = ledger or MemoryLedger()
        self.max_file_bytes = max_file_bytes
        """A still larger than this is rejected (``too_large``) without being read."""
        self.mode: str | None = None
        """How the folder is watched now: inotify, poll, or once (``watch: false``)."""
        self._pattern = re.compile(
            "|".join(fnmatch.translate(p) for p in config.patterns), re.IGNORECASE
        )
        self._pending: dict[str, tuple[Signature, float]] = {}
        self._rejected: list[Frame] = []
        self._inflight: dict[str, Signature] = {}
        self._inflight_lock = threading.Lock()
        self._known: dict[str, Signature] | None = None
        """Polling only: the signature of every file of the last scan taken or processed."""
        self._skipped_existing = False

    # the pipeline says it is through with a frame ------------------------------------------
    def done(self, frame: Frame) -> None:
        """Remember ``frame``'s file as processed (or delete it, with ``after: delete``)."""
        mark = frame.file
        if mark is None:
            return
        if self.config.after == "delete" and frame.rejected is None:
            try:
                (self.root / mark.key).unlink(missing_ok=True)
            except OSError as exc:
                log.warning(
                    "camera=%s frame=%s cannot delete %r: %s",
                    self.camera,
                    frame.frame_id,
                    mark.key,
                    exc.strerror or exc,
                )
            if frame.recorded:
                self.ledger.forget(self.camera, [mark.key])
        elif not frame.recorded:
            self.ledger.record([mark])
        with self._inflight_lock:
            if self._inflight.get(mark.key) == mark.signature:
                del self._inflight[mark.key]

    # the source ------------------------------------------------------------------------------
    def _attempt(self) -> Iterator[Frame | None]:
        self._open()
        if not self.config.watch:
            self.mode = "once"
            self._up()
            yield from self.poll(take_all=True)
            return
        mode = self.config.watch_mode
        if mode == "auto":
            fs_type = filesystem_type(self.root)
            mode = "poll" if fs_type in NETWORK_FILE_SYSTEMS else "inotify"
            if mode == "poll":
                log.info("camera=%s folder %s is on %s: polling", self.camera, self.root, fs_type)
        watcher = self._watcher() if mode == "inotify" else None
        self.mode = "inotify" if watcher is not None else "poll"
        self._up()
        log.info(
            "camera=%s watching %s (%s%s)",
            self.camera,
            self.root,
            self.mode,
            ", with subfolders" if self.config.recursive else "",
        )
        if watcher is None:
            yield from self._poll_loop()
        else:
            yield from self._inotify_loop(watcher)

    def _open(self) -> None:
        if not self.root.is_dir():
            what = "is not a folder" if self.root.exists() else "does not exist"
            raise SourceError(f"folder {self.root} {what}")
        if self.config.existing == "skip" and not self._skipped_existing:
            self._skip_existing()
        self._skipped_existing = True

    def _skip_existing(self) -> None:
        """``existing: skip``: record what is there at the first start as processed."""
        for chunk in _chunks(self._scan()):
            done = self.ledger.signatures(self.camera, [key for key, _ in chunk])
            marks = [
                FileMark(self.camera, key, st.st_size, st.st_mtime_ns)
                for key, st in chunk
                if done.get(key) != (st.st_size, st.st_mtime_ns)
            ]
            self.ledger.record(marks)

    def _watcher(self) -> Iterator[set[tuple[watchfiles.Change, str]]] | None:
        """An inotify watch of the folder, started (its first, maybe empty, batch of changes is
        handled at once); None to poll instead (``auto`` when inotify cannot watch)."""
        try:
            watcher = watchfiles.watch(
                self.root,
                watch_filter=None,
                debounce=WATCH_DEBOUNCE_MS,
                step=WATCH_STEP_MS,
                stop_event=self.stop,
                rust_timeout=max(1, round(self.config.poll_s * 1000)),
                yield_on_timeout=True,
                recursive=self.config.recursive,
                raise_interrupt=False,
                force_polling=False,
            )
            first: set[tuple[watchfiles.Change, str]] = next(watcher, set())
        except FileNotFoundError as exc:
            raise SourceError(f"folder {self.root} does not exist") from exc
        except (OSError, RuntimeError) as exc:
            if self.config.watch_mode == "inotify":
                raise SourceError(f"cannot watch {self.root} with inotify: {exc}") from exc
            log.warning(
                "camera=%s cannot watch %s with inotify (%s): polling every %.1f s",
                self.camera,
                self.root,
                exc,
                self.config.poll_s,
            )
            return None

        def changes() -> Iterator[set[tuple[watchfiles.Change, str]]]:
            yield first
            yield from watcher

        return changes()

    def _poll_loop(self) -> Iterator[Frame | None]:
        while not self.stop.is_set():
            batch = self.poll()
            if batch:
                yield from batch
                continue
            yield None
            if self.stop.wait(self.config.poll_s):  # the polling interval, woken by stop
                return

    def _inotify_loop(
        self, watcher: Iterator[set[tuple[watchfiles.Change, str]]]
    ) -> Iterator[Frame | None]:
        self._full_scan()
        next_rescan = time.monotonic() + self.config.rescan_s
        while not self.stop.is_set():
            try:
                changes = next(watcher, None)
            except (OSError, RuntimeError) as exc:
                raise SourceError(f"watching {self.root} failed: {exc}") from exc
            if changes is None:  # stopped
                return
            for change, path in changes:
                self._on_change(change, path)
            if not self.root.is_dir():
                raise SourceError(f"folder {self.root} is gone")
            if time.monotonic() >= next_rescan:
                self._full_scan()
                next_rescan = time.monotonic() + self.config.rescan_s
            batch = self._take_ready(take_all=False)
            if batch:
                yield from batch
            else:
                yield None

    # polling -----------------------------------------------------------------------------------
    def poll(self, *, take_all: bool = False) -> list[Frame]:
        """Scan the folder once; return the frames of files that are ready, oldest first, and
        of entries rejected. ``take_all`` takes every file as it is now (a one-off read)."""
        if self._known is None:
            self._open()
            self._known = dict(all_rows(self.ledger, self.camera))
        listing: set[str] = set()
        for key, st in self._scan():
            listing.add(key)
            if key in self._pending or self._known.get(key) == (st.st_size, st.st_mtime_ns):
                continue
            self._consider(key, st)
        gone = [key for key in self._known if key not in listing]
        for key in gone:
            del self._known[key]
        self.ledger.forget(self.camera, gone)
        for key in [k for k in self._pending if k not in listing]:
            del self._pending[key]
        return self._take_ready(take_all=take_all)

    # inotify -----------------------------------------------------------------------------------
    def _full_scan(self) -> None:
        """Consider every file not processed yet (at start, and every ``rescan_s``), then
        forget the processed files that are gone. Memory: one chunk of keys at a time."""
        for chunk in _chunks(self._scan()):
            keys = [key for key, _ in chunk]
            inflight = self._inflight_of(keys)  # before the ledger: done() records, then pops
            done = self.ledger.signatures(self.camera, keys)
            for key, st in chunk:
                sig = (st.st_size, st.st_mtime_ns)
                if key not in self._pending and sig not in (done.get(key), inflight.get(key)):
                    self._consider(key, st)
        gone: list[str] = []
        for key, _ in all_rows(self.ledger, self.camera):
            if not os.path.lexists(self.root / key):
                gone.append(key)
            if len(gone) >= CHUNK:
                self.ledger.forget(self.camera, gone)
                gone = []
        self.ledger.forget(self.camera, gone)

    def _on_change(self, change: watchfiles.Change, path: str) -> None:
        key = Path(os.path.relpath(path, self.root)).as_posix()
        if key == "." or key.startswith("../"):
            if change == watchfiles.Change.deleted and key == ".":
                raise SourceError(f"folder {self.root} is gone")
            return
        parts = key.split("/")
        if any(part.startswith(".") for part in parts):
            return
        if change == watchfiles.Change.deleted:
            self._pending.pop(key, None)
            self.ledger.forget(self.camera, [key])
            return
        try:
            st = os.lstat(path)
        except OSError:
            return
        if not self._wanted(parts[-1]):
            if self.config.recursive and stat.S_ISDIR(st.st_mode):
                # a new subfolder: what was written into it before its watch began
                for sub_key, sub_st in self._scan(Path(path), f"{key}/"):
                    self._consider_one(sub_key, sub_st)
            return
        self._consider_one(key, st)

    def _consider_one(self, key: str, st: os.stat_result) -> None:
        if key in self._pending:
            return  # looked at again in _take_ready
        inflight = self._inflight_of([key]).get(key)  # before the ledger: done() records, then pops
        done = self.ledger.signatures(self.camera, [key]).get(key)
        if (st.st_size, st.st_mtime_ns) not in (done, inflight):
            self._consider(key, st)

    def _inflight_of(self, keys: list[str]) -> dict[str, Signature]:
        """The signatures of ``keys`` taken and not yet through the pipeline."""
        with self._inflight_lock:
            return {k: self._inflight[k] for k in keys if k in self._inflight}

    # shared ----------------------------------------------------------------------------------
    def _wanted(self, name: str) -> bool:
        return (
            not name.startswith(".")
            and not name.lower().endswith(IGNORED_SUFFIXES)
            and self._pattern.match(name) is not None
        )

    def _scan(
        self, folder: Path | None = None, prefix: str = ""
    ) -> Iterator[tuple[str, os.stat_result]]:
        """(key, lstat) of every entry whose name matches, subfolders included when
        ``recursive``; SourceError when the camera's folder itself cannot be listed."""
        stack = [(folder or self.root, prefix)]
        while stack:
            where, at = stack.pop()
            try:
                with os.scandir(where) as entries:
                    for entry in entries:
                        name = entry.name
                        if not self._wanted(name):
                            if (
                                self.config.recursive
                                and not name.startswith(".")
                                and entry.is_dir(follow_symlinks=False)
                            ):
                                stack.append((Path(entry.path), f"{at}{name}/"))
                            continue
                        try:
                            st = entry.stat(follow_symlinks=False)
                        except FileNotFoundError:
                            continue
                        yield f"{at}{name}", st
            except OSError as exc:
                if where == self.root:
                    raise SourceError(
                        f"cannot list folder {self.root}: {exc.strerror or exc}"
                    ) from exc
                log.warning("camera=%s cannot list %r: %s", self.camera, str(where), exc)

    def _consider(self, key: str, st: os.stat_result) -> None:
        """A file that is new or changed waits in pending; anything else is rejected now."""
        if stat.S_ISREG(st.st_mode):
            self._pending[key] = ((st.st_size, st.st_mtime_ns), time.monotonic())
            return
        self._reject(key, st)

    def _reject(self, key: str, st: os.stat_result) -> None:
        mark = FileMark(self.camera, key, st.st_size, st.st_mtime_ns)
        self._remember(mark)
        self._rejected.append(
            Frame(
                camera=self.camera,
                kind="file",
                source=safe_text(str(self.root / key)),
                captured_at=datetime.now(UTC),
                file=mark,
                rejected=(NOT_A_FILE, f"{entry_kind(st.st_mode)}, not a regular file"),
            )
        )

    def _remember(self, mark: FileMark) -> None:
        with self._inflight_lock:
            self._inflight[mark.key] = mark.signature
        if self._known is not None:
            self._known[mark.key] = mark.signature

    def _take_ready(self, *, take_all: bool) -> list[Frame]:
        """Rejections, then the pending files that are complete or settled, oldest first."""
        out, self._rejected = self._rejected, []
        ready: list[tuple[int, Frame]] = []
        now = time.monotonic()
        for key in list(self._pending):
            frame = self._read(key, now, take_all=take_all)
            if frame is not None and frame.file is not None:
                ready.append((frame.file.mtime_ns, frame))
        ready.sort(key=lambda item: item[0])
        return out + [frame for _, frame in ready]

    def _read(self, key: str, now: float, *, take_all: bool) -> Frame | None:
        """The frame of pending file ``key`` when it is ready; None while it is not."""
        path = self.root / key
        sig, first = self._pending[key]
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
        except FileNotFoundError:
            del self._pending[key]
            return None
        except OSError as exc:
            try:
                st = os.lstat(path)
            except OSError:
                st = None
            if st is not None and not stat.S_ISREG(st.st_mode):  # replaced by a link or pipe
                del self._pending[key]
                self._reject(key, st)
                return None
            log.warning("camera=%s file %r unreadable, will retry: %s", self.camera, key, exc)
            return None
        with os.fdopen(fd, "rb") as fh:
            st = os.fstat(fh.fileno())
            if not stat.S_ISREG(st.st_mode):
                del self._pending[key]
                self._reject(key, st)
                return None
            now_sig = (st.st_size, st.st_mtime_ns)
            if now_sig != sig:
                sig, first = now_sig, now
                self._pending[key] = (sig, first)
            limit = self.max_file_bytes
            if limit is not None and st.st_size > limit:
                if not (take_all or now - first >= self.config.settle_s):
                    return None  # maybe still being written: decided once it settles
                data = None  # rejected unread: never in memory
            else:
                data = fh.read() if limit is None else fh.read(limit + 1)
        if data is not None and not (
            take_all or looks_complete(data) or now - first >= self.config.settle_s
        ):
            return None
        del self._pending[key]
        mark = FileMark(self.camera, key, st.st_size, st.st_mtime_ns)
        self._remember(mark)
        if data is None or (limit is not None and len(data) > limit):
            return Frame(
                camera=self.camera,
                kind="file",
                source=safe_text(str(path)),
                captured_at=datetime.fromtimestamp(st.st_mtime, UTC),
                file=mark,
                rejected=("too_large", f"{st.st_size} bytes > {limit}, not read"),
            )
        return Frame(
            camera=self.camera,
            kind="file",
            source=safe_text(str(path)),
            captured_at=datetime.fromtimestamp(st.st_mtime, UTC),
            data=data,
            file=mark,
        )


def _chunks(
    items: Iterable[tuple[str, os.stat_result]],
) -> Iterator[list[tuple[str, os.stat_result]]]:
    chunk: list[tuple[str, os.stat_result]] = []
    for item in items:
        chunk.append(item)
        if len(chunk) >= CHUNK:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
