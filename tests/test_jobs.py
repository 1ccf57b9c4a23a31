"""Batch jobs on one machine: readers, shards, manifest, failures, resume, correct, index build."""

from __future__ import annotations

import io
import json
import shutil
import tarfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from gapfix.errors import ArtifactError, InputError
from gapfix.jobs import (
    build_index,
    iter_embedding_blocks,
    iter_paired_blocks,
    read_manifest,
    run_correct,
    run_embed,
)
from gapfix.jobs import testing as T
from gapfix.jobs.failures import read_failures
from gapfix.jobs.progress import Progress
from gapfix.jobs.shards import read_shard
from gapfix.jobs.sources import FolderSource, TableSource, WebDatasetSource, open_source

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _quiet(_msg: str) -> None:
    pass


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    folder = T.make_image_folder(root / "imgs", n=12)
    table, rows = T.make_table(root / "tab", n=10, fmt="csv")
    tars = T.make_webdataset(root / "wds", shards=2, per_shard=4)
    return {"root": root, "folder": folder, "table": table, "rows": rows, "tars": tars}


@pytest.fixture(scope="module")
def folder_run(data, ckpt, encoder, tmp_path_factory):
    out = tmp_path_factory.mktemp("out") / "folder"
    summary = run_embed(
        data["root"] / "imgs", out, T.tiny_options(ckpt), encoder=encoder, log=_quiet
    )
    return out, summary


@pytest.fixture(scope="module")
def table_run(data, ckpt, encoder, tmp_path_factory):
    out = tmp_path_factory.mktemp("out") / "table"
    summary = run_embed(data["table"], out, T.tiny_options(ckpt), encoder=encoder, log=_quiet)
    return out, summary


def _all_rows(out):
    d = T.read_rows(out)
    return d.ids, d.modalities, d.embeddings, d.metadata


# ------------------------------------------------------------------------------ readers


def test_folder_source_is_deterministic_and_sharded(data, tmp_path):
    src = FolderSource(str(data["root"] / "imgs"))
    plan = src.plan(5)
    assert plan.total_items == 16 and plan.ignored_files == 1  # 12 good + 4 bad, README skipped
    assert [len(s.files) for s in plan.shards] == [5, 5, 5, 1]
    ids = [f for s in plan.shards for f in s.files]
    assert ids == sorted(ids) and "sub/img000.png" in ids
    assert src.plan(5).fingerprint == plan.fingerprint
    items = src.read_items(plan.shards[0])
    assert [it.seq for it in items] == list(range(5)) and all(it.has_image for it in items)
    copy = tmp_path / "imgs"
    shutil.copytree(data["root"] / "imgs", copy)
    (copy / "extra.png").write_bytes(T.image_bytes(5))
    assert FolderSource(str(copy)).plan(5).fingerprint != plan.fingerprint


@pytest.mark.parametrize("fmt", ["tsv", "parquet"])
def test_table_formats_read_the_same_items(data, tmp_path, fmt):
    csv_src = TableSource(str(data["table"]))
    path, _ = T.make_table(tmp_path, n=10, fmt=fmt)
    other = TableSource(str(path))
    a = [it for s in csv_src.plan(5).shards for it in csv_src.read_items(s)]
    b = [it for s in other.plan(5).shards for it in other.read_items(s)]
    key = [(it.id, it.text, it.metadata, it.has_image, it.image is None) for it in a]
    assert key == [(it.id, it.text, it.metadata, it.has_image, it.image is None) for it in b]
    assert a[0].id == "pair-000" and a[0].metadata == {"score": 0}
    assert a[0].image.path.endswith("images/p000.png")
    assert [it.id for it in a][-4:] == ["empty-caption", "missing-file", "corrupt", "no-image"]


