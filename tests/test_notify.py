"""Notifications of threat events against a real SMTP server (aiosmtpd), a real HTTP server,
a real Mosquitto and the real ingest: one email per event, retries while the mail server is
down, escalation, repeats, cooldown, site correlation, webhooks."""

from __future__ import annotations

import base64
import itertools
import json
import ssl
import subprocess
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from pydantic import ValidationError

from aggregator.config import AggregatorConfig
from aggregator.ingest import Ingest
from aggregator.notify import notification_content_sha256
from demo.broker import Mosquitto, free_port
from tests.support import wait_for
from tests.support.auth import api_client
from tests.support.ingest import T0, Harness, ingest_config, subscribe_json, threat_payload
from tests.support.servers import SmtpServer, WebhookServer

JPEG = cv2.imencode(".jpg", np.full((48, 64, 3), 90, np.uint8))[1].tobytes()


def smtp_notifier(port: int, **extra: object) -> dict[str, Any]:
    return {
        "name": "mail",
        "type": "smtp",
        "host": "127.0.0.1",
        "port": port,
        "from_addr": "secagg@example.org",
        "to": ["guard@example.org"],
        "timeout_s": 5,
        "retry": {"backoff_base_s": 0.2, "backoff_max_s": 0.5},
        **extra,
    }


def now_s() -> float:
    """Capture-time offset (seconds after T0) of the present moment: events stay open."""
    return (datetime.now(UTC) - T0).total_seconds()


def threat(
    *, at_s: float, camera: str = "yard", severity: str = "high", score: float = 0.8
) -> dict[str, Any]:
    return {
        **threat_payload(at_s=at_s, camera=camera, severity=severity, score=score),
        "snapshot_jpeg_b64": base64.b64encode(JPEG).decode(),
    }


class NotifyHarness(Harness):
    def notifications(self) -> list[dict[str, Any]]:
        return [dict(r) for r in self.rows("SELECT * FROM notifications ORDER BY id")]

    def settled(self) -> bool:
        return not self.rows("SELECT 1 FROM notifications WHERE state = 'pending'")

    def send_all(self, payloads: list[dict[str, Any]]) -> None:
        stored = self.ingest.stats.stored
        for p in payloads:
            self.send(p)
        wait_for(lambda: self.ingest.stats.stored == stored + len(payloads), what="stored")


MakeIngest = Callable[..., NotifyHarness]
"""The ``make_ingest`` fixture: an ingest with notifiers (keyword config sections)."""


@pytest.fixture
def make_ingest(broker: Mosquitto, tmp_path: Path) -> Iterator[MakeIngest]:
    started: list[NotifyHarness] = []

    def make(
        *,
        notifiers: list[dict[str, Any]],
        events: dict[str, Any] | None = None,
        notify: dict[str, Any] | None = None,
    ) -> NotifyHarness:
        config = ingest_config(
            broker,
            tmp_path,
            events={"sweep_interval_s": 0.2, **(events or {})},
            api={"public_url": "https://secagg.example.org"},
            notify={"notifiers": notifiers, **(notify or {})},
        )
        ingest = Ingest(config)
        ingest.start()
        wait_for(ingest.connected.is_set, what="ingest connected")
        h = NotifyHarness(ingest, broker, config.store.path)
        started.append(h)
        return h

    yield make
    for h in started:
        h.pub.loop_stop()
        h.pub.disconnect()
        h.ingest.stop()


@pytest.fixture
def smtp() -> Iterator[SmtpServer]:
    server = SmtpServer(free_port()).start()
    yield server
    server.stop()


