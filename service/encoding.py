"""Turning request content into raw vectors: texts and images through the micro-batcher
(with the per-request limits), images (base64 or fetched by URL) decoded off the event loop."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import numpy as np
from PIL import Image
from starlette.concurrency import run_in_threadpool

from gapfix.errors import InputError, PayloadTooLargeError
from service import media
from service.errors import ApiError
from service.state import AppState


def require_model(state: AppState, param: str | None) -> None:
    """400 in vectors mode: there is no model to embed texts or images with."""
    if state.batcher is None:
        raise ApiError(
            400,
            "this server runs in vectors mode (no model loaded): send vectors instead of "
            "texts or images",
            param=param,
            type="model_unavailable",
        )


def check_counts(state: AppState, n_texts: int, n_images: int, where: str = "request") -> None:
    """413 when a request carries more texts / images than the configured limits."""
    s = state.settings
    if n_texts > s.max_texts_per_request:
        raise PayloadTooLargeError(
            f"{n_texts} texts in one {where}; the limit is {s.max_texts_per_request} "
            "(GAPFIX_MAX_TEXTS_PER_REQUEST)",
            param="texts",
        )
    if n_images > s.max_images_per_request:
        raise PayloadTooLargeError(
            f"{n_images} images in one {where}; the limit is {s.max_images_per_request} "
            "(GAPFIX_MAX_IMAGES_PER_REQUEST)",
            param="images",
        )


async def decode_images(
    state: AppState, images: Sequence[tuple[str, str]], thumbnails: bool = False
) -> list[tuple[Image.Image, bytes | None]]:
    """Base64 ``(param, data)`` pairs -> decoded RGB images (+ JPEG thumbnails), off the loop."""
    if not images:
        return []
    s = state.settings
    blobs = [(p, media.decode_base64(data, p)) for p, data in images]
    size = s.thumbnail_size if thumbnails else None
    return await run_in_threadpool(media.decode_images, blobs, s.max_image_pixels, size)


async def decode_urls(
    state: AppState, urls: Sequence[tuple[str, str]], thumbnails: bool = False
) -> list[tuple[Image.Image, bytes | None]]:
    """Image URL ``(param, url)`` pairs -> fetched (``state.fetcher``) and decoded RGB images
    (+ JPEG thumbnails); any failure is a 400/413 naming its ``param``."""
    if not urls:
        return []
    if state.fetcher is None:
        raise ApiError(503, "the service is not ready", type="not_ready")
    s = state.settings
    params = [p for p, _ in urls]
    bodies = await state.fetcher.fetch_images([u for _, u in urls], param=params)
    size = s.thumbnail_size if thumbnails else None
    blobs = list(zip(params, bodies, strict=True))
    try:
        return await run_in_threadpool(media.decode_images, blobs, s.max_image_pixels, size)
    except PayloadTooLargeError:
        raise
    except InputError as exc:  # say that it is the fetched body, not the URL, that is bad
        raise InputError(
            f"{exc.param}: the body fetched from the URL is not a usable image: {exc.message}",
            param=exc.param,
        ) from None


async def encode(
    state: AppState, texts: Sequence[str], images: Sequence[Image.Image | bytes]
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Encode texts and images concurrently (each merged with other requests' batches)."""
    batcher = state.batcher
    jobs = []
    if texts:
        jobs.append(batcher.encode_texts(list(texts)))
    if images:
        jobs.append(batcher.encode_images(list(images)))
    out = list(await asyncio.gather(*jobs))
    t = out.pop(0) if texts else None
    i = out.pop(0) if images else None
    return t, i