def test_table_without_id_or_needed_columns(tmp_path):
    (tmp_path / "c.csv").write_text("caption,lang\nhello,en\n,fr\n")
    src = TableSource(str(tmp_path / "c.csv"))
    items = src.read_items(src.plan(10).shards[0])
    assert [(it.id, it.text, it.metadata, it.has_image) for it in items] == [
        ("0", "hello", {"lang": "en"}, False),
        ("1", "", {"lang": "fr"}, False),
    ]
    (tmp_path / "bad.csv").write_text("foo,bar\n1,2\n")
    with pytest.raises(InputError, match="caption"):
        TableSource(str(tmp_path / "bad.csv")).plan(10)


def test_webdataset_source(data, tmp_path):
    src = open_source(str(data["root"] / "wds"))
    assert isinstance(src, WebDatasetSource) and len(src.tars) == 2
    plan = src.plan(1000)
    assert len(plan.shards) == 2 and plan.total_items is None
    items = src.read_items(plan.shards[0])
    assert [it.id for it in items] == [f"s00/{j:04d}" for j in range(4)]
    assert items[1].text == "caption 0-1" and items[1].metadata == {"shard": 0, "j": 1}
    assert items[0].image.offset > 0 and items[0].image.read()[:2] == b"\xff\xd8"  # a JPEG
    pattern = str(data["root"] / "wds" / "wds-{00000..00001}.tar")
    assert open_source(pattern).tars == src.tars
    # a gzipped tar is read sequentially; its images travel inline
    gz = tmp_path / "x.tar.gz"
    with tarfile.open(gz, "w:gz") as tf:
        for name, blob in (("k.png", T.image_bytes(1)), ("k.txt", b"hi")):
            info = tarfile.TarInfo(name)
            info.size = len(blob)
            tf.addfile(info, io.BytesIO(blob))
    (it,) = open_source(str(gz)).read_items(open_source(str(gz)).plan(1).shards[0])
    assert it.id == "k" and it.text == "hi" and it.image.data == T.image_bytes(1)
    # a tar cut short: the samples before the cut are kept, the damage is reported
    blob = data["tars"][0].read_bytes()
    (tmp_path / "cut.tar").write_bytes(blob[: len(blob) // 2])
    cut = open_source(str(tmp_path / "cut.tar"))
    items = cut.read_items(cut.plan(1).shards[0])
    assert items[0].id == "s00/0000" and items[0].error is None
    assert items[-1].id == "cut.tar#damaged"
    assert (
        items[-1].error.startswith(("truncated tar", "corrupt tar")) and "after" in items[-1].error
    )


def test_open_source_errors(tmp_path):
    with pytest.raises(InputError, match="not found"):
        open_source(str(tmp_path / "nope"))
    (tmp_path / "x.bin").write_bytes(b"x")
    with pytest.raises(InputError, match="unsupported input"):
        open_source(str(tmp_path / "x.bin"))
    with pytest.raises(InputError, match="matches no tar"):
        open_source(str(tmp_path / "a-{0..3}.txt"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no image files"):
        open_source(str(tmp_path / "empty")).plan(10)


# ------------------------------------------------------------------------------ embed


def test_embed_folder_output_format_and_failures(folder_run, data, encoder):
    out, summary = folder_run
    m = read_manifest(out / "manifest.json")
    assert m["format"] == "gapfix-shards" and m["format_version"] == 1 and m["kind"] == "embed"
    assert m["dim"] == 32 and m["model"]["id"] == encoder.model_id
    assert m["complete"] and len(m["shards"]) == 4
    assert m["input"]["kind"] == "folder" and len(m["input"]["fingerprint"]) == 64
    assert m["totals"] == {
        "rows": 12, "image": 12, "text": 0, "items": 16, "failures": 4,
        "shards_done": 4, "shards_total": 4,
    }  # fmt: skip
    assert summary["items"] == 16 and summary["failures"] == 4 and summary["rows"]["image"] == 12
    assert 0 < summary["model_busy"] <= 1 and summary["model_s"] > 0
    schema = pq.read_schema(out / m["shards"][0]["file"])
    assert schema.field("embedding").type == pa.list_(pa.float32(), 32)
    assert [schema.field(c).type for c in ("id", "modality", "metadata")] == [pa.string()] * 3
    fails = {f["id"]: f for f in read_failures(out)}
    assert set(fails) == {
        f"bad/{k}" for k in ("corrupt.jpg", "truncated.png", "huge.png", "empty.png")
    }
    assert all(f["modality"] == "image" and f["source"].endswith(f["id"]) for f in fails.values())
    assert "pixels" in fails["bad/huge.png"]["reason"] or "bomb" in fails["bad/huge.png"]["reason"]
    assert "truncated" in fails["bad/truncated.png"]["reason"]
    assert "empty" in fails["bad/empty.png"]["reason"]
    ids, mods, emb, meta = _all_rows(out)
    assert ids == data["folder"]["good"] and set(mods) == {"image"}
    assert set(meta) == {"{}"}
    root = data["root"] / "imgs"
    direct = encoder.encode_images([(root / i).read_bytes() for i in ids])
    np.testing.assert_allclose(emb, direct, atol=1e-5)


def test_embed_table_pairs(table_run, data, encoder):
    out, summary = table_run
    ids, mods, emb, meta = _all_rows(out)
    pairs = [f"pair-{i:03d}" for i in range(10)]
    assert list(zip(ids[:4], mods[:4], strict=True)) == [
        ("pair-000", "image"), ("pair-000", "text"), ("pair-001", "image"), ("pair-001", "text"),
    ]  # fmt: skip
    assert ids[20:] == ["empty-caption", "missing-file", "corrupt", "no-image"]
    assert mods[20:] == ["image", "text", "text", "text"]
    assert json.loads(meta[0]) == {"score": 0}
    shard0 = read_shard(out / "shards" / "part-00000.parquet")
    assert shard0.captions[:2] == [None, "a photo number 0"] and set(shard0.thumbnails) == {None}
    text_rows = [i for i, m in enumerate(mods) if m == "text"][:10]
    np.testing.assert_allclose(
        emb[text_rows], encoder.encode_texts([f"a photo number {i}" for i in range(10)]), atol=1e-5
    )
    assert [ids[i] for i in text_rows] == pairs
    fails = {(f["id"], f["modality"]): f["reason"] for f in read_failures(out)}
    assert fails.keys() == {
        ("empty-caption", "text"), ("missing-file", "image"), ("corrupt", "image"),
        ("no-image", "image"),
    }  # fmt: skip
    assert fails[("empty-caption", "text")] == "empty caption"
    assert fails[("missing-file", "image")].startswith("missing file")
    assert summary["failures"] == 4 and summary["rows"] == {"image": 11, "text": 13}


def test_embed_with_thumbnails(data, ckpt, encoder, tmp_path, folder_run):
    from PIL import Image

    out = tmp_path / "thumbs"
    run_embed(
        data["root"] / "imgs",
        out,
        T.tiny_options(ckpt, thumbnail_size=16),
        encoder=encoder,
        log=_quiet,
    )
    shard = read_shard(out / "shards" / "part-00000.parquet")
    assert all(t is not None and t[:2] == b"\xff\xd8" for t in shard.thumbnails)
    assert max(Image.open(io.BytesIO(shard.thumbnails[0])).size) == 16
    assert read_manifest(out)["input"]["thumbnail_size"] == 16
    a, b = _all_rows(out), _all_rows(folder_run[0])
    assert a[0] == b[0] and a[3] == b[3]
    np.testing.assert_allclose(a[2], b[2], atol=1e-6)  # decoding here changes nothing
    assert read_failures(out) == read_failures(folder_run[0])
    from gapfix.store import Store

    build_index(out, tmp_path / "data", "t", progress_mode="off", log=_quiet)
    with Store(tmp_path / "data") as store:
        assert store.get("t").get_thumbnail(shard.ids[0]) == shard.thumbnails[0]
    with pytest.raises(InputError, match="thumbnails"):
        run_embed(
            data["root"] / "imgs", out, T.tiny_options(ckpt, thumbnail_size=5000), encoder=encoder
        )


def test_embed_webdataset(data, ckpt, encoder, tmp_path):
    s = run_embed(
        data["root"] / "wds", tmp_path / "o", T.tiny_options(ckpt), encoder=encoder, log=_quiet
    )
    assert s["shards_written"] == 2 and s["rows"] == {"image": 9, "text": 9}
    ids, mods, _, meta = _all_rows(tmp_path / "o")
    assert ids[:2] == ["s00/0000", "s00/0000"] and mods[:2] == ["image", "text"]
    assert json.loads(meta[0]) == {"j": 0, "shard": 0}
    fails = {(f["id"], f["modality"]) for f in read_failures(tmp_path / "o")}
    assert fails == {("bad/corrupt", "image"), ("bad/emptycap", "text")}


def test_rerun_skips_finished_and_redoes_broken_shards(folder_run, data, ckpt, encoder, tmp_path):
    src, _ = folder_run
    out = tmp_path / "copy"
    shutil.copytree(src, out)
    again = run_embed(data["root"] / "imgs", out, T.tiny_options(ckpt), encoder=encoder, log=_quiet)
    assert again["shards_written"] == 0 and again["shards_skipped"] == 4
    before = _all_rows(src)
    (out / "shards" / "part-00001.parquet").unlink()  # lost
    p2 = out / "shards" / "part-00002.parquet"
    p2.write_bytes(p2.read_bytes()[:100])  # torn
    (out / "shards" / "part-00003.parquet.tmp-999").write_bytes(b"junk")  # a killed writer
    logs = []
    again = run_embed(
        data["root"] / "imgs", out, T.tiny_options(ckpt), encoder=encoder, log=logs.append
    )
    assert again["shards_written"] == 2 and again["shards_skipped"] == 2
    assert any("part-00001" in x and "missing" in x for x in logs)
    assert any("part-00002" in x and "unreadable" in x for x in logs)
    assert not list((out / "shards").glob("*.tmp-*"))
    after = _all_rows(out)
    assert after[0] == before[0] and after[3] == before[3]
    np.testing.assert_allclose(after[2], before[2], atol=1e-6)
    assert read_failures(out) == read_failures(src)
    assert read_manifest(out)["totals"] == read_manifest(src)["totals"]


def test_rerun_with_other_input_or_model_is_refused(folder_run, data, ckpt, encoder, tmp_path):
    src, _ = folder_run
    out = tmp_path / "copy"
    shutil.copytree(src, out)
    with pytest.raises(InputError, match="different job"):
        run_embed(data["table"], out, T.tiny_options(ckpt), encoder=encoder, log=_quiet)
    with pytest.raises(InputError, match="different job"):
        run_embed(data["root"] / "imgs", out, T.tiny_options(ckpt, shard_size=3), encoder=encoder)


def test_embed_rejects_bad_options(data, ckpt, encoder, tmp_path):
    with pytest.raises(InputError, match="batch-size"):
        run_embed(
            data["table"], tmp_path / "o", T.tiny_options(ckpt, batch_size=0), encoder=encoder
        )
    assert not (tmp_path / "o").exists()


def test_embed_in_process_without_workers(data, ckpt, encoder, tmp_path, table_run):
    s = run_embed(
        data["table"],
        tmp_path / "o",
        T.tiny_options(ckpt, workers=0, batch_size=3),
        encoder=encoder,
        log=_quiet,
    )
    assert s["complete"]
    a, b = _all_rows(tmp_path / "o"), _all_rows(table_run[0])
    assert a[0] == b[0] and a[1] == b[1]
    np.testing.assert_allclose(a[2], b[2], atol=1e-5)


# ------------------------------------------------------------------------------ shards


def test_iter_embedding_blocks_streams_one_modality(table_run):
    out, _ = table_run
    _ids, mods, emb, _ = _all_rows(out)
    for modality in ("image", "text"):
        blocks = list(iter_embedding_blocks(out / "manifest.json", modality, block_rows=4))
        assert all(
            b.shape[0] <= 4 and b.dtype == np.float32 and b.flags.c_contiguous for b in blocks
        )
        want = emb[[i for i, m in enumerate(mods) if m == modality]]
        np.testing.assert_array_equal(np.concatenate(blocks), want)
    with pytest.raises(InputError):
        list(iter_embedding_blocks(out, "audio"))
    pairs = list(iter_paired_blocks(out, block_rows=3))
    img = np.concatenate([p[0] for p in pairs])
    txt = np.concatenate([p[1] for p in pairs])
    assert img.shape == txt.shape == (10, 32)
    np.testing.assert_array_equal(img, emb[0:20:2])
    np.testing.assert_array_equal(txt, emb[1:20:2])


def test_read_manifest_checks_format(tmp_path, folder_run):
    out, _ = folder_run
    m = json.loads((out / "manifest.json").read_text())
    m["format_version"] = 2
    (tmp_path / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ArtifactError, match="version"):
        read_manifest(tmp_path / "manifest.json")
    (tmp_path / "manifest.json").write_text('{"hello": 1}')
    with pytest.raises(ArtifactError, match="not a gapfix shard manifest"):
        read_manifest(tmp_path)
    with pytest.raises(InputError, match="not found"):
        read_manifest(tmp_path / "nope" / "manifest.json")


def test_progress_log_lines():
    buf = io.StringIO()
    t = iter([0.0, 2.0, 4.0])
    p = Progress("embed", 100, mode="auto", interval=1.0, stream=buf, clock=lambda: next(t))
    assert p.mode == "log"  # StringIO is not a terminal
    p.update(10, 1)
    p.update(10)
    lines = buf.getvalue().splitlines()
    assert lines[0] == "embed: 10/100 items (10.0%), 5.0 items/s, ETA 0:00:18, 1 failures"
    assert lines[1].startswith("embed: 20/100 items (20.0%), 5.0 items/s, ETA 0:00:16")


# ------------------------------------------------------------------------------ correct


def _fit_centering(out, path):
    from gapfix import make_transform

    img = np.concatenate(list(iter_embedding_blocks(out, "image")))
    txt = np.concatenate(list(iter_embedding_blocks(out, "text")))
    t = make_transform("centering").fit(img, txt)
    t.save(path)
    return t


def test_correct_applies_the_transform_to_every_shard(table_run, tmp_path):
    src, _ = table_run
    t = _fit_centering(src, tmp_path / "c.safetensors")
    s = run_correct(
        src / "manifest.json", tmp_path / "c.safetensors", tmp_path / "fixed", log=_quiet
    )
    assert s["shards_written"] == 3 and s["rows"] == {"image": 11, "text": 13}
    m = read_manifest(tmp_path / "fixed")
    assert s["items"] == m["totals"]["items"] == read_manifest(src)["totals"]["items"]
    assert m["kind"] == "correct" and m["transform"]["method"] == "centering"
    assert len(m["transform"]["sha256"]) == 64 and m["complete"]
    ids, mods, emb, meta = _all_rows(src)
    ids2, mods2, emb2, meta2 = _all_rows(tmp_path / "fixed")
    assert (ids2, mods2, meta2) == (ids, mods, meta)
    mods_a = np.asarray(mods)
    for mod in ("image", "text"):
        np.testing.assert_allclose(
            emb2[mods_a == mod], t.transform(emb[mods_a == mod], mod), atol=1e-6
        )
    again = run_correct(src, tmp_path / "c.safetensors", tmp_path / "fixed", log=_quiet)
    assert again["shards_written"] == 0 and again["shards_skipped"] == 3
    # the same output folder with another transform is another job
    t2 = _fit_centering(tmp_path / "fixed", tmp_path / "c2.safetensors")
    assert t2 is not None
    with pytest.raises(InputError, match="different job"):
        run_correct(src, tmp_path / "c2.safetensors", tmp_path / "fixed", log=_quiet)


def test_correct_refuses_mismatched_or_unfinished_input(table_run, tmp_path):
    from gapfix import make_transform

    src, _ = table_run
    rng = np.random.default_rng(0)
    make_transform("centering").fit(rng.normal(size=(8, 16)), rng.normal(size=(8, 16))).save(
        tmp_path / "d16.safetensors"
    )
    with pytest.raises(InputError, match="dimension 16"):
        run_correct(src, tmp_path / "d16.safetensors", tmp_path / "o", log=_quiet)
    partial = tmp_path / "partial"
    shutil.copytree(src, partial)
    m = json.loads((partial / "manifest.json").read_text())
    m["shards"], m["complete"] = m["shards"][:1], False
    (partial / "manifest.json").write_text(json.dumps(m))
    _fit_centering(src, tmp_path / "c.safetensors")
    with pytest.raises(InputError, match="not finished"):
        run_correct(partial, tmp_path / "c.safetensors", tmp_path / "o2", log=_quiet)


# ------------------------------------------------------------------------------ index build


def test_index_build_makes_a_servable_collection(table_run, folder_run, tmp_path):
    from gapfix.store import Store

    src, _ = table_run
    _fit_centering(src, tmp_path / "c.safetensors")
    data_dir = tmp_path / "data"
    s = build_index(
        src, data_dir, "pairs", transform=tmp_path / "c.safetensors", progress_mode="off",
        log=_quiet,
    )  # fmt: skip
    assert s["added"] == 14 and s["rows"] == 24
    s2 = build_index(folder_run[0], data_dir, "imgs", index="hnsw", progress_mode="off", log=_quiet)
    assert s2["added"] == 12
    s3 = build_index(src, data_dir, "split", pairs="split", progress_mode="off", log=_quiet)
    assert s3["added"] == 24
    with pytest.raises(InputError, match="already exists"):
        build_index(src, data_dir, "pairs", progress_mode="off", log=_quiet)
    s4 = build_index(src, data_dir, "pairs", upsert=True, progress_mode="off", log=_quiet)
    assert s4["replaced"] == 14 and s4["added"] == 0
    _ids, _mods, emb, _ = _all_rows(src)
    with Store(data_dir) as store:  # what `gapfix serve --data-dir` opens
        assert store.names() == ["imgs", "pairs", "split"]
        pairs = store.get("pairs")
        assert pairs.counts() == {"image": 1, "text": 3, "document": 10}
        assert pairs.info()["transform"] == "centering"
        item = pairs.get_item("pair-003")
        assert item.modality == "document" and item.metadata == {"score": 3}
        np.testing.assert_allclose(item.image, emb[6], atol=1e-6)
        split = store.get("split")
        assert split.counts() == {"image": 11, "text": 13, "document": 0}
        assert split.get_item("pair-003#text").modality == "text"
        assert split.get_item("pair-003#text").caption == "a photo number 3"
        assert pairs.get_item("pair-003").caption == "a photo number 3"
        assert store.get("imgs").info()["index"] == "hnsw"
        (hit, *_), *_ = split.search(emb[1:2], "text", k=1, modalities=["text"]).hits
        assert hit.id == "pair-000#text"


def test_index_build_refuses_bad_input_and_leaves_nothing(table_run, tmp_path):
    from gapfix.store import Store

    src, _ = table_run
    dup = tmp_path / "dup"
    shutil.copytree(src, dup)
    m = json.loads((dup / "manifest.json").read_text())
    shard = read_shard(dup / m["shards"][1]["file"])
    shard.ids[0] = "pair-000"  # pair-000 is in shard 0 too
    from gapfix.jobs.shards import write_shard

    write_shard(dup / m["shards"][1]["file"], shard, 32)
    with pytest.raises(InputError, match="pair-000"):
        build_index(dup, tmp_path / "data", "c", progress_mode="off", log=_quiet)
    with Store(tmp_path / "data") as store:
        assert store.names() == []
    fixed = tmp_path / "fixed"
    _fit_centering(src, tmp_path / "c.safetensors")
    run_correct(src, tmp_path / "c.safetensors", fixed, log=_quiet)
    with pytest.raises(InputError, match="raw embeddings"):
        build_index(fixed, tmp_path / "data", "c", progress_mode="off", log=_quiet)
    with pytest.raises(InputError, match="invalid collection name"):
        build_index(src, tmp_path / "data", "a b", progress_mode="off", log=_quiet)


# ------------------------------------------------------------------------------ CLI


def test_cli_embed_correct_index_build(data, ckpt, tmp_path):
    from typer.testing import CliRunner

    from gapfix.cli import app

    runner = CliRunner()
    r = runner.invoke(
        app,
        ["embed", str(data["table"]), "--out", str(tmp_path / "emb"), "--model", "gapfix-tiny",
         "--pretrained", ckpt, "--batch-size", "8", "--shard-size", "7", "--workers", "1",
         "--progress", "log", "--json"],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)
    assert summary["items"] == 14 and summary["failures"] == 4 and summary["shards_written"] == 2
    _fit_centering(tmp_path / "emb", tmp_path / "c.safetensors")
    r = runner.invoke(
        app,
        ["correct", "--manifest", str(tmp_path / "emb" / "manifest.json"), "--transform",
         str(tmp_path / "c.safetensors"), "--out", str(tmp_path / "fix"), "--json"],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["rows"] == {"image": 11, "text": 13}
    r = runner.invoke(
        app,
        ["index", "build", "--manifest", str(tmp_path / "emb" / "manifest.json"), "--data-dir",
         str(tmp_path / "data"), "--collection", "coco", "--index", "flat", "--transform",
         str(tmp_path / "c.safetensors"), "--json"],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["added"] == 14


@pytest.mark.parametrize(
    "args, message",
    [
        (["embed", "{missing}", "--out", "{out}"], "input not found"),
        (["embed", "{table}", "--out", "{out}", "--batch-size", "0"], "--batch-size must be"),
        (["correct", "--manifest", "{missing}", "--transform", "x", "--out", "{out}"], "manifest"),
        (["index", "build", "--manifest", "{missing}", "--data-dir", "{out}", "--collection",
          "c"], "manifest not found"),
    ],
)  # fmt: skip
def test_cli_bad_input_is_one_line_exit_2(data, tmp_path, args, message):
    from typer.testing import CliRunner

    from gapfix.cli import app

    subs = {
        "missing": str(tmp_path / "nope"),
        "out": str(tmp_path / "o"),
        "table": str(data["table"]),
    }
    r = CliRunner().invoke(app, [a.format(**subs) for a in args])
    assert r.exit_code == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gapfix: error:") and message in lines[0]
    assert not (tmp_path / "o" / "shards").exists()


@pytest.mark.gpu
def test_embed_on_gpu_matches_cpu(data, ckpt, table_run, tmp_path):
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    opts = T.tiny_options(ckpt, device="cuda", precision="fp32")
    s = run_embed(data["table"], tmp_path / "gpu", opts, log=_quiet)  # pinned-memory loader
    assert s["complete"] and s["failures"] == 4
    a, b = _all_rows(tmp_path / "gpu"), _all_rows(table_run[0])
    assert a[0] == b[0] and a[1] == b[1]
    np.testing.assert_allclose(a[2], b[2], atol=1e-4)
