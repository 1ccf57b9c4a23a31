"""The search page is served from package data, with right content types and nothing external."""

from __future__ import annotations

import re
from importlib import resources

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from service.routers import ui

STATIC = resources.files("service").joinpath("static")
# XML namespace names are identifiers that browsers never fetch.
NAMESPACES = {"http://www.w3.org/2000/svg"}
URL = re.compile(r"""(?:https?:)?//[A-Za-z0-9.-]+\.[A-Za-z]{2,}[^\s"'`)<>]*""")


def _files() -> list[str]:
    out: list[str] = []

    def walk(node, prefix: str) -> None:
        for child in node.iterdir():
            if child.is_dir():
                walk(child, f"{prefix}{child.name}/")
            else:
                out.append(f"{prefix}{child.name}")

    walk(STATIC, "")
    return sorted(out)


@pytest.fixture(scope="module")
def client() -> TestClient:
    app = FastAPI()
    app.include_router(ui.router)
    return TestClient(app)


def test_index_is_html_with_a_strict_csp(client: TestClient) -> None:
    r = client.get("/")
    assert r.status_code == 200
    assert r.headers["content-type"] == "text/html; charset=utf-8"
    csp = r.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "script-src 'self'" in csp
    assert r.headers["x-content-type-options"] == "nosniff"
    assert '<script type="module" src="static/js/app.js">' in r.text


@pytest.mark.parametrize(
    ("path", "ctype"),
    [
        ("app.css", "text/css; charset=utf-8"),
        ("js/app.js", "text/javascript; charset=utf-8"),
        ("js/api.js", "text/javascript; charset=utf-8"),
        ("favicon.svg", "image/svg+xml"),
    ],
)
def test_assets_have_their_content_types(client: TestClient, path: str, ctype: str) -> None:
    r = client.get(f"/static/{path}")
    assert r.status_code == 200
    assert r.headers["content-type"] == ctype
    assert r.content == STATIC.joinpath(*path.split("/")).read_bytes()


def test_every_referenced_asset_is_served(client: TestClient) -> None:
    html = client.get("/").text
    refs = re.findall(r'(?:src|href)="(static/[^"]+)"', html)
    assert {"static/app.css", "static/js/app.js", "static/favicon.svg"} <= set(refs)
    for ref in refs:
        assert client.get(f"/{ref}").status_code == 200, ref
    # Every relative ES module import resolves to a served file.
    for name in _files():
        if not name.endswith(".js"):
            continue
        for target in re.findall(
            r"""from\s+["'](\./[^"']+)["']""", STATIC.joinpath(*name.split("/")).read_text()
        ):
            base = name.rsplit("/", 1)[0]
            assert client.get(f"/static/{base}/{target[2:]}").status_code == 200, (name, target)


def test_no_external_urls_anywhere_in_the_page() -> None:
    files = _files()
    assert "index.html" in files and "app.css" in files
    for name in files:
        text = STATIC.joinpath(*name.split("/")).read_text()
        found = {u for u in URL.findall(text) if u not in NAMESPACES}
        assert not found, f"{name} references other hosts: {sorted(found)}"
        assert "@import" not in text, name


def test_etag_revalidation_answers_304(client: TestClient) -> None:
    first = client.get("/static/app.css")
    assert first.headers["cache-control"] == "no-cache"
    again = client.get("/static/app.css", headers={"If-None-Match": first.headers["etag"]})
    assert again.status_code == 304 and again.content == b""


@pytest.mark.parametrize(
    "path", ["missing.js", "..%2Frouters%2Fui.py", "js", "x.py", "js%2F..%2Fapp.css"]
)
def test_unknown_or_unsafe_paths_are_404_envelopes(client: TestClient, path: str) -> None:
    r = client.get(f"/static/{path}")
    assert r.status_code == 404
    err = r.json()["error"]
    assert err["type"] == "not_found" and err["param"] == "path" and err["message"]


@pytest.mark.parametrize("path", ["../routers/ui.py", "js/../../settings.py"])
def test_dot_segments_never_reach_package_files(client: TestClient, path: str) -> None:
    r = client.get(f"/static/{path}")
    assert r.status_code == 404
    assert b"import" not in r.content


def test_load_asset_rejects_traversal_directly() -> None:
    assert ui.load_asset("../settings.py") is None
    assert ui.load_asset("/etc/passwd") is None
    assert ui.load_asset("js/./app.js") is None
    assert ui.load_asset("js/app.js") is not None


def test_the_service_app_serves_the_page(tmp_path) -> None:
    from service.app import create_app
    from service.settings import Settings

    app = create_app(Settings(model="none", data_dir=tmp_path))
    client = TestClient(app)  # no lifespan: the page needs neither model nor store
    r = client.get("/")
    assert r.status_code == 200 and "gapfix search" in r.text
    assert client.get("/static/js/app.js").headers["content-type"].startswith("text/javascript")
    assert "/" not in app.openapi()["paths"]  # the page is not part of the API schema
