"""Named transforms over HTTP (``/v1/transforms``) and their use by ``/v1/correct`` and
``/v1/embed`` (``transform``, ``role``), with the tiny random model (32-d).

The switch tests hammer a replace / activate loop while requests run and check that every
response's name and fingerprint belong to the vectors it returns."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from gapfix import load_transform, make_transform
from gapfix.transforms.artifact import transform_bytes
from gapfix.transforms.registry import fingerprint
from service.app import create_app
from tests.conftest import make_gapped
from tests.test_api_model import settings

DIM = 32
KEY = "k-transforms"
AUTH = {"Authorization": f"Bearer {KEY}"}
OCTET = {**AUTH, "Content-Type": "application/octet-stream"}


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    data = tmp_path_factory.mktemp("named-transforms")
    app = create_app(settings(data, api_keys=KEY, transform_wait_s=10))
    with TestClient(app) as c:
        yield c


@pytest.fixture(scope="module")
def calib() -> tuple[np.ndarray, np.ndarray]:
    return make_gapped(120, DIM, seed=1)


def artifact(method: str, calib, **params) -> bytes:
    img, txt = calib
    return transform_bytes(make_transform(method, **params).fit(img, txt))


def data_files(client: TestClient) -> list[str]:
    folder = client.app.state.gapfix.settings.data_dir / "transforms"
    return sorted(p.name for p in folder.iterdir())


def test_put_get_list_delete(client: TestClient, calib) -> None:
    a, b = artifact("centering", calib), artifact("whiten", calib, shrinkage=0.5)
    assert client.put("/v1/transforms/t1", content=a).status_code == 401  # writes need a key
    r = client.put("/v1/transforms/t1", content=a, headers=OCTET)
    assert r.status_code == 201, r.text
    info = r.json()
    assert info["name"] == "t1" and info["fingerprint"] == fingerprint(a)
    assert info["method"] == "centering" and info["dim"] == DIM and info["status"] == "ready"
    assert set(info) >= {"params", "model", "fit_stats", "created"}
    assert client.put("/v1/transforms/t1", content=a, headers=OCTET).status_code == 200
    r = client.put("/v1/transforms/t1", content=b, headers=OCTET)
    assert r.status_code == 409 and r.json()["error"]["type"] == "conflict"
    assert client.get("/v1/transforms/t1").json()["fingerprint"] == fingerprint(a)
    r = client.put("/v1/transforms/t1?replace=true", content=b, headers=OCTET)
    assert r.status_code == 200 and r.json()["method"] == "whiten"
    # bad bytes, bad name, wrong content type: 4xx, nothing written
    before = data_files(client)
    r = client.put("/v1/transforms/t2", content=b"junk" * 10, headers=OCTET)
    assert r.status_code == 400 and r.json()["error"]["param"] == "body"
    assert client.put("/v1/transforms/t2", content=b"", headers=OCTET).status_code == 400
    assert client.put("/v1/transforms/a.b", content=a, headers=OCTET).status_code == 422
    r = client.put("/v1/transforms/t2", content=a, headers={**AUTH, "Content-Type": "text/plain"})
    assert r.status_code == 415
    assert data_files(client) == before and client.get("/v1/transforms/t2").status_code == 404
    names = [t["name"] for t in client.get("/v1/transforms").json()["transforms"]]
    assert "t1" in names and "t2" not in names
    metrics = client.get("/metrics").text
    assert 'gapfix_transform_gap{space="raw",transform="t1"}' in metrics
    assert 'gapfix_transform_gap{space="corrected",transform="t1"}' in metrics
    assert client.delete("/v1/transforms/t1", headers=AUTH).json() == {"deleted": "t1"}
    assert client.get("/v1/transforms/t1").status_code == 404
    assert client.delete("/v1/transforms/t1", headers=AUTH).status_code == 404
    assert 'transform="t1"' not in client.get("/metrics").text


def test_post_fits_from_vectors(client: TestClient, calib) -> None:
    img, txt = calib
    body = {"name": "fit-c", "method": "centering", "image": img.tolist(), "text": txt.tolist()}
    r = client.post("/v1/transforms", json=body, headers=AUTH)
    assert r.status_code == 201, r.text
    fitted = make_transform("centering").fit(img, txt)
    assert r.json()["fit_stats"]["gap_after"] == pytest.approx(fitted.fit_stats_["gap_after"])
    assert client.post("/v1/transforms", json=body, headers=AUTH).status_code == 409
    # auto: 202 with the job, GET shows fitting then ready
    body = {**body, "name": "fit-auto", "method": "auto", "wait_seconds": 0}
    r = client.post("/v1/transforms", json=body, headers=AUTH)
    assert r.status_code == 202 and r.json()["status"] == "fitting", r.text
    assert r.json()["job"]["method"] == "auto"
    deadline = time.monotonic() + 60
    while (s := client.get("/v1/transforms/fit-auto").json())["status"] == "fitting":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert s["status"] == "ready" and s["method"] == "auto" and s["chosen"]["method"]
    # bad input: 4xx, nothing registered
    bad = [
        ({**body, "name": "b1", "method": "nope"}, 422),
        ({**body, "name": "b2", "text": txt[:, :16].tolist(), "wait_seconds": 5}, 400),
        ({**body, "name": "b3", "method": "procrustes", "text": txt[:7].tolist()}, 400),
        ({"name": "b4", "method": "centering", "image": img.tolist()}, 422),
        ({**body, "name": "b5", "method": "centering", "params": {"lam": 1}}, 400),
    ]
    for payload, status in bad:
        r = client.post("/v1/transforms", json=payload, headers=AUTH)
        assert r.status_code == status, (payload["name"], r.text)
    names = {t["name"] for t in client.get("/v1/transforms").json()["transforms"]}
    assert not names & {"b1", "b2", "b3", "b4", "b5"}


def test_snapshot_of_a_collection_keeps_its_fingerprint(client: TestClient, calib) -> None:
    img, txt = calib
    c = client
    assert c.post("/v1/collections", json={"name": "snap"}, headers=AUTH).status_code == 201
    items = [{"id": f"i{i}", "vector": v.tolist(), "modality": "image"} for i, v in enumerate(img)]
    items += [{"id": f"t{i}", "vector": v.tolist(), "modality": "text"} for i, v in enumerate(txt)]
    assert (
        c.post("/v1/collections/snap/items", json={"items": items}, headers=AUTH).status_code == 200
    )
    r = c.post("/v1/transforms", json={"name": "s", "from_collection": "snap"}, headers=AUTH)
    assert r.status_code == 400 and r.json()["error"]["param"] == "from_collection"
    r = c.post("/v1/collections/snap/transform", json={"method": "centering"}, headers=AUTH)
    assert r.status_code == 200, r.text
    fp = r.json()["fingerprint"]
    r = c.post("/v1/transforms", json={"name": "s", "from_collection": "snap"}, headers=AUTH)
    assert r.status_code == 201 and r.json()["fingerprint"] == fp
    again = c.post("/v1/transforms", json={"name": "s", "from_collection": "snap"}, headers=AUTH)
    assert again.status_code == 200
    r = c.post("/v1/transforms", json={"name": "s2", "from_collection": "nope"}, headers=AUTH)
    assert r.status_code == 404
    # the snapshot corrects exactly as the collection does
    q = txt[:4].tolist()
    by_name = c.post("/v1/correct", json={"modality": "text", "vectors": q, "transform": "s"})
    by_coll = c.post("/v1/correct", json={"modality": "text", "vectors": q, "collection": "snap"})
    assert by_name.json()["fingerprint"] == by_coll.json()["fingerprint"] == fp
    assert by_name.json()["transform_name"] == "s" and by_coll.json()["transform_name"] is None
    assert np.allclose(by_name.json()["vectors"], by_coll.json()["vectors"], atol=1e-6)


def test_correct_and_embed_by_name_and_role(client: TestClient, calib, tmp_path: Path) -> None:
    img, txt = calib
    queries = make_gapped(60, DIM, seed=7)[1] + 0.3 * np.eye(DIM, dtype=np.float32)[3]
    t = make_transform("centering", query_text_mean=True).fit(img, txt, query_text=queries)
    blob = transform_bytes(t)
    assert client.put("/v1/transforms/qt", content=blob, headers=OCTET).status_code == 201
    (tmp_path / "qt.gapfix").write_bytes(blob)
    t = load_transform(tmp_path / "qt.gapfix")  # what `gapfix apply` uses
    x = txt[:5]
    for role, lib_role in (("document", "corpus"), ("query", "query")):
        body = {"modality": "text", "vectors": x.tolist(), "transform": "qt", "role": role}
        r = client.post("/v1/correct", json=body)
        assert r.status_code == 200, r.text
        out = r.json()
        assert out["transform_name"] == "qt" and out["fingerprint"] == fingerprint(blob)
        assert out["transform"] == "centering" and out["collection"] is None
        assert np.allclose(out["vectors"], t.transform(x, "text", role=lib_role), atol=1e-6)
    doc = client.post(
        "/v1/correct", json={"modality": "text", "vectors": x.tolist(), "transform": "qt"}
    )
    qry = client.post("/v1/correct", json={"modality": "text", "vectors": x.tolist(),
                                           "transform": "qt", "role": "query"})  # fmt: skip
    assert not np.allclose(doc.json()["vectors"], qry.json()["vectors"], atol=1e-3)
    # /v1/embed: raw vectors through the artifact, as `gapfix apply` does
    texts = ["a dog on a beach", "two cats"]
    raw = np.asarray(client.post("/v1/embed", json={"texts": texts}).json()["texts"], np.float32)
    for role, lib_role in (("document", "corpus"), ("query", "query")):
        r = client.post("/v1/embed", json={"texts": texts, "transform": "qt", "role": role})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["corrected"] and body["transform_name"] == "qt"
        assert body["fingerprint"] == fingerprint(blob)
        assert np.allclose(body["texts"], t.transform(raw, "text", role=lib_role), atol=1e-5)
    # bad requests
    bad = [
        ({"modality": "text", "vectors": x.tolist()}, 422),
        ({"modality": "text", "vectors": x.tolist(), "transform": "qt", "collection": "snap"}, 422),
        ({"modality": "text", "vectors": x.tolist(), "transform": "nope"}, 404),
        ({"modality": "text", "vectors": x[:, :8].tolist(), "transform": "qt"}, 400),
        ({"modality": "text", "vectors": x.tolist(), "transform": "qt", "role": "corpus"}, 422),
    ]
    for body, status in bad:
        assert client.post("/v1/correct", json=body).status_code == status, body
    r = client.post("/v1/embed", json={"texts": texts, "transform": "qt", "corrected": False})
    assert r.status_code == 400


def _hammer(client: TestClient, switch, call, seconds: float = 3.0) -> tuple[int, dict]:
    """Run ``switch(i)`` in a loop while 3 threads ``call()``; returns (calls, fingerprints)."""
    stop = threading.Event()
    seen: dict[str, int] = {}
    errors: list[str] = []
    count = [0]

    def switcher() -> None:
        i = 0
        while not stop.is_set():
            switch(i)
            i += 1

    def caller() -> None:
        while not stop.is_set():
            problem, fp = call()
            count[0] += 1
            seen[fp] = seen.get(fp, 0) + 1
            if problem:
                errors.append(problem)

    threads = [threading.Thread(target=switcher)] + [
        threading.Thread(target=caller) for _ in range(3)
    ]
    for th in threads:
        th.start()
    time.sleep(seconds)
    stop.set()
    for th in threads:
        th.join()
    assert errors == [], errors[:3]
    return count[0], seen


def test_named_replace_loop_never_mixes_name_and_vectors(
    client: TestClient, calib, tmp_path: Path
) -> None:
    txt = calib[1]
    blobs = [artifact("centering", calib), artifact("mean-shift", calib, lam=0.5)]
    x = txt[:3]
    expected = {}
    for blob in blobs:
        path = tmp_path / f"{fingerprint(blob)}.gapfix"
        path.write_bytes(blob)
        expected[fingerprint(blob)] = load_transform(path).transform(x, "text")
    client.put("/v1/transforms/sw", content=blobs[0], headers=OCTET)

    def switch(i: int) -> None:
        blob = blobs[(i + 1) % 2]
        client.put("/v1/transforms/sw?replace=true", content=blob, headers=OCTET)

    def call() -> tuple[str | None, str]:
        out = client.post(
            "/v1/correct", json={"modality": "text", "vectors": x.tolist(), "transform": "sw"}
        ).json()
        ok = np.allclose(out["vectors"], expected[out["fingerprint"]], atol=1e-6)
        return (None if ok else f"vectors do not match {out['fingerprint']}"), out["fingerprint"]

    calls, seen = _hammer(client, switch, call)
    assert len(seen) == 2 and min(seen.values()) >= 5, seen  # both served, interleaved
    assert calls >= 50


def test_collection_switch_loop_embed_names_its_vectors(client: TestClient, calib) -> None:
    img, txt = calib
    c = client
    assert c.post("/v1/collections", json={"name": "sw"}, headers=AUTH).status_code == 201
    items = [{"id": f"i{i}", "vector": v.tolist(), "modality": "image"} for i, v in enumerate(img)]
    items += [{"id": f"t{i}", "vector": v.tolist(), "modality": "text"} for i, v in enumerate(txt)]
    assert (
        c.post("/v1/collections/sw/items", json={"items": items}, headers=AUTH).status_code == 200
    )
    coll = c.app.state.gapfix.store.get("sw")
    fitted = [make_transform("centering").fit(img, txt), make_transform("mean-shift").fit(img, txt)]
    texts = ["a red square"]
    raw = np.asarray(c.post("/v1/embed", json={"texts": texts}).json()["texts"], np.float32)
    expected = {}
    for t in fitted:
        coll.set_transform(t, wait_seconds=None)
        _, fp = coll.transform_view()
        expected[fp] = coll.transform_view()[0].transform(raw, "text")

    def switch(i: int) -> None:
        coll.set_transform(fitted[i % 2], wait_seconds=None)

    def call() -> tuple[str | None, str]:
        out = c.post("/v1/embed", json={"texts": texts, "corrected": True, "collection": "sw"})
        body = out.json()
        fp = body["fingerprint"]
        ok = fp in expected and np.allclose(body["texts"], expected[fp], atol=1e-5)
        return (None if ok else f"vectors do not match {fp}"), fp

    calls, seen = _hammer(client, switch, call)
    assert len(seen) == 2 and min(seen.values()) >= 5, seen
    assert calls >= 50
