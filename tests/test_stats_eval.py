"""Gap statistics and retrieval metrics against brute-force definitions."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from gapfix.errors import InputError
from gapfix.evaluation import cross_modal_recall, evaluate, mixed_modality, zeroshot_accuracy
from gapfix.stats import gap_statistics, pca_2d, plot_gap
from tests.conftest import make_gapped


def test_gap_statistics_match_definitions() -> None:
    x, y = make_gapped(60, d=16, seed=2)
    s = gap_statistics(x, y, paired=True)
    assert s["centroid_gap"] == pytest.approx(np.linalg.norm(x.mean(0) - y.mean(0)), rel=1e-5)
    pair_cos = [x[i] @ x[j] for i, j in itertools.permutations(range(60), 2)]
    assert s["cone_image"]["mean_cosine"] == pytest.approx(np.mean(pair_cos), abs=1e-5)
    assert s["cone_image"]["std_cosine"] == pytest.approx(np.std(pair_cos), abs=1e-4)
    assert s["separability"]["accuracy"] > 0.9  # the synthetic gap is linearly separable
    assert s["gap_dimensions"]["top_dims"][0] == 0 and s["gap_dimensions"]["dims_for_50pct"] == 1
    p = s["paired"]
    assert p["alignment"] == pytest.approx(np.mean(np.sum((x - y) ** 2, axis=1)), rel=1e-4)
    sq = [np.sum((x[i] - x[j]) ** 2) for i, j in itertools.permutations(range(60), 2)]
    assert p["uniformity_image"] == pytest.approx(
        np.log(np.mean(np.exp(-2 * np.array(sq)))), abs=1e-4
    )
    assert 0 < p["relative_modality_gap"] < 1
    assert np.linalg.norm(s["gap_direction"]) == pytest.approx(1.0)


def test_gap_statistics_unpaired_and_errors() -> None:
    x, y = make_gapped(50, d=8)
    s = gap_statistics(x, y[:30])
    assert "paired" not in s and s["n_text"] == 30
    with pytest.raises(InputError, match="paired"):
        gap_statistics(x, y[:30], paired=True)


def test_cone_spread_sampled_with_bound() -> None:
    x, y = make_gapped(5000, d=8)
    s = gap_statistics(x, y)
    assert s["cone_image"]["mean_method"] == "exact"
    assert s["cone_image"]["spread_method"].startswith("sample")
    bound = s["cone_image"]["sample_error_bound_95"]
    assert 0 < bound < 0.1
    assert abs(s["cone_image"]["sample_mean_cosine"] - s["cone_image"]["mean_cosine"]) < bound


def test_real_embeddings_gap(coco) -> None:
    assert gap_statistics(coco["image"], coco["text"])["centroid_gap"] == pytest.approx(
        0.8475, abs=1e-3
    )
    # the cone effect: a random-init CLIP already has a gap
    assert gap_statistics(coco["random_init_image"], coco["random_init_text"])["centroid_gap"] > 1.0


def test_pca_and_plot(tmp_path, coco) -> None:
    p = pca_2d(coco["image"], coco["text"], paired=True)
    assert len(p["image"]) == 250 and p["paired"]
    assert np.linalg.norm(np.subtract(p["image_centroid"], p["text_centroid"])) > 0.5
    plot_gap(coco["image"], coco["text"], str(tmp_path / "gap.png"), paired=True)
    assert not pca_2d(coco["image"], coco["text"])["paired"]
    assert (tmp_path / "gap.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_recall_brute_force() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((40, 8)).astype(np.float32)
    y = x + 0.8 * rng.standard_normal((40, 8)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    y /= np.linalg.norm(y, axis=1, keepdims=True)
    r = cross_modal_recall(x, y)
    s = y @ x.T
    for k in (1, 5, 10):
        topk = np.argsort(-s, axis=1)[:, :k]
        want = np.mean([i in topk[i] for i in range(40)])
        assert r["text_to_image"][f"R@{k}"] == pytest.approx(want)
    # mixed: corpus = all images + the other captions
    m = mixed_modality(x, y)
    hits = 0
    for i in range(40):
        scores = [(y[i] @ x[j], ("img", j)) for j in range(40)]
        scores += [(y[i] @ y[j], ("txt", j)) for j in range(40) if j != i]
        ranked = [key for _, key in sorted(scores, key=lambda t: -t[0])]
        hits += ("img", i) in ranked[:10]
    assert m["R@10"] == pytest.approx(hits / 40)


def test_mixed_modality_is_zero_with_a_gap(coco) -> None:
    assert mixed_modality(coco["image"], coco["text"])["R@10"] < 0.01


def test_zeroshot_and_evaluate_labels() -> None:
    rng = np.random.default_rng(1)
    classes = rng.standard_normal((5, 16)).astype(np.float32)
    labels = rng.integers(0, 5, 100)
    img = classes[labels] + 0.3 * rng.standard_normal((100, 16)).astype(np.float32)
    img /= np.linalg.norm(img, axis=1, keepdims=True)
    acc = zeroshot_accuracy(img, classes / np.linalg.norm(classes, axis=1, keepdims=True), labels)
    assert acc > 0.9
    out = evaluate(img, classes, labels=labels)
    assert out["raw"]["zeroshot"]["top1"] == pytest.approx(acc)
    with pytest.raises(InputError, match="labels"):
        evaluate(img, classes, labels=np.full(100, 7))