def test_a_burst_of_threat_frames_sends_one_email(
    make_ingest: MakeIngest, smtp: SmtpServer
) -> None:
    # group_wait_s: the first (and only) email waits for the burst and sums it up
    h = make_ingest(notifiers=[smtp_notifier(smtp.port)], notify={"group_wait_s": 3})
    h.send_all([threat(at_s=i * 0.25, score=0.5 + i / 200) for i in range(40)])
    wait_for(lambda: smtp.messages, what="an email")
    wait_for(h.settled, what="no notification pending")
    (mail,) = smtp.messages
    assert "HIGH person_on_premises on yard" in mail["Subject"]
    assert mail["To"] == "guard@example.org" and mail["Message-ID"].startswith("<secagg.1.")
    text = mail.get_body(preferencelist=("plain",)).get_content()  # type: ignore[union-attr]
    assert "Details:  https://secagg.example.org/events/1" in text  # the event's page
    assert "Threats:  40, top person 0.70" in text and "Agent:    cam-host" in text
    (attachment,) = list(mail.iter_attachments())
    assert attachment.get_content_type() == "image/jpeg"
    assert attachment.get_content() == JPEG
    (row,) = h.notifications()
    assert (row["kind"], row["state"], row["attempts"], row["channel"]) == (
        "new",
        "sent",
        1,
        "smtp",
    )
    assert row["content_sha256"] == notification_content_sha256(row["content_json"])
    assert row["code_version"]
    (attempt,) = h.rows("SELECT * FROM notification_attempts")
    assert attempt["outcome"] == "sent" and attempt["notification_id"] == row["id"]


def test_two_intrusions_send_two_emails(make_ingest: MakeIngest, smtp: SmtpServer) -> None:
    h = make_ingest(notifiers=[smtp_notifier(smtp.port)])
    h.send_all([threat(at_s=t) for t in (0, 1, 2, 3, 40, 41, 42)])
    wait_for(lambda: len(smtp.messages) == 2, what="two emails")
    wait_for(h.settled, what="no notification pending")
    assert len(smtp.messages) == 2
    assert [n["event_id"] for n in h.notifications()] == [1, 2]


def test_frames_without_threats_send_nothing(make_ingest: MakeIngest, smtp: SmtpServer) -> None:
    h = make_ingest(notifiers=[smtp_notifier(smtp.port)])
    h.send({**threat(at_s=0), "threats": []})  # a frame without threats is refused
    status = {"schema": "secagent.status/1", "agent_id": "cam-host", "state": "online"}
    h.send({**status, "sent_at": T0.isoformat()}, topic="secagent/v1/cam-host/status")
    wait_for(lambda: h.ingest.stats.rejected["schema_violation"] == 1, what="refused")
    wait_for(lambda: h.ingest.stats.statuses >= 1, what="status stored")
    assert h.notifications() == [] and smtp.messages == []
    h.send_all([threat(at_s=0)])  # the path works: a threat is notified
    wait_for(lambda: smtp.messages, what="an email")


def test_an_email_is_sent_after_the_mail_server_comes_back(make_ingest: MakeIngest) -> None:
    port = free_port()
    h = make_ingest(notifiers=[smtp_notifier(port)])
    h.send_all([threat(at_s=0)])
    wait_for(
        lambda: len(h.rows("SELECT * FROM notification_attempts")) >= 3,
        what="three failed attempts while the server is down",
    )
    server = SmtpServer(port).start()
    try:
        wait_for(lambda: server.messages, what="the email after the server came back")
        wait_for(h.settled, what="no notification pending")
        assert len(server.messages) == 1
        (row,) = h.notifications()
        attempts = h.rows("SELECT * FROM notification_attempts ORDER BY attempt")
        assert row["state"] == "sent" and row["attempts"] == len(attempts) >= 4
        assert [a["outcome"] for a in attempts] == ["error"] * (len(attempts) - 1) + ["sent"]
        assert "ConnectionRefusedError" in attempts[0]["error"]
        waits = [b["started_ts"] - a["finished_ts"] for a, b in itertools.pairwise(attempts)]
        assert all(w >= 0.19 for w in waits)  # backoff between attempts
    finally:
        server.stop()


def test_a_higher_severity_notifies_once_more(make_ingest: MakeIngest, smtp: SmtpServer) -> None:
    h = make_ingest(notifiers=[smtp_notifier(smtp.port)])
    h.send_all([threat(at_s=0)])
    wait_for(lambda: smtp.messages, what="the first email")
    h.send_all([threat(at_s=2, severity="critical"), threat(at_s=3, severity="critical")])
    h.send_all([threat(at_s=4, severity="high"), threat(at_s=5, severity="medium")])
    wait_for(lambda: len(smtp.messages) == 2, what="the escalation email")
    wait_for(h.settled, what="no notification pending")
    assert len(smtp.messages) == 2
    assert (
        "CRITICAL" in smtp.messages[1]["Subject"] and "severity rose" in smtp.messages[1]["Subject"]
    )
    assert [(n["kind"], n["state_key"]) for n in h.notifications()] == [
        ("new", "new"),
        ("update", "severity:critical"),
    ]


