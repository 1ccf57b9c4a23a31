"""Running centroid sums: per space (``raw``, ``corrected``) and component modality (``image``,
``text``), the count and float64 sum of the stored vectors.

Every write adds the sums of its new rows and subtracts those of the rows it replaces or
deletes, so the centroid gap ``||mean(image) - mean(text)||`` stays exact over everything
stored without a scan. A backend persists them with its items (the embedded store in SQLite).
"""

from __future__ import annotations

import numpy as np

COMPONENTS = ("image", "text")

Sums = dict[str, tuple[int, np.ndarray]]
"""``{"image": (n, sum), "text": (n, sum)}`` of one space."""


def zero_sums(dim: int) -> Sums:
    """Empty sums of ``dim``-dimensional vectors."""
    return {m: (0, np.zeros(dim, np.float64)) for m in COMPONENTS}


def add_sums(a: Sums, b: Sums, sign: int) -> Sums:
    """``a + sign * b``, component by component."""
    return {m: (a[m][0] + sign * b[m][0], a[m][1] + sign * b[m][1]) for m in COMPONENTS}


def component_sums(image: np.ndarray, text: np.ndarray) -> Sums:
    """Sums of the given image and text component vectors (rows)."""
    return {
        "image": (len(image), image.sum(axis=0, dtype=np.float64)),
        "text": (len(text), text.sum(axis=0, dtype=np.float64)),
    }


def apply_delta(
    current: dict[str, Sums],
    dim: int,
    old: dict[str, Sums],
    new: dict[str, Sums] | None,
) -> dict[str, Sums]:
    """The sums of each space in ``old`` after removing ``old``'s rows and adding ``new``'s
    (a space missing from ``current`` starts at zero)."""
    out = {}
    for space in old:
        s = add_sums(current.get(space) or zero_sums(dim), old[space], -1)
        if new is not None:
            s = add_sums(s, new[space], 1)
        out[space] = s
    return out


def centroid_gap(sums: Sums | None) -> float | None:
    """``||mean(image) - mean(text)||``, or None without at least one vector of each."""
    if not sums or sums["image"][0] < 1 or sums["text"][0] < 1:
        return None
    (ni, si), (nt, st) = sums["image"], sums["text"]
    return float(np.linalg.norm(si / ni - st / nt))
