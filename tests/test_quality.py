"""Quality on real embeddings (COCO CLIP ViT-B/16 and ConVIRT), with 2-fold cross-fitting.

Fit on the first half, evaluate on the second, and vice versa; figures are the mean of the two
folds. They are the README's table (`python -m benchmarks.quality_table`) and are asserted
close to what was measured there: one query of 125 moves an R@1 by 0.008 per fold, so figures
may move by one or two queries (BLAS rounding can swap near-ties), not more.
The `slow` studies repeat this over 20 random splits (the issue-13 acceptance figures).
"""

from __future__ import annotations

import numpy as np
import pytest

from gapfix import make_transform
from gapfix.evaluation import evaluate
from gapfix.quality import cross_fit, fixed_halves, split_study
from gapfix.stats import gap_statistics

CLOSE = 0.009  # about one query either way in each fold
KEYS = ("gap", "t2i_R@1", "i2t_R@1", "mixed_R@10")

COCO_RAW = {"gap": 0.849, "t2i_R@1": 0.696, "i2t_R@1": 0.708, "mixed_R@10": 0.0}
COCO_MEASURED = [  # method, params, gap, t2i R@1, i2t R@1, mixed R@10 (fixed folds)
    ("centering", {}, 0.149, 0.664, 0.700, 0.720),
    ("mean-shift", {"lam": 1.0}, 0.114, 0.532, 0.536, 0.608),
    ("standardize", {}, 0.149, 0.660, 0.692, 0.744),
    ("whiten", {"shrinkage": 0.9}, 0.153, 0.700, 0.728, 0.844),
    ("whiten", {"shrinkage": 0.9, "image_strength": 0.8}, 0.208, 0.716, 0.724, 0.848),
    ("whiten", {}, 0.166, 0.612, 0.572, 0.712),  # Ledoit-Wolf: ~0.3 on 125 pairs
    ("procrustes", {}, 0.165, 0.264, 0.252, 0.492),
]
CONVIRT_RAW = {"gap": 0.824, "t2i_R@1": 0.046, "i2t_R@1": 0.016, "mixed_R@10": 0.020}


