"""The search page: ``GET /`` and ``GET /static/{path}``, served from package data (no CDN).

The page (``service/static/``) is plain HTML, CSS and JavaScript modules that call the ``/v1``
API with relative URLs, so it also works behind a path prefix. Assets are read once through
``importlib.resources`` and answered with an ETag (``If-None-Match`` -> 304) and
``Cache-Control: no-cache`` (always revalidated, so an upgrade is picked up at once). The
Content-Security-Policy allows this origin only: the page cannot load anything from elsewhere.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from importlib import resources
from pathlib import PurePosixPath

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

router = APIRouter(include_in_schema=False)

STATIC_PACKAGE = "service"
STATIC_DIR = "static"

#: Served file types (anything else under static/ is not served).
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".json": "application/json",
}

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'self'; "
    "form-action 'self'; frame-ancestors 'none'"
)

SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


class Asset:
    """One static file held in memory: bytes, content type and a strong ETag."""

    __slots__ = ("body", "content_type", "etag")

    def __init__(self, body: bytes, content_type: str) -> None:
        self.body = body
        self.content_type = content_type
        self.etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'


def _not_found(path: str) -> JSONResponse:
    return JSONResponse(
        {
            "error": {
                "type": "not_found",
                "message": f"no such page asset: {path!r}",
                "param": "path",
            }
        },
        status_code=404,
    )


@lru_cache(maxsize=128)
def load_asset(path: str) -> Asset | None:
    """The asset at ``static/<path>`` or None (unknown type, traversal, missing file)."""
    rel = PurePosixPath(path)
    if not path or rel.is_absolute() or any(p in ("", ".", "..") for p in path.split("/")):
        return None
    content_type = CONTENT_TYPES.get(rel.suffix.lower())
    if content_type is None:
        return None
    node = resources.files(STATIC_PACKAGE).joinpath(STATIC_DIR, *rel.parts)
    if not node.is_file():
        return None
    return Asset(node.read_bytes(), content_type)


def _serve(request: Request, asset: Asset, extra: dict[str, str] | None = None) -> Response:
    headers = {"ETag": asset.etag, "Cache-Control": "no-cache", **SECURITY_HEADERS, **(extra or {})}
    if request.headers.get("if-none-match") == asset.etag:
        return Response(status_code=304, headers=headers)
    return Response(asset.body, media_type=asset.content_type, headers=headers)


@router.get("/", response_class=Response)
def index(request: Request) -> Response:
    """The search page."""
    asset = load_asset("index.html")
    if asset is None:  # a broken install (package data missing): say so instead of a 500
        return _not_found("index.html")
    return _serve(request, asset, {"Content-Security-Policy": CSP})


@router.get("/static/{path:path}", response_class=Response)
def static(path: str, request: Request) -> Response:
    """A page asset (CSS, JavaScript modules, icons)."""
    asset = load_asset(path)
    if asset is None:
        return _not_found(path)
    return _serve(request, asset)
