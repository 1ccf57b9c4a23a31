"""Index vectors of stored rows in both spaces, and their centroid-sum contributions.

``raw``: documents fuse ``normalise(w*img + (1-w)*txt)``; ``corrected``: each component through
the transform first, then fused the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from gapfix.metrics import STAGE_LATENCY
from gapfix.store.db import Rows
from gapfix.store.items import fuse
from gapfix.store.sums import Sums, component_sums


@dataclass
class Prepared:
    """Index vectors of some rows in both spaces, and their centroid-sum contributions."""

    raw: np.ndarray
    corrected: np.ndarray | None
    sums: dict[str, Sums]

    def vectors(self, space: str) -> np.ndarray:
        """The index vectors of ``space`` (``raw`` or ``corrected``)."""
        out = self.corrected if space == "corrected" else self.raw
        assert out is not None
        return out


def prepare(rows: Rows, transform: Any) -> Prepared:
    """Index vectors of ``rows`` (raw, and corrected when ``transform`` is given) + sums."""
    raw = fuse(rows.image, rows.text, rows.codes, rows.weights)
    sums = {"raw": component_sums(rows.image[rows.has_image], rows.text[rows.has_text])}
    corrected = None
    if transform is not None:
        with STAGE_LATENCY.labels("correct").time():
            ci = np.zeros_like(rows.image)
            ct = np.zeros_like(rows.text)
            if rows.has_image.any():
                ci[rows.has_image] = transform.transform(rows.image[rows.has_image], "image")
            if rows.has_text.any():
                ct[rows.has_text] = transform.transform(rows.text[rows.has_text], "text")
            corrected = fuse(ci, ct, rows.codes, rows.weights)
        sums["corrected"] = component_sums(ci[rows.has_image], ct[rows.has_text])
    return Prepared(raw, corrected, sums)
