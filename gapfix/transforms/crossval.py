"""Repeated k-fold cross-validation of gap-closing transforms, with shared per-fold moments.

Each fold's moments (means, covariances, cross products) are accumulated once and every
candidate fits from them (``GapTransform.fit_shared``). A fold is scored as search over a
corpus as large as the calibration data allows: its held-out pairs are the queries and
targets, and the other folds' items join the corpus as extra distractors (they are never
scored as queries), so an estimate resembles search over a full-size corpus.

Summaries give each metric's mean over all folds and repeats, its standard error, and the
paired difference from the ``identity`` with its standard error. Folds of repeated k-fold
share training rows, so the plain ``sd / sqrt(J)`` understates the error; the standard error
uses the Nadeau-Bengio correction ``sd * sqrt(1/J + n_test/n_train)``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from gapfix.blocks import normalized
from gapfix.evaluation import mixed_modality_ranks, target_ranks, zeroshot_accuracy
from gapfix.transforms.base import GapTransform
from gapfix.transforms.moments import Moments, SharedFit

MAX_QUERIES = 250  # held-out queries scored per fold (a random subset beyond this)
MAX_CORPUS = 3000  # corpus rows per fold: held-out targets plus distractors
Scorer = Callable[..., dict[str, float]]  # (transform, image, text, labels, fold) -> metrics


@dataclass
class Fold:
    """One training/validation split with the moments of its training rows."""

    train: np.ndarray
    val: np.ndarray
    shared: SharedFit
    distractors: np.ndarray
    n: int  # calibration rows in all


def make_folds(
    image: np.ndarray,
    text: np.ndarray,
    k: int,
    repeats: int,
    seed: int,
    outer: bool,
    paired: bool,
) -> Iterator[Fold]:
    """Yield the folds of ``repeats`` random k-fold splits (unit rows in, moments computed once).

    Unpaired use (zero-shot): ``text`` holds class prompts, used whole by every fold.
    """
    n = image.shape[0]
    rng = np.random.default_rng(seed)
    text_moments = None
    for _ in range(repeats):
        fold_of = rng.permutation(n) % k
        for f in range(k):
            train, val = np.nonzero(fold_of != f)[0], np.nonzero(fold_of == f)[0]
            if len(val) > MAX_QUERIES:
                val = np.sort(rng.choice(val, MAX_QUERIES, replace=False))
            room = max(MAX_CORPUS - len(val), 0)
            distractors = train if len(train) <= room else rng.choice(train, room, replace=False)
            if paired:
                shared = SharedFit.of(image[train], text[train], outer=outer, cross=True)
            else:
                if text_moments is None:
                    text_moments = Moments(text.shape[1], outer=outer)
                    text_moments.update(text)
                image_moments = Moments(image.shape[1], outer=outer)
                image_moments.update(image[train])
                shared = SharedFit(image_moments, text_moments, image[train], text)
            yield Fold(train, val, shared, np.sort(distractors), n)


def paired_scores(
    t: GapTransform, image: np.ndarray, text: np.ndarray, fold: Fold
) -> dict[str, Any]:
    """R@1 both ways and mixed R@10 of the held-out pairs, searched among all corpus rows.

    ``moved`` is the mean squared distance a held-out unit row moves (both modalities), what
    the selection rule's tie-break calls "moving the data". ``gap`` is the centroid gap expected when the fit on all n calibration rows meets as many
    unseen pairs as the corpus holds. The squared gap of the m held-out pairs carries the noise
    v/m of their own mean and v/n_train of the means fitted on the training rows
    (v = tr Cov(x - y)); both are swapped for the noise at full size, v/corpus + v/n. Uncorrected,
    42 held-out COCO rows read 0.23 where 125 unseen pairs give 0.15. (Pooling the folds instead
    cancels the noise altogether: held-out rows centred by the other folds' means sum to zero.)
    """
    rows = np.concatenate([fold.val, fold.distractors])
    ci, ct = t.transform(image[rows], "image"), t.transform(text[rows], "text")
    m = len(fold.val)
    own = np.arange(m)
    t2i = target_ranks(ct[:m], ci, own)
    i2t = target_ranks(ci[:m], ct, own)
    mixed = mixed_modality_ranks(ci, ct, n_queries=m)
    d = ci[:m].astype(np.float64) - ct[:m]
    noise = float(d.var(axis=0, ddof=1).sum()) if m > 1 else 0.0
    swap = 1 / len(rows) + 1 / fold.n - 1 / m - 1 / len(fold.train)
    sq = float(np.sum(d.mean(axis=0) ** 2)) + noise * swap
    moved = np.mean(np.sum((ci[:m] - image[fold.val]) ** 2, axis=1)) + np.mean(
        np.sum((ct[:m] - text[fold.val]) ** 2, axis=1)
    )
    return {
        "t2i_R@1": float(np.mean(t2i < 1)),
        "i2t_R@1": float(np.mean(i2t < 1)),
        "R@1_mean": float(np.mean(t2i < 1) + np.mean(i2t < 1)) / 2,
        "mixed_R@10": float(np.mean(mixed < 10)),
        "gap": float(np.sqrt(max(sq, 0.0))),
        "moved": float(moved) / 2,
    }


def zeroshot_scores(
    t: GapTransform, image: np.ndarray, class_text: np.ndarray, labels: np.ndarray, fold: Fold
) -> dict[str, float]:
    """Top-1 accuracy of the held-out images against the class prompts, and the gap."""
    ci, ct = t.transform(image[fold.val], "image"), t.transform(class_text, "text")
    gap = np.linalg.norm(ci.mean(0, dtype=np.float64) - ct.mean(0, dtype=np.float64))
    return {"zeroshot_top1": zeroshot_accuracy(ci, ct, labels[fold.val]), "gap": float(gap)}


def cross_validate(
    candidates: list[tuple[str, dict[str, Any]]],
    image: Any,
    text: Any,
    labels: np.ndarray | None = None,
    folds: int = 3,
    repeats: int = 3,
    seed: int = 0,
    renormalize: bool = True,
    scorer: Scorer | None = None,
    extra: dict[str, Any] | None = None,
) -> tuple[list[list[dict[str, float]]], list[Fold], float]:
    """Per-fold scores of every candidate: ``scores[c][j]`` for candidate c on fold j.

    Returns the scores, the folds (for further candidates fitted on the same moments) and the
    test/train size ratio used by the standard-error correction.
    """
    from gapfix.transforms import TRANSFORMS

    image, text = normalized(image), normalized(text)
    outer = any(TRANSFORMS[m].needs_outer for m, _ in candidates)
    paired = labels is None
    all_folds = list(make_folds(image, text, folds, repeats, seed, outer, paired))
    scores = [
        score_candidate(m, p, image, text, labels, all_folds, renormalize, scorer, extra)
        for m, p in candidates
    ]
    return scores, all_folds, 1.0 / (folds - 1)


def score_candidate(
    method: str,
    params: dict[str, Any],
    image: np.ndarray,
    text: np.ndarray,
    labels: np.ndarray | None,
    folds: list[Fold],
    renormalize: bool = True,
    scorer: Scorer | None = None,
    extra: dict[str, Any] | None = None,
) -> list[dict[str, float]]:
    """One candidate's metrics on every fold, fitted from the folds' shared moments."""
    from gapfix.transforms import make_transform

    out = []
    for fold in folds:
        t = make_transform(method, renormalize=renormalize, **params).fit_shared(fold.shared)
        if scorer is not None:
            s = scorer(t, image, text, labels, fold, **(extra or {}))
        elif labels is None:
            s = paired_scores(t, image, text, fold)
        else:
            s = zeroshot_scores(t, image, text, labels, fold)
        shrinkage = getattr(t, "shrinkage_", None)
        if shrinkage is not None:  # the coefficient whitening used (estimated ones vary)
            s["shrinkage"] = float(np.mean(shrinkage))
        out.append(s)
    return out


def corrected_se(values: np.ndarray, ratio: float) -> float:
    """Nadeau-Bengio standard error of the mean of repeated-CV fold values."""
    if values.size < 2:
        return float("nan")
    return float(np.std(values, ddof=1) * np.sqrt(1.0 / values.size + ratio))


def summarize(
    fold_scores: list[dict[str, float]], base_scores: list[dict[str, float]], ratio: float
) -> dict[str, float]:
    """Mean, standard error and paired difference from the baseline (with its error) per metric."""
    out: dict[str, float] = {}
    for key in fold_scores[0]:
        v = np.array([s[key] for s in fold_scores])
        if key not in base_scores[0]:  # e.g. the shrinkage whitening estimated
            out[key] = float(v.mean())
            continue
        d = v - np.array([s[key] for s in base_scores])
        out[key] = float(v.mean())
        out[f"{key}_se"] = corrected_se(v, ratio)
        out[f"{key}_diff"] = float(d.mean())
        out[f"{key}_diff_se"] = corrected_se(d, ratio)
    return out
