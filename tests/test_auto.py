"""`auto`: shared fold moments, distractor corpora, the selection rule, registries, whitening
shrinkage from the data, and what `gapfix fit` prints."""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

from gapfix import load_transform, make_transform
from gapfix.cli import app
from gapfix.errors import InputError
from gapfix.transforms import crossval, selection
from gapfix.transforms.moments import Moments, SharedFit
from tests.conftest import COCO, make_gapped

FAST = {"folds": 2, "repeats": 2}


@pytest.mark.parametrize(
    ("method", "params"),
    [
        ("centering", {}),
        ("mean-shift", {"lam": 0.5}),
        ("standardize", {}),
        ("whiten", {"shrinkage": 0.3}),
        ("whiten", {"shrinkage": "oas"}),
        ("ablate-dims", {"k": 3}),
        ("procrustes", {}),
    ],
)
def test_fit_from_shared_moments_equals_fit(method: str, params) -> None:
    x, y = make_gapped(120, d=16, seed=1)
    direct = make_transform(method, **params).fit(x, y)
    shared = SharedFit.of(x, y, outer=True, cross=True)
    via = make_transform(method, **params).fit_shared(shared)
    for modality, z in (("image", x), ("text", y)):
        np.testing.assert_allclose(
            via.transform(z, modality), direct.transform(z, modality), atol=2e-5
        )


def test_one_eigendecomposition_per_fold_and_modality(monkeypatch) -> None:
    x, y = make_gapped(120, d=16, seed=2)
    calls = []
    real = np.linalg.eigh
    monkeypatch.setattr(np.linalg, "eigh", lambda a: calls.append(1) or real(a))
    make_transform("auto", methods="whiten", **FAST).fit(x, y)
    # 4 folds x 2 modalities, then one refit of the winner: 8 + 2, whatever the number of
    # whitening candidates (7 on the grid and the estimators) and search steps
    assert len(calls) == 10


def test_folds_score_against_a_full_size_corpus() -> None:
    x, y = make_gapped(90, d=16, seed=3)
    folds = list(crossval.make_folds(x, y, 3, 1, seed=0, outer=False, paired=True))
    for fold in folds:
        assert len(fold.val) == 30 and len(fold.val) + len(fold.distractors) == 90
        assert not set(fold.val) & set(fold.distractors)
        np.testing.assert_array_equal(fold.distractors, fold.train)  # used to rank, not scored
    # a corpus of 90 is harder than one of 30: the same transform scores at most as well
    t = make_transform("identity").fit_shared(folds[0].shared)
    full = crossval.paired_scores(t, x, y, folds[0])
    alone = crossval.Fold(folds[0].train, folds[0].val, folds[0].shared, folds[0].val[:0], 90)
    small = crossval.paired_scores(t, x, y, alone)
    assert full["t2i_R@1"] <= small["t2i_R@1"] and full["i2t_R@1"] <= small["i2t_R@1"]


def test_summary_has_errors_and_paired_differences() -> None:
    base = [{"m": v} for v in (0.5, 0.6, 0.7, 0.6)]
    cand = [{"m": v} for v in (0.6, 0.7, 0.8, 0.8)]
    s = crossval.summarize(cand, base, ratio=1.0)
    assert s["m"] == pytest.approx(0.725)
    assert s["m_diff"] == pytest.approx(0.125)
    diffs = np.array([0.1, 0.1, 0.1, 0.2])
    assert s["m_diff_se"] == pytest.approx(diffs.std(ddof=1) * np.sqrt(1 / 4 + 1))


def _row(method, params, mixed, se, t2i_diff, i2t_diff, diff_se, gap=0.2, **extra):
    return {
        "method": method, "params": params, "mixed_R@10": mixed, "mixed_R@10_se": se,
        "t2i_R@1_diff": t2i_diff, "t2i_R@1_diff_se": diff_se,
        "i2t_R@1_diff": i2t_diff, "i2t_R@1_diff_se": diff_se, "gap": gap, **extra,
    }  # fmt: skip


BALANCED = selection.OBJECTIVE_REGISTRY["balanced"]


