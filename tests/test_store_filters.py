"""Modality filters on approximate indexes: across the modality gap, a filtered search must
still return k hits of the asked-for modality (HNSW walks and IVF probes stay near the query,
among the other modality)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from gapfix.store import index_filters
from gapfix.store.index import IndexParams, VectorIndex
from gapfix.store.items import MODALITY_CODE, encode_fids

FIXTURE = Path(__file__).parent / "fixtures" / "coco_val2017_clip_vitb16_dev250.npz"
N_IMG, N_TXT, K = 3000, 40, 10


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def gapped() -> tuple[np.ndarray, np.ndarray]:
    """Many real CLIP images (jittered copies) and a few real captions: the gap is intact."""
    with np.load(FIXTURE) as d:
        img, txt = d["image"], d["text"]
    rng = np.random.default_rng(0)
    images = unit(np.repeat(img, N_IMG // len(img), 0) + 0.02 * rng.standard_normal((N_IMG, 512)))
    return images, txt[:N_TXT].astype(np.float32)


def fill(kind: str, images: np.ndarray, texts: np.ndarray, **params) -> VectorIndex:
    idx = VectorIndex(kind, 512, IndexParams(**params))
    idx.add(images, encode_fids(np.arange(N_IMG), np.full(N_IMG, MODALITY_CODE["image"])))
    idx.add(texts, text_fids(np.arange(len(texts))))
    return idx


def text_fids(rows: np.ndarray) -> np.ndarray:
    return encode_fids(N_IMG + rows, np.full(rows.shape, MODALITY_CODE["text"]))


def exact_texts(queries: np.ndarray, texts: np.ndarray, k: int) -> np.ndarray:
    return np.argsort(-(queries @ texts.T), axis=1, kind="stable")[:, :k]


CASES = [
    ("hnsw", {"ef_search": 16}),
    ("ivfpq", {"train_size": 1000, "nprobe": 4}),
]


@pytest.mark.parametrize(("kind", "params"), CASES)
def test_image_query_filtered_to_texts_returns_k_texts(gapped, kind: str, params) -> None:
    images, texts = gapped
    idx = fill(kind, images, texts, **params)
    assert kind != "ivfpq" or idx.trained
    queries = images[::150]
    _, ids = idx.search(queries, K, ["text"])
    assert (ids >= 0).all(), "a filtered search came back short"
    assert set(np.unique(ids)) <= set(text_fids(np.arange(N_TXT)))
    want = text_fids(exact_texts(queries, texts, K))
    recall = np.mean([len(set(a) & set(b)) / K for a, b in zip(ids, want, strict=True)])
    assert recall >= (1.0 if kind == "hnsw" else 0.5)  # HNSW: few matches -> exact search


def test_hnsw_broad_filter_scales_ef(gapped, monkeypatch) -> None:
    images, texts = gapped
    idx = fill("hnsw", images, texts, ef_search=16)
    monkeypatch.setattr(index_filters, "FILTER_EXACT_MAX_ROWS", 0)  # force the graph search
    _, ids = idx.search(images[::150], K, ["text"])
    assert (ids >= 0).all()
    assert set(np.unique(ids)) <= set(text_fids(np.arange(N_TXT)))


@pytest.mark.parametrize(("kind", "params"), CASES)
def test_filtered_search_sees_every_write(gapped, kind: str, params) -> None:
    images, texts = gapped
    idx = fill(kind, images, texts[:20], **params)
    q = images[:3]
    _, before = idx.search(q, K, ["text"])
    # a new caption identical to the top hit's text, but closer: cached filter state is redone
    idx.add(unit(q[:1] + texts[:1]), text_fids(np.array([30])))
    _, after = idx.search(q[:1], K, ["text"])
    assert after[0, 0] == text_fids(np.array([30]))[0]
    gone = before[0, :3]
    assert idx.remove(gone) == 3
    _, later = idx.search(q[:1], K, ["text"])
    assert not set(gone) & set(later[0]) and (later >= 0).all()


def test_every_modality_is_no_filter(gapped) -> None:
    images, texts = gapped
    idx = fill("hnsw", images, texts)
    q = images[:4]
    assert np.array_equal(idx.search(q, K, ["image", "text", "document"])[1], idx.search(q, K)[1])


def test_trained_ivf_filter_matching_nothing_is_empty(gapped) -> None:
    images, _ = gapped
    idx = VectorIndex("ivfpq", 512, IndexParams(train_size=1000))
    idx.add(images, encode_fids(np.arange(N_IMG), np.full(N_IMG, MODALITY_CODE["image"])))
    assert idx.trained
    dist, ids = idx.search(images[:3], K, ["text"])  # no text at all: no list to probe
    assert (ids == -1).all() and np.isneginf(dist).all()


@pytest.mark.parametrize("exact_max", [16_384, 0])
def test_hnsw_with_clustered_tombstones_still_returns_k(monkeypatch, exact_max: int) -> None:
    """Deleting most of one cluster (below the compaction threshold) must not leave queries
    near it short: the walk is widened, then answered exactly."""
    monkeypatch.setattr(index_filters, "FILTER_EXACT_MAX_ROWS", exact_max)
    rng = np.random.default_rng(0)
    n, d = 6000, 32
    centres = rng.standard_normal((5, d)) * 3
    label = np.arange(n) % 5
    x = unit(centres[label] + rng.standard_normal((n, d)))
    idx = VectorIndex("hnsw", d, IndexParams(ef_search=16))
    fids = encode_fids(np.arange(n), np.full(n, MODALITY_CODE["text"]))
    idx.add(x, fids)
    gone = fids[label == 0][:1150]  # 19% tombstones, all in one cluster
    idx.remove(gone)
    _, ids = idx.search(x[label == 0][:20], K)
    assert (ids >= 0).all(), "queries near the deleted cluster came back short"
    assert not set(ids.ravel()) & set(gone)
