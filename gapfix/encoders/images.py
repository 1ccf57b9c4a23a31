"""Image decoding from untrusted bytes (Pillow): size check before decode, EXIF, RGB."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageOps

from gapfix.errors import InputError, PayloadTooLargeError

SUPPORTED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF")
DEFAULT_MAX_PIXELS = 40_000_000
_INT_MODES = ("I", "I;16", "I;16L", "I;16B", "I;16N")  # 16-bit PNG greyscale opens as these


def check_pixels(width: int, height: int, max_pixels: int, param: str | None = None) -> None:
    """Raise `PayloadTooLargeError` if ``width * height`` exceeds ``max_pixels``."""
    if width * height > max_pixels:
        raise PayloadTooLargeError(
            f"image is {width}x{height} = {width * height} pixels, over the limit of "
            f"{max_pixels} pixels",
            param=param,
        )


def _other_format(data: bytes | bytearray | memoryview) -> str | None:
    """The format Pillow recognises in a header it may not decode here (BMP, TIFF, ...)."""
    try:
        with Image.open(io.BytesIO(data)) as im:  # header only; pixels are never decoded
            return im.format
    except Exception:
        return None


def decode_image(
    data: bytes | bytearray | memoryview,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    param: str | None = None,
    draft: int | None = None,
) -> Image.Image:
    """Decode JPEG/PNG/WebP/GIF (first frame) bytes to an RGB image, EXIF orientation applied.

    ``draft`` (pixels): a JPEG may be decoded scaled down by 1/2, 1/4 or 1/8 in the DCT
    (Pillow's ``draft``) as long as both sides stay >= ``draft``: several times faster for
    photos much larger than the model's input, and close to, not bit-equal with, a full decode.

    The pixel count is read from the header and checked against ``max_pixels`` before any
    pixel data is decoded. Raises `PayloadTooLargeError` for images over the limit (and for
    Pillow's own decompression-bomb guard), `InputError` for empty, unsupported, undecodable
    or truncated data. ``param`` names the input in error messages (e.g. ``images[3]``).
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise InputError(f"image must be bytes, got {type(data).__name__}", param=param)
    if len(data) == 0:
        raise InputError("image is empty (0 bytes)", param=param)
    try:
        src = Image.open(io.BytesIO(data), formats=SUPPORTED_FORMATS)  # reads the header only
    except Image.DecompressionBombError as e:
        raise PayloadTooLargeError(f"image rejected as a decompression bomb: {e}", param) from e
    except Exception as e:  # any parser failure on untrusted bytes is the caller's input
        accepted = "/".join(SUPPORTED_FORMATS)
        other = _other_format(data)
        if other:
            raise InputError(
                f"unsupported image format {other}; accepted: {accepted}", param
            ) from e
        raise InputError(f"cannot decode image: not a valid {accepted} file", param) from e
    try:
        check_pixels(src.width, src.height, max_pixels, param)
        if draft and src.format == "JPEG":
            src.draft(None, (int(draft), int(draft)))
        src.load()  # first frame only for animated GIF/WebP
        return to_rgb(ImageOps.exif_transpose(src))
    except InputError:
        raise
    except Image.DecompressionBombError as e:
        raise PayloadTooLargeError(f"image rejected as a decompression bomb: {e}", param) from e
    except MemoryError:
        raise
    except Exception as e:
        raise InputError(f"cannot decode image: corrupt or truncated data ({e})", param) from e
    finally:
        src.close()


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert to RGB; transparent pixels are composited over white rather than dropped, and
    16-bit greyscale is scaled to 8 bits rather than clipped."""
    if img.mode in _INT_MODES:
        img = _to_8bit(img)
    if img.mode == "RGB" and "transparency" not in img.info:  # an RGB PNG may key a colour
        return img
    if img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        out = Image.new("RGB", rgba.size, (255, 255, 255))
        out.paste(rgba, mask=rgba.getchannel("A"))
        return out
    return img.convert("RGB")


def _to_8bit(img: Image.Image) -> Image.Image:
    """16-bit greyscale -> L (LA with its transparent value, if any), scaled to 0..255: Pillow's
    own conversion clips every value above 255 to white."""
    values = np.asarray(img)
    grey = Image.fromarray((np.clip(values, 0, 65535) // 257).astype(np.uint8))
    key = img.info.get("transparency")
    if isinstance(key, int):
        alpha = Image.fromarray(np.where(values == key, 0, 255).astype(np.uint8))
        grey = Image.merge("LA", (grey, alpha))
    return grey
