"""A bounded, deterministic property-based run of the REST API's own OpenAPI schema
(schemathesis): for every operation, generated paths, queries and bodies (64-bit overflows,
calendar edges, odd strings included) never get a 5xx, and every response conforms to the
schema: a documented status code, the documented content type, a body of the documented
shape. The store holds real events, threats, agents and a plot, so lookups also find things.

(Schemathesis's own pytest plugin does not run under this pytest; each operation's strategy is
driven with Hypothesis here instead, with a fixed seed: the same cases on every run.)"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.specs.openapi.schemas import OpenApiSchema

from aggregator import store
from aggregator.api import create_app
from aggregator.auth import accounts
from aggregator.auth.roles import Role
from aggregator.ingest import Ingest
from demo.broker import Mosquitto
from tests.support import wait_for
from tests.support.auth import seed_tokens
from tests.support.ingest import T0, ingest_config, payload, status_payload, store_payloads

EXAMPLES = 100
"""Generated cases per operation."""
OPERATIONS = sorted(
    f"{method.upper()} {path}"
    for path, methods in create_app().openapi()["paths"].items()
    for method in methods
)


@pytest.fixture(scope="module")
def api_schema(
    broker: Mosquitto, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OpenApiSchema]:
    """The API of a running ingest (so health is what it is: ok) over a store with data."""
    work = tmp_path_factory.mktemp("schema")
    config = ingest_config(broker, work, store={"plots_dir": str(work / "plots")})
    start_s = (datetime.now(UTC) - T0).total_seconds()
    store_payloads(
        config,
        [payload(at_s=start_s + i, camera=("yard", "door")[i % 2]) for i in range(6)]
        + [status_payload(sent_at=datetime.now(UTC))],
    )
    seed_tokens(config.store.path)
    ingest = Ingest(config)
    ingest.start()
    try:
        wait_for(ingest.connected.is_set, what="ingest connected")
        app = create_app(config, liveness=ingest.liveness)
        yield schemathesis.openapi.from_asgi("/openapi.json", app)
    finally:
        ingest.stop()


def new_admin_token(api_schema: OpenApiSchema) -> str:
    path: Path = api_schema.app.state.config.store.path
    conn = store.connect(path)
    try:
        with store.transaction(conn):
            return accounts.create_token(conn, name="schemathesis", role=Role.admin).token
    finally:
        conn.close()


@pytest.mark.parametrize("operation", OPERATIONS)
def test_the_api_keeps_to_its_schema(api_schema: OpenApiSchema, operation: str) -> None:
    method, path = operation.split(" ", 1)
    found = api_schema[path][method]
    # an admin token of its own: a generated DELETE /api/tokens/{id} may revoke an earlier one
    admin = {"Authorization": f"Bearer {new_admin_token(api_schema)}"}

    @given(case=found.as_strategy())
    @settings(
        max_examples=EXAMPLES,
        derandomize=True,
        database=None,
        deadline=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    def run(case: schemathesis.Case[Any]) -> None:
        case.call_and_validate(headers=admin)

    run()


def test_the_schema_run_covers_every_route() -> None:
    assert "GET /api/events/{event_id}" in OPERATIONS and "POST /api/plots" in OPERATIONS
    assert len(OPERATIONS) >= 13
