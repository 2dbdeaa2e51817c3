"""The review pages in a real browser: Debian's chromium driven by Playwright, against the
real demo (``python -m demo --serve``: Mosquitto, ``secagg serve``, ``secagent run`` on the
sample clip and stills). The test logs in with the first admin the demo printed, sees the
demo's events with their snapshots and boxes, filters, marks events reviewed, opens an event's
provenance and reproduces it, watches a new event appear without a reload, and looks at the
agents and plots pages. Any console error, uncaught exception, failed request or 4xx/5xx
answer (but the wrong password it tries on purpose) fails it.

Screenshots of each page go to ``$SECAGENT_SCREENSHOTS`` when set (docs/screenshots/ holds the
ones in the README), else under the test's temporary folder."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from playwright.sync_api import Browser, ConsoleMessage, Page, Request, Response, sync_playwright

from tests.support import ROOT, wait_for
from tests.support.ingest import payload

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed (make setup does it)"
)


@dataclass
class Demo:
    proc: subprocess.Popen[str]
    url: str
    user: str
    password: str
    token: str
    mqtt_host: str
    mqtt_port: int
    lines: list[str] = field(default_factory=list)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    work = tmp_path_factory.mktemp("webdemo") / "demo"
    proc = subprocess.Popen(
        [sys.executable, "-m", "demo", "--workdir", str(work), "--serve"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    assert proc.stdout is not None
    out = proc.stdout

    def read() -> None:
        for line in out:
            lines.append(line.rstrip("\n"))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        wait_for(
            lambda: any(line.startswith("Serving") for line in lines) or proc.poll() is not None,
            timeout_s=300,
            what="the demo to serve",
        )
        text = "\n".join(lines)
        assert proc.poll() is None, f"the demo exited:\n{text[-4000:]}"
        page = re.search(r"review page\s+(http://\S+)/\s+user (\S+), password (\S+)", text)
        token = re.search(r"API token \(admin\) (sga_\S+)", text)
        broker = re.search(r"mqtt://([\d.]+):(\d+)", text)
        assert page and token and broker, text
        yield Demo(
            proc,
            page.group(1),
            page.group(2),
            page.group(3),
            token.group(1),
            broker.group(1),
            int(broker.group(2)),
            lines,
        )
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()


@dataclass
class Watched:
    """What went wrong in the browser while the test ran. (Waits poll ``page.evaluate`` from
    Python: the pages' Content-Security-Policy forbids eval, which Playwright's in-page
    ``wait_for_function`` would need.)"""

    problems: list[str] = field(default_factory=list)
    allowed: set[str] = field(default_factory=set)
    """``METHOD path`` answers allowed to be 4xx (the wrong password)."""

    def console(self, message: ConsoleMessage) -> None:
        if message.type != "error":
            return
        url = str(message.location.get("url", ""))
        if "POST /login" in self.allowed and url.endswith("/login") and "401" in message.text:
            return  # the browser's own line about the wrong password's answer
        self.problems.append(f"console error: {message.text} ({url})")

    def request_failed(self, request: Request) -> None:
        self.problems.append(f"request failed: {request.method} {request.url} {request.failure}")

    def response(self, response: Response) -> None:
        path = response.url.split("://", 1)[1].split("/", 1)[1] if "://" in response.url else ""
        key = f"{response.request.method} /{path.split('?')[0]}"
        if response.status >= 400 and key not in self.allowed:
            self.problems.append(f"HTTP {response.status}: {key}")


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("SECAGENT_SCREENSHOTS") or tmp_path / "screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def publish_threat(demo: Demo, *, agent_id: str, camera: str) -> None:
    """A threat of another agent, published as an agent does (QoS 1, acknowledged)."""
    client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2)
    client.connect(demo.mqtt_host, demo.mqtt_port)
    client.loop_start()
    try:
        p = payload(camera=camera, agent_id=agent_id)
        p["frame"]["captured_at"] = datetime.now(UTC).isoformat()
        info = client.publish(f"secagent/v1/{agent_id}/threats", json.dumps(p), qos=1)
        info.wait_for_publish(timeout=10)
    finally:
        client.loop_stop()
        client.disconnect()


def cards(page: Page) -> list[int]:
    return [
        int(x)
        for x in page.eval_on_selector_all(
            "article.card", "cards => cards.map(c => c.dataset.eventId)"
        )
    ]


def test_review_pages_in_a_browser(demo: Demo, browser: Browser, shots: Path) -> None:
    watched = Watched(allowed={"POST /login"})
    context = browser.new_context(viewport={"width": 1360, "height": 900})
    page = context.new_page()
    page.on("console", watched.console)
    page.on("pageerror", lambda exc: watched.problems.append(f"page error: {exc}"))
    page.on("requestfailed", watched.request_failed)
    page.on("response", watched.response)

    # a page without a session goes to the login; a wrong password is refused
    page.goto(demo.url + "/agents")
    assert page.url.startswith(demo.url + "/login")
    page.screenshot(path=shots / "login.png")
    page.fill("input[name=username]", demo.user)
    page.fill("input[name=password]", "not the password")
    page.click("button[type=submit]")
    assert "Wrong user name or password" in page.inner_text(".error")
    page.fill("input[name=username]", demo.user)
    page.fill("input[name=password]", demo.password)
    page.click("button[type=submit]")
    page.wait_for_url(demo.url + "/agents")
    watched.allowed.clear()

    # the demo's events, newest first, each with its snapshot loaded and its boxes drawn
    page.goto(demo.url + "/")
    found = cards(page)
    assert len(found) == 3 and found == sorted(found, reverse=True)
    wait_for(
        lambda: page.evaluate(
            "[...document.querySelectorAll('article.card img')].every(i => i.complete && "
            "i.naturalWidth > 0)"
        ),
        what="every snapshot loaded",
    )
    assert page.locator("article.card svg rect.box").count() >= 3
    page.screenshot(path=shots / "events.png", full_page=True)

    # filters: one camera
    page.select_option("select[name=camera]", "door")
    page.click(".filters button[type=submit]")
    page.wait_for_url(re.compile(r".*camera=door.*"))
    door = cards(page)
    assert len(door) == 1
    assert "door" in page.inner_text("article.card .facts")
    page.click("a.reset")
    page.wait_for_url(demo.url + "/")

    # mark two reviewed: stored with who, shown after a reload, and filtered
    page.check(f"input.pick[value='{found[0]}']")
    page.check(f"input.pick[value='{found[1]}']")
    page.click("#mark-reviewed")
    page.wait_for_selector(f"article.card.reviewed[data-event-id='{found[1]}']")
    page.reload()
    line = page.inner_text(f"article.card[data-event-id='{found[0]}'] .reviewline")
    assert line.startswith(f"reviewed by {demo.user} at ")
    page.select_option("select[name=reviewed]", "no")
    page.click(".filters button[type=submit]")
    page.wait_for_url(re.compile(r".*reviewed=no.*"))
    assert cards(page) == [found[2]]

    # an event: frames, timeline, notifications, provenance with the model and rules; reproduce
    page.goto(f"{demo.url}/events/{found[1]}")
    kinds = page.eval_on_selector_all(".provcol h3", "hs => hs.map(h => h.firstChild.textContent)")
    assert {"model", "rules", "config", "code", "frame"} <= {k.strip() for k in kinds}
    assert page.locator(".frames article.frame").count() >= 1
    assert "notification sent" in page.inner_text(".timeline")
    page.click("#reproduce")
    page.wait_for_selector("#verdict p.ok", timeout=120_000)
    assert page.inner_text("#verdict p.ok").startswith("Reproduced: all")
    page.evaluate(
        "document.querySelectorAll('img[loading=lazy]').forEach(i => i.loading = 'eager')"
    )
    wait_for(
        lambda: page.evaluate("[...document.images].every(i => i.complete && i.naturalWidth > 0)"),
        what="every frame loaded",
    )
    page.screenshot(
        path=shots / "event.png",
        full_page=True,
        clip={"x": 0, "y": 0, "width": 1360, "height": 1900},
    )

    # live: a new event appears on the open list without a reload
    page.goto(demo.url + "/")
    publish_threat(demo, agent_id="live-host", camera="gate")
    page.wait_for_selector("article.card.new", timeout=30_000)
    newest = cards(page)[0]
    assert newest > found[0] and "gate" in page.inner_text("article.card.new .facts")

    # agents and plots
    page.goto(demo.url + "/agents")
    assert "online" in page.inner_text(".agent h2") or "offline" in page.inner_text(".agent h2")
    assert page.locator(".agent table.grid tbody tr").count() >= 2  # yard and door
    page.screenshot(path=shots / "agents.png", full_page=True)
    page.goto(demo.url + "/plots")
    page.select_option("select[name=kind]", "threats_per_hour")
    page.click("#plot-form button[type=submit]")
    wait_for(
        lambda: page.evaluate(
            "(() => { const i = document.querySelector('#plot img'); "
            "return Boolean(i && i.complete && i.naturalWidth > 0); })()"
        ),
        timeout_s=60,
        what="the plot drawn",
    )
    assert page.inner_text("#plot figcaption").startswith("plot:")
    page.screenshot(path=shots / "plots.png", full_page=True)

    # logging out ends the session: the pages want a login again
    page.click("header form button")
    page.wait_for_url(re.compile(r".*/login$"))
    page.goto(demo.url + "/")
    assert page.url.startswith(demo.url + "/login")
    context.close()
    assert watched.problems == []


def test_the_pages_need_no_internet(demo: Demo, browser: Browser) -> None:
    """Every request the pages make goes to secagg itself (no CDN, no font or script host)."""
    context = browser.new_context()
    page = context.new_page()
    hosts: set[str] = set()
    page.on("request", lambda r: hosts.add(r.url.split("/")[2]))
    page.goto(demo.url + "/login")
    page.fill("input[name=username]", demo.user)
    page.fill("input[name=password]", demo.password)
    page.click("button[type=submit]")
    page.wait_for_url(demo.url + "/")
    for path in ("/", "/events/1", "/agents", "/plots", "/docs"):
        page.goto(demo.url + path)
        page.wait_for_load_state("networkidle")
    context.close()
    assert hosts == {demo.url.split("/")[2]}


def test_chromium_is_installed_by_make_setup() -> None:
    makefile = (ROOT / "Makefile").read_text()
    assert "chromium" in makefile
    assert shutil.which("chromium") == CHROMIUM
