"""The README's quality table and headline: what each method does on real embeddings.

2-fold cross-fitting on tests/fixtures/coco_val2017_clip_vitb16_dev250.npz (CLIP ViT-B/16):
fit on the first 125 pairs, evaluate on the other 125, and vice versa; figures are the mean of
the two folds (the split tests/test_quality.py uses). The last column repeats the mixed R@10
over 10 random 2-fold splits (mean ± std). Then the same for ConVIRT (convirt_dev500.npz), and
`auto` over 20 random splits of each file: how often its R@1 stays within 0.01 of raw, how
often its mixed R@10 reaches centering's, and how far the out-of-fold estimate it printed when
fitted lies from the score on the other half (the issue-13 acceptance figures).

Peers: Liang et al.'s shift is ``mean-shift (lam=1.0)``; GR-CLIP / I0T-style post-hoc
centering (per-modality mean subtraction, then renormalisation) is ``centering``; a learned
``contrastive-adapter`` joins the table when that method is registered.

Run: ``.venv/bin/python -m benchmarks.quality_table`` (``--quick``: skip the 20-split study)
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from gapfix.quality import cross_fit, fixed_halves, halves, split_study
from gapfix.transforms import TRANSFORMS

FIXTURES = Path(__file__).resolve().parent.parent / "tests" / "fixtures"
DATA = {
    "COCO val2017, CLIP ViT-B/16, 250 pairs": FIXTURES / "coco_val2017_clip_vitb16_dev250.npz",
    "ConVIRT, 500 medical image/report pairs": FIXTURES / "convirt_dev500.npz",
}
METHODS = [
    ("identity", {}, ""),
    ("mean-shift", {"lam": 1.0}, "Liang et al.'s shift"),
    ("mean-shift", {"lam": 0.5}, ""),
    ("target-gap", {"gap": 0.3}, ""),
    ("centering", {}, "GR-CLIP / I0T-style centering"),
    ("standardize", {}, ""),
    ("whiten", {}, "Ledoit-Wolf shrinkage, the default"),
    ("whiten", {"shrinkage": 0.9}, ""),
    ("whiten", {"shrinkage": 0.9, "image_strength": 0.8}, "partial: images at 0.8"),
    ("ablate-dims", {"k": 16}, ""),
    ("procrustes", {}, ""),
    ("contrastive-adapter", {}, "learned"),
    ("auto", {}, "default"),
]
STUDY_SPLITS = 20


def label(method: str, params: dict, note: str) -> str:
    args = ", ".join(f"{k}={v}" for k, v in params.items())
    text = method + (f" ({args})" if args else "")
    return text + (f" — {note}" if note else "")


def table(x: np.ndarray, y: np.ndarray) -> dict[str, dict[str, float]]:
    """Print the markdown table for one file; return the fixed-fold figures per method."""
    out = {}
    print(
        "| method | gap | text→image R@1 | image→text R@1 | mixed R@10 | mixed NDCG@10 "
        "| mixed R@10, 10 random splits |"
    )
    print("|---|---|---|---|---|---|---|")
    for method, params, note in METHODS:
        if method not in TRANSFORMS:
            continue
        r = cross_fit(x, y, method, params, fixed_halves(len(x)))
        spread = [cross_fit(x, y, method, params, f)["mixed_R@10"] for f in halves(len(x), 10)]
        print(
            f"| {label(method, params, note)} | {r['gap']:.3f} | {r['t2i_R@1']:.3f} | "
            f"{r['i2t_R@1']:.3f} | {r['mixed_R@10']:.3f} | {r['mixed_NDCG@10']:.3f} | "
            f"{np.mean(spread):.3f} ± {np.std(spread):.3f} |"
        )
        out[label(method, params, "")] = r
    raw = out["identity"]
    print(
        f"\nraw: gap {raw['raw_gap']:.3f}, text→image R@1 {raw['raw_t2i_R@1']:.3f}, "
        f"image→text R@1 {raw['raw_i2t_R@1']:.3f}, mixed R@10 {raw['raw_mixed_R@10']:.3f}"
    )
    return out


def headline(figures: dict[str, dict[str, float]]) -> None:
    a = figures["auto"]
    print(
        f"headline: with the default `auto`, a caption in a mixed corpus finds its image in the "
        f"top 10 {a['mixed_R@10']:.0%} of the time (raw {a['raw_mixed_R@10']:.0%}); "
        f"text→image R@1 {a['raw_t2i_R@1']:.3f} -> {a['t2i_R@1']:.3f}, image→text R@1 "
        f"{a['raw_i2t_R@1']:.3f} -> {a['i2t_R@1']:.3f}"
    )


def auto_study(x: np.ndarray, y: np.ndarray, splits: int = STUDY_SPLITS) -> None:
    """The acceptance figures: `auto` against raw and centering over random 2-fold splits."""
    auto = split_study(x, y, "auto", splits=splits)
    cen = split_study(x, y, "centering", splits=splits)

    def col(rows: list[dict[str, float]], key: str) -> np.ndarray:
        return np.array([r[key] for r in rows])

    print(f"\n`auto` over {splits} random 2-fold splits (fit on one half, scored on the other):")
    for key, name in (("t2i_R@1", "text→image R@1"), ("i2t_R@1", "image→text R@1")):
        d = col(auto, key) - col(auto, f"raw_{key}")
        print(
            f"- {name} minus raw: {d.mean():+.3f} ± {d.std():.3f}; within 0.01 of raw or above "
            f"in {np.mean(d >= -0.01):.0%} of splits"
        )
    m = col(auto, "mixed_R@10") - col(cen, "mixed_R@10")
    print(
        f"- mixed R@10 {col(auto, 'mixed_R@10').mean():.3f} (centering "
        f"{col(cen, 'mixed_R@10').mean():.3f}); at least centering's in {np.mean(m >= 0):.0%} "
        "of splits"
    )
    bias = ", ".join(
        f"{k} {np.mean(col(auto, f'oof_{k}') - col(auto, k)):+.3f}"
        for k in ("gap", "t2i_R@1", "i2t_R@1", "mixed_R@10")
    )
    print(f"- out-of-fold estimate printed by `fit` minus the other half's score (mean): {bias}")


def whitening_study(x: np.ndarray, y: np.ndarray, splits: int = STUDY_SPLITS) -> None:
    """Plain against partial whitening over the same random splits: text->image R@1 kept."""
    print(f"\nwhitening over {splits} random 2-fold splits, text→image R@1 minus raw:")
    for params in ({"shrinkage": 0.9}, {"shrinkage": 0.9, "image_strength": 0.8}):
        rows = split_study(x, y, "whiten", params, splits=splits)
        d = np.array([r["t2i_R@1"] - r["raw_t2i_R@1"] for r in rows])
        mixed = np.mean([r["mixed_R@10"] for r in rows])
        print(
            f"- {label('whiten', params, '')}: {d.mean():+.3f} ± {d.std():.3f}, within 0.01 of "
            f"raw or above in {np.mean(d >= -0.01):.0%} of splits; mixed R@10 {mixed:.3f}"
        )


def centering_r1_spread(x: np.ndarray, y: np.ndarray, splits: int = 200) -> None:
    """How much plain centering moves cross-modal R@1, over many random 2-fold splits."""
    rows = [cross_fit(x, y, "centering", {}, f) for f in halves(len(x), splits, seed=1000)]
    d = np.array([[r[k] - r[f"raw_{k}"] for k in ("t2i_R@1", "i2t_R@1")] for r in rows])
    within = (d >= -0.02).mean(axis=0)
    print(
        f"\ncentering, change of R@1 over {splits} random 2-fold splits (mean ± std): "
        f"text→image {d[:, 0].mean():+.3f} ± {d[:, 0].std():.3f} "
        f"(within 0.02 of raw in {within[0]:.0%} of splits), "
        f"image→text {d[:, 1].mean():+.3f} ± {d[:, 1].std():.3f} ({within[1]:.0%})"
    )


def centering_cost_sources(x: np.ndarray, y: np.ndarray) -> None:
    """Where centering's R@1 cost comes from: the mean's estimate, or the method itself."""
    folds = fixed_halves(len(x))
    plain = cross_fit(x, y, "centering", {}, folds)
    # oracle: each evaluation half centred with its own means (no estimation error at all)
    oracle = cross_fit(x, y, "centering", {}, [(test, test) for _, test in folds])
    unnorm = cross_fit(x, y, "centering", {"renormalize": False}, folds)
    print(
        "centering, R@1 change on the fixed folds (text→image / image→text): "
        f"plain {plain['t2i_R@1'] - plain['raw_t2i_R@1']:+.3f} / "
        f"{plain['i2t_R@1'] - plain['raw_i2t_R@1']:+.3f}; oracle means "
        f"{oracle['t2i_R@1'] - oracle['raw_t2i_R@1']:+.3f} / "
        f"{oracle['i2t_R@1'] - oracle['raw_i2t_R@1']:+.3f}; without renormalisation "
        f"{unnorm['t2i_R@1'] - unnorm['raw_t2i_R@1']:+.3f} / "
        f"{unnorm['i2t_R@1'] - unnorm['raw_i2t_R@1']:+.3f}"
    )


def main(argv: list[str]) -> None:
    for i, (name, path) in enumerate(DATA.items()):
        with np.load(path) as d:
            x, y = d["image"], d["text"]
        print(f"\n## {name} ({path.name})\n")
        figures = table(x, y)
        if i == 0:
            headline(figures)
        if "--quick" not in argv:
            auto_study(x, y)
            if i == 0:
                whitening_study(x, y)
                centering_r1_spread(x, y)
                centering_cost_sources(x, y)


if __name__ == "__main__":
    main(sys.argv[1:])
