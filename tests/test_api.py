"""HTTP API in vectors mode (``GAPFIX_MODEL=none``): every endpoint, the error envelope, auth,
limits, CORS and metrics, through FastAPI's TestClient on the real app and store."""

from __future__ import annotations

import base64
import io
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from service.app import create_app
from service.settings import Settings
from tests.milvus_server import store_uri

D = 32
KEY = "s3cret-key"


def unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def rand(n: int, d: int = D, seed: int = 0, shift: float = 0.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)).astype(np.float32)
    x[:, 0] += shift
    return unit(x)


def png_b64(size: tuple[int, int] = (40, 30), color: str = "red", mode: str = "RGB") -> str:
    buf = io.BytesIO()
    Image.new(mode, size, color).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


@contextmanager
def client_for(tmp_path: Path, **overrides: Any) -> Iterator[TestClient]:
    settings = Settings(_env_file=None, model="none", data_dir=tmp_path / "data", **overrides)  # type: ignore[call-arg]
    with TestClient(create_app(settings)) as client:
        yield client


def drop_all_milvus(uri: str) -> None:
    """Empty the test Milvus server (every collection, ``gapfix_meta`` included)."""
    from gapfix.store.milvus.conn import connect, parse_store_uri

    mc = connect(parse_store_uri(uri), timeout=30.0)  # a loaded machine: Milvus Lite is slow
    for name in mc.list_collections():
        mc.drop_collection(name)
    mc.close()


@pytest.fixture(params=["embedded", "milvus"])
def client(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[TestClient]:
    """The API on each store backend: embedded (SQLite + FAISS) and Milvus (Milvus Lite)."""
    if request.param == "embedded":
        with client_for(tmp_path) as c:
            yield c
        return
    uri = store_uri(request.getfixturevalue("milvus_uri"))
    drop_all_milvus(uri)
    try:
        with client_for(tmp_path, store=uri) as c:
            assert type(c.app.state.gapfix.store).__name__ == "MilvusStore"
            yield c
    finally:
        drop_all_milvus(uri)


def assert_error(r, status: int, type_: str | None = None, param: str | None = None) -> dict:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"type", "message", "param"}, body
    assert body["error"]["message"]
    if type_ is not None:
        assert body["error"]["type"] == type_, body
    if param is not None:
        assert body["error"]["param"] == param, body
    return body["error"]


def add_gapped(client: TestClient, name: str = "c", n: int = 30) -> tuple[np.ndarray, np.ndarray]:
    """Images and texts in two offset cones, plus n documents (pairs), in collection ``name``."""
    img, txt = rand(n, seed=1, shift=2.0), rand(n, seed=2, shift=-2.0)
    pair_txt = unit(img + 0.3 * rand(n, seed=3) - np.eye(D, dtype=np.float32)[0] * 4)
    items = (
        [{"id": f"i{k}", "vector": img[k].tolist(), "modality": "image"} for k in range(n)]
        + [
            {"id": f"t{k}", "vector": txt[k].tolist(), "modality": "text", "text": f"caption {k}"}
            for k in range(n)
        ]
        + [
            {
                "id": f"d{k}",
                "image_vector": img[k].tolist(),
                "text_vector": pair_txt[k].tolist(),
                "text": f"doc {k}",
                "metadata": {"k": k},
            }
            for k in range(n)
        ]
    )
    assert client.post("/v1/collections", json={"name": name}).status_code == 201
    r = client.post(f"/v1/collections/{name}/items", json={"items": items})
    assert r.status_code == 200, r.text
    assert r.json()["added"] == 3 * n
    return img, txt


