"""A gapfix collection kept in Milvus (same public methods and results as the embedded
``gapfix.store.Collection``).

State. Nothing lives only in this process: the items are rows of the Milvus collection, the
settings, active transform, counts and centroid sums are the collection's ``gapfix_meta`` row
(see ``meta``), read again before every write and at most ``refresh_s`` seconds old for reads.
Several gapfix replicas can serve one Milvus; writes are serialised per replica (concurrent
writers on different replicas may leave the counts and sums off until a restart rebuilds them).

Spaces. ``raw`` holds each item's fused raw vector; the corrected space of the active
transform is whichever of the two slots ``corrected`` / ``corrected_b`` the meta row names
(``slot``). With no transform the corrected space is the raw one. The transform lifecycle
(background switch, flip, resume) is in ``switch``.
"""

from __future__ import annotations

import logging
import threading
import time
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
    """One read of the meta row: settings, active/pending transform objects, counts, sums."""

    doc: dict[str, Any]
    transform: Any
    pending: Any
    sums: Sums | None
    read_at: float

    @property
    def slot(self) -> str:
        return self.doc.get("slot") or SLOTS[0]

    def slot_transforms(self) -> dict[str, Any]:
        out = {self.slot: self.transform}
        if self.pending is not None:
            out[self.doc["pending"]["slot"]] = self.pending
        return out


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
        self, client: Any, meta: Meta, name: str, refresh_s: float = 1.0, switch_batch: int = 512
    ) -> None:
        self.client = client
        self.meta = meta
        self.name = name
        self.refresh_s = refresh_s
        self.switch_batch = switch_batch
        self._write_lock = threading.RLock()
        self._transforms: dict[str, Any] = {}
        self._rebuilder = Rebuilder(name, self._write_lock)
        self._data_ready = False  # the Milvus collection exists (ensure_data_collection)
        self._closed = False
        self._view = self._read(with_sums=True)
        self.index_kind: str = self._view.doc["index"]
        self.index_params = IndexParams.from_dict(self.index_kind, self._view.doc["index_params"])
        self.created_at: float = self._view.doc.get("created_at", 0.0)
        self.repair_report: dict[str, str] = {}

    # ------------------------------------------------------------------ meta state
    def _read(self, with_sums: bool) -> View:
        got = self.meta.get_collection(self.name, sums=with_sums)
        if got is None:
            self._closed = True
            raise NotFoundError(f"collection {self.name!r} not found", param="collection")
        doc, sums = got
        pending = doc.get("pending")
        active = self._load_or_none(doc.get("active"), "active")
        ptrans = self._load_or_none(pending["fp"], "pending") if pending else None
        return View(doc, active, ptrans, sums if with_sums else None, time.monotonic())

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
        """The meta state: re-read when older than ``refresh_s`` (always when ``fresh``)."""
        self._check_open()
        v = self._view
        if fresh or with_sums or time.monotonic() - v.read_at > self.refresh_s:
            v = self._read(with_sums=True)
            self._view = v
        return v

    def _write_meta(self, doc: dict[str, Any], sums: Sums) -> None:
        self.meta.put_collection(self.name, doc, sums)
        self._view = View(
            doc,
            self._load_transform(doc.get("active")),
            self._load_transform((doc.get("pending") or {}).get("fp")),
            sums,
            time.monotonic(),
        )

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
        c = self.view().doc.get("counts") or {}
        return {m: int(c.get(m, 0)) for m in ITEM_MODALITIES}

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
        gauges.update_gauges(self.name, v.doc.get("counts") or {}, sums, v.transform is not None)

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

    def _new_meta(
        self, v: View, dim: int, old: R.Components, new: R.Components | None
    ) -> tuple[dict, Sums]:
        """Counts and sums after replacing ``old`` by ``new``."""
        doc = dict(v.doc)
        counts = dict(doc.get("counts") or {m: 0 for m in ITEM_MODALITIES})
        sums = {s: dict(x) for s, x in (v.sums or {}).items()}
        spaces = {"raw": None, v.slot: v.transform}
        if v.pending is not None:
            spaces[doc["pending"]["slot"]] = v.pending
        for space, t in spaces.items():
            if space != "raw" and t is None:
                sums.pop(space, None)
                continue
            cur = sums.get(space) or zero_sums(dim)
            for comps, sign in ((old, -1), (new, 1)):
                if comps is None or not len(comps):
                    continue
                part = comps.raw_sums() if t is None else comps.corrected(t)[1]
                cur = add_sums(cur, part, sign)
            sums[space] = cur
        for comps, sign in ((old, -1), (new, 1)):
            if comps is not None:
                for m, n in comps.modality_counts().items():
                    counts[m] = counts.get(m, 0) + sign * n
        doc["counts"] = counts
        return doc, sums

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
            doc, sums = self._new_meta(v, dim, old, new)
            doc["dim"] = dim
            self.client.upsert(self.name, R.batch_rows(batch, vectors, time.time()))
            self._write_meta(doc, sums)
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
            doc, sums = self._new_meta(v, dim, old, None)
            self.client.delete(self.name, ids=old.ids)
            self._write_meta(doc, sums)
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
