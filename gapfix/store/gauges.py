"""A collection's Prometheus series: items per modality and the centroid gap per space.

Backend-neutral: a backend passes its counts and running sums (``gapfix.store.sums``).
"""

from __future__ import annotations

import contextlib

from gapfix.metrics import COLLECTION_GAP, COLLECTION_ITEMS
from gapfix.store.items import ITEM_MODALITIES
from gapfix.store.sums import Sums, centroid_gap


def gaps(sums: dict[str, Sums], corrected_active: bool) -> tuple[float | None, float | None]:
    """``(raw, corrected)`` centroid gaps; without an active transform corrected = raw."""
    raw = centroid_gap(sums.get("raw"))
    return raw, centroid_gap(sums.get("corrected")) if corrected_active else raw


def update_gauges(
    name: str, counts: dict[str, int], sums: dict[str, Sums], corrected_active: bool
) -> None:
    """Set collection ``name``'s item counts and gaps (a gap without data is left as is)."""
    for m in ITEM_MODALITIES:
        COLLECTION_ITEMS.labels(name, m).set(counts.get(m, 0))
    for space, gap in zip(("raw", "corrected"), gaps(sums, corrected_active), strict=True):
        if gap is not None:
            COLLECTION_GAP.labels(name, space).set(gap)


def remove_gauges(name: str) -> None:
    """Drop collection ``name``'s series (after it is deleted)."""
    for m in ITEM_MODALITIES:
        with contextlib.suppress(KeyError):
            COLLECTION_ITEMS.remove(name, m)
    for s in ("raw", "corrected"):
        with contextlib.suppress(KeyError):
            COLLECTION_GAP.remove(name, s)