# ------------------------------------------------------------------------------ health
def test_health_ready_info(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    r = client.get("/readyz")
    assert r.status_code == 200 and r.json()["status"] == "ready" and r.json()["vectors_mode"]
    info = client.get("/v1/info").json()
    assert info["model"] is None and info["vectors_mode"] is True
    assert info["auth"] == {"writes": False, "reads": False}
    assert client.get("/openapi.json").json()["info"]["title"] == "gapfix"
    assert client.get("/docs").status_code == 200


def test_open_service_warns_loudly(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("WARNING"), client_for(tmp_path):
        pass
    assert "NO API KEY CONFIGURED" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"), client_for(tmp_path, api_keys=KEY):
        pass
    assert "NO API KEY" not in caplog.text


# ------------------------------------------------------------------------------ collections
def test_collections_lifecycle(client: TestClient) -> None:
    r = client.post("/v1/collections", json={"name": "photos", "index": "hnsw"})
    assert r.status_code == 201, r.text
    info = r.json()
    assert info["name"] == "photos" and info["index"] == "hnsw" and info["dim"] is None
    assert info["counts"] == {"image": 0, "text": 0, "document": 0}
    assert info["transform"] is None and info["transform_status"] == "active"
    assert_error(client.post("/v1/collections", json={"name": "photos"}), 409, "conflict", "name")
    assert_error(client.post("/v1/collections", json={"name": "bad name!"}), 422, param="name")
    assert_error(client.post("/v1/collections", json={"name": "x", "index": "lsh"}), 422)
    assert_error(
        client.post("/v1/collections", json={"name": "x", "index_params": {"bogus": 1}}), 400
    )
    client.post("/v1/collections", json={"name": "other", "dim": D})
    listed = client.get("/v1/collections").json()["collections"]
    assert [c["name"] for c in listed] == ["other", "photos"]
    assert listed[0]["dim"] == D
    assert client.get("/v1/collections/photos").json()["index"] == "hnsw"
    assert client.delete("/v1/collections/photos").json() == {"deleted": "photos"}
    assert_error(client.get("/v1/collections/photos"), 404, "not_found", "collection")
    assert_error(client.delete("/v1/collections/photos"), 404, "not_found")


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/v1/collections/nope/items", {"items": [{"id": "a", "vector": [1.0]}]}),
        ("GET", "/v1/collections/nope/items/a", None),
        ("GET", "/v1/collections/nope/items/a/thumbnail", None),
        ("DELETE", "/v1/collections/nope/items/a", None),
        ("POST", "/v1/collections/nope/search", {"query": {"id": "a"}}),
        ("GET", "/v1/collections/nope/gap", None),
        ("GET", "/v1/collections/nope/transform", None),
        ("POST", "/v1/collections/nope/transform", {"method": "centering"}),
        ("POST", "/v1/correct", {"modality": "text", "vectors": [[1.0]], "collection": "nope"}),
    ],
)
def test_unknown_collection_is_404(client: TestClient, method: str, path: str, body) -> None:
    if body is not None and "items" in body:
        body["items"][0]["modality"] = "text"
    assert_error(client.request(method, path, json=body), 404, "not_found")


# ------------------------------------------------------------------------------ items
def test_items_add_get_upsert_delete(client: TestClient) -> None:
    client.post("/v1/collections", json={"name": "c"})
    v = rand(4)
    thumb_src = png_b64((600, 300))
    items = [
        {"id": "img", "vector": v[0].tolist(), "modality": "image", "image": thumb_src},
        {"id": "cap", "vector": v[1].tolist(), "modality": "text", "text": "a red square"},
        {
            "id": "doc",
            "image_vector": v[2].tolist(),
            "text_vector": v[3].tolist(),
            "text": "été ☀",
            "weight": 0.7,
            "metadata": {"url": "http://x/1.jpg", "tags": ["a", "b"]},
        },
    ]
    r = client.post("/v1/collections/c/items", json={"items": items})
    assert r.status_code == 200 and r.json() == {
        "added": 3,
        "replaced": 0,
        "ids": ["img", "cap", "doc"],
    }
    doc = client.get("/v1/collections/c/items/doc", params={"vectors": True}).json()
    assert doc["modality"] == "document" and doc["text"] == "été ☀"
    assert doc["metadata"] == {"url": "http://x/1.jpg", "tags": ["a", "b"]}
    assert doc["weight"] == pytest.approx(0.7) and not doc["has_thumbnail"]
    assert np.allclose(doc["vectors"]["image"], v[2], atol=1e-6)
    assert np.allclose(doc["vectors"]["text"], v[3], atol=1e-6)
    cap = client.get("/v1/collections/c/items/cap").json()
    assert cap["text"] == "a red square" and cap["vectors"] is None and cap["weight"] is None
    # thumbnail made from the uploaded image, even in vectors mode
    img = client.get("/v1/collections/c/items/img").json()
    assert img["has_thumbnail"] and img["text"] is None
    t = client.get("/v1/collections/c/items/img/thumbnail")
    assert t.status_code == 200 and t.headers["content-type"] == "image/jpeg"
    with Image.open(io.BytesIO(t.content)) as im:
        assert im.format == "JPEG" and max(im.size) == 256 and im.size == (256, 128)
    assert_error(client.get("/v1/collections/c/items/cap/thumbnail"), 404, "not_found")
    assert_error(client.get("/v1/collections/c/items/missing/thumbnail"), 404, "not_found")
    # duplicate -> 409 and nothing written; upsert replaces
    dup = [{"id": "new", "vector": v[0].tolist(), "modality": "text"}, items[1]]
    assert_error(client.post("/v1/collections/c/items", json={"items": dup}), 409, "conflict")
    assert_error(client.get("/v1/collections/c/items/new"), 404)
    dup[1] = {**items[1], "text": "a blue square"}
    r = client.post("/v1/collections/c/items", json={"items": dup, "upsert": True})
    assert r.json()["added"] == 1 and r.json()["replaced"] == 1
    assert client.get("/v1/collections/c/items/cap").json()["text"] == "a blue square"
    listed = client.get("/v1/collections/c/items", params={"limit": 2, "offset": 1}).json()
    assert listed["total"] == 4 and len(listed["items"]) == 2
    assert client.get("/v1/collections/c").json()["counts"] == {
        "image": 1,
        "text": 2,
        "document": 1,
    }
    assert client.delete("/v1/collections/c/items/img").json() == {"deleted": "img"}
    assert_error(client.get("/v1/collections/c/items/img"), 404, "not_found", "id")
    assert_error(client.delete("/v1/collections/c/items/img"), 404, "not_found")


