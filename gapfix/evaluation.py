"""Retrieval metrics: cross-modal recall, mixed-modality retrieval, zero-shot accuracy.

All functions take L2-normalised float32 embeddings (rows of image and text; paired functions
expect row i of image to match row i of text) and work in query blocks, so memory stays
bounded by ``block * n`` scores.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from gapfix.blocks import iter_blocks, normalized
from gapfix.validation import check_embeddings, check_labels, check_paired, check_same_dim

QUERY_BLOCK = 1024


def target_ranks(queries: np.ndarray, corpus: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """0-based rank of ``corpus[targets[i]]`` for query i (ties count in the target's favour)."""
    ranks = np.empty(queries.shape[0], dtype=np.int64)
    for sl in iter_blocks(queries.shape[0], QUERY_BLOCK):
        scores = queries[sl] @ corpus.T
        own = scores[np.arange(scores.shape[0]), targets[sl]]
        ranks[sl] = (scores > own[:, None]).sum(axis=1)
    return ranks


def recall_at(ranks: np.ndarray, ks: tuple[int, ...]) -> dict[str, float]:
    """R@k for each k from 0-based target ranks."""
    return {f"R@{k}": float(np.mean(ranks < k)) for k in ks}


def cross_modal_recall(
    image: np.ndarray, text: np.ndarray, ks: tuple[int, ...] = (1, 5, 10)
) -> dict[str, dict[str, float]]:
    """Text->image and image->text R@k on paired embeddings."""
    targets = np.arange(image.shape[0])
    return {
        "text_to_image": recall_at(target_ranks(text, image, targets), ks),
        "image_to_text": recall_at(target_ranks(image, text, targets), ks),
    }


def mixed_modality_ranks(
    image: np.ndarray, text: np.ndarray, n_queries: int | None = None
) -> np.ndarray:
    """Rank of image i for caption i in a corpus of all images plus all other captions.

    ``n_queries``: only the first rows query (the rest are distractors in the corpus).
    """
    n = image.shape[0] if n_queries is None else n_queries
    ranks = np.empty(n, dtype=np.int64)
    for sl in iter_blocks(n, QUERY_BLOCK):
        q = text[sl]
        rows = np.arange(q.shape[0])
        s_img = q @ image.T
        # the target's score from the same product it is compared with: a separately
        # computed dot product differs in the last bits and could outrank its own image
        own = s_img[rows, rows + sl.start].copy()
        s_txt = q @ text.T
        s_txt[rows, rows + sl.start] = -np.inf  # the query itself is not in the corpus
        ranks[sl] = (s_img > own[:, None]).sum(axis=1) + (s_txt > own[:, None]).sum(axis=1)
    return ranks


def mixed_modality(image: np.ndarray, text: np.ndarray) -> dict[str, float]:
    """Mixed-modality retrieval: R@1, R@10 and NDCG@10 (one relevant item per query)."""
    ranks = mixed_modality_ranks(image, text)
    ndcg = np.where(ranks < 10, 1.0 / np.log2(ranks + 2.0), 0.0)
    return {**recall_at(ranks, (1, 10)), "NDCG@10": float(ndcg.mean())}


def zeroshot_accuracy(image: np.ndarray, class_text: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy of classifying each image by its most similar class text."""
    correct = 0
    for sl in iter_blocks(image.shape[0], QUERY_BLOCK):
        correct += int(np.sum((image[sl] @ class_text.T).argmax(axis=1) == labels[sl]))
    return correct / max(image.shape[0], 1)


def score(image: np.ndarray, text: np.ndarray, labels: np.ndarray | None = None) -> dict[str, Any]:
    """All metrics that apply: zero-shot with labels, else cross-modal + mixed when paired."""
    if labels is not None:
        return {"zeroshot": {"top1": zeroshot_accuracy(image, text, labels)}}
    out: dict[str, Any] = {}
    if image.shape[0] == text.shape[0]:
        out["cross_modal"] = cross_modal_recall(image, text)
        out["mixed"] = mixed_modality(image, text)
    return out


def evaluate(image: Any, text: Any, transform: Any = None, labels: Any = None) -> dict[str, Any]:
    """Metrics before (raw, renormalised) and, with a fitted transform, after correction.

    Paired data (same row count, no labels) gives cross-modal R@1/5/10 both ways and
    mixed-modality R@1/R@10/NDCG@10; ``labels`` (one per image, indexing text rows = classes)
    gives zero-shot top-1. The gap is reported too.
    """
    image = check_embeddings(image, "image", min_rows=2)
    text = check_embeddings(text, "text", min_rows=2)
    check_same_dim(image, text)
    lab = None
    if labels is not None:
        lab = check_labels(labels, image.shape[0], text.shape[0])
    else:
        check_paired(image, text, "evaluation without --labels")
    raw_i, raw_t = normalized(image), normalized(text)
    result: dict[str, Any] = {"n_image": int(image.shape[0]), "n_text": int(text.shape[0])}
    result["raw"] = {"gap": _gap(raw_i, raw_t), **score(raw_i, raw_t, lab)}
    if transform is not None:
        ci = transform.transform(image, "image")
        ct = transform.transform(text, "text")
        result["corrected"] = {"gap": _gap(ci, ct), **score(ci, ct, lab)}
        result["transform"] = transform.to_summary()
    return result


def _gap(image: np.ndarray, text: np.ndarray) -> float:
    return float(
        np.linalg.norm(image.mean(axis=0, dtype=np.float64) - text.mean(axis=0, dtype=np.float64))
    )


def flatten_metrics(metrics: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """Flatten nested metric dicts to ``a.b.c -> value`` (for tables)."""
    flat: dict[str, float] = {}
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten_metrics(value, name + "."))
        elif isinstance(value, int | float):
            flat[name] = float(value)
    return flat
