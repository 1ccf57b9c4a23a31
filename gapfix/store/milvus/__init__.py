"""The Milvus backend of the store: ``MilvusStore`` / ``MilvusCollection`` (see ``conn`` for
the schema, ``meta`` for the shared state, ``switch`` for transform switches)."""

from gapfix.store.milvus.collection import MilvusCollection
from gapfix.store.milvus.conn import MilvusTarget, StoreUnavailableError, parse_store_uri
from gapfix.store.milvus.store import MilvusStore

__all__ = [
    "MilvusCollection",
    "MilvusStore",
    "MilvusTarget",
    "StoreUnavailableError",
    "parse_store_uri",
]
