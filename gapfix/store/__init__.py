"""Collections of items with a raw and a corrected vector space, behind one interface.

``backend`` defines what every backend implements (``Collection``, ``CollectionStore``) and
returns (``Searched``, ``RawVectors``). The default backend is ``embedded``: per-collection
SQLite items + raw vectors and FAISS indexes under a data directory (``Store``).

Usage (what the HTTP service does)::

    store = Store("data/")                              # reopens every collection
    coll = store.create_collection("photos", index="hnsw")
    coll.add([ItemIn("a", image=img_vec, metadata={"url": ...}, thumbnail=jpeg_bytes),
              ItemIn("b", text=txt_vec),
              ItemIn("c", image=img_vec2, text=txt_vec2, weight=0.5)])   # a document
    coll.fit_transform("auto", wait_seconds=5)          # True: active; False: rebuilding
    found = coll.search(query_vecs, "text", k=10, modalities=["image"])  # Searched
    found.hits                                          # list[list[Hit]], one list per query
    coll.search(item_id="a", k=5).hits[0]               # neighbours of a stored item
    store.close()

Errors: ``InputError`` (400/422), ``PayloadTooLargeError`` (413), ``NotFoundError`` (404),
``ConflictError`` (409). Module map, backend-neutral: ``backend`` (protocols, result types,
argument checks), ``items`` (item model, validation), ``rebuild`` (background transform jobs
on concurrent.futures), ``sums`` (running centroid sums), ``gauges`` (Prometheus series).
Embedded: ``embedded`` (the collection), ``db`` (SQLite), ``index`` (a FAISS index of one
space), ``index_kinds`` (kinds, params, GPU), ``index_filters`` (filtered and tombstoned
search), ``index_files``, ``store`` (collections in a data dir). Milvus: ``milvus``
(``MilvusStore`` / ``MilvusCollection``, the same protocols over a Milvus database; needs
pymilvus, imported on use).
"""

from gapfix.store.backend import Collection, CollectionStore, RawVectors, Searched
from gapfix.store.embedded import EmbeddedCollection
from gapfix.store.errors import ConflictError, NotFoundError
from gapfix.store.index_kinds import INDEX_KINDS, IndexParams
from gapfix.store.items import ITEM_MODALITIES, QUERY_MODALITIES, Hit, Item, ItemIn
from gapfix.store.store import Store, check_collection_name

__all__ = [
    "INDEX_KINDS",
    "ITEM_MODALITIES",
    "QUERY_MODALITIES",
    "Collection",
    "CollectionStore",
    "ConflictError",
    "EmbeddedCollection",
    "Hit",
    "IndexParams",
    "Item",
    "ItemIn",
    "NotFoundError",
    "RawVectors",
    "Searched",
    "Store",
    "check_collection_name",
]
