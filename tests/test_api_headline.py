"""The product's headline, end to end over HTTP on real CLIP embeddings (COCO val2017, ViT-B/16):
in a collection mixing images, texts and documents, a caption's raw search returns texts first
(the modality gap) while the gap-corrected search finds the caption's own image in the top 10.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import Settings

FIXTURE = Path(__file__).parent / "fixtures" / "coco_val2017_clip_vitb16_dev250.npz"
N_DOC = 100  # pairs stored as documents: what the transform is fitted on
N_TXT = 175  # captions 100..174 stored as text items; 175..249 are the queries
K = 10


@pytest.fixture(scope="module")
def coco_client(tmp_path_factory: pytest.TempPathFactory):
    data = np.load(FIXTURE)
    img, txt = data["image"], data["text"]
    settings = Settings(_env_file=None, model="none", data_dir=tmp_path_factory.mktemp("coco"))  # type: ignore[call-arg]
    with TestClient(create_app(settings)) as client:
        assert client.post("/v1/collections", json={"name": "coco"}).status_code == 201
        items = [
            {
                "id": f"doc-{i}",
                "image_vector": img[i].tolist(),
                "text_vector": txt[i].tolist(),
                "text": f"caption {i}",
            }
            for i in range(N_DOC)
        ]
        items += [
            {"id": f"img-{i}", "vector": img[i].tolist(), "modality": "image"}
            for i in range(N_DOC, 250)
        ]
        items += [
            {"id": f"txt-{i}", "vector": txt[i].tolist(), "modality": "text", "text": f"c{i}"}
            for i in range(N_DOC, N_TXT)
        ]
        r = client.post("/v1/collections/coco/items", json={"items": items})
        assert r.status_code == 200 and r.json()["added"] == 250 + N_TXT - N_DOC
        yield client, img, txt


def _search(client: TestClient, txt: np.ndarray, corrected: bool) -> list[list[dict]]:
    queries = [{"vector": txt[i].tolist(), "modality": "text"} for i in range(N_TXT, 250)]
    r = client.post(
        "/v1/collections/coco/search", json={"queries": queries, "k": K, "corrected": corrected}
    )
    assert r.status_code == 200, r.text
    return r.json()["batches"]


def test_corrected_search_finds_the_paired_image_raw_search_returns_texts(coco_client) -> None:
    client, _, txt = coco_client
    raw_before = _search(client, txt, corrected=True)  # no transform yet: corrected == raw
    assert raw_before == _search(client, txt, corrected=False)

    r = client.post(
        "/v1/collections/coco/transform", json={"method": "centering", "wait_seconds": 60}
    )
    assert r.status_code == 200 and r.json()["status"] == "active", r.text

    raw = _search(client, txt, corrected=False)
    corrected = _search(client, txt, corrected=True)
    assert raw == raw_before  # raw search is untouched by the transform
    qids = list(range(N_TXT, 250))
    paired = lambda res: [  # noqa: E731
        f"img-{q}" in [h["id"] for h in hits] for q, hits in zip(qids, res, strict=True)
    ]
    text_first = lambda res: [hits[0]["modality"] == "text" for hits in res]  # noqa: E731

    # Raw: the gap puts texts above every image; the caption's own image is not in the top 10.
    assert np.mean(text_first(raw)) >= 0.9
    assert np.mean(paired(raw)) <= 0.05
    # Corrected: the paired image is in the top 10 for most captions.
    assert np.mean(paired(corrected)) >= 0.5
    assert np.mean(text_first(corrected)) <= 0.6
    # ... and for a given caption, both statements hold at once.
    both = [
        q
        for q, p, t in zip(qids, paired(corrected), text_first(raw), strict=True)
        if p and t and not paired(raw)[qids.index(q)]
    ]
    assert len(both) >= 0.4 * len(qids)
    q = both[0]
    one = {"query": {"vector": txt[q].tolist(), "modality": "text"}, "k": K}
    raw_hits = client.post("/v1/collections/coco/search", json={**one, "corrected": False}).json()
    cor_hits = client.post("/v1/collections/coco/search", json=one).json()
    assert raw_hits["results"][0]["modality"] == "text"
    assert f"img-{q}" not in [h["id"] for h in raw_hits["results"]]
    assert f"img-{q}" in [h["id"] for h in cor_hits["results"]]
    assert cor_hits["corrected"] and cor_hits["transform"] == "centering"


def test_gap_endpoint_shows_the_gap_closing(coco_client) -> None:
    client, _, _ = coco_client
    r = client.post(
        "/v1/collections/coco/transform", json={"method": "centering", "wait_seconds": 60}
    )
    assert r.status_code == 200
    gap = client.get("/v1/collections/coco/gap", params={"pca": True}).json()
    assert gap["transform"] == "centering" and not gap["paired"]
    assert gap["centroid_gap"]["corrected"] < 0.5 * gap["centroid_gap"]["raw"]
    for space in ("raw", "corrected"):
        p = gap["pca"][space]
        assert len(p["image"]) == 250 and len(p["text"]) == N_TXT
    raw_c = np.subtract(gap["pca"]["raw"]["image_centroid"], gap["pca"]["raw"]["text_centroid"])
    cor_c = np.subtract(
        gap["pca"]["corrected"]["image_centroid"], gap["pca"]["corrected"]["text_centroid"]
    )
    assert np.linalg.norm(cor_c) < 0.5 * np.linalg.norm(raw_c)
