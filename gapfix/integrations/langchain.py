"""LangChain ``Embeddings`` backed by a gapfix server: ``pip install 'gapfix[langchain]'``.

Documents are embedded with ``role="document"``, queries with ``role="query"`` (the
artifact's query-text mean, where it has one), images with ``embed_image(uris)`` (file
paths, ``http(s)://`` URLs the server fetches, or data URIs), all through the named
``transform`` (or ``collection``'s active one), so texts and images share one space."""

from __future__ import annotations

from typing import Any

try:
    from langchain_core.embeddings import Embeddings
except ImportError as exc:  # pragma: no cover - depends on the install
    raise ImportError(
        "gapfix.integrations.langchain needs langchain-core: pip install 'gapfix[langchain]'"
    ) from exc

from gapfix.client.http import DEFAULT_URL
from gapfix.integrations._connection import Connection


class GapfixEmbeddings(Embeddings):
    """Gap-corrected CLIP embeddings from a gapfix server.

    >>> emb = GapfixEmbeddings(base_url="http://127.0.0.1:8000", transform="coco")  # doctest: +SKIP
    >>> emb.embed_query("a dog"), emb.embed_image(["photo.jpg"])  # doctest: +SKIP
    """

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        api_key: str | None = None,
        *,
        transform: str | None = None,
        collection: str | None = None,
        timeout: float = 60.0,
        max_retries: int = 5,
    ) -> None:
        self.connection = Connection(base_url, api_key, transform, collection, timeout,
                                     max_retries)  # fmt: skip

    @property
    def transform(self) -> str | None:
        return self.connection.transform

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        """Texts as documents (``role="document"``)."""
        return self.connection.texts(texts, "document").tolist() if texts else []

    def embed_query(self, text: str) -> list[float]:
        """A text as a query (``role="query"``)."""
        return self.connection.texts([text], "query")[0].tolist()

    def embed_image(self, uris: list[str]) -> list[list[float]]:
        """Images by path, ``http(s)://`` URL (fetched by the server) or data URI."""
        return self.connection.images(uris).tolist() if uris else []

    async def aembed_documents(self, texts: list[str]) -> list[list[float]]:
        return (await self.connection.atexts(texts, "document")).tolist() if texts else []

    async def aembed_query(self, text: str) -> list[float]:
        return (await self.connection.atexts([text], "query"))[0].tolist()

    async def aembed_image(self, uris: list[str]) -> list[list[float]]:
        return (await self.connection.aimages(uris)).tolist() if uris else []

    def close(self) -> None:
        """Close the HTTP connection pool."""
        self.connection.close()

    def __repr__(self) -> str:
        c = self.connection
        return f"GapfixEmbeddings(base_url={c.base_url!r}, transform={c.transform!r})"

    def __getstate__(self) -> dict[str, Any]:  # picklable: the pool is made again
        c = self.connection
        return {"args": (c.base_url, c.api_key, c.transform, c.collection, c.timeout,
                         c.max_retries)}  # fmt: skip

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.connection = Connection(*state["args"])