def test_one_standard_error_rule_prefers_what_moves_the_data_least() -> None:
    rows = [
        _row("identity", {}, 0.0, 0.0, 0.0, 0.0, 0.0, gap=0.8),
        _row("centering", {}, 0.70, 0.03, -0.001, 0.0, 0.002),
        _row("whiten", {"shrinkage": 0.5}, 0.86, 0.02, 0.0, 0.0, 0.002),
        _row("whiten", {"shrinkage": 0.9}, 0.845, 0.02, 0.0, 0.0, 0.002),
        _row("whiten", {"shrinkage": 0.95}, 0.83, 0.02, 0.0, 0.0, 0.002),
        _row("mean-shift", {"lam": 1.0}, 0.90, 0.02, -0.2, -0.2, 0.01),  # not admissible
    ]
    pick, rule = selection.decide(rows, BALANCED, tolerance=0.01, z=1.0, n=1000, dim=16)
    assert rows[pick]["params"] == {"shrinkage": 0.9}  # 0.95 is below 0.86 - 0.02
    assert "one-standard-error rule" in rule and "whiten (shrinkage=0.9)" in rule
    assert [r["admissible"] for r in rows] == [True, True, True, True, True, False]
    # centering within one standard error wins over any whitening
    rows[1]["mixed_R@10"] = 0.85
    pick, _ = selection.decide(rows, BALANCED, tolerance=0.01, z=1.0, n=1000, dim=16)
    assert rows[pick]["method"] == "centering"


def test_admissible_needs_the_lower_confidence_bound() -> None:
    rows = [
        _row("identity", {}, 0.0, 0.0, 0.0, 0.0, 0.0, gap=0.8),
        _row("centering", {}, 0.7, 0.03, -0.005, 0.0, 0.01),  # -0.005 - 0.01 < -0.01
    ]
    pick, rule = selection.decide(rows, BALANCED, tolerance=0.01, z=1.0, n=1000, dim=16)
    assert pick == 0 and rule.startswith("kept identity") and "confidence bound" in rule
    pick, _ = selection.decide(rows, BALANCED, tolerance=0.01, z=0.4, n=1000, dim=16)
    assert pick == 1


def test_small_data_falls_back_to_a_gap_closing_candidate() -> None:
    rows = [
        _row("identity", {}, 0.0, 0.0, 0.0, 0.0, 0.0, gap=1.07),
        _row("centering", {}, 0.4, 0.05, -0.005, 0.0, 0.02, gap=0.44),  # fails the LCB
        _row("mean-shift", {"lam": 0.25}, 0.1, 0.05, 0.0, 0.0, 0.02, gap=0.9),  # gap not halved
    ]
    pick, rule = selection.decide(rows, BALANCED, tolerance=0.01, z=1.0, n=99, dim=512)
    assert rows[pick]["method"] == "centering" and rule.startswith("small-data fallback (n=99")
    rows[1]["t2i_R@1_diff"] = -0.05  # now a cost the data do show
    pick, rule = selection.decide(rows, BALANCED, tolerance=0.01, z=1.0, n=99, dim=512)
    assert pick == 0 and rule.startswith("kept identity: small data (n=99)")
    assert "centering: t2i_R@1 -0.050" in rule


def test_candidate_and_objective_registries_are_open(monkeypatch) -> None:
    x, y = make_gapped(80, d=16, seed=4)
    monkeypatch.setattr(selection, "CANDIDATES", list(selection.CANDIDATES))
    monkeypatch.setattr(selection, "OBJECTIVE_REGISTRY", dict(selection.OBJECTIVE_REGISTRY))
    selection.register_candidate(selection.Candidate("standardize", {"eps": 0.5}, min_rows=81))
    selection.register_candidate(selection.Candidate("standardize", {"eps": 0.25}))
    selection.register_objective(selection.Objective("gap-only", "neg_gap", scorer=_neg_gap))
    t = make_transform("auto", objective="gap-only", methods="standardize", **FAST).fit(x, y)
    tried = [r["params"] for r in t.fit_table_ if r["method"] == "standardize"]
    assert tried == [{}, {"eps": 0.25}]  # eps=0.5 needs 81 rows
    assert "neg_gap" in t.fit_table_[0] and t.chosen_["method"] == "standardize"
    with pytest.raises(InputError, match="unknown objective"):
        make_transform("auto", objective="fair-ish")


