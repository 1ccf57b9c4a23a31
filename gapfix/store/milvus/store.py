"""``MilvusStore``: the service's store when ``GAPFIX_STORE=milvus://HOST:PORT[/db]``.

Same methods as the embedded ``gapfix.store.Store`` that the service uses. The list of
collections is ``gapfix_meta``; a restart (or another replica) opens them all from there and
resumes any interrupted transform switch. A Milvus collection that exists under a requested
name must have gapfix's schema (else 409 naming the field); one with it is adopted.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from gapfix.errors import GapfixError, InputError
from gapfix.store.errors import ConflictError, NotFoundError
from gapfix.store.index_kinds import INDEX_KINDS, IndexParams
from gapfix.store.items import ITEM_MODALITIES
from gapfix.store.milvus.collection import MilvusCollection, new_replica_id
from gapfix.store.milvus.conn import (
    SLOTS,
    MilvusTarget,
    check_milvus_name,
    check_schema,
    connect,
    data_fields,
    milvus_call,
    unavailable_as_503,
)
from gapfix.store.milvus.meta import Meta, MilvusArtifacts, add_sums, zero_sums
from gapfix.store.milvus.rows import COMPONENT_FIELDS, Components
from gapfix.store.store import check_collection_name

log = logging.getLogger(__name__)


class MilvusStore:
    """Collections in one Milvus database. ``token`` and ``tls`` go to ``MilvusClient``."""

    def __init__(
        self,
        target: MilvusTarget,
        token: str = "",
        timeout: float = 10.0,
        refresh_s: float = 1.0,
        switch_batch: int = 512,
        replica: str = "",
        **tls: Any,
    ) -> None:
        self.target = target
        self.refresh_s = refresh_s
        self.switch_batch = switch_batch
        self.replica = (replica or new_replica_id()).replace("@", "_")
        self.client = connect(target, token=token, timeout=timeout, **tls)
        self._lock = threading.Lock()
        self._collections: dict[str, MilvusCollection] = {}
        self._broken: dict[str, ConflictError] = {}
        self._closed = False
        with unavailable_as_503():
            self.meta = Meta(self.client)
            for name in self.meta.collection_names():
                try:
                    self._collections[name] = self._open(name)
                except ConflictError as exc:
                    log.error("collection %s: %s", name, exc.message)
                    self._broken[name] = exc
            for coll in self._collections.values():
                coll.resume_switch()

    def __enter__(self) -> MilvusStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _open(self, name: str) -> MilvusCollection:
        doc, _ = self.meta.get_collection(name) or ({}, {})
        if doc.get("dim") is not None and self.client.has_collection(name):
            check_schema(name, self.client.describe_collection(name), data_fields(doc["dim"]))
            self.client.load_collection(name)
            self._check_sums(name, doc)
        coll = self._collection(name)
        coll.update_gauges(coll.view(with_sums=True))
        return coll

    def _collection(self, name: str) -> MilvusCollection:
        return MilvusCollection(
            self.client, self.meta, name, self.refresh_s, self.switch_batch, self.replica
        )

    def _check_sums(self, name: str, doc: dict[str, Any]) -> None:
        """Rebuild the base counts and sums from the rows when the totals disagree with them (a
        writer killed between its rows and its changes' upsert, or an adopted collection)."""
        counts = {}
        for m in ITEM_MODALITIES:
            res = self.client.query(name, filter=f'modality == "{m}"', output_fields=["count(*)"])
            counts[m] = int(res[0]["count(*)"]) if res else 0
        coll = self._collection(name)
        try:
            v = coll.view(fresh=True)
            if counts == v.counts:
                return
            log.warning("collection %s: counts disagree with the rows; rebuilding sums", name)
            dim = doc["dim"]
            sums = {"raw": zero_sums(dim)}
            if v.transform is not None:
                sums[v.slot] = zero_sums(dim)
            for rows in coll._iterate(COMPONENT_FIELDS):
                c = Components.from_rows(rows, dim)
                sums["raw"] = add_sums(sums["raw"], c.raw_sums(), 1)
                if v.transform is not None:
                    sums[v.slot] = add_sums(sums[v.slot], c.corrected(v.transform)[1], 1)
            v = coll.view(fresh=True)  # the base that, with every replica's changes, totals these
            base = {s: add_sums(x, v.delta[s], -1) if s in v.delta else x for s, x in sums.items()}
            base_counts = {m: counts[m] - v.delta_counts.get(m, 0) for m in ITEM_MODALITIES}
            self.meta.put_collection(name, {**v.doc, "counts": base_counts}, base)
        finally:
            coll.close()

    def named_artifacts(self) -> MilvusArtifacts:
        """The artifact store for named transforms that every replica over this Milvus shares."""
        return MilvusArtifacts(self.meta)

    def flush(self) -> None:
        """Nothing to do: Milvus holds every write when it returns."""

    @milvus_call
    def create_collection(
        self,
        name: str,
        index: str = "flat",
        dim: int | None = None,
        index_params: dict[str, Any] | None = None,
    ) -> MilvusCollection:
        """Create an empty collection (a Milvus collection once its dimension is known)."""
        check_collection_name(name)
        check_milvus_name(name)
        if index not in INDEX_KINDS:
            raise InputError(
                f"unknown index kind {index!r}; expected one of {list(INDEX_KINDS)}", "index"
            )
        if dim is not None and (
            not isinstance(dim, int) or isinstance(dim, bool) or not 1 <= dim <= 32768
        ):
            raise InputError(f"dim must be an integer in [1, 32768], got {dim!r}", param="dim")
        params = IndexParams.from_dict(index, index_params)
        if dim is not None:
            params.check_dim(index, dim)
        with self._lock:
            self._check_open()
            if name in self._collections or self.meta.get_collection(name) is not None:
                raise ConflictError(f"collection {name!r} already exists", param="name")
            adopted = False
            if self.client.has_collection(name):
                described = self.client.describe_collection(name)
                if dim is None:
                    vec = next((f for f in described.get("fields", []) if f["name"] == "raw"), {})
                    dim = int((vec.get("params") or {}).get("dim", 0)) or None
                check_schema(name, described, data_fields(dim or 0))
                adopted = True
            given = {k: v for k, v in params.to_dict().items() if k in (index_params or {})}
            doc = {
                "name": name,
                "index": index,
                "index_params": given,
                "dim": dim,
                "created_at": time.time(),
                "active": None,
                "slot": SLOTS[0],
                "pending": None,
                "error": None,
                "counts": {m: 0 for m in ITEM_MODALITIES},
            }
            self.meta.put_collection(name, doc, {"raw": zero_sums(dim)} if dim else {})
            coll = self._collection(name)
            if dim is not None:
                coll.ensure_data_collection(dim)
                if adopted:
                    self.client.load_collection(name)
                    self._check_sums(name, doc)
            self._collections[name] = coll
            return coll

    def list_collections(self) -> list[dict[str, Any]]:
        """``info()`` of every collection, sorted by name."""
        with self._lock:
            colls = sorted(self._collections.values(), key=lambda c: c.name)
        return [c.info() for c in colls]

    def names(self) -> list[str]:
        with self._lock:
            return sorted(self._collections)

    def peek(self, name: str) -> MilvusCollection | None:
        """The named collection if this replica has it open (no Milvus call), else None."""
        with self._lock:
            if not isinstance(name, str) or name in self._broken or self._closed:
                return None
            return self._collections.get(name)

    def get(self, name: str) -> MilvusCollection:
        """The named collection; NotFoundError if absent, ConflictError if its Milvus schema
        is not gapfix's. Collections another replica created are picked up here."""
        with self._lock:
            if isinstance(name, str) and name in self._broken:
                raise self._broken[name]
            coll = self._collections.get(name) if isinstance(name, str) else None
        if coll is None and isinstance(name, str) and not self._closed:
            with unavailable_as_503():
                found = self.meta.get_collection(name) is not None
            if found:
                with self._lock, unavailable_as_503():
                    coll = self._collections.get(name) or self._open(name)
                    self._collections[name] = coll
        if coll is None:
            raise NotFoundError(f"collection {name!r} not found", param="collection")
        return coll

    @milvus_call
    def delete_collection(self, name: str) -> None:
        """Drop the Milvus collection and its meta rows; NotFoundError if it does not exist."""
        with self._lock:
            self._check_open()
            coll = self._collections.pop(name, None) if isinstance(name, str) else None
            self._broken.pop(name, None)
            if coll is None:
                raise NotFoundError(f"collection {name!r} not found", param="collection")
        coll.close()
        coll.remove_gauges()
        self.meta.delete_collection(name)
        if self.client.has_collection(name):
            self.client.drop_collection(name)

    def _check_open(self) -> None:
        if self._closed:
            raise GapfixError("the store is closed")

    def close(self) -> None:
        """Stop running switches (resumed at the next start) and close the client."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            colls = list(self._collections.values())
        for c in colls:
            c.close()
        try:
            self.client.close()
        except Exception:  # closing a connection to a server that went away
            log.debug("closing the Milvus client failed", exc_info=True)
