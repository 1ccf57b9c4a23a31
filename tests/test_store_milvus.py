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
from tests.milvus_server import free_port, launch_milvus_lite, start_milvus_lite, stop, store_uri
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
def milvus_store(milvus_uri: str) -> str:
    """The session's Milvus Lite server as a ``--store`` URI."""
    return store_uri(milvus_uri)


@pytest.fixture
def milvus_client(tmp_path: Path, milvus_store: str) -> Iterator[TestClient]:
    drop_all_milvus(milvus_store)
    try:
        with client_for(tmp_path, store=milvus_store) as c:
            yield c
    finally:
        drop_all_milvus(milvus_store)


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
    tmp_path: Path, milvus_store: str, milvus_client: TestClient
) -> None:
    from pymilvus import DataType

    from gapfix.store.milvus.conn import connect, parse_store_uri

    mc = connect(parse_store_uri(milvus_store))
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
    with client_for(tmp_path, store=milvus_store) as again:
        err = assert_error(again.get("/v1/collections/mine"), 409, "conflict")
        assert err["param"] == "text" and "'text' is missing" in err["message"]


def test_connect_retries_a_refused_first_call_until_the_server_answers(tmp_path: Path) -> None:
    """A server still starting (or one that just closed the shared gRPC connection) refuses
    the first call; connect backs off and retries instead of failing the store or the job."""
    import time

    from gapfix.store.milvus.conn import CONNECT_RETRY_S, MilvusTarget, connect

    port = free_port()
    proc = launch_milvus_lite(tmp_path / "late", port)
    try:
        t0 = time.monotonic()
        client = connect(MilvusTarget(f"http://127.0.0.1:{port}"), timeout=30)
        took = time.monotonic() - t0
        assert client.list_collections() == []
        client.close()
        assert 0.05 < took < CONNECT_RETRY_S  # it waited for the start, within the window
    finally:
        stop(proc)


def test_milvus_down_mid_request_is_a_503_in_the_envelope(tmp_path: Path) -> None:
    proc, uri = start_milvus_lite(tmp_path / "m")
    uri = store_uri(uri)
    try:
        with client_for(tmp_path, store=uri, milvus_timeout_s=3) as client:
            assert client.post("/v1/collections", json={"name": "c", "dim": 4}).status_code == 201
            item = {"id": "a", "vector": [1.0, 0, 0, 0], "modality": "text"}
            assert client.post("/v1/collections/c/items", json={"items": [item]}).status_code == 200
            stop(proc)
            search = {"query": {"vector": [1.0, 0, 0, 0], "modality": "text"}}
            assert_error(client.post("/v1/collections/c/search", json=search), 503, "unavailable")
            item["id"] = "b"
            assert_error(
                client.post("/v1/collections/c/items", json={"items": [item]}), 503, "unavailable"
            )
            assert_error(client.get("/v1/collections/c/items/a"), 503, "unavailable")
    finally:
        stop(proc)


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


def test_answers_during_a_switch_come_from_the_old_space_and_name_it(milvus_store: str) -> None:
    from gapfix.store import ItemIn
    from gapfix.store.milvus import MilvusStore, parse_store_uri

    drop_all_milvus(milvus_store)
    _, img, txt = coco_items()
    store = MilvusStore(parse_store_uri(milvus_store), switch_batch=1)
    try:
        coll = store.create_collection("sw")
        coll.add([ItemIn(f"img{k}", image=img[k]) for k in range(100)]
                 + [ItemIn(f"txt{k}", text=txt[k]) for k in range(100)])  # fmt: skip
        assert coll.fit_transform("centering", wait_seconds=60)
        old = coll.search(txt[:5], "text", k=5)
        assert old.transform.method == "centering"
        assert coll.fit_transform("standardize", wait_seconds=0) is False
        seen = 0
        while coll.transform_status["status"] == "rebuilding":
            during = coll.search(txt[:5], "text", k=5)
            if coll.transform_status["status"] != "rebuilding":
                break
            if during.transform is not old.transform:  # flipped; the status follows the flip
                assert during.transform.method == "standardize"
                break
            assert during.transform is old.transform  # the old space, named as such
            assert [[h.id for h in q] for q in during.hits] == [[h.id for h in q]
                                                                 for q in old.hits]  # fmt: skip
            seen += 1
        assert seen > 0
        assert coll.wait_transform(60)
        assert coll.search(txt[:5], "text", k=5).transform.method == "standardize"
    finally:
        store.close()
        drop_all_milvus(milvus_store)