def test_group_wait_folds_an_early_escalation_into_the_first_email(
    make_ingest: MakeIngest, smtp: SmtpServer
) -> None:
    h = make_ingest(notifiers=[smtp_notifier(smtp.port)], notify={"group_wait_s": 1.0})
    h.send_all([threat(at_s=0), threat(at_s=1, severity="critical")])
    wait_for(lambda: smtp.messages, what="the email")
    wait_for(h.settled, what="no notification pending")
    (mail,) = smtp.messages
    assert "CRITICAL" in mail["Subject"]
    (row,) = h.notifications()
    assert row["sent_ts"] - row["created_ts"] >= 1.0


def test_a_long_event_is_notified_again_every_repeat_interval(
    make_ingest: MakeIngest, smtp: SmtpServer
) -> None:
    h = make_ingest(
        notifiers=[smtp_notifier(smtp.port)],
        events={"cutoff_s": 60},
        notify={"repeat_interval_s": 0.5},
    )
    h.send_all([threat(at_s=now_s())])  # captured now: the event stays open for 60 s
    wait_for(lambda: len(smtp.messages) >= 3, what="two repeats")
    keys = [n["state_key"] for n in h.notifications()]
    assert keys[:3] == ["new", "repeat:1", "repeat:2"]
    assert "still going on" in smtp.messages[1]["Subject"]


def test_a_camera_cooling_down_is_not_notified(make_ingest: MakeIngest, smtp: SmtpServer) -> None:
    h = make_ingest(notifiers=[smtp_notifier(smtp.port)], notify={"cooldown_s": 60})
    h.send_all([threat(at_s=0), threat(at_s=1)])
    h.send_all([threat(at_s=40), threat(at_s=41)])  # a new event, 39 s after: cooling down
    h.send_all([threat(at_s=40, camera="door")])  # another camera is not
    h.send_all([threat(at_s=200)])  # the cooldown is over
    wait_for(h.settled, what="no notification pending")
    rows = h.notifications()
    assert [(r["event_id"], r["state"]) for r in rows] == [
        (1, "sent"),
        (2, "suppressed"),
        (3, "sent"),
        (4, "sent"),
    ]
    assert "cooling down" in rows[1]["last_error"]
    wait_for(lambda: len(smtp.messages) == 3, what="three emails")


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_cameras_of_one_site_make_one_event(make_ingest: MakeIngest, smtp: SmtpServer) -> None:
    h = make_ingest(
        notifiers=[smtp_notifier(smtp.port)],
        events={"sites": {"yard": "home", "door": "home"}, "site_window_s": 5},
        notify={"group_wait_s": 2},
    )
    h.send_all([threat(at_s=0), threat(at_s=1), threat(at_s=3, camera="door")])
    h.send_all([threat(at_s=20, camera="door")])  # beyond the site window: a new incident
    wait_for(lambda: len(smtp.messages) == 2, what="two emails")
    events = h.rows("SELECT * FROM events ORDER BY id")
    assert [json.loads(e["cameras"]) for e in events] == [["yard", "door"], ["door"]]
    assert [e["threat_count"] for e in events] == [3, 1]
    assert "on yard, door" in smtp.messages[0]["Subject"]

    listed = api_client(h.ingest.config).get("/api/events").json()
    assert [e["cameras"] for e in listed] == [["door"], ["yard", "door"]]


def test_group_by_rule_only_joins_cameras(make_ingest: MakeIngest, smtp: SmtpServer) -> None:
    h = make_ingest(notifiers=[smtp_notifier(smtp.port)], events={"group_by": ["rule"]})
    h.send_all([threat(at_s=0), threat(at_s=1, camera="door")])
    wait_for(lambda: smtp.messages, what="an email")
    wait_for(h.settled, what="no notification pending")
    (event,) = h.rows("SELECT * FROM events")
    assert event["group_key"] == "rule=person_on_premises" and event["threat_count"] == 2
    assert len(smtp.messages) == 1