def test_item_errors_leave_nothing_written(client: TestClient) -> None:
    client.post("/v1/collections", json={"name": "c", "dim": D})
    good = {"id": "ok", "vector": rand(1)[0].tolist(), "modality": "image"}
    post = lambda items: client.post("/v1/collections/c/items", json={"items": items})  # noqa: E731
    # dimension mismatch with the collection
    bad_dim = {"id": "b", "vector": [0.1, 0.2, 0.3], "modality": "text"}
    assert_error(post([good, bad_dim]), 400, "invalid_request", "items[1].text")
    # schema errors: 422 naming the field
    assert_error(post([{"id": "b", "vector": [1.0, 2.0]}]), 422, "validation_error", "items[0]")
    assert_error(post([{"id": "b"}]), 422, "validation_error")
    assert_error(post([{"id": "", "vector": [1.0], "modality": "text"}]), 422, param="items[0].id")
    assert_error(post([]), 422, param="items")
    e = assert_error(post([{**good, "extra": 1}]), 422, param="items[0].extra")
    assert "extra" in e["message"].lower()
    # NaN cannot even be sent as JSON; a zero vector is bad input
    assert_error(post([{"id": "z", "vector": [0.0] * D, "modality": "text"}]), 400)
    # bad base64 / undecodable image / image too big (decompression bomb)
    assert_error(post([{**good, "image": "not base64 !!"}]), 400, param="items[0].image")
    garbage = base64.b64encode(b"definitely not an image").decode()
    assert_error(post([{**good, "image": garbage}]), 400, param="items[0].image")
    bomb = png_b64((7000, 7000), color=1, mode="1")  # 49 Mpixel in a few kB of PNG
    assert len(bomb) < 100_000
    assert_error(post([{**good, "image": bomb}]), 413, "payload_too_large", "items[0].image")
    # texts/images without vectors need a model
    assert_error(post([{"id": "t", "text": "hello"}]), 400, "model_unavailable", "items[0].text")
    assert_error(post([{"id": "i", "image": png_b64()}]), 400, "model_unavailable")
    # invalid JSON
    r = client.post(
        "/v1/collections/c/items",
        content=b"{not json",
        headers={"content-type": "application/json"},
    )
    err = assert_error(r, 422, "validation_error", param="body")
    assert err["message"].startswith("request body is not valid JSON at character 1:")
    assert client.get("/v1/collections/c").json()["count"] == 0


def test_image_pixel_limit_setting(tmp_path: Path) -> None:
    with client_for(tmp_path, max_image_pixels=1000) as client:
        client.post("/v1/collections", json={"name": "c"})
        item = {"id": "a", "vector": rand(1)[0].tolist(), "modality": "image"}
        r = client.post("/v1/collections/c/items", json={"items": [{**item, "image": png_b64()}]})
        assert_error(r, 413, "payload_too_large", "items[0].image")
        small = png_b64((20, 20))
        r = client.post("/v1/collections/c/items", json={"items": [{**item, "image": small}]})
        assert r.status_code == 200


def test_images_per_request_limit(tmp_path: Path) -> None:
    with client_for(tmp_path, max_images_per_request=2) as client:
        client.post("/v1/collections", json={"name": "c"})
        img = png_b64((8, 8))
        items = [
            {
                "id": f"a{i}",
                "vector": rand(1, seed=i)[0].tolist(),
                "modality": "image",
                "image": img,
            }
            for i in range(3)
        ]
        r = client.post("/v1/collections/c/items", json={"items": items})
        assert_error(r, 413, "payload_too_large", "images")
        r = client.post("/v1/collections/c/items", json={"items": items[:2]})
        assert r.status_code == 200


