"""Modality-gap statistics: centroid gap, cone effect, separability, gap dimensions, alignment.

Everything is computed in O(n d) passes where an exact identity exists (mean pairwise cosine
and uniformity's pairwise terms use sums of normalised rows); the few quantities without one
(linear separability, the spread of pairwise cosines) use a bounded random sample and say so.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from gapfix.blocks import normalized
from gapfix.validation import check_embeddings, check_paired, check_same_dim

SAMPLE_ROWS = 4096
SEPARABILITY_ROWS = 10_000


def _mean_pairwise_cosine(u: np.ndarray) -> float:
    """Exact mean cosine over pairs i != j of unit rows: (||sum||^2 - n) / (n (n - 1))."""
    n = u.shape[0]
    s = u.sum(axis=0, dtype=np.float64)
    return float((s @ s - n) / (n * (n - 1)))


def _sample(u: np.ndarray, rows: int, seed: int) -> np.ndarray:
    if u.shape[0] <= rows:
        return u
    idx = np.sort(np.random.default_rng(seed).choice(u.shape[0], rows, replace=False))
    return u[idx]


def cone_effect(u: np.ndarray, seed: int = 0) -> dict[str, Any]:
    """Mean pairwise cosine inside one modality (exact) and its spread (exact or sampled)."""
    mean = _mean_pairwise_cosine(u)
    s = _sample(u, SAMPLE_ROWS, seed)
    cos = s @ s.T
    off = cos[~np.eye(cos.shape[0], dtype=bool)]
    exact = s.shape[0] == u.shape[0]
    out: dict[str, Any] = {
        "mean_cosine": mean,
        "mean_method": "exact",
        "std_cosine": float(off.std()),
        "min_cosine": float(off.min()),
        "spread_method": "exact" if exact else f"sample of {s.shape[0]} rows",
    }
    if not exact:
        # Cosines lie in [-1, 1]; Hoeffding's bound for U-statistics (m = floor(rows / 2))
        # bounds the sampled spread's underlying mean to +-sqrt(2 ln(2/0.05) / m) at 95%.
        m = s.shape[0] // 2
        out["sample_mean_cosine"] = float(off.mean())
        out["sample_error_bound_95"] = float(math.sqrt(2 * math.log(2 / 0.05) / m))
    return out


def separability(x: np.ndarray, y: np.ndarray, seed: int = 0) -> dict[str, Any]:
    """Held-out accuracy of a logistic-regression classifier telling the modalities apart."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split

    xs, ys = _sample(x, SEPARABILITY_ROWS, seed), _sample(y, SEPARABILITY_ROWS, seed + 1)
    data = np.concatenate([xs, ys])
    target = np.r_[np.zeros(len(xs)), np.ones(len(ys))]
    if min(len(xs), len(ys)) < 4:
        return {"accuracy": None, "note": "needs at least 4 rows per modality"}
    tr_x, te_x, tr_y, te_y = train_test_split(
        data, target, test_size=0.3, random_state=seed, stratify=target
    )
    clf = LogisticRegression(max_iter=500, C=1.0)
    clf.fit(tr_x, tr_y)
    return {
        "accuracy": float(clf.score(te_x, te_y)),
        "held_out_rows": len(te_y),
        "train_rows": len(tr_y),
    }


def gap_dimensions(gap: np.ndarray, k: int = 10) -> dict[str, Any]:
    """The few dimensions carrying most of ||muX - muY||^2 (Schrodi et al., ICLR 2025)."""
    contrib = gap.astype(np.float64) ** 2
    total = float(contrib.sum())
    order = np.argsort(-contrib, kind="stable")
    share = np.cumsum(contrib[order]) / total if total > 0 else np.zeros_like(contrib)
    k = min(k, gap.shape[0])
    return {
        "top_dims": order[:k].tolist(),
        "top_shares": (contrib[order[:k]] / total if total > 0 else contrib[order[:k]]).tolist(),
        "top_k_share": float(share[k - 1]) if total > 0 else 0.0,
        "dims_for_50pct": int(np.searchsorted(share, 0.5) + 1) if total > 0 else 0,
        "dims_for_90pct": int(np.searchsorted(share, 0.9) + 1) if total > 0 else 0,
    }


def _uniformity(u: np.ndarray, seed: int) -> float:
    """log E_{i != j} exp(-2 ||u_i - u_j||^2) (Wang & Isola), exact up to SAMPLE_ROWS rows."""
    s = _sample(u, SAMPLE_ROWS, seed).astype(np.float64)
    sq = np.maximum(2.0 - 2.0 * (s @ s.T), 0.0)
    mask = ~np.eye(s.shape[0], dtype=bool)
    return float(np.log(np.mean(np.exp(-2.0 * sq[mask]))))


