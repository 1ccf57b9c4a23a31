"""The CPU side of embedding: read image bytes, decode, preprocess, tokenize (runs in workers).

`prepare_items` turns a batch of `WorkItem`s into model inputs plus one `SlotRow` per slot (an
item's image, its caption, or the whole item when it is unusable). Every bad slot becomes a
`Failure` with a reason; nothing is dropped silently. The same code runs in DataLoader workers
(local backend) and in Ray Data tasks.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from gapfix.errors import InputError
from gapfix.jobs.failures import Failure
from gapfix.jobs.runner import SlotRow
from gapfix.jobs.shards import metadata_json
from gapfix.jobs.sources import WorkItem
from gapfix.store.items import MAX_CAPTION_BYTES, MAX_ID_CHARS, MAX_METADATA_BYTES

_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


@dataclass
class PreparedBatch:
    """Model inputs for a batch of items of one shard, plus the slot bookkeeping."""

    shard: int
    expected: int  # slots in the whole shard (for completion tracking)
    n_items: int = 0  # input items in this batch
    slots: list[SlotRow] = field(default_factory=list)
    image_slots: list[int] = field(default_factory=list)  # indexes into slots
    pixels: Any = None  # torch.Tensor (n, 3, H, W) or None
    text_slots: list[int] = field(default_factory=list)
    tokens: Any = None  # torch.Tensor (m, L) or None

    @property
    def failures(self) -> int:
        return sum(1 for s in self.slots if s.failure is not None)

    def pin_memory(self) -> PreparedBatch:
        """Page-lock the tensors (DataLoader ``pin_memory=True``: faster copies to a GPU)."""
        if self.pixels is not None:
            self.pixels = self.pixels.pin_memory()
        if self.tokens is not None:
            self.tokens = self.tokens.pin_memory()
        return self


def count_slots(items: Sequence[WorkItem]) -> int:
    """How many slot results a shard's items produce (one per image, caption, bad item)."""
    n = 0
    for it in items:
        if it.error is not None:
            n += 1
        else:
            n += int(it.has_image) + int(it.text is not None)
    return n or 1  # an empty shard still reports one "empty" slot


def _stable(reason: str) -> str:
    """Drop object addresses (``<_io.BytesIO object at 0x7f..>``) so reruns log equal reasons."""
    return _ADDRESS.sub("", reason)


class _Skip(Exception):
    """An image that cannot be read (the message is the failure reason)."""


def jpeg_thumbnail(img: Any, size: int, quality: int = 85) -> bytes:
    """A JPEG of a PIL image scaled to fit ``size`` x ``size`` pixels."""
    from PIL import Image

    t = img.copy()
    t.thumbnail((size, size), Image.Resampling.LANCZOS)
    if t.mode != "RGB":
        t = t.convert("RGB")
    buf = io.BytesIO()
    t.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