def test_a_webhook_receives_the_event_as_json_after_a_retry(make_ingest: MakeIngest) -> None:
    with WebhookServer(fail_first=1) as hook:
        h = make_ingest(
            notifiers=[
                {
                    "name": "soc",
                    "type": "webhook",
                    "url": hook.url,
                    "headers": {"Authorization": "Bearer t0k3n"},
                    "retry": {"backoff_base_s": 0.1},
                }
            ]
        )
        h.send_all([threat(at_s=0, score=0.9)])
        wait_for(lambda: hook.requests, what="the webhook POST")
        wait_for(h.settled, what="no notification pending")
    ((headers, body),) = hook.requests
    assert headers["Authorization"] == "Bearer t0k3n"
    assert headers["Idempotency-Key"] == "secagg-notification-1"
    assert body["schema"] == "secagent.notification/1" and body["kind"] == "new"
    assert body["event"]["schema"] == "secagent.event/1" and body["event"]["event_id"] == 1
    assert body["event"]["threat_count"] == 1 and body["event"]["top_score"] == 0.9
    assert body["api_url"] == "https://secagg.example.org/api/events/1"
    assert body["page_url"] == "https://secagg.example.org/events/1"  # the review page
    assert f"Details:  {body['page_url']}" in body["body"]
    assert "1 threat(s), top person 0.90" in body["summary"]
    (row,) = h.notifications()
    assert (row["channel"], row["attempts"], row["state"]) == ("webhook", 2, "sent")
    assert json.loads(row["content_json"]) == body


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
def test_smtp_auth(make_ingest: MakeIngest) -> None:
    server = SmtpServer(free_port(), credentials=("secagg", "s3cret")).start()
    try:
        h = make_ingest(
            notifiers=[smtp_notifier(server.port, username="secagg", password="s3cret")]
        )
        h.send_all([threat(at_s=0)])
        wait_for(lambda: server.messages, what="the authenticated email")
        wait_for(h.settled, what="no notification pending")
        assert len(server.messages) == 1
    finally:
        server.stop()


