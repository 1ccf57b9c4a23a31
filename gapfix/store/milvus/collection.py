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

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from gapfix.errors import InputError
from gapfix.metrics import COLLECTION_GAP, COLLECTION_ITEMS, STAGE_LATENCY
from gapfix.store.collection import MAX_K, RawVectors, Searched, _is_int
from gapfix.store.errors import NotFoundError
from gapfix.store.index import IndexParams
from gapfix.store.items import (
    ITEM_MODALITIES,
    Hit,
    Item,
    ItemIn,
    check_item_id,
    check_modalities,
    check_query_vectors,
    validate_batch,
)
from gapfix.store.milvus import rows as R
from gapfix.store.milvus.conn import SLOTS, milvus_call
from gapfix.store.milvus.meta import Meta, Sums, add_sums, zero_sums
from gapfix.store.milvus.switch import TransformSwitch
from gapfix.validation import check_modality

ITER_BATCH = 1000


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


class MilvusCollection(TransformSwitch):
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
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"gapfix-switch-{name}")
        self._job: Any = None
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
        active = self._load_transform(doc.get("active"))
        pending = doc.get("pending")
        ptrans = self._load_transform(pending["fp"]) if pending else None
        return View(doc, active, ptrans, sums if with_sums else None, time.monotonic())

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

        if self.client.has_collection(self.name):
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
        counts = v.doc.get("counts") or {}
        for m in ITEM_MODALITIES:
            COLLECTION_ITEMS.labels(self.name, m).set(counts.get(m, 0))
        raw, corr = gap_of(v, "raw"), gap_of(v, "corrected")
        if raw is not None:
            COLLECTION_GAP.labels(self.name, "raw").set(raw)
        if corr is not None:
            COLLECTION_GAP.labels(self.name, "corrected").set(corr)

    def remove_gauges(self) -> None:
        import contextlib

        for m in ITEM_MODALITIES:
            with contextlib.suppress(KeyError):
                COLLECTION_ITEMS.remove(self.name, m)
        for s in ("raw", "corrected"):
            with contextlib.suppress(KeyError):
                COLLECTION_GAP.remove(self.name, s)

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
        from gapfix.store.errors import ConflictError

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

    # ------------------------------------------------------------------ reads
    def _get_row(self, item_id: str, fields: list[str]) -> dict[str, Any]:
        check_item_id(item_id)
        self._check_open()
        rows = (
            []
            if self.dim is None
            else self.client.get(self.name, ids=[item_id], output_fields=fields)
        )
        if not rows:
            raise NotFoundError(f"item {item_id!r} not found", param="id")
        return rows[0]

    @milvus_call
    def get_item(self, item_id: str) -> Item:
        """The stored item (raw vectors, metadata); NotFoundError if absent."""
        r = self._get_row(
            item_id, [*R.COMPONENT_FIELDS, "metadata", "text", "has_thumbnail", "created_at"]
        )
        vec = {
            m: None if r.get(f"{m}_vector") is None else np.asarray(r[f"{m}_vector"], np.float32)
            for m in ("image", "text")
        }
        return Item(
            id=r["id"],
            modality=r["modality"],
            metadata=r.get("metadata") or {},
            image=vec["image"],
            text=vec["text"],
            weight=float(r["weight"]) if r["modality"] == "document" else None,
            has_thumbnail=bool(r["has_thumbnail"]),
            created_at=float(r["created_at"]),
            caption=r.get("text"),
        )

    @milvus_call
    def get_thumbnail(self, item_id: str) -> bytes | None:
        """The item's thumbnail bytes, or None if it has none; NotFoundError if no such item."""
        return R.thumbnail_bytes(self._get_row(item_id, ["thumbnail"]))

    def _iterate(self, fields: list[str], batch: int = ITER_BATCH) -> Any:
        """Every row's ``fields``, in batches (a Milvus query iterator)."""
        if self.dim is None:
            return
        it = self.client.query_iterator(
            self.name, batch_size=batch, filter="", output_fields=fields
        )
        try:
            while rows := it.next():
                yield [dict(r) for r in rows]  # pymilvus decodes vectors lazily by position
        finally:
            it.close()

    @milvus_call
    def list_items(self, offset: int = 0, limit: int = 100) -> list[tuple[str, str]]:
        """``(id, modality)`` pairs in insertion order (sorted by ``created_at``)."""
        if not (_is_int(offset) and _is_int(limit)) or offset < 0 or not 1 <= limit <= 10_000:
            raise InputError(
                f"offset must be an integer >= 0 and limit an integer in [1, 10000], got "
                f"{offset!r} and {limit!r}",
                param="limit",
            )
        self._check_open()
        rows = [r for b in self._iterate(["id", "modality", "created_at"]) for r in b]
        rows.sort(key=lambda r: (r["created_at"], r["id"]))
        return [(r["id"], r["modality"]) for r in rows[offset : offset + limit]]

    def correct(self, vectors: Any, modality: str) -> np.ndarray:
        """Raw vectors of ``modality`` through the active transform (unit length, float32)."""
        check_modality(modality)
        q = check_query_vectors(vectors, self.dim)
        with milvus_call_ctx():
            transform = self.view().transform
        if transform is None:
            return q
        with STAGE_LATENCY.labels("correct").time():
            return np.ascontiguousarray(transform.transform(q, modality), np.float32)

    def _search_params(self, k: int) -> dict[str, Any]:
        p = self.index_params
        params: dict[str, Any] = {}
        if self.index_kind == "hnsw":
            params = {"ef": max(p.ef_search, k)}
        elif self.index_kind == "ivfpq":
            params = {"nprobe": p.nprobe}
        return {"metric_type": "IP", "params": params}

    def _search_field(
        self, q: np.ndarray, field: str, k: int, mods: list[str] | None
    ) -> list[list[Hit]]:
        expr = "" if mods is None else "modality in [" + ", ".join(f'"{m}"' for m in mods) + "]"
        with STAGE_LATENCY.labels("search").time():
            res = self.client.search(
                self.name,
                data=np.ascontiguousarray(q, np.float32).tolist(),
                anns_field=field,
                limit=k,
                filter=expr,
                output_fields=R.HIT_FIELDS,
                search_params=self._search_params(k),
            )
        return [[R.hit(h) for h in hits] for hits in res]

    @staticmethod
    def _check_k(k: Any) -> int:
        if not _is_int(k) or not 1 <= k <= MAX_K:
            raise InputError(f"k must be an integer in [1, {MAX_K}], got {k!r}", param="k")
        return int(k)

    def search(
        self,
        vectors: Any,
        query_modality: str,
        k: int = 10,
        modalities: list[str] | None = None,
        corrected: bool = True,
    ) -> list[list[Hit]]:
        """Top-k items per raw query vector; see ``search_view``."""
        return self.search_view(vectors, query_modality, k, modalities, corrected).hits

    @milvus_call
    def search_view(
        self,
        vectors: Any,
        query_modality: str,
        k: int = 10,
        modalities: list[str] | None = None,
        corrected: bool = True,
    ) -> Searched:
        """Top-k per query, naming the transform of the space searched (None: raw).
        ``corrected`` searches the active slot's field with corrected queries, else ``raw``."""
        check_modality(query_modality, "query_modality")
        k = self._check_k(k)
        mods = check_modalities(modalities)
        v = self.view()
        q = check_query_vectors(vectors, v.doc.get("dim"))
        if v.doc.get("dim") is None:
            return Searched([[] for _ in range(q.shape[0])])
        if corrected and v.transform is not None:
            with STAGE_LATENCY.labels("correct").time():
                q = v.transform.transform(q, query_modality, role="query")
            return Searched(self._search_field(q, v.slot, k, mods), v.transform)
        return Searched(self._search_field(q, "raw", k, mods))

    def search_by_id(
        self,
        item_id: str,
        k: int = 10,
        modalities: list[str] | None = None,
        corrected: bool = True,
        exclude_self: bool = True,
    ) -> list[Hit]:
        """Top-k neighbours of a stored item's own vector (itself excluded by default)."""
        return self.search_by_id_view(item_id, k, modalities, corrected, exclude_self).hits[0]

    @milvus_call
    def search_by_id_view(
        self,
        item_id: str,
        k: int = 10,
        modalities: list[str] | None = None,
        corrected: bool = True,
        exclude_self: bool = True,
    ) -> Searched:
        """`search_by_id` as one query's `Searched`: the item's stored vector of the space."""
        check_item_id(item_id)
        k = self._check_k(k)
        mods = check_modalities(modalities)
        v = self.view()
        use = corrected and v.transform is not None
        field = v.slot if use else "raw"
        row = self._get_row(item_id, [field])
        q = np.asarray(row[field], np.float32)[None, :]
        hits = self._search_field(q, field, k + 1 if exclude_self else k, mods)[0]
        if exclude_self:
            hits = [h for h in hits if h.id != item_id]
        return Searched([hits[:k]], v.transform if use else None)

    # ------------------------------------------------------------------ statistics
    @milvus_call
    def raw_vectors(self) -> RawVectors:
        """All stored raw embeddings (for fitting transforms)."""
        self._check_open()
        dim = self.dim or 0
        parts: dict[str, list[np.ndarray]] = {k: [] for k in ("image", "text", "pi", "pt")}
        for rows in self._iterate(R.COMPONENT_FIELDS):
            c = R.Components.from_rows(rows, dim)
            parts["image"].append(c.image[c.has_image])
            parts["text"].append(c.text[c.has_text])
            doc = c.has_image & c.has_text
            parts["pi"].append(c.image[doc])
            parts["pt"].append(c.text[doc])

        def cat(xs: list[np.ndarray]) -> np.ndarray:
            return np.concatenate(xs) if xs else np.zeros((0, dim), np.float32)

        return RawVectors(
            cat(parts["image"]),
            cat(parts["text"]),
            cat(parts["pi"]),
            cat(parts["pt"]),
            self.counts(),
        )

    @milvus_call
    def gap_statistics(self, max_rows: int = 5000) -> dict[str, Any]:
        """As the embedded store's: sampled statistics, exact centroid gap from the sums."""
        from gapfix.stats import gap_statistics

        v = self.view(with_sums=True)
        dim = v.doc.get("dim") or 0
        rng = np.random.default_rng(0)
        ids_mod = [
            (r["id"], r["modality"])
            for b in self._iterate(["id", "modality", "created_at"])
            for r in sorted(b, key=lambda r: r["created_at"])
        ]
        counts = {m: sum(1 for _, x in ids_mod if x == m) for m in ITEM_MODALITIES}
        paired = counts["image"] == 0 and counts["text"] == 0 and counts["document"] >= 2
        sampled = False

        def pick(mods: tuple[str, ...]) -> list[str]:
            nonlocal sampled
            pool = [i for i, m in ids_mod if m in mods]
            if len(pool) > max_rows:
                sampled = True
                pool = [pool[j] for j in np.sort(rng.choice(len(pool), max_rows, replace=False))]
            return pool

        if paired:
            c = self._components(pick(("document",)), dim)
            img, txt = c.image, c.text
        else:
            pi, pt = pick(("document", "image")), pick(("document", "text"))
            c = self._components(list(dict.fromkeys(pi + pt)), dim)
            ids = np.array(c.ids, dtype=object)
            img = c.image[np.isin(ids, pi) & c.has_image]
            txt = c.text[np.isin(ids, pt) & c.has_text]
        out: dict[str, Any] = {
            "counts": counts,
            "paired": paired,
            "sampled": sampled,
            "rows": {"image": len(img), "text": len(txt)},
            "transform": v.transform.method if v.transform is not None else None,
            "centroid_gap": {"raw": gap_of(v, "raw"), "corrected": gap_of(v, "corrected")},
            "raw": None,
            "corrected": None,
        }
        if len(img) < 2 or len(txt) < 2:
            out["note"] = "gap statistics need at least 2 image and 2 text vectors"
            return out
        out["raw"] = gap_statistics(img, txt, paired=paired)
        t = v.transform
        out["corrected"] = (
            out["raw"]
            if t is None
            else gap_statistics(t.transform(img, "image"), t.transform(txt, "text"), paired=paired)
        )
        self.update_gauges(v)
        return out

    def close(self, flush: bool = True) -> None:
        """Stop a running switch (the next start resumes it)."""
        with self._write_lock:
            self._closed = True
            job = self._job
            if job is not None:
                job.cancelled = True
        self._executor.shutdown(wait=True, cancel_futures=True)


def gap_of(v: View, space: str) -> float | None:
    """Centroid gap of ``raw`` or the active corrected space, from the sums."""
    sums = v.sums or {}
    s = sums.get("raw") if space == "raw" or v.transform is None else sums.get(v.slot)
    if not s or s["image"][0] < 1 or s["text"][0] < 1:
        return None
    (ni, si), (nt, st) = s["image"], s["text"]
    return float(np.linalg.norm(si / ni - st / nt))


def milvus_call_ctx() -> Any:
    from gapfix.store.milvus.conn import unavailable_as_503

    return unavailable_as_503()
