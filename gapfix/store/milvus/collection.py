"""A gapfix collection kept in Milvus (same public methods and results as the embedded
``gapfix.store.Collection``).

State. Nothing lives only in this process: the items are rows of the Milvus collection, the
settings and active transform are the collection's ``gapfix_meta`` row (see ``meta``), read
again before every write and at most ``refresh_s`` seconds old for reads. Counts and centroid
sums are that row's base plus every replica's running changes, each replica writing only its
own row (``coll:<name>@<replica>``), so several gapfix replicas can write one collection at
once without losing each other's updates. Writes are serialised per replica.

Spaces. ``raw`` holds each item's fused raw vector; the corrected space of the active
transform is whichever of the two slots ``corrected`` / ``corrected_b`` the meta row names
(``slot``). With no transform the corrected space is the raw one. The transform lifecycle
(background switch, flip, resume) is in ``switch``.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

from gapfix.store import gauges
from gapfix.store.errors import ConflictError, NotFoundError
from gapfix.store.index_kinds import IndexParams
from gapfix.store.items import (
    ITEM_MODALITIES,
    ItemIn,
    check_item_id,
    validate_batch,
)
from gapfix.store.milvus import rows as R
from gapfix.store.milvus.conn import SLOTS, StoreUnavailableError, milvus_call
from gapfix.store.milvus.meta import Meta, Sums, add_sums, zero_sums
from gapfix.store.milvus.reads import ITER_BATCH, Reads
from gapfix.store.milvus.switch import TransformSwitch
from gapfix.store.rebuild import Rebuilder

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class View:
    """One read of the meta state: settings, active/pending transform objects, the base counts
    (``doc["counts"]``) and sums, and the sum of every replica's changes since the base."""

    doc: dict[str, Any]
    transform: Any
    pending: Any
    base: Sums
    delta: Sums
    delta_counts: dict[str, int]
    read_at: float

    @property
    def slot(self) -> str:
        return self.doc.get("slot") or SLOTS[0]

    @property
    def sums(self) -> Sums:
        """Totals of the spaces the base holds (base + every replica's changes)."""
        return {
            space: add_sums(sums, self.delta[space], 1) if space in self.delta else sums
            for space, sums in self.base.items()
        }

    @property
    def counts(self) -> dict[str, int]:
        """Items per modality (base + every replica's changes)."""
        base = self.doc.get("counts") or {}
        return {m: int(base.get(m, 0)) + int(self.delta_counts.get(m, 0)) for m in ITEM_MODALITIES}

    def slot_transforms(self) -> dict[str, Any]:
        out = {self.slot: self.transform}
        if self.pending is not None:
            out[self.doc["pending"]["slot"]] = self.pending
        return out


Changes = tuple[dict[str, int], Sums]  # (counts per modality, sums per space)


def add_changes(a: Changes, b: Changes) -> Changes:
    """``a + b``: counts by modality, sums by space (a space only one side has is kept)."""
    counts = {m: int(a[0].get(m, 0)) + int(b[0].get(m, 0)) for m in {*a[0], *b[0]}}
    sums = dict(a[1])
    for space, x in b[1].items():
        sums[space] = add_sums(sums[space], x, 1) if space in sums else x
    return counts, sums


def sum_changes(deltas: dict[str, Changes]) -> Changes:
    """The sum of several replicas' changes."""
    total: Changes = ({}, {})
    for changes in deltas.values():
        total = add_changes(total, changes)
    return total


def new_replica_id() -> str:
    """A replica id for this process: the host name and a random suffix."""
    return f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}".replace("@", "_")


