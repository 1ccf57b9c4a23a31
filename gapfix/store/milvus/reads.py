"""Reads of a Milvus collection: items, thumbnails, ids, search (raw or the active slot),
raw vectors and gap statistics. A mixin of ``MilvusCollection``."""

from __future__ import annotations

from typing import Any

import numpy as np

from gapfix.metrics import STAGE_LATENCY
from gapfix.store.backend import RawVectors, Searched, check_page, check_search
from gapfix.store.errors import NotFoundError
from gapfix.store.items import (
    ITEM_MODALITIES,
    Hit,
    Item,
    check_item_id,
    check_query_vectors,
)
from gapfix.store.milvus import rows as R
from gapfix.store.milvus.conn import milvus_call, unavailable_as_503
from gapfix.store.sums import centroid_gap
from gapfix.validation import check_modality

ITER_BATCH = 1000


class Reads:
    """Read methods; the host class provides ``client``, ``name``, ``dim``, ``view``,
    ``counts``, ``index_kind``, ``index_params``, ``_components`` and ``_check_open``."""

    client: Any
    name: str
    index_kind: str
    index_params: Any

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
        offset, limit = check_page(offset, limit)
        self._check_open()
        rows = [r for b in self._iterate(["id", "modality", "created_at"]) for r in b]
        rows.sort(key=lambda r: (r["created_at"], r["id"]))
        return [(r["id"], r["modality"]) for r in rows[offset : offset + limit]]

    def correct(self, vectors: Any, modality: str) -> np.ndarray:
        """Raw vectors of ``modality`` through the active transform (unit length, float32)."""
        check_modality(modality)
        q = check_query_vectors(vectors, self.dim)
        with unavailable_as_503():
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

    @milvus_call
    def search(
        self,
        vectors: Any = None,
        query_modality: str | None = None,
        k: int = 10,
        modalities: list[str] | None = None,
        corrected: bool = True,
        *,
        item_id: str | None = None,
        exclude_self: bool = True,
    ) -> Searched:
        """Top-k per raw query vector of ``query_modality``, or (with ``item_id``) the
        neighbours of a stored item's own vector; names the transform of the space searched
        (None: raw). ``corrected`` searches the active slot's field (queries through the
        transform, role "query"), else ``raw``; ``modalities`` is a Milvus filter."""
        k, mods = check_search(vectors, query_modality, k, modalities, item_id)
        v = self.view()
        use = corrected and v.transform is not None
        field = v.slot if use else "raw"
        space = v.transform if use else None
        if item_id is not None:
            row = self._get_row(item_id, [field])
            q = np.asarray(row[field], np.float32)[None, :]
            hits = self._search_field(q, field, k + 1 if exclude_self else k, mods)[0]
            if exclude_self:
                hits = [h for h in hits if h.id != item_id]
            return Searched([hits[:k]], space)
        q = check_query_vectors(vectors, v.doc.get("dim"))
        if v.doc.get("dim") is None:
            return Searched([[] for _ in range(q.shape[0])])
        if use:
            with STAGE_LATENCY.labels("correct").time():
                q = v.transform.transform(q, query_modality, role="query")
        return Searched(self._search_field(q, field, k, mods), space)

    # ------------------------------------------------------------------ statistics
    @milvus_call
    def raw_vectors(self) -> RawVectors:
        """All stored raw embeddings (for fitting transforms)."""
        self._check_open()
        dim = self.dim or 0
        chunks = (
            (c.image, c.text, c.has_image, c.has_text)
            for c in (
                R.Components.from_rows(rows, dim) for rows in self._iterate(R.COMPONENT_FIELDS)
            )
        )
        return RawVectors.collect(chunks, dim, self.counts())

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


def gap_of(v: Any, space: str) -> float | None:
    """Centroid gap of ``raw`` or the active corrected space, from the sums."""
    sums = v.sums or {}
    return centroid_gap(
        sums.get("raw") if space == "raw" or v.transform is None else sums.get(v.slot)
    )
