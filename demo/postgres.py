"""A private PostgreSQL cluster on a free loopback port, for the tests and the benchmarks.

Like :mod:`demo.broker`, it never relies on a server already running: ``initdb`` from the
Debian package writes a new cluster into a temporary folder, ``postgres`` listens on a free
loopback port and on a unix socket in that folder, and the cluster is deleted at the end.
PostgreSQL refuses to run as root: started by root, the cluster belongs to the Debian
package's ``postgres`` user (``nobody`` without it) and both programs run as that user.

``fsync`` is off (``durable=False``, the default): a test cluster need not survive a power
cut, and each commit then costs no disk flush.

``keep_at=FOLDER`` (the benchmarks' big stores): the cluster lives in that folder instead, is
made there by the first start and used again by the next ones, and ``stop`` leaves it there.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

from demo.broker import free_port

DEBIAN_BINDIRS = "/usr/lib/postgresql"
SUPERUSER = "secagg"


class PostgresError(RuntimeError):
    """PostgreSQL is missing or did not start."""


def find_bindir() -> Path:
    """The newest ``/usr/lib/postgresql/<major>/bin`` that holds ``initdb`` and ``postgres``."""
    root = Path(DEBIAN_BINDIRS)
    found = sorted(
        (p for p in root.glob("*/bin") if (p / "initdb").is_file() and (p / "postgres").is_file()),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
    )
    if not found:
        raise PostgresError(
            f"no PostgreSQL under {root}: apt-get install postgresql (make setup does this)"
        )
    return found[-1]


def _run_as() -> pwd.struct_passwd | None:
    """The user the cluster belongs to when we are root (PostgreSQL refuses root)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise PostgresError("running as root and neither user postgres nor nobody exists")


class Postgres:
    """``with Postgres() as pg: pg.url("db")``; ``create_database(name)`` makes a fresh one."""

    def __init__(
        self, *, port: int | None = None, durable: bool = False, keep_at: Path | None = None
    ) -> None:
        self.port = port or free_port()
        self.host = "127.0.0.1"
        self.durable = durable
        self.keep_at = None if keep_at is None else keep_at.resolve()
        self.bindir = find_bindir()
        self.user = _run_as()
        self.workdir: Path | None = None
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def datadir(self) -> Path:
        assert self.workdir is not None, "start() first"
        return self.workdir / "data"

    @property
    def log_path(self) -> Path:
        assert self.workdir is not None, "start() first"
        return self.workdir / "postgres.log"

    def url(self, database: str = "postgres") -> str:
        """A ``postgresql://`` URL of ``database`` over TCP on the loopback port."""
        return f"postgresql://{SUPERUSER}@{self.host}:{self.port}/{database}"

    @property
    def _uid(self) -> int | None:
        return None if self.user is None else self.user.pw_uid

    @property
    def _gid(self) -> int | None:
        return None if self.user is None else self.user.pw_gid

    @property
    def _groups(self) -> list[int] | None:
        return None if self.user is None else []

    def start(self, *, timeout_s: float = 30.0) -> Postgres:
        # Not under pytest's tmp_path: a folder of mode 0700 owned by root that the cluster's
        # user could not enter. mkdtemp makes a 0700 folder of our own under /tmp.
        if self.keep_at is not None:
            self.workdir = self.keep_at
            self.workdir.mkdir(mode=0o700, parents=True, exist_ok=True)
        else:
            self.workdir = Path(tempfile.mkdtemp(prefix="secagg-pg-"))
        if self.user is not None:
            os.chown(self.workdir, self.user.pw_uid, self.user.pw_gid)
        if not (self.datadir / "PG_VERSION").is_file():
            self._initdb()
        settings = {
            "listen_addresses": self.host,
            "port": str(self.port),
            "unix_socket_directories": str(self.workdir),
            "max_connections": "50",
            "shared_buffers": "32MB",
            "fsync": "on" if self.durable else "off",
            "synchronous_commit": "on" if self.durable else "off",
            "full_page_writes": "on" if self.durable else "off",
        }
        args = [str(self.bindir / "postgres"), "-D", str(self.datadir)]
        for key, value in settings.items():
            args += ["-c", f"{key}={value}"]
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                args,
                stdout=log,
                stderr=subprocess.STDOUT,
                user=self._uid,
                group=self._gid,
                extra_groups=self._groups,
            )
        try:
            self._wait_ready(timeout_s=timeout_s)
        except BaseException:  # never leave a server running behind a failed start
            self.stop()
            raise
        return self

    def _initdb(self) -> None:
        init = subprocess.run(
            [
                str(self.bindir / "initdb"),
                "-D",
                str(self.datadir),
                "-U",
                SUPERUSER,
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
            ],
            capture_output=True,
            check=False,
            user=self._uid,
            group=self._gid,
            extra_groups=self._groups,
        )
        if init.returncode != 0:
            self._remove()
            raise PostgresError(f"initdb failed: {init.stderr.decode(errors='replace')[-2000:]}")

    def _wait_ready(self, *, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise PostgresError(f"postgres exited at start:\n{self._log_tail()}")
            ready = subprocess.run(
                [str(self.bindir / "pg_isready"), "-q", "-h", self.host, "-p", str(self.port)],
                check=False,
            )
            if ready.returncode == 0:
                return
            if time.monotonic() > deadline:
                raise PostgresError(f"postgres not ready after {timeout_s} s\n{self._log_tail()}")
            time.sleep(0.05)  # poll interval of a deadline wait

    def _log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-2000:]
        except OSError:
            return ""

    def create_database(self, name: str) -> str:
        """A new empty database; its URL."""
        import psycopg
        from psycopg import sql

        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.url(name)

    def cpu_s(self) -> float:
        """User + system CPU seconds the cluster's processes have used so far: the postmaster,
        its children alive now (a backend per connection, the writers) and those it has reaped
        (``/proc``; Linux). The benchmarks count the server's share of a message with it."""
        assert self.proc is not None, "start() first"
        ticks = os.sysconf("SC_CLK_TCK")
        total = 0
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:  # exited meanwhile
                continue
            if stat.parent.name == str(self.proc.pid):
                total += sum(int(f) for f in fields[11:15])  # utime, stime, cutime, cstime
            elif fields[1] == str(self.proc.pid):  # ppid
                total += int(fields[11]) + int(fields[12])
        return total / ticks

    def stop(self) -> None:
        """Fast shutdown (SIGINT: open sessions are ended), then the cluster is deleted (unless
        it is kept: ``keep_at``)."""
        if self.proc is not None:
            self.proc.send_signal(2)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
            self.proc = None
        self._remove()

    def _remove(self) -> None:
        if self.workdir is not None and self.keep_at is None:
            shutil.rmtree(self.workdir, ignore_errors=True)
        self.workdir = None

    def __enter__(self) -> Postgres:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