def index_params_for(kind: str, p: IndexParams, dim: int) -> tuple[str, dict[str, Any]]:
    """Milvus index type and build parameters for a gapfix index kind."""
    if kind == "hnsw":
        return "HNSW", {"M": p.hnsw_m, "efConstruction": p.ef_construction}
    if kind == "ivfpq":
        m = p.pq_m or next(d for d in (dim // 8, dim // 4, dim // 2, dim) if d and dim % d == 0)
        return "IVF_PQ", {"nlist": p.nlist or 128, "m": m, "nbits": p.nbits}
    return "FLAT", {}


class MilvusCollection(Reads, TransformSwitch):
    """A collection in Milvus; obtain one from ``MilvusStore``. Thread-safe."""

    def __init__(
        self,
        client: Any,
        meta: Meta,
        name: str,
        refresh_s: float = 1.0,
        switch_batch: int = 512,
        replica: str = "",
    ) -> None:
        self.client = client
        self.meta = meta
        self.name = name
        self.replica = replica or new_replica_id()
        self.refresh_s = refresh_s
        self.switch_batch = switch_batch
        self._write_lock = threading.RLock()
        self._transforms: dict[str, Any] = {}
        self._rebuilder = Rebuilder(name, self._write_lock)
        self._data_ready = False  # the Milvus collection exists (ensure_data_collection)
        self._closed = False
        self._own: Changes = ({}, {})  # this replica's changes
        self._view = self._read(with_sums=True)
        self._own = self._own_from_state
        self.index_kind: str = self._view.doc["index"]
        self.index_params = IndexParams.from_dict(self.index_kind, self._view.doc["index_params"])
        self.created_at: float = self._view.doc.get("created_at", 0.0)
        self.repair_report: dict[str, str] = {}

    # ------------------------------------------------------------------ meta state
    def _read(self, with_sums: bool = True) -> View:
        state = self.meta.read_state(self.name)
        if state is None:
            self._closed = True
            raise NotFoundError(f"collection {self.name!r} not found", param="collection")
        doc = state.doc
        self._own_from_state = state.deltas.get(self.replica, ({}, {}))
        delta_counts, delta = sum_changes(state.deltas)
        pending = doc.get("pending")
        active = self._load_or_none(doc.get("active"), "active")
        ptrans = self._load_or_none(pending["fp"], "pending") if pending else None
        return View(doc, active, ptrans, state.base, delta, delta_counts, time.monotonic())

    def _load_or_none(self, fp: str | None, which: str) -> Any:
        """A damaged or missing artifact must not make the items unreachable: searches then
        answer from the raw space (and a pending switch is not resumed)."""
        try:
            return self._load_transform(fp)
        except Exception as exc:
            if isinstance(exc, StoreUnavailableError) or type(exc).__module__.startswith(
                ("pymilvus", "grpc")
            ):
                raise  # Milvus did not answer: a 503, not a missing transform
            log.error("collection %s: %s transform %s unreadable: %s", self.name, which, fp, exc)
            return None

    def _load_transform(self, fp: str | None) -> Any:
        if not fp:
            return None
        t = self._transforms.get(fp)
        if t is None:
            from gapfix.store.milvus.switch import transform_from_bytes

            data = self.meta.get_artifact(self.name, fp)
            if data is None:
                raise NotFoundError(f"transform artifact {fp} is missing from Milvus", "transform")
            t = self._transforms[fp] = transform_from_bytes(data)
        return t

    def view(self, fresh: bool = False, with_sums: bool = False) -> View:
        """The meta state: re-read when older than ``refresh_s`` (always when ``fresh`` or
        ``with_sums``)."""
        self._check_open()
        v = self._view
        if fresh or with_sums or time.monotonic() - v.read_at > self.refresh_s:
            v = self._read()
            self._view = v
        return v

    def _write_meta(self, doc: dict[str, Any], base: Sums) -> None:
        """Write the meta row (settings, transforms, base counts and sums) in one upsert."""
        self.meta.put_collection(self.name, doc, base)
        v = self._view
        self._view = View(
            doc,
            self._load_transform(doc.get("active")),
            self._load_transform((doc.get("pending") or {}).get("fp")),
            base,
            v.delta,
            v.delta_counts,
            time.monotonic(),
        )

    def _write_changes(self, counts: dict[str, int], sums: Sums) -> None:
        """Add a write's changes to this replica's row (the only writer of that row)."""
        own = add_changes(self._own, (counts, sums))
        self.meta.put_delta(self.name, self.replica, *own)
        self._own = own
        v = self._view
        dc, delta = add_changes((v.delta_counts, v.delta), (counts, sums))
        self._view = View(v.doc, v.transform, v.pending, v.base, delta, dc, v.read_at)

    def _check_open(self) -> None:
        if self._closed:
            raise NotFoundError(
                f"collection {self.name!r} does not exist (deleted or closed)", "collection"
            )

    def ensure_data_collection(self, dim: int) -> None:
        """Create the Milvus collection of ``dim``-d vectors (the dimension is now fixed)."""
        from gapfix.store.milvus.conn import build_schema, data_fields

        if self._data_ready:  # checked once per process: a round trip less per write
            return
        if self.client.has_collection(self.name):
            self._data_ready = True
            return
        kind, params = index_params_for(self.index_kind, self.index_params, dim)
        index = self.client.prepare_index_params()
        for field in ("raw", *SLOTS):
            index.add_index(field, index_type=kind, metric_type="IP", params=params)
        self.client.create_collection(
            self.name,
            schema=build_schema(self.client, data_fields(dim)),
            index_params=index,
            consistency_level="Strong",
        )
        self._data_ready = True

    # ------------------------------------------------------------------ info
    @property
    def dim(self) -> int | None:
        """Embedding dimension (None until the first vectors or transform fix it)."""
        return self._view.doc.get("dim")

    def counts(self) -> dict[str, int]:
        """Items per modality: ``{"image": n, "text": n, "document": n}``."""
        return self.view().counts

    def count(self) -> int:
        return sum(self.counts().values())

    @milvus_call
    def info(self) -> dict[str, Any]:
        v = self.view()
        return {
            "name": self.name,
            "index": self.index_kind,
            "index_params": self.index_params.to_dict(),
            "dim": v.doc.get("dim"),
            "count": self.count(),
            "counts": self.counts(),
            "transform": v.transform.method if v.transform is not None else None,
            "transform_status": self.transform_status["status"],
            "created_at": self.created_at,
            "gpu": False,
        }

    def flush(self) -> None:
        """Nothing to do: every write is in Milvus when it returns."""

    def update_gauges(self, v: View) -> None:
        """Set this collection's Prometheus series from a meta view."""
        sums = {"raw": (v.sums or {}).get("raw")}
        if v.transform is not None:
            sums["corrected"] = (v.sums or {}).get(v.slot)
        gauges.update_gauges(self.name, v.counts, sums, v.transform is not None)

    def remove_gauges(self) -> None:
        """Drop this collection's Prometheus series (after it is deleted)."""
        gauges.remove_gauges(self.name)

    # ------------------------------------------------------------------ writes
    def _components(self, ids: list[str], dim: int) -> R.Components:
        rows = []
        for i in range(0, len(ids), ITER_BATCH):
            got = self.client.get(
                self.name, ids=ids[i : i + ITER_BATCH], output_fields=R.COMPONENT_FIELDS
            )
            rows += [dict(r) for r in got]
        return R.Components.from_rows(rows, dim)

    def _changes(
        self, v: View, dim: int, old: R.Components, new: R.Components | None
    ) -> tuple[dict[str, int], Sums]:
        """The counts and sums a write changes: ``new``'s rows added, ``old``'s removed, in the
        raw space and each corrected slot that holds a transform's vectors."""
        spaces = {"raw": None, v.slot: v.transform}
        if v.pending is not None:
            spaces[v.doc["pending"]["slot"]] = v.pending
        sums: Sums = {}
        for space, t in spaces.items():
            if space != "raw" and t is None:
                continue
            cur = zero_sums(dim)
            for comps, sign in ((old, -1), (new, 1)):
                if comps is None or not len(comps):
                    continue
                part = comps.raw_sums() if t is None else comps.corrected(t)[1]
                cur = add_sums(cur, part, sign)
            sums[space] = cur
        counts: dict[str, int] = {}
        for comps, sign in ((old, -1), (new, 1)):
            if comps is not None:
                for m, n in comps.modality_counts().items():
                    counts[m] = counts.get(m, 0) + sign * n
        return counts, sums

    @milvus_call
    def add(self, items: list[ItemIn], upsert: bool = False) -> dict[str, int]:
        """Add a batch, all or nothing (one Milvus upsert). Existing ids -> ConflictError
        unless ``upsert``. Returns ``{"added": n, "replaced": n}``."""
        batch = validate_batch(items, self.dim)
        with self._write_lock:
            v = self.view(fresh=True)
            dim = v.doc.get("dim")
            if dim is not None and batch.dim != dim:
                batch = validate_batch(items, dim)
            if dim is None:
                self.index_params.check_dim(self.index_kind, batch.dim)
                dim = batch.dim
            self.ensure_data_collection(dim)
            old = self._components(batch.ids, dim)
            if len(old) and not upsert:
                shown = ", ".join(repr(i) for i in old.ids[:5])
                raise ConflictError(
                    f"{len(old)} item id(s) already exist ({shown}); pass upsert to replace them",
                    param="items",
                )
            new = R.Components.from_batch(batch)
            vectors, _ = R.slot_vectors(new, v.slot_transforms())
            counts, sums = self._changes(v, dim, old, new)
            if v.doc.get("dim") is None:  # the first vectors fix the dimension
                base = {"raw": zero_sums(dim), **v.base}
                self._write_meta({**v.doc, "dim": dim}, base)
            self.client.upsert(self.name, R.batch_rows(batch, vectors, time.time()))
            self._write_changes(counts, sums)
            self.update_gauges(self._view)
        return {"added": len(batch) - len(old), "replaced": len(old)}

    @milvus_call
    def delete_items(self, ids: list[str], missing_ok: bool = False) -> int:
        """Delete items by id; unknown id -> NotFoundError unless ``missing_ok``."""
        ids = [check_item_id(i, f"ids[{n}]") for n, i in enumerate(ids)]
        with self._write_lock:
            v = self.view(fresh=True)
            dim = v.doc.get("dim")
            unique = list(dict.fromkeys(ids))
            old = self._components(unique, dim) if dim is not None and unique else None
            found = set(old.ids) if old is not None else set()
            if not missing_ok and len(found) < len(unique):
                gone = next(i for i in unique if i not in found)
                raise NotFoundError(f"item {gone!r} not found", param="id")
            if old is None or not len(old):
                return 0
            counts, sums = self._changes(v, dim, old, None)
            self.client.delete(self.name, ids=old.ids)
            self._write_changes(counts, sums)
            self.update_gauges(self._view)
            return len(old)

    def delete_item(self, item_id: str) -> None:
        """Delete one item; NotFoundError if it does not exist."""
        self.delete_items([item_id])

    def close(self, flush: bool = True) -> None:
        """Stop a running switch (the next start resumes it)."""
        with self._write_lock:
            self._closed = True
        self._rebuilder.close()  # holding no lock: the job's batches take the write lock