def _data(d: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    return d["image"], d["text"]


def assert_figures(r: dict[str, float], want: dict[str, float], raw: bool = False) -> None:
    for key in KEYS:
        got = r[f"raw_{key}"] if raw else r[key]
        tol = 0.005 if key == "gap" else CLOSE
        assert got == pytest.approx(want[key], abs=tol), key


@pytest.mark.parametrize("row", COCO_MEASURED, ids=lambda row: f"{row[0]}-{row[1]}")
def test_methods_on_coco_fixed_folds(coco, row) -> None:
    method, params, *figures = row
    r = cross_fit(*_data(coco), method, params)
    assert_figures(r, COCO_RAW, raw=True)
    assert_figures(r, dict(zip(KEYS, figures, strict=True)))


def test_auto_on_coco_keeps_both_r1_and_lifts_mixed(coco) -> None:
    r = cross_fit(*_data(coco), "auto")
    # measured: partial whitening (images at strength 0.7-0.8) on each half, chosen by the
    # small-data fallback; it leaves more of the gap (0.27) than plain whitening (0.15)
    assert_figures(r, {"gap": 0.268, "t2i_R@1": 0.716, "i2t_R@1": 0.704, "mixed_R@10": 0.848})
    # what `fit` printed out of fold on each half, against what the other half then gave
    assert r["oof_mixed_R@10"] == pytest.approx(0.845, abs=CLOSE)
    assert r["oof_t2i_R@1"] == pytest.approx(0.700, abs=CLOSE)
    assert r["oof_i2t_R@1"] == pytest.approx(0.699, abs=CLOSE)


def test_auto_on_convirt_does_no_harm(convirt) -> None:
    r = cross_fit(*_data(convirt), "auto")
    assert_figures(r, CONVIRT_RAW, raw=True)
    # measured: text->image 0.046 -> 0.044 (one query), image->text 0.016 -> 0.064
    assert_figures(r, {"gap": 0.236, "t2i_R@1": 0.044, "i2t_R@1": 0.064, "mixed_R@10": 0.122})


def test_target_gap_reaches_the_gap_it_is_asked_for(coco) -> None:
    x, y = _data(coco)
    t = make_transform("target-gap", gap=0.3).fit(x[:125], y[:125])
    assert t.fit_stats_["gap_after"] == pytest.approx(0.3, abs=1e-3)  # in-sample: by design
    r = cross_fit(x, y, "target-gap", {"gap": 0.3})
    assert r["gap"] == pytest.approx(0.314, abs=0.005)  # held out: measured
    assert r["t2i_R@1"] == pytest.approx(0.580, abs=CLOSE)
    wide = cross_fit(x, y, "target-gap", {"gap": 1.0})  # above the raw gap: widens it
    assert wide["gap"] == pytest.approx(1.0, abs=0.02) and wide["gap"] > wide["raw_gap"]


def test_ablate_dims_removes_the_dimensions_that_carry_the_gap(coco) -> None:
    x, y = _data(coco)
    t = make_transform("ablate-dims", k=16).fit(x[:125], y[:125])
    g = x[:125].astype(np.float64).mean(0) - y[:125].astype(np.float64).mean(0)
    assert set(t.dims_) == set(np.argsort(-(g**2))[:16])
    assert np.all(t.transform(x[125:], "image")[:, t.dims_] == 0)
    r = cross_fit(x, y, "ablate-dims", {"k": 16})
    assert r["gap"] == pytest.approx(0.496, abs=0.005)
    assert r["t2i_R@1"] == pytest.approx(0.668, abs=CLOSE)
    assert r["mixed_R@10"] == pytest.approx(0.296, abs=CLOSE)


@pytest.mark.parametrize(("name", "gap"), [("coco", 1.140), ("convirt", 1.403)])
def test_random_init_control(request, name: str, gap: float) -> None:
    """A randomly initialised encoder of the same architecture already has a gap (the cone
    effect) and chance-level retrieval; gapfix measures both and centering closes the gap."""
    d = request.getfixturevalue(name)
    x, y = d["random_init_image"], d["random_init_text"]
    stats = gap_statistics(x, y, paired=True)
    assert stats["centroid_gap"] == pytest.approx(gap, abs=1e-3)
    assert stats["separability"]["accuracy"] == 1.0
    raw = evaluate(x, y)["raw"]["cross_modal"]
    assert raw["text_to_image"]["R@1"] <= 3 / len(x) and raw["image_to_text"]["R@1"] <= 3 / len(x)
    assert cross_fit(x, y, "centering", {}, fixed_halves(len(x)))["gap"] < 0.25


def _acceptance(x: np.ndarray, y: np.ndarray, splits: int = 20) -> dict[str, np.ndarray]:
    auto = split_study(x, y, "auto", splits=splits)
    cen = split_study(x, y, "centering", splits=splits)
    out = {k: np.array([r[k] for r in auto]) for k in auto[0]}
    out["centering_mixed_R@10"] = np.array([r["mixed_R@10"] for r in cen])
    return out


@pytest.mark.slow
@pytest.mark.timeout(1800)  # 40 auto fits: ~2 min on an idle 2-core machine
def test_auto_over_20_random_splits_of_coco(coco) -> None:
    a = _acceptance(*_data(coco))
    t2i, i2t = a["t2i_R@1"] - a["raw_t2i_R@1"], a["i2t_R@1"] - a["raw_i2t_R@1"]
    # measured (`python -m benchmarks.quality_table`): 95 % / 95 % of splits keep text->image /
    # image->text R@1 within 0.01 of raw (the issue asks >= 90 %), and every split reaches
    # centering's mixed R@10
    assert np.mean(t2i >= -0.01) == pytest.approx(0.95, abs=0.051)
    assert np.mean(i2t >= -0.01) == pytest.approx(0.95, abs=0.051)
    assert np.mean(a["mixed_R@10"] >= a["centering_mixed_R@10"]) == pytest.approx(1.0, abs=0.051)
    bias = {key: np.mean(a[f"oof_{key}"] - a[key]) for key in KEYS}
    for key in KEYS:  # `fit`'s out-of-fold figures vs the unseen half: within 0.03 (the issue)
        assert abs(bias[key]) <= 0.03, key
    # measured: gap -0.019, t2i -0.003, i2t -0.015, mixed R@10 +0.025 (see README)
    assert bias["mixed_R@10"] == pytest.approx(0.025, abs=0.005)
    assert bias["i2t_R@1"] == pytest.approx(-0.015, abs=0.005)


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_auto_over_20_random_splits_of_convirt(convirt) -> None:
    a = _acceptance(*_data(convirt))
    # measured: text->image +0.005, image->text +0.029 against raw (means over the splits)
    assert np.mean(a["t2i_R@1"] - a["raw_t2i_R@1"]) == pytest.approx(0.005, abs=0.005)
    assert np.mean(a["i2t_R@1"] - a["raw_i2t_R@1"]) == pytest.approx(0.029, abs=0.005)
    for key in KEYS:  # measured biases all within 0.007
        assert abs(np.mean(a[f"oof_{key}"] - a[key])) <= 0.015, key