def _neg_gap(t, image, text, labels, fold):
    ci, ct = t.transform(image[fold.val], "image"), t.transform(text[fold.val], "text")
    return {"neg_gap": -float(np.linalg.norm(ci.mean(0) - ct.mean(0)))}


def test_whiten_estimates_its_shrinkage_with_sklearn(tmp_path) -> None:
    from sklearn.covariance import OAS, ledoit_wolf_shrinkage

    x, y = make_gapped(150, d=16, seed=7)
    t = make_transform("whiten").fit(x, y)
    assert t.shrinkage == "lw"  # the data-driven default
    want = [ledoit_wolf_shrinkage(z.astype(np.float64)) for z in (x, y)]
    np.testing.assert_allclose(t.shrinkage_, want, rtol=1e-6)
    o = make_transform("whiten", shrinkage="OAS").fit(x, y)
    np.testing.assert_allclose(o.shrinkage_[0], OAS().fit(x.astype(np.float64)).shrinkage_)
    fixed = make_transform("whiten", shrinkage="0.25")
    assert fixed.shrinkage == 0.25
    t.save(tmp_path / "w.gapfix")
    back = load_transform(tmp_path / "w.gapfix")
    np.testing.assert_array_equal(back.shrinkage_, t.shrinkage_)
    np.testing.assert_array_equal(back.transform(x, "image"), t.transform(x, "image"))
    for bad in ("ledoit", True, -0.1, float("nan")):
        with pytest.raises(InputError, match="shrinkage"):
            make_transform("whiten", shrinkage=bad)


def test_auto_table_reports_errors_rule_and_out_of_fold_figures() -> None:
    x, y = make_gapped(120, d=16, seed=8)
    t = make_transform("auto", **FAST).fit(x, y)
    row = next(r for r in t.fit_table_ if r["chosen"])
    for key in ("t2i_R@1", "i2t_R@1", "mixed_R@10", "gap"):
        assert {f"{key}_se", f"{key}_diff", f"{key}_diff_se"} <= set(row)
        assert t.fit_stats_["out_of_fold"][key] == row[key]
    assert t.fit_stats_["rule"] and t.fit_stats_["repeats"] == 2
    searched = [r for r in t.fit_table_ if r["method"] == "whiten"][-1]
    assert isinstance(searched["params"]["shrinkage"], float)  # the continuous search