# ------------------------------------------------------------------------------ search
def test_search_vector_id_batch_filters(client: TestClient) -> None:
    img, txt = add_gapped(client)
    q = {"vector": txt[0].tolist(), "modality": "text"}
    r = client.post("/v1/collections/c/search", json={"query": q, "k": 5})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["batches"] is None and body["corrected"] is False and body["transform"] is None
    hits = body["results"]
    assert len(hits) == 5 and hits[0]["id"] == "t0" and hits[0]["score"] == pytest.approx(1, 1e-5)
    assert hits[0]["text"] == "caption 0" and hits[0]["has_thumbnail"] is False
    assert set(hits[0]) == {"id", "score", "modality", "metadata", "text", "has_thumbnail"}
    scores = [h["score"] for h in hits]
    assert scores == sorted(scores, reverse=True)
    # modality filter
    r = client.post(
        "/v1/collections/c/search", json={"query": q, "k": 7, "modalities": ["document"]}
    )
    hits = r.json()["results"]
    assert len(hits) == 7 and {h["modality"] for h in hits} == {"document"}
    assert all(h["metadata"]["k"] == int(h["id"][1:]) for h in hits)
    # by id (itself excluded by default) and a batch mixing kinds
    r = client.post("/v1/collections/c/search", json={"query": {"id": "i3"}, "k": 3})
    assert "i3" not in [h["id"] for h in r.json()["results"]]
    r = client.post(
        "/v1/collections/c/search",
        json={"query": {"id": "i3"}, "k": 3, "exclude_self": False, "modalities": ["image"]},
    )
    assert r.json()["results"][0]["id"] == "i3"
    batch = [
        {"vector": img[1].tolist(), "modality": "image"},
        {"id": "t2"},
        {"vector": txt[4].tolist(), "modality": "text"},
    ]
    r = client.post("/v1/collections/c/search", json={"queries": batch, "k": 2})
    body = r.json()
    assert body["results"] is None and len(body["batches"]) == 3
    assert body["batches"][0][0]["id"] == "i1" and body["batches"][2][0]["id"] == "t4"
    assert all(len(b) == 2 for b in body["batches"])


def test_search_errors(client: TestClient) -> None:
    add_gapped(client, n=5)
    s = lambda body: client.post("/v1/collections/c/search", json=body)  # noqa: E731
    v = rand(1)[0].tolist()
    assert_error(
        s({"query": {"vector": [1.0, 2.0], "modality": "text"}}), 400, param="query.vector"
    )
    assert_error(s({"query": {"vector": v}}), 422, "validation_error")
    assert_error(s({"query": {"vector": v, "modality": "text", "id": "a"}}), 422)
    assert_error(s({"query": {"vector": v, "modality": "audio"}}), 422)
    assert_error(s({"query": {"id": "i0"}, "queries": [{"id": "i1"}]}), 422)
    assert_error(s({}), 422)
    assert_error(s({"query": {"id": "i0"}, "k": 0}), 422, param="k")
    assert_error(s({"query": {"id": "i0"}, "k": 5000}), 422, param="k")
    assert_error(s({"query": {"id": "i0"}, "modalities": ["video"]}), 422)
    assert_error(s({"query": {"id": "missing"}}), 404, "not_found", "id")
    assert_error(s({"query": {"text": "a dog"}}), 400, "model_unavailable", "query.text")
    assert_error(s({"queries": [{"id": "i0"}, {"image": "%%%"}]}), 400, "model_unavailable")
    assert_error(s({"query": {"vector": [0.0] * D, "modality": "text"}}), 400)


def test_search_limits_from_settings(tmp_path: Path) -> None:
    with client_for(tmp_path, max_k=3, max_queries_per_request=2) as client:
        add_gapped(client, n=5)
        s = lambda body: client.post("/v1/collections/c/search", json=body)  # noqa: E731
        assert_error(s({"query": {"id": "i0"}, "k": 4}), 400, param="k")
        assert s({"query": {"id": "i0"}, "k": 3}).status_code == 200
        three = [{"id": "i0"}, {"id": "i1"}, {"id": "i2"}]
        assert_error(s({"queries": three}), 413, "payload_too_large", "queries")


def test_search_empty_collection(client: TestClient) -> None:
    client.post("/v1/collections", json={"name": "e"})
    r = client.post(
        "/v1/collections/e/search", json={"query": {"vector": [1.0, 0.0], "modality": "text"}}
    )
    assert r.status_code == 200 and r.json()["results"] == []


