"""``/docs`` (Swagger UI) and ``/redoc`` work offline: their pages name no other host, and every
script, style sheet, icon and schema they load comes from the aggregator itself."""

from __future__ import annotations

import re
from html.parser import HTMLParser

import pytest
from fastapi.testclient import TestClient

from aggregator.api import DOCS_STATIC_URL, create_app

CONTENT_TYPES = {
    ".js": ("text/javascript", "application/javascript"),
    ".css": ("text/css",),
    ".png": ("image/png",),
    ".json": ("application/json",),
}


class AssetLinks(HTMLParser):
    """The URLs a page loads: ``src`` and ``href`` attributes, and ``spec-url`` (ReDoc)."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.urls += [v for k, v in attrs if k in ("src", "href", "spec-url") and v]


def loaded_urls(html: str) -> list[str]:
    parser = AssetLinks()
    parser.feed(html)
    # Swagger UI gets its schema from a script: ``url: '/openapi.json'``
    return parser.urls + re.findall(r"\burl: '([^']+)'", html)


@pytest.fixture(scope="module")
def client() -> TestClient:
    return TestClient(create_app())


@pytest.mark.parametrize(
    ("page", "expected_assets"),
    [
        ("/docs", {"swagger-ui-bundle.js", "swagger-ui.css", "favicon.png"}),
        ("/redoc", {"redoc.standalone.js", "favicon.png"}),
    ],
)
def test_docs_pages_load_everything_from_the_aggregator(
    client: TestClient, page: str, expected_assets: set[str]
) -> None:
    response = client.get(page)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    html = response.text
    assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}", html, re.IGNORECASE), html

    urls = loaded_urls(html)
    assert "/openapi.json" in urls
    assert {u.rsplit("/", 1)[1] for u in urls if u.startswith(DOCS_STATIC_URL + "/")} == (
        expected_assets
    )
    for url in urls:
        assert url.startswith("/"), url  # this server, not another host
        asset = client.get(url)
        assert asset.status_code == 200, url
        suffix = "." + url.rsplit(".", 1)[1]
        assert asset.headers["content-type"].split(";")[0] in CONTENT_TYPES[suffix], url
        assert len(asset.content) > 1000, url


def test_the_swagger_ui_does_not_call_the_online_validator(client: TestClient) -> None:
    assert '"validatorUrl": null' in client.get("/docs").text
