"""What both adapters share: a gapfix server, the transform to apply, and the calls."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gapfix.client import AsyncClient, Client
from gapfix.client.ops import Role
from gapfix.client.payloads import ImageInput


@dataclass
class Connection:
    """A gapfix server and the transform (a name, or a collection's active one) applied to
    everything embedded through it; ``None`` for both: raw vectors."""

    base_url: str
    api_key: str | None = None
    transform: str | None = None
    collection: str | None = None
    timeout: float = 60.0
    max_retries: int = 5
    _client: Client | None = field(default=None, repr=False)
    _info: dict[str, Any] | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        if self.transform is not None and self.collection is not None:
            raise ValueError("give `transform` or `collection`, not both")

    def _kw(self, role: Role) -> dict[str, Any]:
        return {"transform": self.transform, "collection": self.collection, "role": role}

    def client(self) -> Client:
        """The blocking client (one per connection, made on first use)."""
        with self._lock:
            if self._client is None:
                self._client = Client(self.base_url, self.api_key, timeout=self.timeout,
                                      max_retries=self.max_retries)  # fmt: skip
            return self._client

    def _async(self) -> AsyncClient:
        # one per call: an httpx.AsyncClient belongs to the event loop that uses it
        a = AsyncClient(self.base_url, self.api_key, timeout=self.timeout,
                        max_retries=self.max_retries)  # fmt: skip
        a._info = self._info if self._info is not None else (self._client and self._client._info)
        return a

    def texts(self, texts: Sequence[str], role: Role) -> np.ndarray:
        return self.client().embed(list(texts), **self._kw(role)).texts

    def images(self, images: Sequence[ImageInput]) -> np.ndarray:
        return self.client().embed(images=list(images), **self._kw("document")).images

    async def atexts(self, texts: Sequence[str], role: Role) -> np.ndarray:
        async with self._async() as a:
            out = await a.embed(list(texts), **self._kw(role))
            self._info = a._info
        return out.texts

    async def aimages(self, images: Sequence[ImageInput]) -> np.ndarray:
        async with self._async() as a:
            out = await a.embed(images=list(images), **self._kw("document"))
            self._info = a._info
        return out.images

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
