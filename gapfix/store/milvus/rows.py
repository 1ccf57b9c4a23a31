"""Rows of a gapfix Milvus collection: building them from a batch, reading components back,
the vectors of each space and the centroid-sum contributions."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from gapfix.metrics import STAGE_LATENCY
from gapfix.store.items import CODE_MODALITY, MODALITY_CODE, Batch, Hit, fuse
from gapfix.store.milvus.conn import SLOTS
from gapfix.store.milvus.meta import COMPONENTS, from_chunks, to_chunks

COMPONENT_FIELDS = ["id", "modality", "weight", "image_vector", "text_vector"]
HIT_FIELDS = ["modality", "metadata", "text", "has_thumbnail"]


@dataclass
class Components:
    """Raw components of some items (rows of missing components are zero)."""

    ids: list[str]
    codes: np.ndarray
    image: np.ndarray
    text: np.ndarray
    has_image: np.ndarray
    has_text: np.ndarray
    weights: np.ndarray

    def __len__(self) -> int:
        return len(self.ids)

    @classmethod
    def from_batch(cls, b: Batch) -> Components:
        return cls(b.ids, b.codes, b.image, b.text, b.has_image, b.has_text, b.weights)

    @classmethod
    def from_rows(cls, rows: list[dict[str, Any]], dim: int) -> Components:
        n = len(rows)
        image = np.zeros((n, dim), np.float32)
        text = np.zeros((n, dim), np.float32)
        has_i = np.zeros(n, bool)
        has_t = np.zeros(n, bool)
        for i, r in enumerate(rows):
            if r.get("image_vector") is not None:
                image[i], has_i[i] = r["image_vector"], True
            if r.get("text_vector") is not None:
                text[i], has_t[i] = r["text_vector"], True
        codes = np.array([MODALITY_CODE[r["modality"]] for r in rows], np.int64)
        weights = np.array([r["weight"] for r in rows], np.float32)
        return cls([r["id"] for r in rows], codes, image, text, has_i, has_t, weights)

    def raw(self) -> np.ndarray:
        return fuse(self.image, self.text, self.codes, self.weights)

    def corrected(self, transform: Any) -> tuple[np.ndarray, dict[str, tuple[int, np.ndarray]]]:
        """Fused vectors through ``transform`` (component-wise), and their centroid sums."""
        ci = np.zeros_like(self.image)
        ct = np.zeros_like(self.text)
        with STAGE_LATENCY.labels("correct").time():
            if self.has_image.any():
                ci[self.has_image] = transform.transform(self.image[self.has_image], "image")
            if self.has_text.any():
                ct[self.has_text] = transform.transform(self.text[self.has_text], "text")
        sums = {
            "image": (int(self.has_image.sum()), ci[self.has_image].sum(0, dtype=np.float64)),
            "text": (int(self.has_text.sum()), ct[self.has_text].sum(0, dtype=np.float64)),
        }
        return fuse(ci, ct, self.codes, self.weights), sums

    def raw_sums(self) -> dict[str, tuple[int, np.ndarray]]:
        return {
            "image": (int(self.has_image.sum()), self.image[self.has_image].sum(0, np.float64)),
            "text": (int(self.has_text.sum()), self.text[self.has_text].sum(0, np.float64)),
        }

    def modality_counts(self) -> dict[str, int]:
        out = {m: 0 for m in MODALITY_CODE}
        for c in self.codes.tolist():
            out[CODE_MODALITY[c]] += 1
        return out


def slot_vectors(
    comps: Components, slot_transforms: dict[str, Any]
) -> tuple[dict[str, np.ndarray], dict[str, dict]]:
    """``raw`` and each corrected slot's vectors (a slot without transform holds ``raw``), and
    the sums of each transformed slot."""
    raw = comps.raw()
    out = {"raw": raw}
    sums: dict[str, dict] = {"raw": comps.raw_sums()}
    for slot in SLOTS:
        t = slot_transforms.get(slot)
        if t is None:
            out[slot] = raw
        else:
            out[slot], sums[slot] = comps.corrected(t)
    return out, sums


def batch_rows(batch: Batch, vectors: dict[str, np.ndarray], now: float) -> list[dict[str, Any]]:
    """Milvus rows (dicts) of a validated batch."""
    rows = []
    for i, item_id in enumerate(batch.ids):
        thumb = batch.thumbnails[i]
        code = int(batch.codes[i])
        row = {
            "id": item_id,
            "modality": CODE_MODALITY[code],
            "text": batch.captions[i] if batch.captions else None,
            "metadata": json.loads(batch.metadata_json[i]),
            "weight": float(batch.weights[i]),
            "created_at": now + i * 1e-6,
            "has_thumbnail": thumb is not None,
            "thumbnail": None if thumb is None else to_chunks(thumb),
            "image_vector": batch.image[i].tolist() if batch.has_image[i] else None,
            "text_vector": batch.text[i].tolist() if batch.has_text[i] else None,
        }
        for field, vecs in vectors.items():
            row[field] = vecs[i].tolist()
        rows.append(row)
    return rows


def hit(h: dict[str, Any]) -> Hit:
    e = h.get("entity") or {}
    return Hit(
        h["id"] if "id" in h else e["id"],
        float(h["distance"]),
        e["modality"],
        e.get("metadata") or {},
        e.get("text"),
        bool(e.get("has_thumbnail")),
    )


def thumbnail_bytes(row: dict[str, Any]) -> bytes | None:
    return from_chunks(row.get("thumbnail"))


__all__ = ["COMPONENTS", "Components", "batch_rows", "hit", "slot_vectors", "thumbnail_bytes"]
