"""The README's quality table: what each method does on real CLIP ViT-B/16 COCO embeddings.

2-fold cross-fitting on tests/fixtures/coco_val2017_clip_vitb16_dev250.npz: fit on the first
125 pairs, evaluate on the other 125, and vice versa; figures are the mean of the two folds
(the split tests/test_quality.py uses). The last column repeats the mixed R@10 over 10 random
2-fold splits (mean ± std) to show how much one split can move the numbers.

Run: ``.venv/bin/python -m benchmarks.quality_table``
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from gapfix import make_transform
from gapfix.evaluation import evaluate

DATA = (
    Path(__file__).resolve().parent.parent
    / "tests"
    / "fixtures"
    / "coco_val2017_clip_vitb16_dev250.npz"
)
METHODS = [
    ("identity", {}),
    ("mean-shift", {"lam": 1.0}),
    ("mean-shift", {"lam": 0.5}),
    ("target-gap", {"gap": 0.3}),
    ("centering", {}),
    ("standardize", {}),
    ("whiten", {"shrinkage": 0.9}),
    ("ablate-dims", {"k": 16}),
    ("procrustes", {}),
    ("auto", {}),
]


def cross_fit(x, y, folds, method, params):
    rows = []
    for train, test in folds:
        t = make_transform(method, **params).fit(x[train], y[train])
        e = evaluate(x[test], y[test], t)
        c = e["corrected"]
        rows.append(
            [
                c["gap"],
                c["cross_modal"]["text_to_image"]["R@1"],
                c["cross_modal"]["image_to_text"]["R@1"],
                c["mixed"]["R@10"],
                c["mixed"]["NDCG@10"],
            ]
        )
    return np.mean(rows, axis=0)


def main() -> None:
    with np.load(DATA) as d:
        x, y = d["image"], d["text"]
    half = len(x) // 2
    idx = np.arange(len(x))
    fixed = [(idx[:half], idx[half:]), (idx[half:], idx[:half])]
    print(
        "| method | gap | text→image R@1 | image→text R@1 | mixed R@10 | mixed NDCG@10 | mixed R@10, 10 random splits |"
    )
    print("|---|---|---|---|---|---|---|")
    for method, params in METHODS:
        gap, t2i, i2t, mixed, ndcg = cross_fit(x, y, fixed, method, params)
        spread = []
        for seed in range(10):
            perm = np.random.default_rng(seed).permutation(len(x))
            folds = [(perm[:half], perm[half:]), (perm[half:], perm[:half])]
            spread.append(cross_fit(x, y, folds, method, params)[3])
        label = method + (
            "" if not params else " (" + ", ".join(f"{k}={v}" for k, v in params.items()) + ")"
        )
        print(
            f"| {label} | {gap:.3f} | {t2i:.3f} | {i2t:.3f} | {mixed:.3f} | {ndcg:.3f} | "
            f"{np.mean(spread):.3f} ± {np.std(spread):.3f} |"
        )
    centering_r1_spread(x, y)
    centering_cost_sources(x, y, fixed)


def centering_r1_spread(x: np.ndarray, y: np.ndarray, splits: int = 200) -> None:
    """How much plain centering moves cross-modal R@1, over many random 2-fold splits."""
    half = len(x) // 2
    drops = []
    for seed in range(splits):
        perm = np.random.default_rng(1000 + seed).permutation(len(x))
        folds = [(perm[:half], perm[half:]), (perm[half:], perm[:half])]
        raw = cross_fit(x, y, folds, "identity", {})
        cen = cross_fit(x, y, folds, "centering", {})
        drops.append(cen[1:3] - raw[1:3])
    d = np.array(drops)
    within = (d >= -0.02).mean(axis=0)
    print(
        f"\ncentering, change of R@1 over {splits} random 2-fold splits (mean ± std): "
        f"text→image {d[:, 0].mean():+.3f} ± {d[:, 0].std():.3f} "
        f"(within 0.02 of raw in {within[0]:.0%} of splits), "
        f"image→text {d[:, 1].mean():+.3f} ± {d[:, 1].std():.3f} ({within[1]:.0%})"
    )


def centering_cost_sources(x: np.ndarray, y: np.ndarray, folds) -> None:
    """Where centering's R@1 cost comes from: the mean's estimate, or the method itself."""
    raw = cross_fit(x, y, folds, "identity", {})
    # oracle: each evaluation half centred with its own means (no estimation error at all)
    oracle = cross_fit(x, y, [(test, test) for _, test in folds], "centering", {})
    plain = cross_fit(x, y, folds, "centering", {"renormalize": False})
    print(
        "centering, R@1 change on the fixed folds (text→image / image→text): "
        f"oracle means {oracle[1] - raw[1]:+.3f} / {oracle[2] - raw[2]:+.3f}; "
        f"without renormalisation {plain[1] - raw[1]:+.3f} / {plain[2] - raw[2]:+.3f}"
    )


if __name__ == "__main__":
    main()