# ------------------------------------------------------------------------------ transform, correct, gap
def test_transform_correct_gap(client: TestClient) -> None:
    _, txt = add_gapped(client)
    t0 = client.get("/v1/collections/c/transform").json()
    assert t0["status"] == "active" and t0["active"]["method"] is None
    gap0 = client.get("/v1/collections/c/gap").json()
    assert gap0["transform"] is None and gap0["pca"] is None
    assert gap0["raw"] == gap0["corrected"] and gap0["centroid_gap"]["raw"] > 0.5
    # correct with no transform = normalise only
    raw = (txt[:2] * 3).tolist()
    body = {"modality": "text", "vectors": raw, "collection": "c"}
    r = client.post("/v1/correct", json=body)
    assert r.status_code == 200 and r.json()["transform"] is None
    assert np.allclose(r.json()["vectors"], txt[:2], atol=1e-6)

    r = client.post("/v1/collections/c/transform", json={"method": "auto"})
    assert r.status_code == 200, r.text
    info = r.json()
    assert info["status"] == "active" and info["fingerprint"]
    assert info["active"]["method"] == "auto" and len(info["active"]["fit_table"]) >= 2
    assert client.get("/v1/collections/c/transform").json() == info
    assert client.get("/v1/collections").json()["collections"][0]["transform"] == "auto"

    r = client.post("/v1/correct", json=body)
    out = np.asarray(r.json()["vectors"])
    assert r.json()["transform"] == "auto" and out.shape == (2, D)
    assert np.allclose(np.linalg.norm(out, axis=1), 1, atol=1e-5)
    assert not np.allclose(out, txt[:2], atol=1e-3)
    assert_error(
        client.post("/v1/correct", json={**body, "vectors": [[1.0, 2.0]]}), 400, "invalid_request"
    )
    assert_error(client.post("/v1/correct", json={**body, "modality": "audio"}), 422)

    gap = client.get("/v1/collections/c/gap", params={"pca": True, "max_points": 50}).json()
    assert gap["transform"] == "auto" and gap["counts"]["document"] == 30
    assert gap["centroid_gap"]["corrected"] < gap["centroid_gap"]["raw"]
    for space in ("raw", "corrected"):
        p = gap["pca"][space]
        assert len(p["image"]) == 50 and len(p["text"]) == 50 and len(p["image"][0]) == 2
    assert gap["pca"]["raw"] != gap["pca"]["corrected"]

    # corrected vs raw search differ; raw search is what it was before the transform
    q = {"query": {"vector": txt[0].tolist(), "modality": "text"}, "k": 10}
    raw_hits = client.post("/v1/collections/c/search", json={**q, "corrected": False}).json()
    cor_hits = client.post("/v1/collections/c/search", json=q).json()
    assert raw_hits["corrected"] is False and cor_hits["corrected"] is True
    assert cor_hits["transform"] == "auto"
    assert [h["id"] for h in raw_hits["results"]] != [h["id"] for h in cor_hits["results"]]

    # remove the transform: corrected = raw again
    r = client.delete("/v1/collections/c/transform")
    assert r.status_code == 200 and r.json()["active"]["method"] is None
    again = client.post("/v1/collections/c/search", json=q).json()
    assert [h["id"] for h in again["results"]] == [h["id"] for h in raw_hits["results"]]


def test_transform_rebuilding_then_active(client: TestClient) -> None:
    add_gapped(client, n=40)
    r = client.post("/v1/collections/c/transform", json={"method": "centering", "wait_seconds": 0})
    assert r.status_code in (200, 202), r.text
    assert r.json()["status"] == ("active" if r.status_code == 200 else "rebuilding")
    deadline = time.monotonic() + 30
    while client.get("/v1/collections/c/transform").json()["status"] != "active":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert client.get("/v1/collections/c/transform").json()["active"]["method"] == "centering"


def test_transform_errors(client: TestClient) -> None:
    client.post("/v1/collections", json={"name": "c"})
    t = lambda body: client.post("/v1/collections/c/transform", json=body)  # noqa: E731
    assert_error(t({"method": "nonsense"}), 422, param="method")
    assert_error(t({"method": "auto", "objective": "nope"}), 422, param="objective")
    assert_error(t({"method": "auto"}), 400, "invalid_request", "method")  # no data
    client.post(
        "/v1/collections/c/items",
        json={
            "items": [
                {"id": f"{m}{i}", "vector": rand(1, seed=i)[0].tolist(), "modality": m}
                for i in range(3)
                for m in ("image", "text")
            ]
        },
    )
    assert_error(t({"method": "procrustes"}), 400, param="method")  # paired: needs documents
    assert_error(t({"method": "centering", "params": {"bogus": 1}}), 400)
    assert_error(t({"method": "auto", "objective": "zeroshot"}), 400, param="objective")
    assert t({"method": "mean-shift"}).json()["status"] == "active"


