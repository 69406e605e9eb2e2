"""Swagger UI and ReDoc load only from the shim itself: no CDN, no font service, no network.

No browser: the HTML of each page is parsed, every `src` and `href` must be a same-origin
path, and each answers 200 (and HEAD) with the content type a browser expects.
"""

from __future__ import annotations

from collections.abc import Iterator
from html.parser import HTMLParser
from urllib.parse import urlsplit

import pytest
from fastapi.testclient import TestClient

from api_shim.app import create_app
from tests.api.helpers import API

PAGES = (f"{API}/docs", f"{API}/redoc")
CONTENT_TYPES = {".js": "text/javascript", ".css": "text/css", ".png": "image/png"}


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.found += [value for name, value in attrs if name in ("src", "href") and value]


def _links(html: str) -> list[str]:
    parser = _Links()
    parser.feed(html)
    return parser.found


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    """The app with no database: the docs need none."""
    with TestClient(create_app()) as client:
        yield client


@pytest.mark.parametrize("page", PAGES)
def test_a_docs_page_loads_only_same_origin_assets(client: TestClient, page: str) -> None:
    response = client.get(page)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert "cdn." not in response.text and "fonts.googleapis" not in response.text
    assert f"{API}/openapi.json" in response.text
    links = _links(response.text)
    assert len(links) >= 2, links  # the script, the favicon (and Swagger UI's stylesheet)
    for link in links:
        parts = urlsplit(link)
        assert not parts.scheme and not parts.netloc, f"{link} is not on this origin"
        assert link.startswith(f"{API}/static/"), link
        asset = client.get(link)
        assert asset.status_code == 200, link
        expected = CONTENT_TYPES[link[link.rindex(".") :]]
        assert asset.headers["content-type"].startswith(expected), (link, asset.headers["content-type"])
        assert len(asset.content) > 100, link
        head = client.head(link)
        assert head.status_code == 200 and head.content == b"", link
        assert head.headers["content-length"] == str(len(asset.content)), link


def test_swagger_ui_asks_no_online_validator(client: TestClient) -> None:
    assert '"validatorUrl": null' in client.get(f"{API}/docs").text


@pytest.mark.parametrize("path", ["/", "/docs"])
def test_the_root_and_docs_redirect_to_the_api_docs(client: TestClient, path: str) -> None:
    response = client.get(path, follow_redirects=False)
    assert response.status_code == 307
    assert response.headers["location"] == f"{API}/docs"
    assert client.get(path).url.path == f"{API}/docs"


def test_the_docs_pages_answer_head_and_stay_out_of_the_openapi(client: TestClient) -> None:
    for page in PAGES:
        head = client.head(page)
        assert head.status_code == 200 and head.content == b"", page
    paths = client.get(f"{API}/openapi.json").json()["paths"]
    assert not {"/", "/docs", *PAGES} & set(paths)
    assert not any(path.startswith(f"{API}/static") for path in paths)


def test_an_unknown_asset_is_404(client: TestClient) -> None:
    assert client.get(f"{API}/static/swagger-ui/nothing.js").status_code == 404
