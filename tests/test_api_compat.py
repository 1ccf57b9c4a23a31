"""The contracts other stacks speak, in-process with the tiny random model (32-d): OpenAI
``/v1/embeddings`` + ``/v1/models``, TEI ``/embed`` ``/info`` ``/health``, Weaviate
multi2vec-clip ``/vectorize`` ``/meta`` ``/.well-known/*``; response and error shapes against
fixtures of what those clients parse (tests/fixtures/compat); ``GAPFIX_DEFAULT_TRANSFORM``."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from gapfix import load_transform, make_transform
from gapfix.transforms.artifact import transform_bytes
from gapfix.transforms.registry import fingerprint
from service.app import create_app
from tests.conftest import make_gapped
from tests.test_api_model import b64, png, settings

DIM = 32
MODEL = "gapfix-tiny/none"
KEY = "k-compat"
OCTET = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/octet-stream"}
FIX = Path(__file__).parent / "fixtures" / "compat"


def fixture(name: str) -> dict[str, Any]:
    return json.loads((FIX / name).read_text())


def conforms(ours: Any, theirs: Any, where: str = "$") -> None:
    """``ours`` has the JSON shape of the client-side example ``theirs`` (keys and types)."""
    if theirs is None:
        assert ours is None, f"{where}: expected null, got {ours!r}"
    elif isinstance(theirs, dict):
        assert isinstance(ours, dict) and set(ours) == set(theirs), f"{where}: {ours!r}"
        for k in theirs:
            conforms(ours[k], theirs[k], f"{where}.{k}")
    elif isinstance(theirs, list):
        assert isinstance(ours, list), f"{where}: not a list"
        if theirs and ours:
            for x in ours:
                conforms(x, theirs[0], f"{where}[]")
    elif isinstance(theirs, bool):
        assert isinstance(ours, bool), f"{where}: not a bool"
    elif isinstance(theirs, int):
        assert isinstance(ours, int) and not isinstance(ours, bool), f"{where}: not an int"
    elif isinstance(theirs, float):
        assert isinstance(ours, int | float) and not isinstance(ours, bool), f"{where}"
    else:
        assert isinstance(ours, type(theirs)), f"{where}: {type(ours)} vs {type(theirs)}"


@pytest.fixture(scope="module")
def calib() -> tuple[np.ndarray, np.ndarray]:
    return make_gapped(120, DIM, seed=2)


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory, calib) -> Iterator[TestClient]:
    data = tmp_path_factory.mktemp("compat")
    app = create_app(settings(data, api_keys=KEY, max_texts_per_request=8))
    with TestClient(app) as c:
        c.put("/v1/transforms/coco", content=transform_bytes(
            make_transform("centering").fit(*calib)), headers=OCTET)  # fmt: skip
        wide = make_gapped(50, 64)
        c.put("/v1/transforms/wide", content=transform_bytes(
            make_transform("centering").fit(*wide)), headers=OCTET)  # fmt: skip
        yield c


def embeddings(c: TestClient, **body) -> Any:
    return c.post("/v1/embeddings", json={"model": MODEL, **body})


def vectors(resp: Any) -> np.ndarray:
    out = []
    for d in resp.json()["data"]:
        e = d["embedding"]
        out.append(np.frombuffer(base64.b64decode(e), "<f4") if isinstance(e, str) else e)
    return np.asarray(out, np.float32)


def coco(c: TestClient, tmp_path: Path) -> Any:
    info = c.get("/v1/transforms/coco").json()
    path = tmp_path / "coco.gapfix"
    path.write_bytes(c.app.state.gapfix.settings.data_dir.joinpath(
        "transforms", "coco.gapfix").read_bytes())  # fmt: skip
    assert fingerprint(path.read_bytes()) == info["fingerprint"]
    return load_transform(path)


def test_openai_shapes_raw_and_corrected(client: TestClient, tmp_path: Path) -> None:
    fx = fixture("openai_embeddings.json")
    texts = ["a dog on a beach", "two cats", "a red car"]
    raw = np.asarray(client.post("/v1/embed", json={"texts": texts}).json()["texts"], np.float32)
    r = embeddings(client, input=texts)
    assert r.status_code == 200, r.text
    conforms(r.json(), fx["response"])
    body = r.json()
    assert body["model"] == MODEL and [d["index"] for d in body["data"]] == [0, 1, 2]
    tokens = int((client.app.state.gapfix.encoder.tokenize(texts) != 0).sum())
    assert body["usage"] == {"prompt_tokens": tokens, "total_tokens": tokens}
    assert tokens > 2 * len(texts)  # start and end tokens at least
    assert np.allclose(vectors(r), raw, atol=1e-6)  # no transform: /v1/embed's raw vectors
    one = embeddings(client, input="a dog on a beach")
    assert len(one.json()["data"]) == 1 and np.allclose(vectors(one)[0], raw[0], atol=1e-6)
    # base64: little-endian float32 bytes, the same numbers
    b = embeddings(client, input=texts, encoding_format="base64")
    assert all(isinstance(d["embedding"], str) for d in b.json()["data"])
    assert np.array_equal(vectors(b), vectors(r).astype(np.float32))
    # through a named transform: gapfix apply of the artifact on the raw vectors
    t = coco(client, tmp_path)
    for role, lib in (("document", "corpus"), ("query", "query")):
        r = embeddings(client, input=texts, transform="coco", role=role)
        assert np.allclose(vectors(r), t.transform(raw, "text", role=lib), atol=1e-5)
        assert r.headers["x-gapfix-transform"] == "coco"
        assert r.headers["x-gapfix-fingerprint"] == client.get("/v1/transforms/coco").json()[
            "fingerprint"]  # fmt: skip
    # images as data: URIs, raw and corrected
    imgs = [png("red"), png((10, 200, 30), (30, 70))]
    raw_i = np.asarray(client.post("/v1/embed", json={"images": [b64(i) for i in imgs]})
                       .json()["images"], np.float32)  # fmt: skip
    uris = [f"data:image/png;base64,{b64(i)}" for i in imgs]
    r = embeddings(client, input=uris, modality="image")
    assert r.status_code == 200, r.text
    assert np.allclose(vectors(r), raw_i, atol=1e-6) and r.json()["usage"]["prompt_tokens"] == 0
    r = embeddings(client, input=uris, modality="image", transform="coco", encoding_format="base64")
    assert np.allclose(vectors(r), t.transform(raw_i, "image"), atol=1e-5)
    # models
    models = client.get("/v1/models").json()
    conforms(models, fx["models"])
    assert [m["id"] for m in models["data"]] == [MODEL]
    assert client.get(f"/v1/models/{MODEL}").json()["id"] == MODEL


def test_openai_bad_input_is_a_4xx_in_openai_shape(client: TestClient) -> None:
    fx = fixture("openai_embeddings.json")["error"]
    data_dir = client.app.state.gapfix.settings.data_dir
    before = sorted(str(p) for p in data_dir.rglob("*") if ".tmp-" not in p.name)
    many = [f"t{i}" for i in range(9)]
    cases = [
        ({"model": "nope", "input": "x"}, 404, "model_not_found"),
        ({"model": MODEL, "input": "x", "transform": "nope"}, 404, "not_found"),
        ({"model": MODEL, "input": "x", "dimensions": 64}, 400, None),
        ({"model": MODEL, "input": "x", "transform": "wide"}, 409, "dimension_mismatch"),
        ({"model": MODEL, "input": []}, 400, None),
        ({"model": MODEL, "input": ""}, 400, None),
        ({"model": MODEL, "input": ["ok", ""]}, 400, None),
        ({"model": MODEL, "input": many}, 413, "payload_too_large"),
        ({"model": MODEL, "input": [[1, 2, 3]]}, 400, None),
        ({"model": MODEL, "input": "x", "encoding_format": "int8"}, 400, None),
        ({"model": MODEL, "input": "x", "transform": "coco", "collection": "c"}, 400, None),
        ({"model": MODEL, "input": "x", "collection": "nope"}, 404, "not_found"),
        ({"model": MODEL, "input": ["https://127.0.0.1/a.png"], "modality": "image"}, 400,
         "url_refused"),
        ({"model": MODEL, "input": ["not an image"], "modality": "image"}, 400, None),
        ({"model": MODEL, "input": ["data:image/png;base64,AAAA"], "modality": "image"}, 400,
         None),
        ({"model": MODEL, "input": "x", "surprise": 1}, 400, None),
        ({"model": 3, "input": "x"}, 400, None),
    ]  # fmt: skip
    for body, status, code in cases:
        r = client.post("/v1/embeddings", json=body)
        assert r.status_code == status, (body, r.text)
        conforms(r.json(), {"error": {**fx["error"], "param": r.json()["error"]["param"],
                                       "code": code}})  # fmt: skip
        assert r.json()["error"]["type"] == "invalid_request_error"
    msg = client.post("/v1/embeddings", json=cases[2][0]).json()["error"]["message"]
    assert "64" in msg and "32" in msg  # names both
    msg = client.post("/v1/embeddings", json=cases[3][0]).json()["error"]["message"]
    assert "64" in msg and "32" in msg and "wide" in msg
    r = client.post(
        "/v1/embeddings", content=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    r = client.get("/v1/models/nope")
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    after = sorted(str(p) for p in data_dir.rglob("*") if ".tmp-" not in p.name)
    assert after == before  # nothing written


def test_errors_before_routing_and_401_in_each_shape(tmp_path: Path) -> None:
    app = create_app(settings(tmp_path, api_keys=KEY, protect_reads=True, max_body_bytes=1024))
    with TestClient(app) as c:
        big = {"model": MODEL, "input": "x" * 2000}
        r = c.post("/v1/embeddings", json=big, headers={"Authorization": f"Bearer {KEY}"})
        assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"
        r = c.put("/v1/embeddings", json={})
        assert r.status_code == 405 and r.json()["error"]["type"] == "invalid_request_error"
        r = c.get("/embed")
        assert r.status_code == 405 and set(r.json()) == {"error", "error_type"}
        r = c.post("/vectorize", json={"texts": ["x" * 2000]})
        assert r.status_code == 413 and isinstance(r.json()["error"], str)
        assert c.get("/v1/nothing-here").json()["error"]["type"] == "not_found"  # gapfix's
        r = c.post("/v1/embeddings", json={"model": MODEL, "input": "x"})
        assert r.status_code == 401
        assert r.json()["error"]["code"] == "invalid_api_key"
        assert c.get("/v1/models").status_code == 401
        ok = c.post("/v1/embeddings", json={"model": MODEL, "input": "x"},
                    headers={"Authorization": f"Bearer {KEY}"})  # fmt: skip
        assert ok.status_code == 200


def test_tei_contract(client: TestClient) -> None:
    fx = fixture("tei.json")
    raw = np.asarray(client.post("/v1/embed", json={"texts": ["hello", "world"]}).json()["texts"])
    r = client.post("/embed", json={"inputs": ["hello", "world"], "normalize": True,
                                    "truncate": False})  # fmt: skip
    assert r.status_code == 200
    conforms(r.json(), fx["embed"])
    assert np.allclose(r.json(), raw, atol=1e-6)
    one = client.post("/embed", json={"inputs": "hello"}).json()
    assert len(one) == 1 and np.allclose(one[0], raw[0], atol=1e-6)
    info = client.get("/info").json()
    conforms(info, fx["info"])
    assert info["model_id"] == MODEL and info["max_client_batch_size"] == 8
    h = client.get("/health")
    assert h.status_code == 200 and h.content == b""
    for body, status in (
        ({"inputs": []}, 422),
        ({"inputs": [f"t{i}" for i in range(9)]}, 413),
        ({"inputs": "x", "dimensions": 7}, 422),
        ({"inputs": 5}, 422),
        ({}, 422),
    ):
        r = client.post("/embed", json=body)
        assert r.status_code == status, (body, r.text)
        conforms(r.json(), fx["error"])


def test_weaviate_contract(client: TestClient) -> None:
    fx = fixture("weaviate_multi2vec_clip.json")
    img = b64(png("blue"))
    raw = client.post("/v1/embed", json={"texts": ["a dog"], "images": [img]}).json()
    r = client.post("/vectorize", json={"texts": ["a dog"], "images": [img]})
    assert r.status_code == 200
    conforms(r.json(), fx["response"])
    assert np.allclose(r.json()["textVectors"], raw["texts"], atol=1e-6)
    assert np.allclose(r.json()["imageVectors"], raw["images"], atol=1e-6)
    only_text = client.post("/vectorize", json={"texts": ["a dog"], "images": None}).json()
    assert only_text["imageVectors"] == [] and len(only_text["textVectors"]) == 1
    r = client.post("/vectorize", json={"texts": [], "images": ["@@@"]})
    assert r.status_code == 400
    conforms(r.json(), fx["error"])
    assert "images[0]" in r.json()["error"]
    r = client.post("/vectorize", json={"texts": [f"t{i}" for i in range(9)]})
    assert r.status_code == 413 and isinstance(r.json()["error"], str)
    meta = client.get("/meta")
    assert meta.status_code == 200 and meta.json()["model"] == MODEL
    assert client.get("/.well-known/live").status_code == 204
    assert client.get("/.well-known/ready").status_code == 204


def test_default_transform(tmp_path: Path, calib) -> None:
    app = create_app(settings(tmp_path, api_keys=KEY, default_transform="dflt"))
    blob = transform_bytes(make_transform("centering").fit(*calib))
    (tmp_path / "d.gapfix").write_bytes(blob)
    t = load_transform(tmp_path / "d.gapfix")
    with TestClient(app) as c:
        # not registered yet: the calls that rely on it say so
        assert c.post("/embed", json={"inputs": "x"}).status_code == 422
        assert "GAPFIX_DEFAULT_TRANSFORM" in c.post("/embed", json={"inputs": "x"}).json()["error"]
        r = c.post("/v1/embeddings", json={"model": MODEL, "input": "x"})
        assert r.status_code == 404 and "GAPFIX_DEFAULT_TRANSFORM" in r.json()["error"]["message"]
        assert c.post("/vectorize", json={"texts": ["x"]}).status_code == 404
        assert c.put("/v1/transforms/dflt", content=blob, headers=OCTET).status_code == 201
        texts = ["a dog", "a cat"]
        img = b64(png("green"))
        raw = c.post("/v1/embed", json={"texts": texts, "images": [img]}).json()
        want_t = t.transform(np.asarray(raw["texts"], np.float32), "text")
        want_i = t.transform(np.asarray(raw["images"], np.float32), "image")
        assert np.allclose(c.post("/embed", json={"inputs": texts}).json(), want_t, atol=1e-5)
        v = c.post("/vectorize", json={"texts": texts, "images": [img]}).json()
        assert np.allclose(v["textVectors"], want_t, atol=1e-5)
        assert np.allclose(v["imageVectors"], want_i, atol=1e-5)
        assert c.get("/meta").json()["transform"]["fingerprint"] == fingerprint(blob)
        r = c.post("/v1/embeddings", json={"model": MODEL, "input": texts})
        assert np.allclose(vectors(r), want_t, atol=1e-5)
        # an explicit null asks for raw vectors
        r = c.post("/v1/embeddings", json={"model": MODEL, "input": texts, "transform": None})
        assert np.allclose(vectors(r), raw["texts"], atol=1e-6)
        # a default of another dimension: not ready, and the calls relying on it say why
        assert c.get("/readyz").status_code == 200
        wide = transform_bytes(make_transform("centering").fit(*make_gapped(50, 64)))
        c.put("/v1/transforms/dflt?replace=true", content=wide, headers=OCTET)
        r = c.get("/readyz")
        assert r.status_code == 503 and "GAPFIX_DEFAULT_TRANSFORM" in r.json()["error"]["message"]
        r = c.post("/vectorize", json={"texts": ["x"]})
        assert r.status_code == 409 and "64" in r.json()["error"] and "32" in r.json()["error"]
