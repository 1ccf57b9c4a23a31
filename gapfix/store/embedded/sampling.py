"""Raw vectors and gap statistics of an embedded collection, read from one SQLite snapshot.

``raw_vectors`` loads everything (what a fit needs); ``gap_statistics`` samples at most
``max_rows`` vectors per modality by seq, so it never loads a large collection whole.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from gapfix.store.backend import RawVectors
from gapfix.store.embedded.state import CollectionState
from gapfix.store.gauges import gaps
from gapfix.store.items import MODALITY_CODE


class Sampling(CollectionState):
    """``raw_vectors`` and ``gap_statistics``."""

    def raw_vectors(self) -> RawVectors:
        """All stored raw embeddings from one consistent snapshot (for fitting transforms)."""
        self._check_open()
        dim = self._dim or 0
        if self._dim is None:
            return RawVectors.collect([], dim, self.counts())
        with self._reading(), self._db.snapshot() as conn:
            chunks = (
                (r.image, r.text, r.has_image, r.has_text) for r in self._db.iter_rows(conn, dim)
            )
            vectors = RawVectors.collect(chunks, dim, {})  # one chunk in memory at a time
        return dataclasses.replace(vectors, counts=self.counts())

    def gap_statistics(self, max_rows: int = 5000) -> dict[str, Any]:
        """Gap statistics of the stored vectors, raw and corrected (``gapfix.stats``).

        Computed on at most ``max_rows`` vectors per modality (a fixed random sample); paired
        statistics when every stored vector belongs to a document. ``centroid_gap`` is exact
        over everything stored (kept up to date on every write; also the Prometheus gauge).
        """
        from gapfix.stats import gap_statistics

        self._check_open()
        view = self._view
        counts = self.counts()
        img, txt, sample = self._sample(max_rows)
        counts = sample.pop("counts", counts)
        with self._write_lock:
            raw_gap, corr_gap = gaps(self._sums, view.transform is not None)
        out: dict[str, Any] = {
            "counts": counts,
            **sample,
            "rows": {"image": len(img), "text": len(txt)},
            "transform": view.transform.method if view.transform is not None else None,
            "centroid_gap": {"raw": raw_gap, "corrected": corr_gap},
            "raw": None,
            "corrected": None,
        }
        if len(img) < 2 or len(txt) < 2:
            out["note"] = "gap statistics need at least 2 image and 2 text vectors"
            return out
        paired = sample["paired"]
        out["raw"] = gap_statistics(img, txt, paired=paired)
        if view.transform is None:
            out["corrected"] = out["raw"]
        else:
            ci = view.transform.transform(img, "image")
            ct = view.transform.transform(txt, "text")
            out["corrected"] = gap_statistics(ci, ct, paired=paired)
        self._update_gauges()
        return out

    def _sample(self, max_rows: int) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
        """``(image, text, {"paired", "sampled"[, "counts"]})``: at most ``max_rows`` raw
        vectors per modality (documents only, as pairs, when nothing else is stored)."""
        rng = np.random.default_rng(0)
        img = txt = np.zeros((0, self._dim or 0), np.float32)
        sampled = paired = False
        if self._dim is None:
            return img, txt, {"paired": paired, "sampled": sampled}
        with self._reading(), self._db.snapshot() as conn:  # sample seqs: never load all
            seqs, codes = self._db.seqs_and_codes(conn)
            counts = {m: int((codes == c).sum()) for m, c in MODALITY_CODE.items()}
            paired = counts["image"] == 0 and counts["text"] == 0 and counts["document"] >= 2

            def pick(mask: np.ndarray) -> np.ndarray:
                nonlocal sampled
                pool = seqs[mask]
                if len(pool) > max_rows:
                    sampled = True
                    pool = np.sort(rng.choice(pool, max_rows, replace=False))
                return pool

            doc = codes == MODALITY_CODE["document"]
            if paired:
                rows = self._db.rows_for_seqs(pick(doc), self._dim, conn)
                img, txt = rows.image, rows.text
            else:
                pi = pick(doc | (codes == MODALITY_CODE["image"]))
                pt = pick(doc | (codes == MODALITY_CODE["text"]))
                rows = self._db.rows_for_seqs(np.union1d(pi, pt), self._dim, conn)
                img = rows.image[np.isin(rows.seqs, pi) & rows.has_image]
                txt = rows.text[np.isin(rows.seqs, pt) & rows.has_text]
        return img, txt, {"paired": paired, "sampled": sampled, "counts": counts}
