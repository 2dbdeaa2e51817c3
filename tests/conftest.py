"""Shared fixtures: a private Mosquitto per test session, a private PostgreSQL cluster (started
only when a test asks for it), a store on each backend, the sample model, the sample clip."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest

from aggregator import store
from demo.broker import Mosquitto
from demo.footage import sample_clip
from demo.postgres import Postgres
from tests.support import MODEL_MANIFEST, ROOT
from tests.support.ingest import Harness, ingest_config, running_ingest


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    """A private Mosquitto on a free loopback port for the whole test session."""
    with Mosquitto(tmp_path_factory.mktemp("mosquitto")) as b:
        yield b


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    """A private PostgreSQL cluster (Debian's initdb, a free loopback port, fsync off) for the
    whole test session; deleted at the end."""
    with Postgres() as pg:
        yield pg


_databases = itertools.count(1)

BACKENDS = ("sqlite", "postgresql")


@pytest.fixture(params=BACKENDS)
def store_target(request: pytest.FixtureRequest, tmp_path: Path) -> store.schema.Target:
    """A new, migrated store on each backend in turn: a SQLite file, or a PostgreSQL URL (a
    new database of the session's cluster)."""
    if request.param == "sqlite":
        target: store.schema.Target = tmp_path / "secagg.sqlite"
    else:
        pg: Postgres = request.getfixturevalue("postgres")
        target = pg.create_database(f"store_{next(_databases)}")
    store.migrate(target)
    return target


@pytest.fixture
def store_conn(store_target: store.schema.Target) -> Iterator[store.Connection]:
    """A read-write connection to :func:`store_target`, closed at the end."""
    conn = store.connect(store_target)
    try:
        yield conn
    finally:
        conn.close()


@pytest.fixture(scope="session")
def clip_path() -> Path:
    """The deterministic sample clip (cached under var/cache)."""
    return sample_clip(ROOT / "var" / "cache")


@pytest.fixture(scope="session")
def sample_detector():  # type: ignore[no-untyped-def]
    """The real sample model in a real ONNX Runtime session (loaded once)."""
    from modelrt import Detector, load_manifest

    return Detector(load_manifest(MODEL_MANIFEST), providers=["CPUExecutionProvider"])


@pytest.fixture
def harness(broker: Mosquitto, tmp_path: Path) -> Iterator[Harness]:
    with running_ingest(ingest_config(broker, tmp_path), broker) as h:
        yield h
