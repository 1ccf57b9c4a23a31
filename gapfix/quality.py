"""Held-out quality studies: 2-fold cross-fitting of a method over random splits of paired data.

Each split halves the pairs at random; the method is fitted on one half and scored on the other,
and vice versa. A split's figure is the mean of its two folds. For ``auto`` the out-of-fold
estimate it printed when fitted (``fit_stats_["out_of_fold"]``) is kept beside the score the
other half gave, so the estimate's bias can be measured. ``benchmarks/quality_table.py`` (the
README's table) and ``tests/test_quality.py`` both use these functions.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

METRICS = ("gap", "t2i_R@1", "i2t_R@1", "mixed_R@10", "mixed_NDCG@10")


def halves(n: int, splits: int, seed: int = 0) -> Iterator[list[tuple[np.ndarray, np.ndarray]]]:
    """``splits`` random 2-fold splits of ``n`` rows: [(train, test), (test, train)] each."""
    half = n // 2
    for s in range(splits):
        perm = np.random.default_rng(seed + s).permutation(n)
        yield [(perm[:half], perm[half:]), (perm[half:], perm[:half])]


def fixed_halves(n: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """The first half against the second and vice versa (the README's fixed folds)."""
    idx = np.arange(n)
    return [(idx[: n // 2], idx[n // 2 :]), (idx[n // 2 :], idx[: n // 2])]


def flat(block: dict[str, Any]) -> dict[str, float]:
    """The study's metrics from one ``evaluate`` block (raw or corrected)."""
    return {
        "gap": block["gap"],
        "t2i_R@1": block["cross_modal"]["text_to_image"]["R@1"],
        "i2t_R@1": block["cross_modal"]["image_to_text"]["R@1"],
        "mixed_R@10": block["mixed"]["R@10"],
        "mixed_NDCG@10": block["mixed"]["NDCG@10"],
    }


def cross_fit(
    image: np.ndarray,
    text: np.ndarray,
    method: str,
    params: dict[str, Any] | None = None,
    folds: list[tuple[np.ndarray, np.ndarray]] | None = None,
) -> dict[str, float]:
    """Mean over the folds of raw and corrected figures (``raw_*``, plain names, ``oof_*``)."""
    from gapfix import make_transform
    from gapfix.evaluation import evaluate

    rows = []
    for train, test in folds or fixed_halves(image.shape[0]):
        t = make_transform(method, **(params or {})).fit(image[train], text[train])
        e = evaluate(image[test], text[test], t)
        row = {**flat(e["corrected"]), **{f"raw_{k}": v for k, v in flat(e["raw"]).items()}}
        for key, value in getattr(t, "fit_stats_", {}).get("out_of_fold", {}).items():
            row[f"oof_{key}"] = value
        rows.append(row)
    return {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}


def split_study(
    image: np.ndarray,
    text: np.ndarray,
    method: str,
    params: dict[str, Any] | None = None,
    splits: int = 20,
    seed: int = 0,
) -> list[dict[str, float]]:
    """``cross_fit`` on each of ``splits`` random 2-fold splits (one dict per split)."""
    return [
        cross_fit(image, text, method, params, folds)
        for folds in halves(image.shape[0], splits, seed)
    ]