# ------------------------------------------------------------------------------ errors, auth, limits
def test_error_envelope_for_framework_errors(client: TestClient) -> None:
    assert_error(client.get("/v1/nothing-here"), 404, "not_found")
    assert_error(client.put("/v1/collections"), 405, "method_not_allowed")
    assert_error(client.post("/v1/collections", json=[1, 2]), 422, "validation_error")
    assert_error(
        client.post("/v1/embed", content=b"x", headers={"content-type": "text/plain"}),
        415,
        "unsupported_media_type",
    )
    assert_error(client.post("/v1/embed", content=b"{bad"), 422, "validation_error")
    assert_error(client.post("/v1/embed", json={"texts": []}), 400, param="texts")
    assert_error(client.post("/v1/embed", json={"texts": ["a"]}), 400, "model_unavailable")
    client.post("/v1/collections", json={"name": "c"})
    assert_error(client.get("/v1/collections/c/items", params={"limit": 0}), 422, param="limit")


def test_api_keys(tmp_path: Path) -> None:
    keyfile = tmp_path / "keys.txt"
    keyfile.write_text("# comment\nfile-key\n")
    with client_for(tmp_path, api_keys=f"{KEY}, other", api_keys_file=keyfile) as client:
        assert client.get("/v1/info").json()["auth"] == {"writes": True, "reads": False}
        body = {"name": "c"}
        e = assert_error(client.post("/v1/collections", json=body), 401, "unauthorized")
        assert e["param"] == "Authorization"
        r = client.post("/v1/collections", json=body, headers={"Authorization": "Bearer nope"})
        assert_error(r, 401, "unauthorized")
        assert r.headers["www-authenticate"].startswith("Bearer")
        r = client.post("/v1/collections", json=body, headers={"Authorization": f"Basic {KEY}"})
        assert_error(r, 401)
        for key in (KEY, "other", "file-key"):
            r = client.post(
                "/v1/collections", json={"name": key}, headers={"Authorization": f"Bearer {key}"}
            )
            assert r.status_code == 201, r.text
        # writes need a key (401 before 404), reads are open by default
        assert_error(client.delete("/v1/collections/nope"), 401)
        assert_error(client.post("/v1/collections/other/items", json={"items": []}), 401)
        assert_error(client.post("/v1/collections/other/transform", json={"method": "auto"}), 401)
        assert_error(client.delete("/v1/collections/other/transform"), 401)
        assert_error(client.delete("/v1/collections/other/items/x"), 401)
        assert client.get("/v1/collections").status_code == 200
        assert client.get("/v1/collections/other/gap").status_code == 200
        r = client.post("/v1/collections/other/search", json={"query": {"id": "x"}})
        assert_error(r, 404)  # past auth
        assert client.get("/healthz").status_code == 200


def test_protected_reads(tmp_path: Path) -> None:
    with client_for(tmp_path, api_keys=KEY, protect_reads=True) as client:
        auth = {"Authorization": f"Bearer {KEY}"}
        client.post("/v1/collections", json={"name": "c"}, headers=auth)
        for method, path, body in [
            ("GET", "/v1/collections", None),
            ("GET", "/v1/collections/c", None),
            ("GET", "/v1/collections/c/gap", None),
            ("GET", "/v1/collections/c/transform", None),
            ("GET", "/v1/collections/c/items", None),
            ("POST", "/v1/collections/c/search", {"query": {"id": "x"}}),
            ("POST", "/v1/embed", {"texts": ["a"]}),
            ("POST", "/v1/correct", {"modality": "text", "vectors": [[1.0]], "collection": "c"}),
            ("GET", "/v1/info", None),
        ]:
            assert_error(client.request(method, path, json=body), 401, "unauthorized")
            r = client.request(method, path, json=body, headers=auth)
            assert r.status_code != 401, (path, r.text)
        assert client.get("/healthz").status_code == 200
        assert client.get("/readyz").status_code == 200
        info = client.get("/v1/info", headers=auth).json()
        assert info["auth"] == {"writes": True, "reads": True}


def test_body_limit(tmp_path: Path) -> None:
    with client_for(tmp_path, max_body_bytes=4096) as client:
        client.post("/v1/collections", json={"name": "c"})
        big = {"items": [{"id": "a", "vector": [0.5] * 2000, "modality": "text"}]}
        assert_error(client.post("/v1/collections/c/items", json=big), 413, "payload_too_large")

        def chunks() -> Iterator[bytes]:  # no Content-Length: counted while streaming
            yield b'{"items": [{"id": "a", "modality": "text", "vector": ['
            for _ in range(500):
                yield b"0.5, 0.5, 0.5, "
            yield b"0.5]}]}"

        r = client.post(
            "/v1/collections/c/items",
            content=chunks(),
            headers={"content-type": "application/json"},
        )
        assert "content-length" not in r.request.headers
        assert_error(r, 413, "payload_too_large")
        small = {"items": [{"id": "a", "vector": [0.5] * 8, "modality": "text"}]}
        assert client.post("/v1/collections/c/items", json=small).status_code == 200
        assert client.get("/v1/collections/c").json()["count"] == 1


