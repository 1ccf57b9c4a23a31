"""Request bodies of the client: images and vectors as JSON, and long lists packed into
requests that stay under the server's limits (``GET /v1/info`` ``limits``)."""

from __future__ import annotations

import base64
import io
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

import numpy as np
import orjson

if TYPE_CHECKING:
    from PIL import Image

ImageInput = Union[bytes, str, os.PathLike, "Image.Image"]
"""An image: encoded bytes (JPEG/PNG/WebP/GIF), a file path, a PIL image, an ``http(s)://``
URL (fetched by the server) or a ``data:image/...;base64,`` URI."""

URL = re.compile(r"^https?://", re.IGNORECASE)
DATA_URI = re.compile(r"^data:image/", re.IGNORECASE)
ENVELOPE_BYTES = 4096  # room for the request's other fields within max_body_bytes


@dataclass(frozen=True)
class Part:
    """One element of a batched list, serialised once: its JSON and what it counts against."""

    json: bytes
    texts: int = 0
    images: int = 0


def image_field(image: ImageInput) -> tuple[str, str]:
    """``("image_url", url)`` for a URL, else ``("image", base64)`` (data URIs as given)."""
    if isinstance(image, bytes | bytearray | memoryview):
        return "image", base64.b64encode(bytes(image)).decode()
    if isinstance(image, str) and URL.match(image):
        return "image_url", image
    if isinstance(image, str) and DATA_URI.match(image):
        return "image", image
    if isinstance(image, str | os.PathLike):
        return "image", base64.b64encode(Path(image).read_bytes()).decode()
    if hasattr(image, "save") and hasattr(image, "mode"):  # a PIL image: sent as PNG
        buf = io.BytesIO()
        img = image if image.mode in ("RGB", "RGBA", "L") else image.convert("RGB")
        img.save(buf, format="PNG")
        return "image", base64.b64encode(buf.getvalue()).decode()
    if hasattr(image, "read"):  # a binary file object (llama_index's BytesIO images)
        return "image", base64.b64encode(image.read()).decode()
    raise TypeError(f"not an image: {type(image).__name__} (bytes, path, PIL image or URL)")


def as_rows(vectors: Any) -> np.ndarray:
    """A (n, d) float32 array of ``vectors`` (one vector becomes one row)."""
    arr = np.asarray(vectors, dtype=np.float32)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[1] == 0:
        raise ValueError(f"vectors must be (n, d), got shape {arr.shape}")
    return arr


def dumps(value: Any) -> bytes:
    """JSON of ``value`` (numpy arrays as lists; float32 keeps its shortest exact form)."""
    return orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY)


def vector_json(row: np.ndarray) -> bytes:
    """One vector as JSON (float32 values survive the server's float parse exactly)."""
    return dumps(np.ascontiguousarray(row, dtype=np.float32))


def pack(
    parts: Sequence[Part], limits: dict[str, int], max_count: int | None = None
) -> Iterator[tuple[int, int]]:
    """``(start, stop)`` ranges of ``parts``, each a request within the server's text, image and
    body-size limits (and ``max_count`` parts). A part too large alone is sent alone (the
    server's 413 then says why)."""
    max_texts = limits.get("max_texts_per_request", 256)
    max_images = limits.get("max_images_per_request", 64)
    max_bytes = max(limits.get("max_body_bytes", 32 << 20) - ENVELOPE_BYTES, 1)
    start, texts, images, size = 0, 0, 0, 0
    for i, p in enumerate(parts):
        full = (
            texts + p.texts > max_texts
            or images + p.images > max_images
            or size + len(p.json) + 1 > max_bytes
            or (max_count is not None and i - start >= max_count)
        )
        if full and i > start:
            yield start, i
            start, texts, images, size = i, 0, 0, 0
        texts, images, size = texts + p.texts, images + p.images, size + len(p.json) + 1
    if start < len(parts):
        yield start, len(parts)


def json_list(parts: Sequence[Part]) -> bytes:
    """A JSON array of already serialised parts."""
    return b"[" + b",".join(p.json for p in parts) + b"]"


def body(
    fields: dict[str, Any], lists: dict[str, Sequence[Part]], raw: dict[str, bytes] | None = None
) -> bytes:
    """A JSON object: ``fields`` serialised here (None left out), ``lists`` spliced in from
    their parts, ``raw`` values already JSON."""
    head = dumps({k: v for k, v in fields.items() if v is not None})
    tail = [dumps(k) + b":" + json_list(v) for k, v in lists.items()]
    tail += [dumps(k) + b":" + v for k, v in (raw or {}).items()]
    if not tail:
        return head
    return head[:-1] + (b"," if len(head) > 2 else b"") + b",".join(tail) + b"}"


def item_part(item: dict[str, Any]) -> Part:
    """An item of ``add_items`` as JSON: ``image`` may be bytes, a path, a PIL image or a URL
    (sent as ``image_url``); vectors may be numpy arrays."""
    out = dict(item)
    if out.get("image") is not None:
        field, value = image_field(out.pop("image"))
        out[field] = value
    for key in ("vector", "image_vector", "text_vector"):
        if out.get(key) is not None:
            out[key] = np.asarray(out[key], dtype=np.float32).ravel()
    has_text_vec = out.get("text_vector") is not None or out.get("modality") == "text"
    texts = int(out.get("text") is not None and not has_text_vec)
    images = int(out.get("image") is not None or out.get("image_url") is not None)
    return Part(dumps(out), texts=texts, images=images)


def query_part(query: dict[str, Any] | str) -> Part:
    """A search query: a dict as the API takes it (``vector`` may be an array, ``image`` any
    `ImageInput`), or a string (a text query)."""
    q = {"text": query} if isinstance(query, str) else dict(query)
    if q.get("image") is not None:
        field, value = image_field(q["image"])
        if field != "image":
            raise ValueError("search queries take inline images, not URLs")
        q["image"] = value
    if q.get("vector") is not None:
        q["vector"] = np.asarray(q["vector"], dtype=np.float32).ravel()
    return Part(dumps(q), texts=int("text" in q), images=int("image" in q))
