"""Credentials for tests that call the API: a token of each role, seeded straight into the
store the way ``secagg token create`` stores one (its sha256 only)."""

from __future__ import annotations

import time
from collections.abc import Callable

from fastapi.testclient import TestClient

from aggregator import store
from aggregator.api import create_app
from aggregator.auth import secrets
from aggregator.auth.roles import Role
from aggregator.config import AggregatorConfig
from aggregator.liveness import Liveness

TOKENS = {role: f"sga_tests-{role.name}-{'0' * 30}" for role in Role}
"""A fixed token per role (only ever seeded into a test's own store)."""
ADMIN_TOKEN = TOKENS[Role.admin]
HEADERS = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
"""An admin's header: what the tests send unless they test access itself."""


def headers(role: Role) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[role]}"}


def seed_tokens(db_path: store.schema.Target) -> None:
    """Migrate the store at ``db_path`` and give it the test token of each role (once)."""
    store.migrate(db_path)
    conn = store.connect(db_path)
    try:
        with store.transaction(conn):
            for role, token in TOKENS.items():
                if store.access.token_by_hash(conn, secrets.digest(token)) is None:
                    store.access.add_token(
                        conn,
                        name=f"tests-{role.name}",
                        role=role.name,
                        token_sha256=secrets.digest(token),
                        hint=secrets.hint(token),
                        now_ts=time.time(),
                    )
    finally:
        conn.close()


def api_client(
    config: AggregatorConfig, *, liveness: Callable[[], Liveness] | None = None
) -> TestClient:
    """A TestClient of the API over ``config``'s store, sending an admin token."""
    seed_tokens(config.store.path)
    return TestClient(create_app(config, liveness=liveness), headers=HEADERS)
