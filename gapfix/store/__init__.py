"""Embedded per-collection vector store: SQLite items + raw vectors, FAISS indexes, transforms.

Usage (what the HTTP service does)::

    store = Store("data/")                              # reopens every collection
    coll = store.create_collection("photos", index="hnsw")
    coll.add([ItemIn("a", image=img_vec, metadata={"url": ...}, thumbnail=jpeg_bytes),
              ItemIn("b", text=txt_vec),
              ItemIn("c", image=img_vec2, text=txt_vec2, weight=0.5)])   # a document
    coll.fit_transform("auto", wait_seconds=5)          # True: active; False: rebuilding
    hits = coll.search(query_vecs, "text", k=10, modalities=["image"])   # list[list[Hit]]
    store.close()

Errors: ``InputError`` (400/422), ``PayloadTooLargeError`` (413), ``NotFoundError`` (404),
``ConflictError`` (409). Module map: ``items`` (item model, validation, id encoding), ``db``
(SQLite), ``index`` (FAISS kinds, filters, files), ``collection`` (consistency, search,
transforms, background rebuilds), ``store`` (collections in a data dir).
"""

from gapfix.store.collection import Collection, RawVectors
from gapfix.store.errors import ConflictError, NotFoundError
from gapfix.store.index import INDEX_KINDS, IndexParams
from gapfix.store.items import ITEM_MODALITIES, QUERY_MODALITIES, Hit, Item, ItemIn
from gapfix.store.store import Store, check_collection_name

__all__ = [
    "INDEX_KINDS",
    "ITEM_MODALITIES",
    "QUERY_MODALITIES",
    "Collection",
    "ConflictError",
    "Hit",
    "IndexParams",
    "Item",
    "ItemIn",
    "NotFoundError",
    "RawVectors",
    "Store",
    "check_collection_name",
]
