"""`MicroBatcher`: dynamic batching of concurrent encode requests onto one `ClipEncoder`.

Each request runs its pre stage (decode/preprocess or tokenize) in a small thread pool, so a bad
image fails only its own request. The resulting tensors are queued per modality; one worker task
per modality merges queued requests into a single model call of at most ``max_batch_size``
inputs, waiting at most ``max_wait_ms`` after the oldest request arrived for more to come. The
model call (core + post stage) runs in a dedicated thread, off the event loop; every caller gets
its own rows back. If a merged call fails, its requests are retried one by one so the error
reaches only the request that causes it.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from gapfix.encoders.encoder import ClipEncoder, ImageInput
from gapfix.encoders.errors import EncoderClosedError

logger = logging.getLogger("gapfix.encoders")

MODALITIES = ("text", "image")
_STOP = object()


@dataclass(eq=False)
class _Request:
    payload: torch.Tensor
    future: asyncio.Future
    enqueued: float

    @property
    def n(self) -> int:
        return int(self.payload.shape[0])


class MicroBatcher:
    """Merge concurrent `encode_texts` / `encode_images` calls into batched model calls.

    Use one per encoder, from one event loop; close it with ``await batcher.aclose()`` (or
    ``async with``), which lets requests already accepted finish first. ``stats`` counts
    requests, model calls (``batches``) and inputs per modality.
    """

    def __init__(
        self,
        encoder: ClipEncoder,
        *,
        max_batch_size: int | None = None,
        max_wait_ms: float = 5.0,
        pre_workers: int | None = None,
    ) -> None:
        if max_batch_size is not None and max_batch_size < 1:
            raise ValueError(f"max_batch_size must be positive, got {max_batch_size}")
        if max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be >= 0, got {max_wait_ms}")
        self.encoder = encoder
        self.max_batch_size = int(max_batch_size or encoder.max_batch_size)
        self.max_wait = max_wait_ms / 1000.0
        workers = pre_workers or min(4, os.cpu_count() or 1)
        self._pre_pool = ThreadPoolExecutor(workers, thread_name_prefix="gapfix-encode-pre")
        self._core_pool = ThreadPoolExecutor(1, thread_name_prefix="gapfix-encode-core")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queues: dict[str, asyncio.Queue] = {}
        self._workers: dict[str, asyncio.Task] = {}
        self._inflight = 0
        self._idle: asyncio.Event | None = None
        self._closed = False
        self.stats = {m: {"requests": 0, "batches": 0, "items": 0} for m in MODALITIES}

    @property
    def closed(self) -> bool:
        return self._closed

    async def __aenter__(self) -> MicroBatcher:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()

    async def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Texts -> (n, dim) float32 L2-normalised, batched with concurrent callers."""
        async with self._request():
            tokens = await self._pre(self.encoder.tokenize, texts)
            return await self._submit("text", tokens)

    async def encode_texts_counted(self, texts: Sequence[str]) -> tuple[np.ndarray, int]:
        """`encode_texts`, also returning how many tokens the model's tokenizer made of the
        texts (start/end tokens included, padding id 0 excluded), from the same tokenization."""
        async with self._request():
            tokens = await self._pre(self.encoder.tokenize, texts)
            return await self._submit("text", tokens), int((tokens != 0).sum())

    async def encode_images(self, images: Sequence[ImageInput] | torch.Tensor) -> np.ndarray:
        """Images (bytes, PIL, or a preprocessed (n, C, H, W) tensor) -> (n, dim) float32."""
        async with self._request():
            if isinstance(images, torch.Tensor):
                self.encoder.check_pixels(images)
                pixels = images
            else:
                pixels = await self._pre(self.encoder.preprocess_images, images)
            return await self._submit("image", pixels)

    async def aclose(self) -> None:
        """Stop accepting requests, let accepted ones finish, stop the workers and threads."""
        if self._closed:
            return
        self._closed = True
        if self._idle is not None and self._inflight:
            await self._idle.wait()
        for queue in self._queues.values():
            queue.put_nowait(_STOP)
        if self._workers:
            await asyncio.gather(*self._workers.values(), return_exceptions=True)
        self._pre_pool.shutdown(wait=False, cancel_futures=True)
        self._core_pool.shutdown(wait=False)

    # ---- internals ----------------------------------------------------------------------

    def _request(self) -> _InFlight:
        if self._closed:
            raise EncoderClosedError("the encoder is shutting down")
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = loop
            self._idle = asyncio.Event()
            for m in MODALITIES:
                self._queues[m] = asyncio.Queue()
                self._workers[m] = loop.create_task(self._worker(m), name=f"gapfix-batch-{m}")
        elif self._loop is not loop:
            raise RuntimeError("MicroBatcher is bound to another event loop")
        return _InFlight(self)

    async def _pre(self, fn: Callable, arg) -> torch.Tensor:
        return await asyncio.get_running_loop().run_in_executor(self._pre_pool, fn, arg)

    async def _submit(self, modality: str, payload: torch.Tensor) -> np.ndarray:
        stats = self.stats[modality]
        stats["requests"] += 1
        if payload.shape[0] == 0:
            return np.zeros((0, self.encoder.dim), dtype=np.float32)
        loop = asyncio.get_running_loop()
        request = _Request(payload, loop.create_future(), loop.time())
        self._queues[modality].put_nowait(request)
        return await request.future

    async def _worker(self, modality: str) -> None:
        queue = self._queues[modality]
        loop = asyncio.get_running_loop()
        carry = None
        while True:
            first = carry if carry is not None else await queue.get()
            carry = None
            if first is _STOP:
                return
            batch, n = [first], first.n
            deadline = first.enqueued + self.max_wait
            while n < self.max_batch_size:
                try:
                    item = queue.get_nowait()
                except asyncio.QueueEmpty:
                    remaining = deadline - loop.time()
                    if remaining <= 0:
                        break
                    try:
                        item = await asyncio.wait_for(queue.get(), remaining)
                    except TimeoutError:
                        break
                if item is _STOP or n + item.n > self.max_batch_size:
                    carry = item
                    break
                batch.append(item)
                n += item.n
            try:
                await self._dispatch(modality, batch)
            except Exception as e:  # never let the worker die: later requests would hang
                logger.exception("encode batch failed unexpectedly")
                for r in batch:
                    if not r.future.done():
                        r.future.set_exception(e)

    async def _dispatch(self, modality: str, batch: list[_Request]) -> None:
        batch = [r for r in batch if not r.future.done()]  # skip cancelled callers
        if not batch:
            return
        forward = self.encoder.forward_texts if modality == "text" else self.encoder.forward_images
        loop = asyncio.get_running_loop()
        try:
            out = await loop.run_in_executor(
                self._core_pool, self._run_core, forward, [r.payload for r in batch]
            )
        except Exception as e:
            if len(batch) > 1:  # find the culprit: rerun each request alone
                for r in batch:
                    await self._dispatch(modality, [r])
            elif not batch[0].future.done():
                batch[0].future.set_exception(e)
            return
        stats = self.stats[modality]
        stats["batches"] += 1
        stats["items"] += out.shape[0]
        start = 0
        for r in batch:
            if not r.future.done():
                r.future.set_result(out[start : start + r.n])
            start += r.n

    def _run_core(self, forward: Callable, payloads: list[torch.Tensor]) -> np.ndarray:
        device = self.encoder.device
        if len(payloads) == 1:
            merged = payloads[0]
        else:  # on GPU, copy each request over and concatenate there
            merged = torch.cat([p.to(device, non_blocking=True) for p in payloads])
        size = self.max_batch_size
        if merged.shape[0] <= size:
            return self.encoder.postprocess(forward(merged))
        # one request over max_batch_size: the encoder's own chunks may be larger
        return self.encoder.postprocess(torch.cat([forward(c) for c in merged.split(size)]))


class _InFlight:
    """Counts a request as in flight (for a graceful `MicroBatcher.aclose`)."""

    def __init__(self, batcher: MicroBatcher) -> None:
        self.batcher = batcher

    async def __aenter__(self) -> None:
        self.batcher._inflight += 1
        self.batcher._idle.clear()

    async def __aexit__(self, *exc) -> None:
        self.batcher._inflight -= 1
        if self.batcher._inflight == 0:
            self.batcher._idle.set()
