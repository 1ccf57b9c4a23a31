"""Image inputs given as strings (``/v1/embeddings`` with ``modality: image``): a
``data:image/...;base64,`` URI is decoded here; an ``http(s)://`` URL is fetched by the
app's ``ImageFetcher`` (``service/fetching.py``: timeouts, byte cap, SSRF guard)."""

from __future__ import annotations

import re
from collections.abc import Sequence

from PIL import Image
from starlette.concurrency import run_in_threadpool

from gapfix.errors import InputError, PayloadTooLargeError
from service import media
from service.errors import ApiError
from service.state import AppState

DATA_URI = re.compile(r"^data:image/[\w.+-]+(;[\w=.+-]+)*;base64,", re.IGNORECASE)
URL = re.compile(r"^https?://", re.IGNORECASE)


async def fetch_image_urls(state: AppState, urls: Sequence[tuple[str, str]]) -> list[bytes]:
    """Bytes of each ``(param, url)``, fetched by ``state.fetcher`` behind the SSRF guard
    (``GAPFIX_URL_ALLOW``); any failure is a 400/413 naming its ``param``."""
    if state.fetcher is None:
        raise ApiError(503, "the service is not ready", type="not_ready")
    return await state.fetcher.fetch_images([u for _, u in urls], param=[p for p, _ in urls])


async def load_image_inputs(
    state: AppState, inputs: Sequence[str], param: str = "input"
) -> list[Image.Image]:
    """Decode data URIs and fetch URLs, in input order (400 naming the bad input's index)."""
    blobs: list[tuple[str, bytes] | None] = []
    urls: list[tuple[int, str, str]] = []
    for i, value in enumerate(inputs):
        where = f"{param}[{i}]"
        if DATA_URI.match(value):
            blobs.append((where, media.decode_base64(value, where)))
        elif URL.match(value):
            urls.append((i, where, value))
            blobs.append(None)
        else:
            raise ApiError(
                400,
                f"{where}: an image input must be a data:image/...;base64, URI or an "
                "http(s):// URL",
                param=where,
            )
    if urls:
        fetched = await fetch_image_urls(state, [(w, u) for _, w, u in urls])
        for (i, where, _), data in zip(urls, fetched, strict=True):
            blobs[i] = (where, data)
    ready = [b for b in blobs if b is not None]
    s = state.settings
    try:
        return await run_in_threadpool(media.load_images, ready, s.max_image_pixels)
    except PayloadTooLargeError:
        raise
    except InputError as exc:  # name the input, and say when it is a fetched body that is bad
        fetched = exc.param in {where for _, where, _ in urls}
        what = "the body fetched from the URL is not a usable image: " if fetched else ""
        raise InputError(f"{exc.param}: {what}{exc.message}", param=exc.param) from None
