"""`gapfix index build --store milvus://...`: embedding shards into a Milvus collection that
`gapfix serve --store` serves, with the same answers as the embedded build of the shards."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from gapfix import make_transform
from gapfix.cli import app
from gapfix.jobs import testing as T
from gapfix.jobs.index import build_index
from gapfix.store import Store
from tests.milvus_server import store_uri
from tests.test_api import drop_all_milvus


def _quiet(_msg: str) -> None:
    pass


@pytest.fixture
def built(coco, tmp_path, milvus_uri):
    """250 COCO pairs as embed shards and a centering transform; the Milvus server empty."""
    uri = store_uri(milvus_uri)
    drop_all_milvus(uri)
    manifest = T.write_pair_shards(tmp_path / "emb", coco["image"], coco["text"], shard_size=50)
    tr = tmp_path / "centering.safetensors"
    make_transform("centering").fit(coco["image"], coco["text"]).save(tr)
    yield {"uri": uri, "manifest": manifest, "transform": tr}
    drop_all_milvus(uri)


def test_index_build_fills_a_served_milvus_collection(built, coco, tmp_path) -> None:
    from gapfix.store.milvus import MilvusStore, parse_store_uri

    args = ["index", "build", "--manifest", str(built["manifest"]), "--store", built["uri"],
            "--collection", "coco", "--transform", str(built["transform"]), "--progress", "off",
            "--json"]  # fmt: skip
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["store"] == built["uri"] and summary["added"] == 250
    build_index(built["manifest"], tmp_path / "data", "coco", transform=built["transform"],
                progress_mode="off", log=_quiet)  # fmt: skip
    q = coco["text"][:20]
    with MilvusStore(parse_store_uri(built["uri"])) as ms, Store(tmp_path / "data") as es:
        m, e = ms.get("coco"), es.get("coco")
        assert m.counts() == e.counts() == {"image": 0, "text": 0, "document": 250}
        assert m.info()["transform"] == "centering"
        for corrected in (False, True):
            fm = m.search(q, "text", k=10, corrected=corrected)
            fe = e.search(q, "text", k=10, corrected=corrected)
            assert (fm.transform is None) == (not corrected)
            assert [[h.id for h in r] for r in fm.hits] == [[h.id for h in r] for r in fe.hits]
        item = m.get_item("pair-000007")
        want = coco["image"][7].astype(np.float32)
        np.testing.assert_allclose(item.image, want / np.linalg.norm(want), atol=1e-6)
        np.testing.assert_allclose(item.image, e.get_item("pair-000007").image, atol=1e-7)
    # a rerun without --upsert is refused; with it, every id is replaced, none added
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 2 and "already exists in milvus://" in res.output
    res = CliRunner().invoke(app, [*args, "--upsert"])
    assert res.exit_code == 0, res.output
    again = json.loads(res.stdout)
    assert (again["added"], again["replaced"]) == (0, 250)


@pytest.mark.parametrize(
    ("store", "message"),
    [
        ("qdrant://127.0.0.1:6333", "--store must be 'embedded' or milvus://"),
        ("embedded", "needs --data-dir"),
    ],
)
def test_index_build_bad_store_is_one_line_exit_2(built, store, message) -> None:
    res = CliRunner().invoke(app, ["index", "build", "--manifest", str(built["manifest"]),
                                   "--store", store, "--collection", "c", "--progress", "off"])  # fmt: skip
    assert res.exit_code == 2
    assert message in res.output and len(res.output.strip().splitlines()) == 1
