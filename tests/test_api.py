"""The REST API, every route of its OpenAPI schema, against a store built through the real
ingest code path (the writer's transaction, the notification sender and a real webhook server):
lists with their filters and pages, single items, the 404 and 422 answers, and health."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from aggregator import store
from aggregator.api import create_app
from aggregator.config import AggregatorConfig
from aggregator.liveness import Liveness
from aggregator.notify import NotificationSender
from tests.support import wait_for
from tests.support.auth import HEADERS, api_client, seed_tokens
from tests.support.ingest import (
    JPEG,
    JPEG_SHA,
    MODEL_SHA,
    RULES_SHA,
    T0,
    make_config,
    payload,
    status_payload,
    store_payloads,
    threat_payload,
)
from tests.support.servers import WebhookServer

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

COVERED = {
    ("GET", "/api/ping"),
    ("GET", "/api/health"),
    ("GET", "/api/threats"),
    ("GET", "/api/events"),
    ("GET", "/api/events/{event_id}"),
    ("GET", "/api/events/{event_id}/snapshot.jpg"),
    ("GET", "/api/agents"),
    ("GET", "/api/agents/{agent_id}"),
    ("GET", "/api/notifications"),
    ("GET", "/api/notifications/{notification_id}"),
    ("GET", "/api/provenance/{artifact_id}"),
    ("POST", "/api/plots"),
    ("GET", "/api/plots/{plot_id}.png"),
    ("GET", "/api/plots/{plot_id}"),
    # over-the-air updates: here on a store without releases; with releases, rollouts and
    # real agents over real HTTP in tests/test_ota_*.py
    ("GET", "/api/releases"),
    ("GET", "/api/releases/{release_id}"),
    ("GET", "/api/agents/{agent_id}/history"),
    ("GET", "/api/rollouts"),
    ("GET", "/api/rollouts/{rollout_id}"),
    ("GET", "/api/rollouts/{rollout_id}/compare"),
    ("GET", "/ota/v1/metadata/{name}"),
    ("GET", "/ota/v1/targets/{kind}/{name}"),
    # access control, every route by role: tests/test_access.py; tokens there too
    ("GET", "/api/me"),
    ("GET", "/api/tokens"),
    ("POST", "/api/tokens"),
    ("DELETE", "/api/tokens/{token_id}"),
    ("GET", "/api/links/events/{event_id}/snapshot.jpg"),
    # the review pages' actions: tests/test_web.py and tests/test_web_browser.py
    ("POST", "/api/events/review"),
    ("POST", "/api/events/{event_id}/reproduce"),
    ("GET", "/api/snapshots/{sha256}.jpg"),
    # metrics: tests/test_metrics.py; run logs: tests/test_runlogs.py
    ("GET", "/metrics"),
    ("GET", "/api/logs"),
}
"""The routes this file tests; a new route fails test_every_route_is_covered until it is."""


@dataclass
class Site:
    client: TestClient
    config: AggregatorConfig
    webhook: list[tuple[dict[str, str], dict[str, Any]]]
    yard: list[dict[str, Any]]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """Two agents. cam-host: a yard visit of three frames (event 1), a critical threat at the
    door (event 2), a second yard visit (event 3), then a status. gate-host: one threat (event
    4). A webhook notifier that fails once, then takes every notification."""
    work = tmp_path_factory.mktemp("api")
    with WebhookServer(fail_first=1) as hook:
        notifier = {"name": "soc", "type": "webhook", "url": hook.url}
        config = make_config(
            work, notify={"notifiers": [{**notifier, "retry": {"backoff_base_s": 0.1}}]}
        )
        yard = [payload(at_s=t) for t in (0, 1, 2)]
        door = threat_payload(at_s=5, camera="door", severity="critical", score=0.95)
        later = payload(at_s=60)
        gate = threat_payload(agent_id="gate-host", camera="gate", at_s=61)
        status = status_payload(sent_at=T0 + timedelta(seconds=62))
        store_payloads(config, [*yard, door, later, gate, status])
        sender = NotificationSender(config)
        sender.start()
        try:
            conn = store.connect(config.store.path, readonly=True)
            try:
                wait_for(
                    lambda: (
                        not store.notifications.list_notifications(conn, limit=10, state="pending")
                    ),
                    what="every notification sent",
                )
            finally:
                conn.close()
        finally:
            sender.stop()
    seed_tokens(config.store.path)
    yield Site(TestClient(create_app(config), headers=HEADERS), config, hook.requests, yard)


def test_every_route_is_covered(site: Site) -> None:
    schema = site.client.get("/openapi.json").json()
    routes = {(m.upper(), path) for path, ops in schema["paths"].items() for m in ops}
    assert routes == COVERED


def test_ota_routes_without_releases(site: Site) -> None:
    get = site.client.get
    assert get("/api/releases").json() == []
    assert get("/api/releases/1").status_code == 404
    assert get("/api/rollouts").json() == []
    assert get("/api/rollouts/1").status_code == 404
    assert get("/api/rollouts/1/compare").status_code == 404
    assert get("/api/agents/cam-host/history").json() == {
        "agent_id": "cam-host",
        "periods": [],
        "reports": [],
    }
    # the repository is not served while ota.enabled is false
    assert get("/ota/v1/metadata/timestamp.json").status_code == 404
    assert get("/ota/v1/targets/model/x.onnx").status_code == 404


# events ----------------------------------------------------------------------------------------


def test_events_newest_first_with_their_state_and_cameras(site: Site) -> None:
    events = site.client.get("/api/events").json()
    assert [(e["id"], e["camera"], e["threat_count"]) for e in events] == [
        (4, "gate", 1),
        (3, "yard", 1),
        (2, "door", 1),
        (1, "yard", 3),
    ]
    one = events[-1]
    assert (one["state"], one["severity"], one["cameras"]) == ("ended", "high", ["yard"])
    assert one["ended_at"] == one["last_seen_at"]  # ended at its last threat
    assert events[1]["state"] == "open"  # cam-host's clock (its status) is within the cutoff


@pytest.mark.parametrize(
    ("params", "ids"),
    [
        ({"camera": "yard"}, [3, 1]),
        ({"agent_id": "gate-host"}, [4]),
        ({"rule": "person_on_premises"}, [4, 3, 2, 1]),
        ({"rule": "nothing"}, []),
        ({"state": "open"}, [4, 3]),
        ({"state": "ended"}, [2, 1]),
        ({"since": (T0 + timedelta(seconds=30)).isoformat()}, [4, 3]),
        ({"since": "2026-11-28T12:00:30"}, [4, 3]),  # naive: UTC
        ({"limit": 2}, [4, 3]),
        ({"limit": 2, "before_id": 3}, [2, 1]),
        ({"camera": "yard", "before_id": 3}, [1]),
    ],
)
def test_event_filters_and_pages(site: Site, params: dict[str, Any], ids: list[int]) -> None:
    r = site.client.get("/api/events", params=params)
    assert r.status_code == 200, r.text
    assert [e["id"] for e in r.json()] == ids


BIG = 99999999999999999999  # past 64 bits: SQLite cannot hold it


@pytest.mark.parametrize(
    ("path", "params", "status"),
    [
        ("/api/events", {"state": "closed"}, 422),
        ("/api/events", {"limit": 0}, 422),
        ("/api/events", {"limit": 1001}, 200),  # capped at api.page_size_max
        ("/api/events", {"limit": BIG}, 422),
        ("/api/events", {"since": "yesterday"}, 422),
        ("/api/events", {"before_id": 0}, 422),
        ("/api/events", {"before_id": BIG}, 422),
        ("/api/events", {"since": "0001-01-01T00:00:00+14:00"}, 200),  # the calendar's edges
        ("/api/events", {"since": "9999-12-31T23:59:59-14:00"}, 200),
        ("/api/events", {"since": "0001-01-01"}, 200),
        ("/api/threats", {"limit": 0}, 422),
        ("/api/threats", {"before_id": "x"}, 422),
        ("/api/threats", {"since": "9999-12-31T23:59:59-14:00"}, 200),
        ("/api/notifications", {"state": "lost"}, 422),
        ("/api/notifications", {"event_id": BIG}, 422),
        ("/api/events/x", {}, 422),
        (f"/api/events/{BIG}", {}, 422),
        (f"/api/events/{2**63 - 1}", {}, 404),
        (f"/api/events/{BIG}/snapshot.jpg", {}, 422),
        ("/api/notifications/x", {}, 422),
        (f"/api/notifications/{BIG}", {}, 422),
        ("/api/provenance/nonsense", {}, 404),  # no artifact has that id
        ("/api/provenance/event:1", {"direction": "sideways"}, 422),
        (f"/api/provenance/event:{BIG}", {}, 404),
    ],
)
def test_bad_queries_are_answered_never_a_500(
    site: Site, path: str, params: dict[str, Any], status: int
) -> None:
    assert site.client.get(path, params=params).status_code == status


def test_one_event_with_its_threats_and_their_provenance(site: Site) -> None:
    event = site.client.get("/api/events/1").json()
    assert event["threat_count"] == len(event["threats"]) == 3
    assert [t["provenance"]["message_id"] for t in event["threats"]] == [
        p["message_id"] for p in site.yard
    ]
    prov = event["threats"][0]["provenance"]
    assert (prov["model_sha256"], prov["rules_sha256"], prov["snapshot_sha256"]) == (
        MODEL_SHA,
        RULES_SHA,
        JPEG_SHA,
    )
    assert prov["frame_kind"] == "video" and prov["frame_source"].endswith("#0")
    assert site.client.get("/api/events/99").status_code == 404


def test_the_event_snapshot(site: Site) -> None:
    snap = site.client.get("/api/events/1/snapshot.jpg")
    assert snap.status_code == 200 and snap.headers["content-type"] == "image/jpeg"
    assert snap.content == JPEG and snap.headers["x-snapshot-sha256"] == JPEG_SHA
    assert site.client.get("/api/events/2/snapshot.jpg").status_code == 404  # none was sent
    assert site.client.get("/api/events/99/snapshot.jpg").status_code == 404


# threats ---------------------------------------------------------------------------------------


def test_threats_newest_first_with_filters_and_pages(site: Site) -> None:
    threats = site.client.get("/api/threats").json()
    assert [t["event_id"] for t in threats] == [4, 3, 2, 1, 1, 1]
    assert threats[2]["severity"] == "critical" and threats[2]["score"] == pytest.approx(0.95)
    assert threats[0]["xyxy"] == [10.0, 20.0, 110.0, 220.0]
    first, rest = threats[:2], threats[2:]
    page = site.client.get("/api/threats", params={"before_id": first[-1]["id"]}).json()
    assert page == rest
    yard = site.client.get("/api/threats", params={"camera": "yard", "limit": 2}).json()
    assert [t["event_id"] for t in yard] == [3, 1]
    since = site.client.get("/api/threats", params={"since": "2026-11-28T12:00:02Z"}).json()
    assert [t["event_id"] for t in since] == [4, 3, 2, 1]
    assert site.client.get("/api/threats", params={"agent_id": "nobody"}).json() == []


# agents ----------------------------------------------------------------------------------------


def test_agents_and_one_agent(site: Site) -> None:
    agents = site.client.get("/api/agents").json()
    assert [a["agent_id"] for a in agents] == ["cam-host", "gate-host"]
    cam = site.client.get("/api/agents/cam-host").json()
    assert (cam["state"], cam["provider"], cam["outbox_depth"]) == (
        "online",
        "CPUExecutionProvider",
        2,
    )
    assert cam["versions"]["model_sha256"] == MODEL_SHA
    yard = {"name": "yard", "state": "running", "counters": {"captured": 7}}
    assert cam["cameras"] == [{**yard, "fps": None, "detail": None}]  # fps: after 2 statuses
    assert cam["clock_at"] == "2026-11-28T12:01:02Z"  # its status's sent_at
    gate = agents[1]
    assert gate["last_status_at"] is None and gate["cameras"] == []  # no status yet
    assert site.client.get("/api/agents/nobody").status_code == 404


# notifications ---------------------------------------------------------------------------------


def test_notifications_and_their_attempts(site: Site) -> None:
    listed = site.client.get("/api/notifications", params={"event_id": 1}).json()
    (first,) = listed
    assert (first["kind"], first["state"], first["channel"]) == ("new", "sent", "webhook")
    detail = site.client.get(f"/api/notifications/{first['id']}").json()
    outcomes = [a["outcome"] for a in detail["attempt_log"]]
    assert outcomes[-1] == "sent" and detail["attempts"] == len(outcomes)
    assert detail["content"]["event"]["event_id"] == 1
    assert detail["content"] in [body for _, body in site.webhook]
    failed = [a for d in _all_details(site) for a in d["attempt_log"] if a["outcome"] == "error"]
    assert len(failed) == 1 and "HTTP 503" in failed[0]["error"]  # the webhook failed once
    assert site.client.get("/api/notifications", params={"state": "failed"}).json() == []
    assert site.client.get("/api/notifications/999").status_code == 404


def _all_details(site: Site) -> list[dict[str, Any]]:
    listed = site.client.get("/api/notifications").json()
    return [site.client.get(f"/api/notifications/{n['id']}").json() for n in listed]


def test_notification_filters_and_pages(site: Site) -> None:
    listed = site.client.get("/api/notifications").json()
    assert [n["event_id"] for n in listed] == [4, 3, 2, 1]  # one per event, newest first
    page = site.client.get(
        "/api/notifications", params={"before_id": listed[1]["id"], "limit": 1}
    ).json()
    assert [n["event_id"] for n in page] == [2]
    by_notifier = site.client.get("/api/notifications", params={"notifier": "soc"}).json()
    assert len(by_notifier) == 4
    assert site.client.get("/api/notifications", params={"notifier": "mail"}).json() == []


# provenance ------------------------------------------------------------------------------------


def test_the_provenance_of_an_event(site: Site) -> None:
    r = site.client.get("/api/provenance/event:1")
    assert r.status_code == 200
    doc = r.json()
    ids = {n["id"] for n in doc["nodes"]}
    assert {f"model:{MODEL_SHA}", f"rules:{RULES_SHA}", f"frame:{JPEG_SHA}"} <= ids
    event = next(n for n in doc["nodes"] if n["id"] == "event:1")
    assert event["meta"]["threat_count"] == 3 and event["meta"]["camera"] == "yard"
    assert {"used", "wasGeneratedBy"} == {e["type"] for e in doc["edges"]}
    # Its frames' detect runs used the model. (Identical detections of other frames, a content-
    # addressed artifact, bring their runs into the graph too.)
    yard = {p["lineage_id"] for p in site.yard}
    detect_runs = [
        n["id"] for n in doc["nodes"] if n.get("kind") == "detect" and n["lineage_id"] in yard
    ]
    assert len(detect_runs) == 3
    assert all(
        {"from": run, "to": f"model:{MODEL_SHA}", "type": "used", "role": "model"} in doc["edges"]
        for run in detect_runs
    )


def test_the_provenance_downstream_and_by_prefix(site: Site) -> None:
    down = site.client.get(
        f"/api/provenance/frame:{JPEG_SHA}", params={"direction": "downstream"}
    ).json()
    assert down["direction"] == "downstream"
    assert {"event:1", "event:3", "notification:1"} <= {n["id"] for n in down["nodes"]}
    short = site.client.get(f"/api/provenance/model:{MODEL_SHA[:10]}").json()
    assert short["root"] == f"model:{MODEL_SHA}"
    assert site.client.get("/api/provenance/event:99").status_code == 404
    assert site.client.get("/api/provenance/model:ffff").status_code == 404


def test_an_ambiguous_prefix_is_409_with_the_candidates(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    shas = ["abcd" + "1" * 60, "abcd" + "2" * 60]
    store_payloads(config, [threat_payload(at_s=i, frame_sha256=s) for i, s in enumerate(shas)])
    client = api_client(config)
    r = client.get("/api/provenance/frame:abcd")
    assert r.status_code == 409
    assert r.json()["detail"]["candidates"] == [f"frame:{s}" for s in shas]
    assert client.get("/api/provenance/frame:abcd1").json()["root"] == f"frame:{shas[0]}"


# plots -----------------------------------------------------------------------------------------


def test_plots(site: Site) -> None:
    r = site.client.post("/api/plots", json={"kind": "timeline"})
    assert r.status_code == 201, r.text
    doc = r.json()
    assert doc["artifact_id"] == f"plot:{doc['id']}" and doc["event_ids"] == [1, 2, 3, 4]
    png = site.client.get(doc["png_url"])
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    assert hashlib.sha256(png.content).hexdigest() == doc["id"]
    again = site.client.get(f"/api/plots/{doc['id']}").json()
    assert again["query"]["kind"] == "timeline" and again["created_at"] == doc["created_at"]
    prov = site.client.get(f"/api/provenance/plot:{doc['id']}").json()
    assert f"model:{MODEL_SHA}" in {n["id"] for n in prov["nodes"]}
    for query, status in (
        ({"kind": "timeline", "camera": "x"}, 404),  # nothing to plot
        ({"kind": "pie"}, 422),
        ({"kind": "timeline", "colour": "red"}, 422),
    ):
        assert site.client.post("/api/plots", json=query).status_code == status
    assert site.client.get("/api/plots/" + "0" * 64 + ".png").status_code == 404
    assert site.client.get("/api/plots/" + "0" * 64).status_code == 404


# health ----------------------------------------------------------------------------------------


def test_ping_answers_without_the_store(site: Site) -> None:
    assert site.client.get("/api/ping").json() == {"ok": True}


def test_health_without_an_ingest_is_503_with_the_counts(site: Site) -> None:
    r = site.client.get("/api/health")
    assert r.status_code == 503
    body = r.json()
    assert (body["status"], body["broker_connected"], body["writer_alive"]) == (
        "degraded",
        False,
        False,
    )
    assert body["problems"] == ["broker not connected", "store writer not running"]
    counts = {k: body[k] for k in ("messages", "threats", "events", "open_events", "agents")}
    assert counts == {"messages": 6, "threats": 6, "events": 4, "open_events": 2, "agents": 2}
    assert body["counters"]["stored"] == 6 and body["counters"]["status"] == 1
    assert body["rejected"] == {}


@pytest.mark.parametrize(
    ("liveness", "status", "problem"),
    [
        (Liveness(broker_connected=True, writer_alive=True), 200, None),
        (Liveness(broker_connected=False, writer_alive=True), 503, "broker not connected"),
        (Liveness(broker_connected=True, writer_alive=False), 503, "store writer not running"),
        (
            Liveness(broker_connected=True, writer_alive=True, writer_busy_s=9, writer_stall_s=5),
            503,
            "store writer stalled",
        ),
        (
            Liveness(broker_connected=True, writer_alive=True, writer_busy_s=4, writer_stall_s=5),
            200,
            None,
        ),
    ],
)
def test_health_is_503_when_degraded(
    site: Site, liveness: Liveness, status: int, problem: str | None
) -> None:
    client = api_client(site.config, liveness=lambda: liveness)
    r = client.get("/api/health")
    assert r.status_code == status
    body = r.json()
    assert body["status"] == ("ok" if status == 200 else "degraded")
    assert body["messages"] == 6  # the same body either way
    if problem is None:
        assert body["problems"] == []
    else:
        assert any(p.startswith(problem) for p in body["problems"])


def test_health_without_a_store_is_503(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    r = TestClient(create_app(config), headers=HEADERS).get("/api/health")  # no store: 503
    assert r.status_code == 503 and "store not available" in r.json()["detail"]
