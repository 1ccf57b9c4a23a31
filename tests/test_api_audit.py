"""Regression tests from an adversarial audit of the HTTP service and the store: malformed input
gets a 4xx in the error envelope (never a 500, never a half-applied write)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from gapfix.errors import InputError
from gapfix.store import ItemIn, NotFoundError, Store
from gapfix.transforms import make_transform
from service.app import create_app
from service.settings import Settings

D = 8


@contextmanager
def client_for(tmp_path: Path, **overrides: Any) -> Iterator[TestClient]:
    settings = Settings(_env_file=None, model="none", data_dir=tmp_path / "data", **overrides)  # type: ignore[call-arg]
    with TestClient(create_app(settings)) as client:
        yield client


def assert_error(r: Any, status: int, type_: str, param: str | None = None) -> dict:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(r.json()) == {"error"} and set(err) == {"type", "message", "param"}
    assert err["message"] and err["type"] == type_, err
    if param is not None:
        assert err["param"] == param, err
    return err


def _post_raw(client: TestClient, url: str, body: Any) -> Any:
    """POST ``body`` as ASCII JSON: lone surrogates and NaN, which ``json=`` cannot send."""
    return client.post(
        url, content=json.dumps(body).encode(), headers={"content-type": "application/json"}
    )


def rand(n: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, D)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _vec(seed: int) -> list[float]:
    return rand(1, seed)[0].tolist()


def test_lone_surrogates_are_refused_and_write_nothing(tmp_path: Path) -> None:
    with client_for(tmp_path) as client:
        client.post("/v1/collections", json={"name": "c"})
        ok = {"id": "ok", "vector": _vec(1), "modality": "text"}
        for bad in (
            {"text": "x\ud800"},
            {"metadata": {"k": "\udc00"}},
            {"metadata": {"\ud800": 1}},
        ):
            items = [ok, {**ok, "id": "b", **bad}]
            r = _post_raw(client, "/v1/collections/c/items", {"items": items})
            err = assert_error(r, 422, "validation_error", "body")  # RFC 8259: not JSON
            assert "not valid JSON at character" in err["message"] and "surrogate" in err["message"]
        assert client.get("/v1/collections/c").json()["count"] == 0
    with Store(tmp_path / "lib", flush_interval=None) as store:
        coll = store.create_collection("c")
        with pytest.raises(InputError, match="surrogate"):
            coll.add([ItemIn("x\ud800", text=np.ones(D, np.float32))])
        with pytest.raises(InputError, match="surrogate"):
            coll.get_item("x\udfff")
        assert coll.count() == 0


def test_extreme_finite_vectors_are_stored_and_searched_unit_length(tmp_path: Path) -> None:
    """Float32 squares of |x| > ~1.8e19 overflow and of |x| < ~1e-19 underflow: norms must not."""
    with client_for(tmp_path) as client:
        client.post("/v1/collections", json={"name": "c"})
        base = np.array(_vec(1))
        items = [
            {
                "id": "big",
                "vector": (base * 3e38 / np.abs(base).max()).tolist(),
                "modality": "image",
            },
            {"id": "tiny", "vector": (base * 1e-30).tolist(), "modality": "image"},
            {"id": "other", "vector": _vec(2), "modality": "image"},
        ]
        assert client.post("/v1/collections/c/items", json={"items": items}).status_code == 200
        want = base / np.linalg.norm(base)
        for item_id in ("big", "tiny"):
            got = client.get(f"/v1/collections/c/items/{item_id}?vectors=true").json()
            np.testing.assert_allclose(got["vectors"]["image"], want, atol=1e-6)
        query = {"vector": [3e38] + [0.0] * (D - 1), "modality": "image"}
        hits = client.post("/v1/collections/c/search", json={"query": query, "k": 3}).json()
        assert max(abs(h["score"]) for h in hits["results"]) > 0.01
        r = client.post(
            "/v1/correct", json={"modality": "text", "vectors": [[1e-30] * D], "collection": "c"}
        )
        np.testing.assert_allclose(np.linalg.norm(r.json()["vectors"][0]), 1.0, atol=1e-6)


def test_ivfpq_pq_m_not_dividing_dim_is_refused_before_anything_is_written(
    tmp_path: Path,
) -> None:
    """Was: the batch committed to SQLite, then IVF-PQ training failed (400), leaving the items
    searchable while the counts left them out."""
    params = {"pq_m": 3, "train_size": 64}
    with client_for(tmp_path) as client:
        r = client.post("/v1/collections", json={"name": "d", "index": "ivfpq", "dim": D,
                                                 "index_params": params})  # fmt: skip
        assert_error(r, 400, "invalid_request", "index_params.pq_m")
        client.post("/v1/collections", json={"name": "q", "index": "ivfpq", "index_params": params})
        items = [{"id": f"i{k}", "vector": _vec(k), "modality": "image"} for k in range(70)]
        r = client.post("/v1/collections/q/items", json={"items": items})
        assert_error(r, 400, "invalid_request", "index_params.pq_m")
        assert client.get("/v1/collections/q").json()["count"] == 0
        assert client.get("/v1/collections/q/items").json()["items"] == []
        hits = client.post(
            "/v1/collections/q/search", json={"query": {"vector": _vec(1), "modality": "text"}}
        ).json()["results"]
        assert hits == []
    with Store(tmp_path / "data", flush_interval=None) as store:  # nothing came back either
        assert store.get("q").count() == 0 and store.get("q").dim is None
        coll = store.create_collection("t", index="ivfpq", index_params=params)
        t = make_transform("centering").fit(rand(4, 1), rand(4, 2))
        with pytest.raises(InputError, match="pq_m"):
            coll.set_transform(t)
        assert coll.dim is None


@pytest.mark.parametrize(
    "method, params",
    [
        ("mean-shift", {"lam": "nan"}),  # NaN is not JSON: sent as a string
        ("mean-shift", {"lam": 1e308}),  # the shift would overflow float32
        ("mean-shift", {"lam": 1e30}),  # finite, but renormalising would overflow to zero
        ("whiten", {"eps": "NaN"}),
        ("standardize", {"eps": -1.0}),  # sqrt of a negative variance
    ],
)
def test_out_of_range_transform_params_are_refused(
    tmp_path: Path, method: str, params: dict[str, float | str]
) -> None:
    """Was: activated; corrected search then returned no hits, /v1/correct nulls, /gap a 400."""
    with client_for(tmp_path) as client:
        client.post("/v1/collections", json={"name": "c"})
        img, txt = rand(10, 1) + 2 * np.eye(D, dtype=np.float32)[0], rand(10, 2)
        items = [{"id": f"i{k}", "vector": img[k].tolist(), "modality": "image"} for k in range(10)]
        items += [{"id": f"t{k}", "vector": txt[k].tolist(), "modality": "text"} for k in range(10)]
        client.post("/v1/collections/c/items", json={"items": items})
        assert client.post("/v1/collections/c/transform", json={"method": "centering"}).is_success
        body = {"method": method, "params": params}
        err = assert_error(
            _post_raw(client, "/v1/collections/c/transform", body), 400, "invalid_request"
        )
        assert "must be in" in err["message"]
        info = client.get("/v1/collections/c/transform").json()
        assert info["active"]["method"] == "centering"
        query = {"query": {"vector": _vec(3), "modality": "text"}, "k": 3}
        hits = client.post("/v1/collections/c/search", json=query).json()["results"]
        assert len(hits) == 3 and all(np.isfinite(h["score"]) for h in hits)
        assert client.get("/v1/collections/c/gap").status_code == 200


def test_a_transform_mapping_to_nan_or_zero_is_refused(tmp_path: Path) -> None:
    """The store's own guard, for a transform whose fitted arrays are broken (not its params)."""
    img, txt = rand(10, 1) + 2 * np.eye(D, dtype=np.float32)[0], rand(10, 2)
    with Store(tmp_path / "lib", flush_interval=None) as store:
        coll = store.create_collection("c")
        t = make_transform("mean-shift").fit(img, txt)
        t.gap_vector_ = np.full_like(t.gap_vector_, np.nan)
        with pytest.raises(InputError, match="NaN, inf or zero"):
            coll.set_transform(t)
        assert coll.active_transform is None and coll.dim is None


