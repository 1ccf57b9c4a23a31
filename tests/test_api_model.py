"""HTTP API with a model loaded: the tiny random open_clip model (``gapfix-tiny``, 32-d).

Embedding (JSON and multipart), ingest of texts, images and documents (thumbnails), search by
text/image, per-request limits, micro-batching of concurrent requests, readiness on a
dimension mismatch.
"""

from __future__ import annotations

import base64
import io
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from service.app import create_app
from service.settings import Settings

DIM = 32  # gapfix-tiny's embedding dimension


def png(color: str | tuple[int, int, int], size: tuple[int, int] = (64, 48)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def settings(data_dir: Path, **kw) -> Settings:
    base = {"model": "gapfix-tiny", "pretrained": "none", "device": "cpu", "data_dir": data_dir}
    return Settings(_env_file=None, **{**base, **kw})  # type: ignore[call-arg]


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    data = tmp_path_factory.mktemp("model-api")
    app = create_app(settings(data, max_texts_per_request=8, batch_wait_ms=100))
    with TestClient(app) as c:
        yield c


def err(r, status: int, param: str | None = None) -> dict:
    assert r.status_code == status, r.text
    e = r.json()["error"]
    if param is not None:
        assert e["param"] == param, e
    return e


def test_ready_with_model(client: TestClient) -> None:
    ready = client.get("/readyz").json()
    assert ready["status"] == "ready" and ready["model"] == "gapfix-tiny/none"
    assert ready["dim"] == DIM and not ready["vectors_mode"]
    info = client.get("/v1/info").json()
    assert info["dim"] == DIM and info["model"] == "gapfix-tiny/none"


def test_embed_json_matches_the_encoder(client: TestClient) -> None:
    texts = ["a dog on a beach", "two cats", ""]
    images = [png("red"), png((0, 200, 30), (20, 90))]
    r = client.post("/v1/embed", json={"texts": texts, "images": [b64(i) for i in images]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "gapfix-tiny/none" and body["dim"] == DIM
    assert body["corrected"] is False and body["transform"] is None
    tv, iv = np.asarray(body["texts"]), np.asarray(body["images"])
    assert tv.shape == (3, DIM) and iv.shape == (2, DIM)
    assert np.allclose(np.linalg.norm(tv, axis=1), 1, atol=1e-5)
    enc = client.app.state.gapfix.encoder
    assert np.allclose(tv, enc.encode_texts(texts), atol=1e-5)
    assert np.allclose(iv, enc.encode_images(images), atol=1e-5)
    # a data: URL prefix and URL-safe base64 are accepted too
    url = "data:image/png;base64," + base64.urlsafe_b64encode(images[0]).decode()
    r2 = client.post("/v1/embed", json={"images": [url]})
    assert np.allclose(r2.json()["images"][0], iv[0], atol=1e-5)


def test_embed_multipart(client: TestClient) -> None:
    images = [png("blue"), png("yellow")]
    r = client.post(
        "/v1/embed",
        data={"texts": ["a blue square", "yellow"]},
        files=[("images", ("a.png", images[0], "image/png")), ("images", ("b.png", images[1]))],
    )
    assert r.status_code == 200, r.text
    body = r.json()
    enc = client.app.state.gapfix.encoder
    assert np.allclose(body["images"], enc.encode_images(images), atol=1e-5)
    assert np.allclose(body["texts"], enc.encode_texts(["a blue square", "yellow"]), atol=1e-5)
    bad = client.post("/v1/embed", files=[("images", ("x.png", b"not an image"))])
    err(bad, 400, "images[0]")
    err(client.post("/v1/embed", data={"bogus": "1"}, files=[("images", ("a", images[0]))]), 422)


def test_embed_errors(client: TestClient) -> None:
    err(client.post("/v1/embed", json={"images": ["@@not-base64@@"]}), 400, "images[0]")
    err(client.post("/v1/embed", json={"images": [b64(b"GIF89a-truncated")]}), 400, "images[0]")
    buf = io.BytesIO()
    Image.new("1", (8000, 8000)).save(buf, format="PNG")  # 64 Mpixel > 40 Mpixel default
    e = err(client.post("/v1/embed", json={"images": [b64(buf.getvalue())]}), 413, "images[0]")
    assert e["type"] == "payload_too_large"
    e = err(client.post("/v1/embed", json={"texts": ["t"] * 9}), 413, "texts")
    assert "8" in e["message"]
    err(client.post("/v1/embed", json={"texts": ["a"], "corrected": True}), 400, "collection")
    r = client.post("/v1/embed", json={"texts": ["a"], "corrected": True, "collection": "zz"})
    err(r, 404)
    err(client.post("/v1/embed", json={"texts": "not a list"}), 422, "texts")


def test_ingest_and_search_texts_images_documents(client: TestClient) -> None:
    r = client.post("/v1/collections", json={"name": "m"})
    assert r.status_code == 201 and r.json()["dim"] == DIM
    err(client.post("/v1/collections", json={"name": "m2", "dim": 16}), 400, "dim")
    colors = {"red": "a red square", "green": "a green square", "blue": "a blue square"}
    items = []
    for color, caption in colors.items():
        items.append({"id": f"img-{color}", "image": b64(png(color, (640, 480)))})
        items.append({"id": f"txt-{color}", "text": caption, "metadata": {"color": color}})
        items.append(
            {"id": f"doc-{color}", "image": b64(png(color)), "text": caption, "weight": 0.3}
        )
    r = client.post("/v1/collections/m/items", json={"items": items})
    assert r.status_code == 200, r.text
    info = client.get("/v1/collections/m").json()
    assert info["counts"] == {"image": 3, "text": 3, "document": 3}
    # stored vectors are the model's embeddings
    enc = client.app.state.gapfix.encoder
    item = client.get("/v1/collections/m/items/doc-red", params={"vectors": True}).json()
    assert item["text"] == "a red square" and item["has_thumbnail"]
    assert np.allclose(item["vectors"]["text"], enc.encode_texts(["a red square"])[0], atol=1e-5)
    assert np.allclose(item["vectors"]["image"], enc.encode_images([png("red")])[0], atol=1e-5)
    thumb = client.get("/v1/collections/m/items/img-red/thumbnail")
    with Image.open(io.BytesIO(thumb.content)) as im:
        assert im.format == "JPEG" and im.size == (256, 192)
        assert im.convert("RGB").getpixel((10, 10))[0] > 200  # still red
    err(client.get("/v1/collections/m/items/txt-red/thumbnail"), 404)
    # search by text: the identical caption's text item comes first
    r = client.post("/v1/collections/m/search", json={"query": {"text": "a green square"}})
    hits = r.json()["results"]
    assert hits[0]["id"] == "txt-green" and hits[0]["score"] == pytest.approx(1, abs=1e-4)
    assert hits[0]["text"] == "a green square" and hits[0]["metadata"] == {"color": "green"}
    # by image: the same picture (other size) ranks the image items of that colour first
    r = client.post(
        "/v1/collections/m/search",
        json={"query": {"image": b64(png("blue", (100, 100)))}, "modalities": ["image"], "k": 1},
    )
    assert r.json()["results"][0]["id"] == "img-blue"
    assert r.json()["results"][0]["has_thumbnail"] is True
    # a batch of text, image and id queries
    r = client.post(
        "/v1/collections/m/search",
        json={
            "queries": [
                {"text": "a red square"},
                {"image": b64(png("red"))},
                {"id": "doc-blue"},
            ],
            "k": 3,
        },
    )
    b = r.json()["batches"]
    assert b[0][0]["id"] == "txt-red" and len(b) == 3 and all(len(x) == 3 for x in b)
    # vectors of the wrong dimension
    bad = {"id": "v", "vector": [0.1] * 8, "modality": "image"}
    err(client.post("/v1/collections/m/items", json={"items": [bad]}), 400, "items[0].image")
    err(
        client.post(
            "/v1/collections/m/search", json={"query": {"vector": [0.1] * 8, "modality": "text"}}
        ),
        400,
        "query.vector",
    )
    # bad image inside a batch: 400 naming it, nothing written
    before = client.get("/v1/collections/m").json()["count"]
    batch = [{"id": "new-1", "text": "fine"}, {"id": "new-2", "image": b64(b"\x89PNG broken")}]
    err(client.post("/v1/collections/m/items", json={"items": batch}), 400, "items[1].image")
    err(
        client.post("/v1/collections/m/items", json={"items": [{"id": "x", "image": "%%%"}]}),
        400,
        "items[0].image",
    )
    texts = [{"id": f"many-{i}", "text": "t"} for i in range(9)]
    err(client.post("/v1/collections/m/items", json={"items": texts}), 413, "texts")
    assert client.get("/v1/collections/m").json()["count"] == before


def test_embed_corrected_uses_the_collection_transform(client: TestClient) -> None:
    client.post("/v1/collections", json={"name": "fit"})
    rng = np.random.default_rng(0)
    words = [f"photo number {i} of a {c}" for i, c in enumerate(rng.permutation(40))]
    items = [
        {
            "id": f"d{i}",
            "text": w,
            "image": b64(png(tuple(int(x) for x in rng.integers(0, 255, 3)))),
        }
        for i, w in enumerate(words[:8])
    ]
    assert client.post("/v1/collections/fit/items", json={"items": items}).status_code == 200
    r = client.post("/v1/collections/fit/transform", json={"method": "mean-shift"})
    assert r.status_code == 200 and r.json()["status"] == "active"
    raw = client.post("/v1/embed", json={"texts": ["hello"]}).json()
    cor = client.post(
        "/v1/embed", json={"texts": ["hello"], "corrected": True, "collection": "fit"}
    ).json()
    assert cor["corrected"] and cor["transform"] == "mean-shift"
    via_correct = client.post(
        "/v1/correct", json={"modality": "text", "vectors": raw["texts"], "collection": "fit"}
    ).json()
    assert np.allclose(cor["texts"], via_correct["vectors"], atol=1e-5)
    assert not np.allclose(cor["texts"], raw["texts"], atol=1e-3)


def test_concurrent_requests_are_micro_batched(client: TestClient) -> None:
    batcher = client.app.state.gapfix.batcher
    before = dict(batcher.stats["text"])
    n = 12
    out: list[int] = [0] * n
    barrier = threading.Barrier(n)

    def one(i: int) -> None:
        barrier.wait()
        out[i] = client.post("/v1/embed", json={"texts": [f"query {i}"]}).status_code

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert out == [200] * n
    requests = batcher.stats["text"]["requests"] - before["requests"]
    batches = batcher.stats["text"]["batches"] - before["batches"]
    assert requests == n and batches < n
    metrics = client.get("/metrics").text
    assert 'gapfix_encode_batch_size_count{modality="text"}' in metrics
    assert 'gapfix_stage_duration_seconds_count{stage="encode_core"}' in metrics


def test_readyz_503_on_dimension_mismatch(tmp_path: Path) -> None:
    data = tmp_path / "data"
    vec = Settings(_env_file=None, model="none", data_dir=data)  # type: ignore[call-arg]
    with TestClient(create_app(vec)) as c:
        c.post("/v1/collections", json={"name": "wide", "dim": 8})
    with TestClient(create_app(settings(data))) as c:
        r = c.get("/readyz")
        assert r.status_code == 503
        e = r.json()["error"]
        assert e["type"] == "not_ready" and "'wide' has dimension 8" in e["message"]
        assert c.get("/healthz").status_code == 200


def test_model_load_failure_stops_startup(tmp_path: Path, monkeypatch) -> None:
    from gapfix.encoders import ModelLoadError

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    s = settings(
        tmp_path / "d",
        model="ViT-B-32",
        pretrained="laion2b_s34b_b79k",
        model_cache=tmp_path / "empty",
    )
    with pytest.raises(ModelLoadError, match="--pretrained"), TestClient(create_app(s)):
        pass


def test_a_full_encode_queue_answers_429_with_retry_after(tmp_path: Path) -> None:
    """With the one model call in flight (held), a request that would overflow the encode
    queue is refused at once with 429, ``Retry-After`` and ``retry_after``; the held ones are
    then served."""
    app = create_app(settings(tmp_path, queue_max_rows=3, max_batch_size=4))
    with TestClient(app) as client:
        state = app.state.gapfix
        assert state.batcher.stats["text"]["requests"] == 0  # warm-up bypasses the queue
        forward, gate, entered = state.encoder.forward_texts, threading.Event(), threading.Event()
        sizes: list[int] = []

        def held(tokens):
            sizes.append(int(tokens.shape[0]))
            entered.set()
            gate.wait(30)
            return forward(tokens)

        state.encoder.forward_texts = held
        try:
            out: dict[str, int] = {}

            def post(name: str, n: int) -> None:
                texts = [f"{name} {i}" for i in range(n)]
                out[name] = client.post("/v1/embed", json={"texts": texts}).status_code

            first = threading.Thread(target=post, args=("first", 1))
            first.start()
            assert entered.wait(30)  # its model call is running, held
            queued = threading.Thread(target=post, args=("queued", 3))
            queued.start()
            deadline = time.monotonic() + 30
            while state.batcher.batcher.queued_rows < 3 and time.monotonic() < deadline:
                time.sleep(0.01)
            r = client.post("/v1/embed", json={"texts": ["one too many"]})
            assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
            e = r.json()["error"]
            assert e["type"] == "rate_limited" and e["retry_after"] == int(r.headers["retry-after"])
            assert "3 rows queued (limit 3)" in e["message"]
            assert 'gapfix_queue_depth{stage="text"} 3.0' in client.get("/metrics").text
        finally:
            gate.set()
            first.join(30)
            queued.join(30)
            state.encoder.forward_texts = forward
        assert out == {"first": 200, "queued": 200}
        assert sizes == [1, 3] and state.batcher.stats["text"]["rejected"] == 1


def test_warm_up_runs_the_largest_batch_before_ready(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gapfix.encoders.encoder import ClipEncoder

    calls: list[tuple[str, int]] = []
    for name in ("forward_texts", "forward_images"):
        real = getattr(ClipEncoder, name)

        def spy(self, x, real=real, name=name):
            calls.append((name, int(x.shape[0])))
            return real(self, x)

        monkeypatch.setattr(ClipEncoder, name, spy)
    app = create_app(settings(tmp_path, max_batch_size=6))
    with TestClient(app) as client:
        assert client.get("/readyz").status_code == 200
        assert calls == [("forward_texts", 6), ("forward_images", 6)]