def test_replicas_over_one_milvus_share_collections_and_transforms(milvus_store: str) -> None:
    from gapfix.store import ItemIn
    from gapfix.store.milvus import MilvusStore, parse_store_uri

    drop_all_milvus(milvus_store)
    _, img, txt = coco_items()
    a = MilvusStore(parse_store_uri(milvus_store), refresh_s=0.0)
    b = MilvusStore(parse_store_uri(milvus_store), refresh_s=0.0)
    try:
        ca = a.create_collection("shared")
        ca.add([ItemIn(f"img{k}", image=img[k]) for k in range(50)]
               + [ItemIn(f"txt{k}", text=txt[k]) for k in range(50)])  # fmt: skip
        assert a.peek("shared") is ca and b.peek("shared") is None  # peek makes no Milvus call
        cb = b.get("shared")  # created by the other replica after this one started
        assert b.peek("shared") is cb
        assert cb.counts() == {"image": 50, "text": 50, "document": 0}
        assert ca.fit_transform("centering", wait_seconds=60)
        assert cb.active_transform.method == "centering"
        hits_a = ca.search(txt[:3], "text", k=5).hits
        hits_b = cb.search(txt[:3], "text", k=5).hits
        assert [[h.id for h in q] for q in hits_a] == [[h.id for h in q] for q in hits_b]
        gap_a, gap_b = ca.gap_statistics(), cb.gap_statistics()
        assert gap_a["centroid_gap"] == gap_b["centroid_gap"]
        cb.delete_item("img0")
        assert ca.counts()["image"] == 49
    finally:
        a.close()
        b.close()
        drop_all_milvus(milvus_store)


def test_a_missing_transform_artifact_leaves_the_items_reachable(milvus_store: str) -> None:
    from gapfix.store import ItemIn
    from gapfix.store.milvus import MilvusStore, parse_store_uri

    drop_all_milvus(milvus_store)
    _, img, txt = coco_items()
    store = MilvusStore(parse_store_uri(milvus_store))
    try:
        coll = store.create_collection("lost")
        coll.add([ItemIn(f"img{k}", image=img[k]) for k in range(20)]
                 + [ItemIn(f"txt{k}", text=txt[k]) for k in range(20)])  # fmt: skip
        assert coll.fit_transform("centering", wait_seconds=60)
        store.meta.prune_artifacts("lost", set())  # the artifact row is gone
        store.close()
        store = MilvusStore(parse_store_uri(milvus_store))
        again = store.get("lost")
        assert again.active_transform is None
        found = again.search(txt[:2], "text", k=3)
        assert found.transform is None and len(found.hits[0]) == 3
        assert again.count() == 40
    finally:
        store.close()
        drop_all_milvus(milvus_store)


def test_a_snapshot_of_a_milvus_collection_keeps_its_fingerprint(milvus_client) -> None:
    """transform_view / active_artifact: a named transform registered from a Milvus
    collection has the collection's fingerprint and corrects exactly as it does."""
    c = milvus_client
    ingest_and_fit(c, "snap")
    fp = c.get("/v1/collections/snap/transform").json()["fingerprint"]
    r = c.post("/v1/transforms", json={"name": "s", "from_collection": "snap"})
    assert r.status_code == 201 and r.json()["fingerprint"] == fp, r.text
    _, _, txt = coco_items()
    q = txt[:4].tolist()
    by_name = c.post("/v1/correct", json={"modality": "text", "vectors": q, "transform": "s"})
    by_coll = c.post("/v1/correct", json={"modality": "text", "vectors": q, "collection": "snap"})
    assert by_name.json()["fingerprint"] == by_coll.json()["fingerprint"] == fp
    assert np.allclose(by_name.json()["vectors"], by_coll.json()["vectors"], atol=1e-6)


