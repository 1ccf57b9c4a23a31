"""The Ray Data backend on a local Ray instance: same output as the single-machine path."""

from __future__ import annotations

import numpy as np
import pytest

from gapfix.jobs import EmbedOptions, read_manifest, run_correct, run_embed
from gapfix.jobs import testing as T
from gapfix.jobs.failures import read_failures

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]


@pytest.fixture(scope="module")
def ray_local():
    ray = pytest.importorskip("ray")
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    if started:
        ray.shutdown()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from gapfix.encoders import load_encoder

    root = tmp_path_factory.mktemp("ray")
    ckpt = T.write_tiny_checkpoint(root / "tiny.pt")
    table, _ = T.make_table(root / "tab", n=10, fmt="parquet")
    (root / "tab" / "images" / "huge.png").write_bytes(T.huge_png_bytes())
    with open(table.with_suffix(".csv"), "w") as fh:  # the same rows plus a header bomb
        import pyarrow.parquet as pq

        rows = pq.read_table(table).to_pylist()
        rows.append({"id": "huge", "image": "images/huge.png", "caption": "big", "score": -5})
        fh.write("id,image,caption,score\n")
        fh.writelines(f"{r['id']},{r['image']},{r['caption']},{r['score']}\n" for r in rows)
    encoder = load_encoder("gapfix-tiny", ckpt)
    opts = dict(
        model="gapfix-tiny", pretrained=ckpt, batch_size=4, shard_size=4, progress="off",
        thumbnail_size=8,
    )  # fmt: skip
    local = root / "local"
    run_embed(table.with_suffix(".csv"), local, EmbedOptions(workers=1, **opts), encoder=encoder)
    return {"root": root, "table": table.with_suffix(".csv"), "opts": opts, "enc": encoder,
            "local": local}  # fmt: skip


def _same(a_dir, b_dir):
    a, b = T.read_rows(a_dir), T.read_rows(b_dir)
    assert a.ids == b.ids and a.modalities == b.modalities and a.metadata == b.metadata
    assert a.captions == b.captions and a.thumbnails == b.thumbnails
    assert any(t is not None for t in a.thumbnails) and any(c is not None for c in a.captions)
    np.testing.assert_allclose(a.embeddings, b.embeddings, atol=1e-5)
    fa = sorted((f["id"], f["modality"], f["reason"]) for f in read_failures(a_dir))
    fb = sorted((f["id"], f["modality"], f["reason"]) for f in read_failures(b_dir))
    assert [x[:2] for x in fa] == [x[:2] for x in fb]
    ma, mb = read_manifest(a_dir), read_manifest(b_dir)
    assert ma["totals"] == mb["totals"] and ma["dim"] == mb["dim"]
    assert [s["rows"] for s in ma["shards"]] == [s["rows"] for s in mb["shards"]]


def test_ray_embed_equals_local_and_resumes(ray_local, setup):
    out = setup["root"] / "ray"
    opts = EmbedOptions(workers=1, ray="local", **setup["opts"])
    s = run_embed(setup["table"], out, opts, encoder=setup["enc"])
    assert s["complete"] and s["shards_written"] == 4 and s["failures"] == 5
    # the timing a rate after start-up is computed from (benchmarks/bench_embed.py)
    assert 0 < s["first_result_s"] <= s["last_result_s"] <= s["seconds"]
    assert 0 < s["first_items"] <= 11  # 10 rows + the oversized image, 4 per shard
    _same(out, setup["local"])
    assert any(f["id"] == "huge" for f in read_failures(out))
    # shard-level resume on Ray: a lost shard is redone, the others are skipped
    (out / "shards" / "part-00002.parquet").unlink()
    again = run_embed(setup["table"], out, opts, encoder=setup["enc"])
    assert again["shards_written"] == 1 and again["shards_skipped"] == 3
    _same(out, setup["local"])


def test_ray_correct_equals_local(ray_local, setup):
    from gapfix import make_transform
    from gapfix.jobs import iter_embedding_blocks

    local = setup["local"]
    img = np.concatenate(list(iter_embedding_blocks(local, "image")))
    txt = np.concatenate(list(iter_embedding_blocks(local, "text")))
    path = setup["root"] / "mean.safetensors"
    make_transform("mean-shift").fit(img, txt).save(path)
    a = run_correct(local, path, setup["root"] / "fix-local")
    b = run_correct(local, path, setup["root"] / "fix-ray", ray="local", workers=1)
    assert a["rows"] == b["rows"] and b["shards_written"] == 4
    _same(setup["root"] / "fix-ray", setup["root"] / "fix-local")


def test_a_pool_the_cluster_cannot_hold_is_refused_before_writing(ray_local, setup):
    from gapfix.errors import InputError

    cpus = int(ray_local.cluster_resources()["CPU"])
    out = setup["root"] / "too-many"
    opts = EmbedOptions(workers=cpus, ray="local", **setup["opts"])
    with pytest.raises(InputError, match="would take all"):
        run_embed(setup["table"], out, opts, encoder=setup["enc"])
    assert not out.exists()