def _count(client: TestClient, route: str, status: str) -> float:
    for family in text_string_to_metric_families(client.get("/metrics").text):
        for s in family.samples:
            labels = s.labels
            if (
                s.name == "gapfix_http_requests_total"
                and labels.get("method") == "POST"
                and (labels.get("route") == route and labels.get("status") == status)
            ):
                return s.value
    return 0.0


def test_body_limit_rejections_are_counted_under_their_route(tmp_path: Path) -> None:
    """Was: labelled 'unmatched' (FastAPI keeps included routers nested in ``app.router``);
    the older test passed only when an earlier test had counted a 413 on that route."""
    route = "/v1/collections/{collection}/items"
    with client_for(tmp_path, max_body_bytes=1024) as client:
        client.post("/v1/collections", json={"name": "c"})
        before = _count(client, route, "413")
        r = client.post("/v1/collections/c/items", content=b"x" * 5000)
        assert_error(r, 413, "payload_too_large")
        assert _count(client, route, "413") == before + 1


@pytest.mark.parametrize(
    "call, db_method",
    [
        (lambda c: c.get_item("i0"), "get_item"),
        (lambda c: c.get_thumbnail("i0"), "get_thumbnail"),
        (lambda c: c.list_items(), "list_ids"),
        (lambda c: c.raw_vectors(), "iter_rows"),
        (lambda c: c.gap_statistics(), "seqs_and_codes"),
    ],
)
def test_reads_racing_a_collection_delete_are_not_found(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, call: Any, db_method: str
) -> None:
    """Was a 500 (sqlite3.ProgrammingError: closed database) when ``DELETE /v1/collections/c``
    landed between a read's open-check and its query (seen under concurrent load)."""
    with Store(tmp_path, flush_interval=None) as store:
        coll = store.create_collection("c")
        coll.add([ItemIn(f"i{k}", image=v) for k, v in enumerate(rand(3, 1))])
        coll.add([ItemIn(f"t{k}", text=v) for k, v in enumerate(rand(3, 2))])
        original = getattr(coll._db, db_method)

        def deleted_first(*args: Any, **kwargs: Any) -> Any:
            store.delete_collection("c")
            return original(*args, **kwargs)

        monkeypatch.setattr(coll._db, db_method, deleted_first)
        with pytest.raises(NotFoundError, match="does not exist"):
            call(coll)


def test_readyz_survives_a_collection_deleted_while_it_checks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Was a 404 from /readyz (NotFoundError) when a delete landed between listing the
    collections and looking one up."""
    with client_for(tmp_path) as client:
        for name in ("a", "b"):
            client.post("/v1/collections", json={"name": name})
        store = client.app.state.gapfix.store
        listed = store.list_collections()
        store.delete_collection("a")
        monkeypatch.setattr(store, "list_collections", lambda: listed)
        r = client.get("/readyz")
        assert r.status_code == 200, r.text
        assert "b" in r.json()["collections"]
