"""LlamaIndex ``MultiModalEmbedding`` backed by a gapfix server:
``pip install 'gapfix[llama-index]'``.

Texts are embedded as documents, queries with ``role="query"`` (the artifact's query-text
mean, where it has one), images (paths, ``http(s)://`` URLs the server fetches, or binary
file objects) as images, all through the named ``transform`` (or ``collection``'s active
one), so a ``MultiModalVectorStoreIndex`` searches one space."""

from __future__ import annotations

from typing import Any

try:
    from llama_index.core.base.embeddings.base import Embedding
    from llama_index.core.embeddings import MultiModalEmbedding
    from llama_index.core.schema import ImageType
except ImportError as exc:  # pragma: no cover - depends on the install
    raise ImportError(
        "gapfix.integrations.llama_index needs llama-index-core: pip install 'gapfix[llama-index]'"
    ) from exc

from pydantic import Field, PrivateAttr

from gapfix.client.http import DEFAULT_URL
from gapfix.integrations._connection import Connection


class GapfixEmbedding(MultiModalEmbedding):
    """Gap-corrected CLIP text and image embeddings from a gapfix server.

    >>> emb = GapfixEmbedding(base_url="http://127.0.0.1:8000", transform="coco")  # doctest: +SKIP
    >>> emb.get_query_embedding("a dog"), emb.get_image_embedding("photo.jpg")  # doctest: +SKIP
    """

    base_url: str = Field(DEFAULT_URL, description="The gapfix server.")
    api_key: str | None = Field(None, description="Bearer key, when the server needs one.")
    transform: str | None = Field(None, description="Named transform applied (None: raw).")
    collection: str | None = Field(None, description="Or: this collection's active transform.")
    timeout: float = Field(60.0, description="Seconds per HTTP request.")
    max_retries: int = Field(5, description="Retries on 429/503 and refused connections.")
    embed_batch_size: int = Field(256, gt=0, description="Inputs per call (the client batches).")
    model_name: str = Field("gapfix", description="Shown by LlamaIndex.")
    _connection: Connection = PrivateAttr()

    def __init__(self, **data: Any) -> None:
        super().__init__(**data)
        self._connection = Connection(self.base_url, self.api_key, self.transform,
                                      self.collection, self.timeout, self.max_retries)  # fmt: skip

    @classmethod
    def class_name(cls) -> str:
        return "GapfixEmbedding"

    # texts
    def _get_query_embedding(self, query: str) -> Embedding:
        return self._connection.texts([query], "query")[0].tolist()

    async def _aget_query_embedding(self, query: str) -> Embedding:
        return (await self._connection.atexts([query], "query"))[0].tolist()

    def _get_text_embedding(self, text: str) -> Embedding:
        return self._connection.texts([text], "document")[0].tolist()

    async def _aget_text_embedding(self, text: str) -> Embedding:
        return (await self._connection.atexts([text], "document"))[0].tolist()

    def _get_text_embeddings(self, texts: list[str]) -> list[Embedding]:
        return self._connection.texts(texts, "document").tolist() if texts else []

    async def _aget_text_embeddings(self, texts: list[str]) -> list[Embedding]:
        return (await self._connection.atexts(texts, "document")).tolist() if texts else []

    # images
    def _get_image_embedding(self, img_file_path: ImageType) -> Embedding:
        return self._connection.images([img_file_path])[0].tolist()

    async def _aget_image_embedding(self, img_file_path: ImageType) -> Embedding:
        return (await self._connection.aimages([img_file_path]))[0].tolist()

    def _get_image_embeddings(self, img_file_paths: list[ImageType]) -> list[Embedding]:
        return self._connection.images(img_file_paths).tolist() if img_file_paths else []

    async def _aget_image_embeddings(self, img_file_paths: list[ImageType]) -> list[Embedding]:
        if not img_file_paths:
            return []
        return (await self._connection.aimages(img_file_paths)).tolist()
