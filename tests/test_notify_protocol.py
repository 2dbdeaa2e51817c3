"""The systemd notify protocol (appcommon.systemd) against a notify socket the test opens: a
path and an abstract name, the watchdog's pace, and a daemon that works without systemd."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from appcommon.systemd import Notifier, NotifyError, socket_address, watchdog_interval_s
from tests.support.notify import NotifySocket


@pytest.fixture(params=["path", "abstract"])
def sock(request: pytest.FixtureRequest, tmp_path: Path):  # type: ignore[no-untyped-def]
    if request.param == "path":
        s = NotifySocket(path=tmp_path / "notify")
    else:
        s = NotifySocket(abstract=f"secagent-test-{uuid.uuid4().hex}")
    with s:
        yield s


def test_ready_status_stopping_arrive_as_key_value_lines(sock: NotifySocket) -> None:
    notifier = Notifier({"NOTIFY_SOCKET": sock.env_value})
    assert notifier.enabled
    assert notifier.ready("serving\non two lines")
    assert notifier.status("3 cameras running")
    assert notifier.stopping()
    ready = sock.wait("READY", "1")
    assert ready == {"READY": "1", "STATUS": "serving on two lines", "MAINPID": str(os.getpid())}
    sock.wait("STATUS", "3 cameras running")
    assert sock.wait("STOPPING", "1")["STATUS"] == "stopping"
    notifier.close()


def test_the_watchdog_pings_twice_per_interval_at_most(sock: NotifySocket) -> None:
    notifier = Notifier({"NOTIFY_SOCKET": sock.env_value, "WATCHDOG_USEC": "10000000"})
    assert notifier.watchdog_s == 10.0
    sent = [notifier.watchdog(now=t) for t in (100.0, 101.0, 104.9, 105.0, 109.0, 110.0)]
    assert sent == [True, False, False, True, False, True]
    sock.wait("WATCHDOG", "1")
    notifier.close()


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"WATCHDOG_USEC": "30000000"}, 30.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}, 30.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}, None),  # meant for another process
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({}, None),
    ],
)
def test_watchdog_interval(env: dict[str, str], expected: float | None) -> None:
    assert watchdog_interval_s(env) == expected


def test_without_notify_socket_every_call_is_a_no_op() -> None:
    notifier = Notifier({"WATCHDOG_USEC": "1000000"})
    assert not notifier.enabled
    assert notifier.watchdog_s is None
    assert not notifier.ready("up") and not notifier.watchdog() and not notifier.stopping()


@pytest.mark.parametrize(
    ("name", "address", "error"),
    [
        ("/run/systemd/notify", "/run/systemd/notify", None),
        ("@/org/freedesktop/systemd1/notify/123", b"\0/org/freedesktop/systemd1/notify/123", None),
        ("relative/notify", None, "neither an absolute path nor an @abstract name"),
    ],
)
def test_socket_address(name: str, address: str | bytes | None, error: str | None) -> None:
    if error is None:
        assert socket_address(name) == address
        return
    with pytest.raises(NotifyError, match=error):
        socket_address(name)


def test_a_socket_that_went_away_is_logged_once_and_never_raises(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone")})
    assert not notifier.status("a") and not notifier.status("b")
    assert len([r for r in caplog.records if "notify socket" in r.getMessage()]) == 1