def paired_statistics(x: np.ndarray, y: np.ndarray, seed: int = 0) -> dict[str, Any]:
    """Statistics of row-i pairs: paired cosine, alignment, uniformity, relative modality gap.

    The relative modality gap (Schrodi et al. 2025) uses the cosine distance d = (1 - cos)/2:
    RMG = mean_i d(x_i, y_i) / (mean intra-modality d (both modalities) + mean_i d(x_i, y_i)).
    """
    cos = np.einsum("ij,ij->i", x, y, dtype=np.float64)
    paired_d = float(np.mean((1 - cos) / 2))
    intra = np.mean([(1 - _mean_pairwise_cosine(x)) / 2, (1 - _mean_pairwise_cosine(y)) / 2])
    return {
        "mean_paired_cosine": float(cos.mean()),
        "alignment": float(np.mean(2 - 2 * cos)),
        "uniformity_image": _uniformity(x, seed),
        "uniformity_text": _uniformity(y, seed + 1),
        "uniformity_method": "exact"
        if x.shape[0] <= SAMPLE_ROWS
        else f"sample of {SAMPLE_ROWS} rows",
        "relative_modality_gap": float(paired_d / (intra + paired_d))
        if intra + paired_d > 0
        else 0.0,
    }


def gap_statistics(
    image: Any, text: Any, paired: bool = False, top_k: int = 10, seed: int = 0
) -> dict[str, Any]:
    """All gap statistics of image rows X and text rows Y (JSON-safe dict).

    Rows are L2-normalised first. ``paired=True`` (row i of X <-> row i of Y) adds alignment,
    uniformity and the relative modality gap.
    """
    x = normalized(check_embeddings(image, "image", min_rows=2))
    y = normalized(check_embeddings(text, "text", min_rows=2))
    check_same_dim(x, y)
    if paired:
        check_paired(x, y, "paired statistics")
    mu_x = x.mean(axis=0, dtype=np.float64)
    mu_y = y.mean(axis=0, dtype=np.float64)
    gap = mu_x - mu_y
    norm = float(np.linalg.norm(gap))
    stats: dict[str, Any] = {
        "n_image": int(x.shape[0]),
        "n_text": int(y.shape[0]),
        "dim": int(x.shape[1]),
        "centroid_gap": norm,
        "centroid_cosine": float(
            mu_x @ mu_y / (np.linalg.norm(mu_x) * np.linalg.norm(mu_y) + 1e-12)
        ),
        "gap_direction": (gap / norm if norm > 0 else gap).tolist(),
        "cone_image": cone_effect(x, seed),
        "cone_text": cone_effect(y, seed + 1),
        "separability": separability(x, y, seed),
        "gap_dimensions": gap_dimensions(gap, top_k),
    }
    if paired:
        stats["paired"] = paired_statistics(x, y, seed)
    return stats


def pca_2d(
    image: Any, text: Any, max_points: int = 2000, seed: int = 0, paired: bool = False
) -> dict[str, Any]:
    """2-D PCA of both modalities together (coordinates for the seed paper's Figure 1).

    Returns image/text point coordinates (at most ``max_points`` each; with ``paired=True``
    row i of both stays aligned so pair lines can be drawn), the centroids and explained
    variance.
    """
    x = normalized(check_embeddings(image, "image", min_rows=1))
    y = normalized(check_embeddings(text, "text", min_rows=1))
    check_same_dim(x, y)
    if paired:
        check_paired(x, y, "a paired PCA")
    if paired and x.shape[0] > max_points:
        idx = np.sort(np.random.default_rng(seed).choice(x.shape[0], max_points, replace=False))
        xs, ys = x[idx], y[idx]
    else:
        xs, ys = _sample(x, max_points, seed), _sample(y, max_points, seed + 1)
    both = np.concatenate([xs, ys]).astype(np.float64)
    center = both.mean(axis=0)
    _, sv, vt = np.linalg.svd(both - center, full_matrices=False)
    axes = vt[:2]
    px, py = (xs - center) @ axes.T, (ys - center) @ axes.T
    var = sv**2
    return {
        "image": px.tolist(),
        "text": py.tolist(),
        "paired": bool(paired),
        "image_centroid": px.mean(axis=0).tolist(),
        "text_centroid": py.mean(axis=0).tolist(),
        "explained_variance": (var[:2] / var.sum()).tolist(),
    }


def plot_gap(
    image: Any, text: Any, path: str, title: str = "Modality gap", paired: bool = False
) -> None:
    """Save the 2-D PCA picture (points, pair lines, gap arrow) as a PNG via matplotlib."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from gapfix.atomic import atomic_write_bytes

    pca = pca_2d(image, text, max_points=500, paired=paired)
    px, py = np.asarray(pca["image"]), np.asarray(pca["text"])
    fig, ax = plt.subplots(figsize=(6, 6), dpi=100)
    if pca["paired"]:
        for a, b in zip(px, py, strict=True):
            ax.plot([a[0], b[0]], [a[1], b[1]], color="0.8", lw=0.5, zorder=1)
    ax.scatter(px[:, 0], px[:, 1], s=8, c="tab:red", label="image", zorder=2)
    ax.scatter(py[:, 0], py[:, 1], s=8, c="tab:blue", label="text", zorder=2)
    ci, ct = pca["image_centroid"], pca["text_centroid"]
    ax.annotate("", xy=ci, xytext=ct, arrowprops={"arrowstyle": "->", "lw": 2, "color": "k"})
    gap = float(np.linalg.norm(np.subtract(ci, ct)))
    ax.set_title(f"{title} (2-D PCA; centroid distance in plane {gap:.3f})")
    ax.legend(loc="best")
    ax.set_aspect("equal", adjustable="datalim")
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