class Preparer:
    """Picklable CPU stage built on an encoder's pre stage (`ClipEncoder.preprocess_images`:
    decode with the pixel limit, EXIF, RGB, the model's transforms; `ClipEncoder.tokenize`).

    ``stage`` is any object with those two methods; `gapfix.jobs.model.cpu_stage` gives a
    copy of a `ClipEncoder` without its weights, cheap to send to worker processes. With
    ``thumbnail_size`` > 0 each good image also yields a JPEG thumbnail of that longest side
    (the image is then decoded once here, with `gapfix.encoders.decode_image` and the
    stage's ``max_pixels``, and handed to the stage decoded).
    """

    def __init__(self, stage: Any, thumbnail_size: int = 0) -> None:
        self.stage = stage
        self.thumbnail_size = int(thumbnail_size)

    def image_tensor(self, item: WorkItem) -> tuple[Any, str | None, bytes | None]:
        """The preprocessed (C, H, W) tensor of an item's image and its thumbnail (or None),
        or (None, reason, None)."""
        tensor, reason, thumb = None, None, None
        try:
            tensor, thumb = self._image(item)
        except _Skip as exc:
            reason = str(exc)
        except InputError as exc:  # PayloadTooLargeError too: over the pixel limit
            reason = _stable(str(exc))
        except Exception as exc:  # a damaged file can fail late, inside the model's transforms
            reason = _stable(f"cannot preprocess image: {type(exc).__name__}: {exc}")
        return tensor, reason, thumb

    def _image(self, item: WorkItem) -> tuple[Any, bytes | None]:
        if item.image is None:
            raise _Skip("empty image path")
        try:
            data = item.image.read()
        except FileNotFoundError:
            raise _Skip(f"missing file: {item.image.path}") from None
        except OSError as exc:
            raise _Skip(f"unreadable file: {exc}") from None
        if not data:
            raise _Skip("empty file (0 bytes)")
        if self.thumbnail_size <= 0:
            return self.stage.preprocess_images([data])[0], None
        from gapfix.encoders import decode_image

        draft = getattr(self.stage, "draft", None)
        img = decode_image(
            data, self.stage.max_pixels, draft=draft(self.thumbnail_size) if draft else None
        )
        tensor = self.stage.preprocess_images([img])[0]
        return tensor, jpeg_thumbnail(img, self.thumbnail_size)

    def __call__(self, shard: int, expected: int, items: Sequence[WorkItem]) -> PreparedBatch:
        import torch

        out = PreparedBatch(shard=shard, expected=expected, n_items=len(items))
        pixels, texts = [], []
        if not items:
            out.slots.append(SlotRow(seq=-1, slot="empty", id=""))
        for it in items:
            meta = metadata_json(it.metadata)
            error = it.error or store_limit_problem(it.id, meta)
            if error is not None:
                fail = Failure(it.id, it.source, error, None, shard)
                out.slots.append(SlotRow(it.seq, "item", it.id, meta, failure=fail))
                continue
            if it.has_image:
                tensor, reason, thumb = self.image_tensor(it)
                row = SlotRow(it.seq, "image", it.id, meta, thumbnail=thumb)
                if reason is None:
                    out.image_slots.append(len(out.slots))
                    pixels.append(tensor)
                else:
                    row.failure = Failure(it.id, it.source, reason, "image", shard)
                out.slots.append(row)
            if it.text is not None:
                text = it.text.strip()
                # the stored caption is display text: cut to the store's limit (the embedding
                # only ever sees the start of a long text)
                caption = cut_utf8(text, MAX_CAPTION_BYTES) or None
                row = SlotRow(it.seq, "text", it.id, meta, caption=caption)
                if text:
                    out.text_slots.append(len(out.slots))
                    texts.append(text)
                else:
                    row.failure = Failure(it.id, it.source, "empty caption", "text", shard)
                out.slots.append(row)
        if pixels:
            out.pixels = torch.stack(pixels)
        if texts:
            out.tokens = self.stage.tokenize(texts)
        return out


def store_limit_problem(item_id: str, meta: str) -> str | None:
    """Why an item could never be indexed by ``gapfix index build`` (the store's limits), so
    that embed records it as a failure instead of the build refusing the whole job."""
    if len(item_id) > MAX_ID_CHARS:
        return f"item id is longer than {MAX_ID_CHARS} characters"
    if len(meta.encode()) > MAX_METADATA_BYTES:
        compact = json.dumps(json.loads(meta), separators=(",", ":"), ensure_ascii=False)
        if len(compact.encode()) > MAX_METADATA_BYTES:
            return f"metadata is larger than {MAX_METADATA_BYTES} bytes"
    return None


def cut_utf8(text: str, max_bytes: int) -> str:
    """``text`` cut to at most ``max_bytes`` of UTF-8, at a character boundary."""
    raw = text.encode("utf-8", "surrogatepass")
    if len(raw) <= max_bytes:
        return text
    return raw[:max_bytes].decode("utf-8", "ignore")