def test_fit_prints_in_sample_beside_out_of_fold(tmp_path) -> None:
    r = CliRunner().invoke(
        app,
        ["fit", "--image", f"{COCO}:image", "--text", f"{COCO}:text", "--method", "whiten",
         "--param", "shrinkage=0.9", "--out", str(tmp_path / "w.gapfix")],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    for label in ("in-sample, raw", "in-sample, fitted", "out-of-fold, raw", "out-of-fold, fitted"):
        assert label in r.stdout
    assert "pairs the fit never saw" in r.stdout


def test_degenerate_whitening_on_class_prompts_is_flagged() -> None:
    """Whitening whose shrinkage is estimated from 10 class prompts (10 rows, 512 dims) scores
    far below raw (measured: 0.41 vs 0.985 top-1): a warning; auto keeps a strong shrinkage."""
    rng = np.random.default_rng(0)
    with np.load(COCO) as d:
        img, txt = d["image"], d["text"]
    labels = rng.integers(0, 10, 200)
    images = img[labels] + 0.01 * rng.standard_normal((200, 512)).astype(np.float32)
    t = make_transform("auto", objective="zeroshot", methods="whiten", **FAST)
    t.fit(images, txt[:10], labels=labels)
    chosen = next(r for r in t.fit_table_ if r["chosen"])
    assert chosen["zeroshot_top1"] >= t.fit_stats_["out_of_fold_identity"]["zeroshot_top1"]
    (warning,) = t.fit_stats_["warnings"]
    assert "degenerate fits" in warning and "whiten (shrinkage=lw) 0.40" in warning


def test_moments_eigh_is_recomputed_after_an_update() -> None:
    rng = np.random.default_rng(0)
    m = Moments(4, outer=True)
    m.update(rng.standard_normal((10, 4)).astype(np.float32))
    first = m.cov_eigh()
    assert m.cov_eigh()[1] is first[1] and m.cov_eigh32()[1].dtype == np.float32
    assert m.memo("k", lambda: [1]) is m.memo("k", lambda: [2])  # kept for the same key
    m.update(rng.standard_normal((10, 4)).astype(np.float32))
    assert m.cov_eigh()[1] is not first[1]
    assert m.memo("k", lambda: [2]) == [2]  # an update forgets it


def test_whiten_artifacts_from_before_shrinkage_estimates_still_load(tmp_path) -> None:
    """Format 1.0 artifacts have no ``shrinkage_`` array; they load and map as before."""
    import json

    from safetensors.numpy import load_file, save_file

    from gapfix.transforms.artifact import read_metadata

    x, y = make_gapped(60, d=8, seed=9)
    t = make_transform("whiten", shrinkage=0.1).fit(x, y)
    t.save(tmp_path / "new.gapfix")
    arrays = load_file(tmp_path / "new.gapfix")
    del arrays["shrinkage_"]
    meta = read_metadata(tmp_path / "new.gapfix") | {"format_version": "1.0"}
    save_file(arrays, tmp_path / "old.gapfix", metadata={"gapfix": json.dumps(meta)})
    old = load_transform(tmp_path / "old.gapfix")
    assert old.shrinkage == 0.1 and old.shrinkage_ is None
    np.testing.assert_array_equal(old.transform(x, "image"), t.transform(x, "image"))


def test_fit_auto_prints_its_table_rule_and_out_of_fold_figures(tmp_path) -> None:
    x, y = make_gapped(120, d=16, seed=10)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    r = CliRunner().invoke(
        app,
        ["fit", "--image", str(tmp_path / "x.npy"), "--text", str(tmp_path / "y.npy"),
         "--method", "auto", "--param", "folds=2", "--param", "repeats=2",
         "--out", str(tmp_path / "a.gapfix")],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "mean ± standard error" in r.stdout and "decided by:" in r.stdout
    assert "out-of-fold, fitted" in r.stdout and "auto's 2-fold cross-validation x 2" in r.stdout
    saved = load_transform(tmp_path / "a.gapfix")
    assert saved.fit_stats_["rule"] and "out_of_fold" in saved.fit_stats_


def test_the_adapter_is_a_candidate_once_the_data_can_judge_it() -> None:
    """1000+ pairs (and 2+ per dimension): the learned adapter joins the table, judged on the
    first repeat's folds only against identity on the same folds; on fewer pairs it is left
    out, so `auto` on small sets costs no training."""
    x, y = make_gapped(selection.ADAPTER_MIN_ROWS, d=16, seed=5)
    t = make_transform("auto", methods="centering,contrastive-adapter").fit(x, y)
    rows = {r["method"]: r for r in t.fit_table_}
    adapter = rows["contrastive-adapter"]
    assert adapter["params"] == {"patience": 5}
    assert adapter["folds_used"] == 2 and rows["centering"]["folds_used"] == 10
    for key in ("mixed_R@10", "t2i_R@1_diff", "t2i_R@1_diff_se", "gap"):
        assert np.isfinite(adapter[key]), key
    assert adapter["gap"] < 0.5 * rows["identity"]["gap"]  # it closes the gap on held-out pairs
    fewer = make_transform("auto", methods="centering,contrastive-adapter")
    fewer.fit(x[:-1], y[:-1])
    assert "contrastive-adapter" not in {r["method"] for r in fewer.fit_table_}


def test_without_torch_auto_leaves_the_adapter_out(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    find = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "torch" else find(name, *a)
    )
    x, y = make_gapped(selection.ADAPTER_MIN_ROWS, d=16, seed=5)
    t = make_transform("auto", methods="centering,contrastive-adapter").fit(x, y)
    assert {r["method"] for r in t.fit_table_} == {"identity", "centering"}


def test_the_table_does_not_depend_on_the_rows_scale() -> None:
    """Every candidate, the searched shrinkage included, is scored on unit rows: the same
    rows scaled by 10 give the same table (``moved`` too) and the same choice."""
    x, y = make_gapped(120, d=16, seed=12)
    a = make_transform("auto").fit(x, y)
    b = make_transform("auto").fit(10 * x, 10 * y)
    assert a.chosen_ == b.chosen_
    for ra, rb in zip(a.fit_table_, b.fit_table_, strict=True):
        assert ra["params"] == rb["params"]
        assert ra["moved"] == pytest.approx(rb["moved"], abs=1e-4), ra["params"]
