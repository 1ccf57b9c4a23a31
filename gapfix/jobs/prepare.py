"""The CPU side of embedding: read image bytes, decode, preprocess, tokenize (runs in workers).

`prepare_items` turns a batch of `WorkItem`s into model inputs plus one `SlotRow` per slot (an
item's image, its caption, or the whole item when it is unusable). Every bad slot becomes a
`Failure` with a reason; nothing is dropped silently. The same code runs in DataLoader workers
(local backend) and in Ray Data tasks.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from gapfix.errors import InputError
from gapfix.jobs.failures import Failure
from gapfix.jobs.runner import SlotRow
from gapfix.jobs.shards import metadata_json
from gapfix.jobs.sources import WorkItem

_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


@dataclass
class PreparedBatch:
    """Model inputs for a batch of items of one shard, plus the slot bookkeeping."""

    shard: int
    expected: int  # slots in the whole shard (for completion tracking)
    slots: list[SlotRow] = field(default_factory=list)
    image_slots: list[int] = field(default_factory=list)  # indexes into slots
    pixels: Any = None  # torch.Tensor (n, 3, H, W) or None
    text_slots: list[int] = field(default_factory=list)
    tokens: Any = None  # torch.Tensor (m, L) or None

    @property
    def failures(self) -> int:
        return sum(1 for s in self.slots if s.failure is not None)


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


class Preparer:
    """Picklable CPU stage built on an encoder's pre stage (`ClipEncoder.preprocess_images`:
    decode with the pixel limit, EXIF, RGB, the model's transforms; `ClipEncoder.tokenize`).

    ``stage`` is any object with those two methods; `gapfix.jobs.model.cpu_stage` gives a
    copy of a `ClipEncoder` without its weights, cheap to send to worker processes.
    """

    def __init__(self, stage: Any) -> None:
        self.stage = stage

    def image_tensor(self, item: WorkItem) -> tuple[Any, str | None]:
        """The preprocessed (C, H, W) tensor of an item's image, or (None, reason)."""
        if item.image is None:
            return None, "empty image path"
        try:
            data = item.image.read()
        except FileNotFoundError:
            return None, f"missing file: {item.image.path}"
        except OSError as exc:
            return None, f"unreadable file: {exc}"
        if not data:
            return None, "empty file (0 bytes)"
        try:
            return self.stage.preprocess_images([data])[0], None
        except InputError as exc:  # PayloadTooLargeError too: over the pixel limit
            return None, _stable(str(exc))
        except Exception as exc:  # a damaged file can fail late, inside the model's transforms
            return None, _stable(f"cannot preprocess image: {type(exc).__name__}: {exc}")

    def __call__(self, shard: int, expected: int, items: Sequence[WorkItem]) -> PreparedBatch:
        import torch

        out = PreparedBatch(shard=shard, expected=expected)
        pixels, texts = [], []
        if not items:
            out.slots.append(SlotRow(seq=-1, slot="empty", id=""))
        for it in items:
            meta = metadata_json(it.metadata)
            if it.error is not None:
                fail = Failure(it.id, it.source, it.error, None, shard)
                out.slots.append(SlotRow(it.seq, "item", it.id, meta, failure=fail))
                continue
            if it.has_image:
                tensor, reason = self.image_tensor(it)
                row = SlotRow(it.seq, "image", it.id, meta)
                if reason is None:
                    out.image_slots.append(len(out.slots))
                    pixels.append(tensor)
                else:
                    row.failure = Failure(it.id, it.source, reason, "image", shard)
                out.slots.append(row)
            if it.text is not None:
                text = it.text.strip()
                row = SlotRow(it.seq, "text", it.id, meta)
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
