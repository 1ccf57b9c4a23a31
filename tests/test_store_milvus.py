"""The Milvus backend beyond the shared API suite (``test_api.py`` runs on both backends):
real COCO vectors give the embedded backend's recall, a foreign schema is a 409 naming the
field, Milvus going down is a 503 in the envelope, an unreachable Milvus stops ``gapfix serve``
with one line and exit 2."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from tests.conftest import COCO
from tests.milvus_server import free_port, start_milvus_lite, stop_milvus_lite
from tests.test_api import assert_error, client_for, drop_all_milvus

N_COCO = 250


def coco_items() -> tuple[list[dict], np.ndarray, np.ndarray]:
    """250 images and their 250 captions as separate items (a mixed-modality collection)."""
    with np.load(COCO) as z:
        img, txt = z["image"].astype(np.float32), z["text"].astype(np.float32)
    items = [
        {"id": f"img{k}", "vector": img[k].tolist(), "modality": "image"} for k in range(N_COCO)
    ] + [
        {"id": f"txt{k}", "vector": txt[k].tolist(), "modality": "text", "text": f"caption {k}"}
        for k in range(N_COCO)
    ]
    return items, img, txt


def recall_at_10(client: TestClient, name: str, txt: np.ndarray, corrected: bool) -> float:
    """Text -> image retrieval over the whole mixed collection: is the caption's own image in
    the top 10 of all items (texts included)?"""
    queries = [{"vector": v.tolist(), "modality": "text"} for v in txt]
    r = client.post(
        f"/v1/collections/{name}/search",
        json={"queries": queries, "k": 10, "corrected": corrected},
    )
    assert r.status_code == 200, r.text
    hits = r.json()["batches"]
    return float(np.mean([f"img{k}" in {h["id"] for h in hs} for k, hs in enumerate(hits)]))


def ingest_and_fit(client: TestClient, name: str = "coco") -> dict[str, float]:
    items, _, txt = coco_items()
    assert client.post("/v1/collections", json={"name": name}).status_code == 201
    for i in range(0, len(items), 100):
        r = client.post(f"/v1/collections/{name}/items", json={"items": items[i : i + 100]})
        assert r.status_code == 200, r.text
    r = client.post(
        f"/v1/collections/{name}/transform", json={"method": "centering", "wait_seconds": 60}
    )
    assert r.status_code == 200 and r.json()["status"] == "active", r.text
    gap = client.get(f"/v1/collections/{name}/gap").json()["centroid_gap"]
    return {
        "raw": recall_at_10(client, name, txt, corrected=False),
        "corrected": recall_at_10(client, name, txt, corrected=True),
        "gap_raw": gap["raw"],
        "gap_corrected": gap["corrected"],
    }


@pytest.fixture
def milvus_client(tmp_path: Path, milvus_uri: str) -> Iterator[TestClient]:
    drop_all_milvus(milvus_uri)
    try:
        with client_for(tmp_path, store=milvus_uri) as c:
            yield c
    finally:
        drop_all_milvus(milvus_uri)


def test_coco_recall_matches_the_embedded_backend(tmp_path: Path, milvus_client) -> None:
    with client_for(tmp_path / "emb") as emb:
        embedded = ingest_and_fit(emb)
    milvus = ingest_and_fit(milvus_client)
    for key in ("raw", "corrected"):
        assert abs(milvus[key] - embedded[key]) <= 0.01, (milvus, embedded)
    for key in ("gap_raw", "gap_corrected"):
        assert milvus[key] == pytest.approx(embedded[key], abs=1e-4), (milvus, embedded)
    # measured on both backends: mixed-modality R@10 raw 0.00 (every caption's top 10 are
    # captions), corrected 0.46; centroid gap 0.848 -> 0.027
    assert milvus["raw"] == pytest.approx(0.0, abs=0.01)
    assert milvus["corrected"] == pytest.approx(0.46, abs=0.02)
    assert milvus["gap_raw"] == pytest.approx(0.848, abs=0.002)


def test_a_foreign_milvus_collection_is_a_409_naming_the_field(
    tmp_path: Path, milvus_uri: str, milvus_client: TestClient
) -> None:
    from pymilvus import DataType

    from gapfix.store.milvus.conn import connect, parse_store_uri

    mc = connect(parse_store_uri(milvus_uri))
    schema = mc.create_schema(auto_id=False)
    schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=64)
    schema.add_field("modality", DataType.INT64)
    schema.add_field("vec", DataType.FLOAT_VECTOR, dim=8)
    index = mc.prepare_index_params()
    index.add_index("vec", index_type="FLAT", metric_type="IP")
    mc.create_collection("foreign", schema=schema, index_params=index)
    err = assert_error(
        milvus_client.post("/v1/collections", json={"name": "foreign"}), 409, "conflict"
    )
    assert err["param"] == "modality" and "'modality'" in err["message"]
    assert "foreign" not in [c["name"] for c in milvus_client.get("/v1/collections").json()[
        "collections"]]  # fmt: skip
    # a gapfix collection whose Milvus collection was replaced by a foreign one: 409 too
    assert milvus_client.post("/v1/collections", json={"name": "mine", "dim": 8}).status_code == 201
    milvus_client.__exit__(None, None, None)
    mc.drop_collection("mine")
    schema = mc.create_schema(auto_id=False)
    schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=64)
    schema.add_field("modality", DataType.VARCHAR, max_length=16)
    schema.add_field("vec", DataType.FLOAT_VECTOR, dim=8)
    mc.create_collection("mine", schema=schema, index_params=index)
    mc.close()
    with client_for(tmp_path, store=milvus_uri) as again:
        err = assert_error(again.get("/v1/collections/mine"), 409, "conflict")
        assert err["param"] == "text" and "'text' is missing" in err["message"]


def test_milvus_down_mid_request_is_a_503_in_the_envelope(tmp_path: Path) -> None:
    proc, uri = start_milvus_lite(tmp_path / "m")
    try:
        with client_for(tmp_path, store=uri, milvus_timeout_s=3) as client:
            assert client.post("/v1/collections", json={"name": "c", "dim": 4}).status_code == 201
            item = {"id": "a", "vector": [1.0, 0, 0, 0], "modality": "text"}
            assert client.post("/v1/collections/c/items", json={"items": [item]}).status_code == 200
            stop_milvus_lite(proc)
            search = {"query": {"vector": [1.0, 0, 0, 0], "modality": "text"}}
            assert_error(client.post("/v1/collections/c/search", json=search), 503, "unavailable")
            item["id"] = "b"
            assert_error(
                client.post("/v1/collections/c/items", json={"items": [item]}), 503, "unavailable"
            )
            assert_error(client.get("/v1/collections/c/items/a"), 503, "unavailable")
    finally:
        stop_milvus_lite(proc)


@pytest.mark.parametrize(
    ("store", "expect"),
    [
        (f"milvus://127.0.0.1:{free_port()}", "cannot reach Milvus at 127.0.0.1:"),
        ("qdrant://127.0.0.1:6333/x", "--store must be 'embedded' or milvus://"),
        ("milvus://127.0.0.1:notaport", "the port is not a number"),
    ],
)
def test_serve_with_an_unreachable_or_bad_store_exits_2(
    store: str, expect: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gapfix.cli import app

    monkeypatch.setenv("GAPFIX_MILVUS_TIMEOUT_S", "3")
    r = CliRunner().invoke(app, ["serve", "--model", "none", "--store", store])
    assert r.exit_code == 2, r.output
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and expect in lines[0], r.output