def test_named_transforms_are_shared_by_every_replica_over_one_milvus(
    tmp_path: Path, milvus_store: str
) -> None:
    """Two gapfix replicas (separate data directories) over one Milvus: a transform registered,
    replaced or deleted through one is what the other serves (within GAPFIX_MILVUS_REFRESH_S),
    and a replica started later finds it: no volume holds named transforms."""
    import time

    from gapfix import make_transform
    from gapfix.transforms.artifact import transform_bytes
    from gapfix.transforms.registry import fingerprint

    _, img, txt = coco_items()
    centering = transform_bytes(make_transform("centering").fit(img, txt))
    shift = transform_bytes(make_transform("mean-shift", lam=0.5).fit(img, txt))
    octet = {"content-type": "application/octet-stream"}
    q = {"modality": "text", "vectors": txt[:3].tolist(), "transform": "shared"}
    drop_all_milvus(milvus_store)
    try:
        with (
            client_for(tmp_path / "a", store=milvus_store, milvus_refresh_s=0.5) as a,
            client_for(tmp_path / "b", store=milvus_store, milvus_refresh_s=0.5) as b,
        ):
            assert (
                a.put("/v1/transforms/shared", content=centering, headers=octet).status_code == 201
            )
            got = b.get("/v1/transforms/shared")  # an unknown name: b looks at once
            assert got.status_code == 200 and got.json()["fingerprint"] == fingerprint(centering)
            va, vb = a.post("/v1/correct", json=q).json(), b.post("/v1/correct", json=q).json()
            assert vb["fingerprint"] == va["fingerprint"] == fingerprint(centering)
            np.testing.assert_allclose(vb["vectors"], va["vectors"], atol=1e-6)
            # b registering other bytes under the name without replace: a conflict, as on a
            r = b.put("/v1/transforms/shared", content=shift, headers=octet)
            assert r.status_code == 409, r.text
            r = b.put("/v1/transforms/shared?replace=true", content=shift, headers=octet)
            assert r.status_code == 200, r.text
            time.sleep(0.6)  # a's refresh interval
            assert a.post("/v1/correct", json=q).json()["fingerprint"] == fingerprint(shift)
            names = [t["name"] for t in a.get("/v1/transforms").json()["transforms"]]
            assert names == ["shared"]
            assert not (tmp_path / "a" / "data" / "transforms").exists()  # nothing on disk
            assert a.delete("/v1/transforms/shared").status_code in (200, 204)
            time.sleep(0.6)
            assert_error(b.get("/v1/transforms/shared"), 404, "not_found")
            assert (
                b.put("/v1/transforms/shared", content=centering, headers=octet).status_code == 201
            )
        with client_for(tmp_path / "c", store=milvus_store) as c:  # a later replica
            assert c.get("/v1/transforms/shared").json()["fingerprint"] == fingerprint(centering)
    finally:
        drop_all_milvus(milvus_store)


def test_replicas_writing_one_collection_at_once_keep_counts_and_sums_exact(
    milvus_store: str,
) -> None:
    """Two replicas (two stores over one Milvus) add and delete items of one collection at the
    same time. Each writes only its own row of count and sum changes, so neither overwrites the
    other's: both see every item counted and the exact centroid gap of what is stored (no
    restart needed to repair them)."""
    import threading

    from gapfix.store import ItemIn
    from gapfix.store.milvus import MilvusStore, parse_store_uri
    from gapfix.store.sums import centroid_gap, component_sums

    drop_all_milvus(milvus_store)
    _, img, txt = coco_items()
    a = MilvusStore(parse_store_uri(milvus_store), replica="a")
    b = MilvusStore(parse_store_uri(milvus_store), replica="b")
    try:
        a.create_collection("both").add([ItemIn("seed", text=txt[249])])  # fixes the dim
        ca, cb = a.get("both"), b.get("both")
        errors: list[BaseException] = []

        def write(coll, prefix: str, rows: np.ndarray, modality: str) -> None:
            try:
                for start in range(0, 120, 10):
                    coll.add([ItemIn(f"{prefix}{k}", **{modality: rows[k]})
                              for k in range(start, start + 10)])  # fmt: skip
                coll.delete_items([f"{prefix}{k}" for k in range(0, 120, 6)])  # 20 of them
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=write, args=(ca, "img", img, "image")),
                   threading.Thread(target=write, args=(cb, "txt", txt, "text"))]  # fmt: skip
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not errors, errors
        kept = [k for k in range(120) if k % 6]
        unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731 - the store's rows
        truth = centroid_gap(
            component_sums(unit(img[kept]), unit(np.vstack([txt[kept], txt[249:250]])))
        )
        for coll in (ca, cb):
            v = coll.view(fresh=True)
            assert v.counts == {"image": 100, "text": 101, "document": 0}, v.counts
            assert coll.gap_statistics()["centroid_gap"]["raw"] == pytest.approx(truth, abs=1e-5)
    finally:
        a.close()
        b.close()
        drop_all_milvus(milvus_store)
