"""`MicroBatcher`: concurrent encode requests merged onto one `ClipEncoder` (via `AsyncBatcher`).

The pre stage (tokenize, or decode and preprocess images) runs per request in a small thread
pool, so a bad image fails only its own request. The core stage merges queued requests of one
modality into a model call of at most ``max_batch_size`` inputs (one call at a time, in a
dedicated thread) and post-processes it (L2 norm, to numpy); every caller gets its own rows.
Back-pressure, the batching policy and the error fallback are the generic batcher's
(`gapfix.batching`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch

from gapfix.batching import AsyncBatcher, BatcherClosedError
from gapfix.encoders.encoder import ClipEncoder, ImageInput
from gapfix.encoders.errors import EncoderClosedError

MODALITIES = ("text", "image")


class MicroBatcher:
    """Merge concurrent `encode_texts` / `encode_images` calls into batched model calls.

    Use one per encoder, from one event loop; close it with ``await batcher.aclose()`` (or
    ``async with``), which lets requests already accepted finish first. ``stats`` counts
    requests, model calls (``batches``), inputs and refused requests per modality. More than
    ``max_queue`` inputs waiting, or more than ``budget_ms`` of estimated work, raises
    `gapfix.batching.OverloadedError`.
    """

    def __init__(
        self,
        encoder: ClipEncoder,
        *,
        max_batch_size: int | None = None,
        max_wait_ms: float = 5.0,
        pre_workers: int | None = None,
        max_queue: int = 4096,
        budget_ms: float | None = None,
    ) -> None:
        if max_batch_size is not None and max_batch_size < 1:
            raise ValueError(f"max_batch_size must be positive, got {max_batch_size}")
        self.encoder = encoder
        self.max_batch_size = int(max_batch_size or encoder.max_batch_size)
        self.batcher: AsyncBatcher[str, torch.Tensor, np.ndarray] = AsyncBatcher(
            self._core,
            stage=str,
            max_batch=self.max_batch_size,
            max_queue=max_queue,
            max_wait_ms=max_wait_ms,
            budget_ms=budget_ms,
            core_threads=1,
            pre_threads=pre_workers or min(4, os.cpu_count() or 1),
            name="gapfix-encode",
        )

    @property
    def closed(self) -> bool:
        return self.batcher.closed

    @property
    def stats(self) -> dict[str, dict[str, int]]:
        return {m: self.batcher.stats_of(m) for m in MODALITIES}

    async def __aenter__(self) -> MicroBatcher:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()

    async def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Texts -> (n, dim) float32 L2-normalised, batched with concurrent callers."""
        return await self._submit("text", texts, len(texts), self.encoder.tokenize)

    async def encode_texts_counted(self, texts: Sequence[str]) -> tuple[np.ndarray, int]:
        """`encode_texts`, also returning how many tokens the model's tokenizer made of the
        texts (start/end tokens included, padding id 0 excluded), from the same tokenization."""
        counts: list[int] = []

        def tokenize(batch: Sequence[str]) -> torch.Tensor:
            tokens = self.encoder.tokenize(batch)
            counts.append(int((tokens != 0).sum()))
            return tokens

        vectors = await self._submit("text", texts, len(texts), tokenize)
        return vectors, sum(counts)

    async def encode_images(self, images: Sequence[ImageInput] | torch.Tensor) -> np.ndarray:
        """Images (bytes, PIL, or a preprocessed (n, C, H, W) tensor) -> (n, dim) float32."""
        if isinstance(images, torch.Tensor):
            self._check_open()
            self.encoder.check_pixels(images)
            return await self._submit("image", images, int(images.shape[0]), None)
        return await self._submit("image", images, len(images), self.encoder.preprocess_images)

    async def aclose(self) -> None:
        """Stop accepting requests, let accepted ones finish, stop the threads."""
        await self.batcher.aclose()

    def warm_up(self) -> None:
        """One forward pass per modality at ``max_batch_size`` (allocations, kernels, caches
        sized for the largest batch before the first request); blocking."""
        enc = self.encoder
        texts = ["warm-up"] * self.max_batch_size
        self._core("text", [enc.tokenize(texts)])
        self._core("image", [torch.zeros(self.max_batch_size, *enc.pixel_shape)])

    # ---- internals ----------------------------------------------------------------------

    def _check_open(self) -> None:
        if self.batcher.closed:
            raise EncoderClosedError("the encoder is shutting down")

    async def _submit(self, modality: str, inputs, n: int, pre) -> np.ndarray:
        self._check_open()
        if n == 0:
            self.batcher.stats_of(modality)["requests"] += 1
            return np.zeros((0, self.encoder.dim), dtype=np.float32)
        try:
            return await self.batcher.submit(modality, inputs, n, pre)
        except BatcherClosedError:
            raise EncoderClosedError("the encoder is shutting down") from None

    def _core(self, modality: str, payloads: list[torch.Tensor]) -> list[np.ndarray]:
        """One model call over the merged payloads (split when one request alone is larger
        than ``max_batch_size``), post-processed, cut back into one array per request."""
        enc = self.encoder
        forward = enc.forward_texts if modality == "text" else enc.forward_images
        if len(payloads) == 1:
            merged = payloads[0]
        else:  # on GPU, copy each request over and concatenate there
            merged = torch.cat([p.to(enc.device, non_blocking=True) for p in payloads])
        size = self.max_batch_size
        if merged.shape[0] <= size:
            out = enc.postprocess(forward(merged))
        else:  # the encoder's own chunks may be larger than this batcher's
            out = enc.postprocess(torch.cat([forward(c) for c in merged.split(size)]))
        parts, start = [], 0
        for p in payloads:
            parts.append(out[start : start + p.shape[0]])
            start += p.shape[0]
        return parts
