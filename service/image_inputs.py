"""Image inputs given as strings (``/v1/embeddings`` with ``modality: image``): a
``data:image/...;base64,`` URI is decoded here; an ``http(s)://`` URL goes to
``fetch_image_urls``, the one place URL fetching plugs in."""

from __future__ import annotations

import re
from collections.abc import Sequence

from PIL import Image
from starlette.concurrency import run_in_threadpool

from service import media
from service.errors import ApiError
from service.state import AppState

DATA_URI = re.compile(r"^data:image/[\w.+-]+(;[\w=.+-]+)*;base64,", re.IGNORECASE)
URL = re.compile(r"^https?://", re.IGNORECASE)


async def fetch_image_urls(state: AppState, urls: Sequence[tuple[str, str]]) -> list[bytes]:
    """Bytes of each ``(param, url)``. This server does not fetch URLs: 400 naming the first."""
    param, _ = urls[0]
    raise ApiError(
        400,
        f"{param}: image URLs are not fetched by this server; send the image as a "
        "data:image/...;base64, URI",
        param=param,
        type="image_url_unsupported",
    )


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
    return await run_in_threadpool(media.load_images, ready, s.max_image_pixels)
