"""Images in requests: base64 decoding, safe decoding (pixel limit), JPEG thumbnails (Pillow)."""

from __future__ import annotations

import base64
import binascii
import io
import re

from PIL import Image

from gapfix.encoders.images import decode_image
from gapfix.errors import InputError, PayloadTooLargeError

_DATA_URL = re.compile(r"^data:[\w.+/-]*(;[\w=.+-]+)*;base64,", re.IGNORECASE)
_WS = re.compile(r"\s+")
THUMBNAIL_QUALITY = 85
MAX_THUMBNAIL_BYTES = 512 * 1024


def decode_base64(data: str, param: str) -> bytes:
    """Bytes of a base64 string (standard or URL-safe alphabet, optional ``data:`` URL prefix)."""
    if not isinstance(data, str):
        raise InputError("image must be a base64 string", param=param)
    s = _WS.sub("", _DATA_URL.sub("", data, count=1))
    if not s:
        raise InputError("image is empty", param=param)
    if "-" in s or "_" in s:
        s = s.replace("-", "+").replace("_", "/")
    s += "=" * (-len(s) % 4)
    try:
        raw = base64.b64decode(s, validate=True)
    except (binascii.Error, ValueError):
        raise InputError("image is not valid base64", param=param) from None
    if not raw:
        raise InputError("image is empty", param=param)
    return raw


def load_image(data: bytes, max_pixels: int, param: str) -> Image.Image:
    """Decode untrusted image bytes to RGB (pixel limit -> PayloadTooLargeError, 413)."""
    return decode_image(data, max_pixels=max_pixels, param=param)


def thumbnail(img: Image.Image, size: int) -> bytes:
    """A JPEG of ``img`` scaled to fit ``size`` x ``size`` pixels."""
    t = img.copy()
    t.thumbnail((size, size), Image.Resampling.LANCZOS)
    if t.mode != "RGB":
        t = t.convert("RGB")
    buf = io.BytesIO()
    t.save(buf, format="JPEG", quality=THUMBNAIL_QUALITY, optimize=True)
    out = buf.getvalue()
    if len(out) > MAX_THUMBNAIL_BYTES:  # cannot happen at <= 1024 px and q85; be safe anyway
        raise PayloadTooLargeError("thumbnail too large", param="thumbnail_size")
    return out


def decode_images(
    blobs: list[tuple[str, bytes]], max_pixels: int, thumb_size: int | None
) -> list[tuple[Image.Image, bytes | None]]:
    """Decode ``(param, bytes)`` pairs; with ``thumb_size`` also make each one's thumbnail."""
    out = []
    for param, raw in blobs:
        img = load_image(raw, max_pixels, param)
        out.append((img, thumbnail(img, thumb_size) if thumb_size else None))
    return out


def load_images(blobs: list[tuple[str, bytes]], max_pixels: int) -> list[Image.Image]:
    """Decode ``(param, bytes)`` pairs to RGB images."""
    return [load_image(raw, max_pixels, param) for param, raw in blobs]