def test_cors_off_by_default_and_configurable(tmp_path: Path) -> None:
    preflight = {
        "Origin": "https://app.example",
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type",
    }
    with client_for(tmp_path) as client:
        r = client.get("/v1/collections", headers={"Origin": "https://app.example"})
        assert "access-control-allow-origin" not in r.headers
        r = client.options("/v1/collections", headers=preflight)
        assert "access-control-allow-origin" not in r.headers
    with client_for(tmp_path, cors_origins="https://app.example") as client:
        r = client.options("/v1/collections", headers=preflight)
        assert r.status_code == 200
        assert r.headers["access-control-allow-origin"] == "https://app.example"
        r = client.get("/v1/collections", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in r.headers


def _samples(text: str, name: str) -> dict[tuple, float]:
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == name:
                out[tuple(sorted(s.labels.items()))] = s.value
    return out


def test_metrics_use_route_templates(client: TestClient) -> None:
    add_gapped(client, name="metricsc", n=5)
    for item in ("i0", "i1", "t2"):
        client.get(f"/v1/collections/metricsc/items/{item}")
    client.get("/v1/collections/metricsc/items/zzz")
    client.post("/v1/collections/metricsc/search", json={"query": {"id": "i0"}})
    client.get("/no/such/route/123")
    text = client.get("/metrics").text
    reqs = _samples(text, "gapfix_http_requests_total")
    item_route = "/v1/collections/{collection}/items/{item_id}"
    ok = (("method", "GET"), ("route", item_route), ("status", "200"))
    assert reqs[ok] >= 3
    assert reqs[(("method", "GET"), ("route", item_route), ("status", "404"))] >= 1
    assert all("i0" not in dict(k)["route"] and "123" not in dict(k)["route"] for k in reqs)
    assert any(dict(k)["route"] == "unmatched" for k in reqs)
    lat = _samples(text, "gapfix_http_request_duration_seconds_count")
    assert lat[(("method", "GET"), ("route", item_route))] >= 4
    stages = _samples(text, "gapfix_stage_duration_seconds_count")
    assert stages[(("stage", "search"),)] >= 1
    assert {dict(k)["stage"] for k in stages} >= {"encode_pre", "encode_core", "correct"}
    items = _samples(text, "gapfix_collection_items")
    assert items[(("collection", "metricsc"), ("modality", "document"))] == 5
    gap = _samples(text, "gapfix_collection_gap")
    assert gap[(("collection", "metricsc"), ("space", "raw"))] > 0


def test_metrics_count_body_limit_rejections(tmp_path: Path) -> None:
    with client_for(tmp_path, max_body_bytes=1024) as client:
        client.post("/v1/collections", json={"name": "c"})
        client.post("/v1/collections/c/items", content=b"x" * 5000)
        text = client.get("/metrics").text
    reqs = _samples(text, "gapfix_http_requests_total")
    key = (("method", "POST"), ("route", "/v1/collections/{collection}/items"), ("status", "413"))
    assert reqs[key] >= 1


def test_gap_pca_pairs_documents(client: TestClient) -> None:
    client.post("/v1/collections", json={"name": "docs"})
    img, txt = rand(12, seed=5, shift=2.0), rand(12, seed=6, shift=-2.0)
    items = [
        {"id": f"d{k}", "image_vector": img[k].tolist(), "text_vector": txt[k].tolist()}
        for k in range(12)
    ]
    client.post("/v1/collections/docs/items", json={"items": items})
    gap = client.get("/v1/collections/docs/gap", params={"pca": True}).json()
    assert gap["paired"] is True
    p = gap["pca"]["raw"]
    assert p["paired"] is True and len(p["image"]) == len(p["text"]) == 12
    assert gap["pca"]["corrected"] == p  # no transform: the same picture
    empty = client.post("/v1/collections", json={"name": "empty"})
    assert empty.status_code == 201
    gap = client.get("/v1/collections/empty/gap", params={"pca": True}).json()
    assert gap["pca"] is None and gap["raw"] is None and gap["note"]


def test_item_ids_with_slashes_are_reachable(client) -> None:
    """`gapfix embed` on a folder makes ids like 'sub/dir/img.jpg'; every item route reaches them."""
    client.post("/v1/collections", json={"name": "paths", "index": "flat"})
    vec = [1.0] + [0.0] * 7
    r = client.post(
        "/v1/collections/paths/items",
        json={"items": [{"id": "sub/dir/a.jpg", "vector": vec, "modality": "image"}]},
    )
    assert r.status_code in (200, 201), r.text
    r = client.get("/v1/collections/paths/items/sub/dir/a.jpg")
    assert r.status_code == 200 and r.json()["id"] == "sub/dir/a.jpg"
    r = client.get("/v1/collections/paths/items/sub%2Fdir%2Fa.jpg")
    assert r.status_code == 200 and r.json()["id"] == "sub/dir/a.jpg"
    r = client.get("/v1/collections/paths/items/sub/dir/a.jpg/thumbnail")
    assert r.status_code == 404 and r.json()["error"]["param"] == "item_id"
    assert client.delete("/v1/collections/paths/items/sub/dir/a.jpg").status_code == 200
    assert client.get("/v1/collections/paths/items/sub/dir/a.jpg").status_code == 404


def test_search_names_the_space_it_searched(client: TestClient) -> None:
    """A transform removed between a search's start and its FAISS call: the response says raw."""
    _, txt = add_gapped(client, n=20)
    r = client.post("/v1/collections/c/transform", json={"method": "centering"})
    assert r.status_code == 200 and r.json()["status"] == "active", r.text
    state = client.app.state.gapfix
    q = {"query": {"vector": txt[0].tolist(), "modality": "text"}, "k": 5}
    corrected = client.post("/v1/collections/c/search", json=q).json()
    raw = client.post("/v1/collections/c/search", json={**q, "corrected": False}).json()
    assert corrected["corrected"] is True and corrected["transform"] == "centering"
    search = state.searcher.search

    async def switch_then_search(coll, *args):
        coll.set_transform(None)  # another request removes the transform meanwhile
        return await search(coll, *args)

    state.searcher.search = switch_then_search
    try:
        during = client.post("/v1/collections/c/search", json=q).json()
    finally:
        state.searcher.search = search
    assert [h["id"] for h in during["results"]] == [h["id"] for h in raw["results"]]
    assert during["corrected"] is False and during["transform"] is None


def test_bad_auto_params_are_refused_before_a_fit_starts(client: TestClient) -> None:
    add_gapped(client, n=20)
    url = "/v1/collections/c/transform"
    bad = {"method": "auto", "params": {"objective": "nope"}, "wait_seconds": 0}
    assert_error(client.post(url, json=bad), 400)
    bad = {"method": "auto", "params": {"methods": ["centering", "nope"]}, "wait_seconds": 0}
    assert "nope" in assert_error(client.post(url, json=bad), 400)["message"]
    assert client.get(url).json()["status"] == "active"  # nothing started, nothing failed
    ok = {"method": "auto", "params": {"methods": ["centering"], "folds": 2, "repeats": 1}}
    r = client.post(url, json=ok)
    assert r.status_code == 200 and r.json()["active"]["method"] == "auto", r.text


def test_a_body_that_is_not_json_is_415(client: TestClient) -> None:
    r = client.post(
        "/v1/collections", content=b'{"name": "x1"}', headers={"Content-Type": "text/plain"}
    )
    assert_error(r, 415, "unsupported_media_type", "body")
    r = client.post("/v1/collections/x1/search", data={"k": "3"})  # a form, as curl -d sends
    assert_error(r, 415, "unsupported_media_type", "body")
    for ctype in ("application/json; charset=utf-8", "application/merge-patch+json"):
        r = client.post(
            "/v1/collections", content=b'{"name": "x1"}', headers={"Content-Type": ctype}
        )
        assert r.status_code in (201, 409), r.text
    r = client.post("/v1/collections", content=b'{"name": "x2"}')  # no Content-Type
    assert_error(r, 415, "unsupported_media_type", "body")
    schema = client.get("/openapi.json").json()
    assert "415" in schema["paths"]["/v1/collections"]["post"]["responses"]
    assert "415" not in schema["paths"]["/v1/collections"]["get"]["responses"]


def test_multipart_embed_over_the_part_limits_is_413(client: TestClient) -> None:
    s = client.app.state.gapfix.settings
    parts = [("texts", (None, f"t{i}")) for i in range(s.max_texts_per_request + 20)]
    r = client.post("/v1/embed", files=parts)
    assert "too many parts" in assert_error(r, 413, "payload_too_large", "body")["message"]


def test_openapi_documents_the_error_envelope_for_422(client: TestClient) -> None:
    """Every 422 the schema declares is the envelope the service sends, never FastAPI's
    default ``{"detail": [...]}``."""
    import json

    schema = client.get("/openapi.json").json()
    assert "HTTPValidationError" not in json.dumps(schema)
    op = schema["paths"]["/v1/collections/{collection}/items/{item_id}"]["get"]
    assert "422" in op["responses"]
    client.post("/v1/collections", json={"name": "c"})
    r = client.get("/v1/collections/c/items/i1?vectors=maybe")
    assert_error(r, 422, "validation_error")