def test_starttls_with_auth_verifies_the_server(make_ingest: MakeIngest, tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"),
            *("-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    server = SmtpServer(free_port(), credentials=("secagg", "s3cret"), tls_context=context)
    server.start()
    try:
        auth = {"username": "secagg", "password": "s3cret", "starttls": True}
        h = make_ingest(
            notifiers=[
                smtp_notifier(server.port, **auth, tls_ca_file=str(cert)),
                smtp_notifier(server.port, **auth, name="unverified"),  # the system's CAs
            ]
        )
        h.send_all([threat(at_s=0)])
        wait_for(lambda: server.messages, what="the email over STARTTLS")
        wait_for(
            lambda: h.rows(
                "SELECT 1 FROM notification_attempts a JOIN notifications n "
                "ON n.id = a.notification_id WHERE n.notifier = 'unverified'"
            ),
            what="an attempt with the system's CAs",
        )
        assert len(server.messages) == 1
        (unverified,) = h.rows("SELECT * FROM notifications WHERE notifier = 'unverified'")
        assert "CERTIFICATE_VERIFY_FAILED" in unverified["last_error"]
        assert unverified["state"] == "pending"  # retried: the operator may fix the CA
    finally:
        server.stop()


@pytest.mark.parametrize(
    ("notifier", "error"),
    [
        ({"ssl": True, "starttls": True}, "choose ssl or starttls"),
        ({"username": "u"}, "username and password go together"),
        ({"to": []}, "to"),
        ({"to": ["not-an-address"]}, "not an email address"),
        ({"type": "pager"}, "does not match any of the expected tags"),
        ({"retry": {"backoff_base_s": 10, "backoff_max_s": 1}}, "backoff_max_s must be"),
    ],
)
def test_bad_notifier_configs_are_refused(notifier: dict[str, Any], error: str) -> None:
    with pytest.raises(ValidationError, match=error):
        AggregatorConfig.model_validate(
            {"notify": {"notifiers": [{**smtp_notifier(25), **notifier}]}}
        )


def test_notifier_names_are_unique() -> None:
    with pytest.raises(ValidationError, match="unique"):
        AggregatorConfig.model_validate(
            {"notify": {"notifiers": [smtp_notifier(25), smtp_notifier(25)]}}
        )


def test_a_pending_notification_survives_a_restart(make_ingest: MakeIngest) -> None:
    port = free_port()
    first = make_ingest(notifiers=[smtp_notifier(port)])
    first.send_all([threat(at_s=0)])
    wait_for(lambda: first.rows("SELECT 1 FROM notification_attempts"), what="a failed attempt")
    first.ingest.stop()  # secagg stops while the mail server is down
    server = SmtpServer(port).start()
    try:
        second = make_ingest(notifiers=[smtp_notifier(port)])  # same database
        wait_for(lambda: server.messages, what="the email after the restart")
        wait_for(second.settled, what="no notification pending")
        assert len(server.messages) == 1
        (row,) = second.notifications()
        assert row["state"] == "sent" and row["attempts"] >= 2
    finally:
        server.stop()


def test_the_notifications_command_lists_them(
    make_ingest: MakeIngest, smtp: SmtpServer, tmp_path: Path
) -> None:
    from click.testing import CliRunner

    from aggregator.cli import main

    h = make_ingest(notifiers=[smtp_notifier(smtp.port)])
    h.send_all([threat(at_s=0)])
    wait_for(h.settled, what="no notification pending")
    config = tmp_path / "secagg.yaml"
    config.write_text(f"store: {{path: {h.db_path}}}\n")
    result = CliRunner().invoke(main, ["notifications", "--config", str(config)])
    assert result.exit_code == 0, result.output
    header, line = result.output.splitlines()
    assert header.split()[:4] == ["id", "event", "notifier", "kind"]
    assert line.split() == ["1", "1", "mail", "new", "new", "sent", "1"]


def test_check_config_never_prints_notifier_secrets(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from aggregator.cli import main

    config = tmp_path / "secagg.yaml"
    config.write_text(
        "notify:\n  notifiers:\n"
        "    - {name: mail, type: smtp, host: smtp.example.org, username: secagg, "
        "password: sm7p-s3cret, from_addr: a@example.org, to: [b@example.org]}\n"
        "    - {name: soc, type: webhook, url: 'https://soc.example.org/hook', "
        "headers: {Authorization: Bearer hook-s3cret}}\n"
    )
    result = CliRunner().invoke(main, ["check-config", "--config", str(config)])
    assert result.exit_code == 0, result.output
    assert "s3cret" not in result.output
    settings = json.loads(result.output.partition("\n")[2])
    mail, soc = settings["notify"]["notifiers"]
    assert (mail["username"], mail["password"]) == ("secagg", "***")
    assert soc["headers"] == {"Authorization": "***"}


def test_the_lifecycle_of_a_site_event_is_published_with_a_summary(
    make_ingest: MakeIngest,
    broker: Mosquitto,
) -> None:

    sub, seen = subscribe_json(broker, "secagent/v1/events")
    try:
        # cutoff 3 s: the agent falls silent after the two, and the event ends on our clock
        h = make_ingest(
            notifiers=[], events={"sites": {"yard": "home", "door": "home"}, "cutoff_s": 3}
        )
        h.send_all([threat(at_s=0), threat(at_s=1, camera="door", severity="critical")])
        wait_for(lambda: [m["type"] for m in seen][-1:] == ["end"], what="the end")
    finally:
        sub.loop_stop()
        sub.disconnect()
    assert [m["type"] for m in seen] == ["new", "update", "end"]
    end = seen[-1]
    assert end["event_id"] == 1 and end["cameras"] == ["yard", "door"]
    assert end["summary"].startswith(
        "critical person_on_premises on yard, door (cam-host): 2 threat"
    )
    assert h.notifications() == []  # no notifier: nothing decided


def test_a_notification_is_given_up_after_max_attempts(make_ingest: MakeIngest) -> None:
    retry = {"max_attempts": 2, "backoff_base_s": 0.1, "backoff_max_s": 0.1}
    h = make_ingest(notifiers=[smtp_notifier(free_port(), retry=retry)])
    h.send_all([threat(at_s=0)])
    wait_for(h.settled, what="the notification given up")
    (row,) = h.notifications()
    assert (row["state"], row["attempts"], row["next_attempt_ts"]) == ("failed", 2, None)
    assert len(h.rows("SELECT * FROM notification_attempts")) == 2
