"""Regression tests for bugs found auditing the batch jobs (embed, correct, index build)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from gapfix import make_transform
from gapfix.errors import InputError
from gapfix.jobs import build_index, iter_embedding_blocks, run_correct, run_embed
from gapfix.jobs import testing as T
from gapfix.jobs.sources import FolderSource, TableSource, WebDatasetSource, open_source

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _quiet(_msg: str) -> None:
    pass


@pytest.fixture(scope="module")
def pairs_run(ckpt, encoder, tmp_path_factory):
    root = tmp_path_factory.mktemp("pairs")
    table, _ = T.make_table(root, n=6, fmt="csv", bad=False)
    summary = run_embed(
        table, root / "emb", T.tiny_options(ckpt, workers=0), encoder=encoder, log=_quiet
    )
    assert summary["complete"]
    return root / "emb"


def test_existing_paths_with_glob_or_brace_characters_are_not_patterns(tmp_path):
    folder = tmp_path / "photos [2020] {a}"
    T.make_image_folder(folder, n=2, bad=False)
    assert isinstance(open_source(str(folder)), FolderSource)
    table, _ = T.make_table(tmp_path / "t", n=2, bad=False)
    star = table.with_name("pairs*.csv")
    shutil.copy(table, star)
    assert isinstance(open_source(str(star)), TableSource)
    (tar,) = T.make_webdataset(tmp_path / "w", shards=1, per_shard=2, bad=False)
    odd = tar.with_name("shard[1].tar")
    tar.rename(odd)
    src = open_source(str(odd))
    assert isinstance(src, WebDatasetSource) and src.tars == [str(odd)]


def test_non_finite_metadata_is_stored_as_json_null(ckpt, encoder, tmp_path):
    (tmp_path / "t.csv").write_text("id,caption,score\na,x,1.5\nb,y,inf\nc,z,-inf\n")
    out = tmp_path / "emb"
    run_embed(tmp_path / "t.csv", out, T.tiny_options(ckpt, workers=0), encoder=encoder, log=_quiet)
    meta = [json.loads(m) for m in T.read_rows(out).metadata]  # strict JSON: no Infinity
    assert [m["score"] for m in meta] == [1.5, None, None]
    s = build_index(out, tmp_path / "data", "c", progress_mode="off", log=_quiet)
    assert s["added"] == 3


def test_bad_progress_and_index_kind_are_refused_before_writing(pairs_run, tmp_path):
    img = np.concatenate(list(iter_embedding_blocks(pairs_run, "image")))
    txt = np.concatenate(list(iter_embedding_blocks(pairs_run, "text")))
    make_transform("centering").fit(img, txt).save(tmp_path / "c.gapfix")
    with pytest.raises(InputError, match="progress"):
        run_correct(pairs_run, tmp_path / "c.gapfix", tmp_path / "fix", progress_mode="bogus")
    assert not (tmp_path / "fix").exists()
    with pytest.raises(InputError, match="progress"):
        build_index(pairs_run, tmp_path / "d1", "c", progress_mode="bogus", log=_quiet)
    with pytest.raises(InputError, match="index kind"):
        build_index(pairs_run, tmp_path / "d2", "c", index="bogus", progress_mode="off")
    assert not (tmp_path / "d1").exists() and not (tmp_path / "d2").exists()


def test_a_second_run_into_a_busy_out_folder_is_refused(tmp_path):
    from gapfix.atomic import temp_path
    from gapfix.jobs.runner import ShardJob

    def job() -> ShardJob:
        info = {"kind": "folder", "fingerprint": "f", "num_shards": 2}
        return ShardJob(tmp_path / "out", kind="embed", model={}, dim=4, input_info=info)

    first = job()
    assert first.open() == [0, 1]
    writing = temp_path(first.shard_path(0))  # the first run is mid-way through a shard
    writing.parent.mkdir()
    writing.write_bytes(b"half a parquet file")
    with pytest.raises(InputError, match="in use by another"):
        job().open()
    assert writing.exists()  # not swept away as a stale temp file
    writing.unlink()
    first.finish()
    assert job().open() == [0, 1]  # free again once the first run is over


def test_names_that_are_not_utf8_become_escaped_ids(ckpt, encoder, tmp_path):
    import io
    import os
    import tarfile

    bad = b"b\xffd".decode("utf-8", "surrogateescape")  # how Python hands such names over
    folder = tmp_path / "imgs"
    T.make_image_folder(folder, n=2, bad=False)
    with open(os.fsencode(folder) + b"/b\xffd.png", "wb") as fh:
        fh.write(T.image_bytes(3))
    with open(os.fsencode(folder) + b"/c\xff.png", "wb") as fh:
        fh.write(b"not an image")
    s = run_embed(
        folder, tmp_path / "f", T.tiny_options(ckpt, workers=0), encoder=encoder, log=_quiet
    )
    assert s["complete"] and s["rows"]["image"] == 3 and s["failures"] == 1
    assert "b\\xffd.png" in T.read_rows(tmp_path / "f").ids
    tar = tmp_path / "w.tar"
    with tarfile.open(tar, "w", format=tarfile.GNU_FORMAT) as tf:
        for name, blob in ((f"{bad}.png", T.image_bytes(1)), (f"{bad}.txt", b"a caption")):
            info = tarfile.TarInfo(name)
            info.size = len(blob)
            tf.addfile(info, io.BytesIO(blob))
    s = run_embed(tar, tmp_path / "w", T.tiny_options(ckpt, workers=0), encoder=encoder, log=_quiet)
    assert s["complete"] and s["rows"] == {"image": 1, "text": 1}
    assert T.read_rows(tmp_path / "w").ids == ["b\\xffd", "b\\xffd"]


@pytest.mark.parametrize(
    "damage",
    [
        lambda m: m["shards"][0].pop("index"),
        lambda m: m["shards"][1].pop("rows"),
        lambda m: m.update(shards=["x"]),
        lambda m: m.update(shards=None),
        lambda m: m.update(input={}),
        lambda m: m.update(dim="abc"),
        lambda m: m["shards"][1].update(index=0),  # twice, and shard 1 missing
    ],
)
def test_damaged_manifest_is_a_one_line_error(pairs_run, tmp_path, damage):
    from typer.testing import CliRunner

    from gapfix.cli import app

    src = tmp_path / "src"
    shutil.copytree(pairs_run, src)
    m = json.loads((src / "manifest.json").read_text())
    damage(m)
    (src / "manifest.json").write_text(json.dumps(m))
    img = np.concatenate(list(iter_embedding_blocks(pairs_run, "image")))
    txt = np.concatenate(list(iter_embedding_blocks(pairs_run, "text")))
    make_transform("centering").fit(img, txt).save(tmp_path / "c.gapfix")
    for args in (
        ["correct", "--manifest", str(src), "--transform", str(tmp_path / "c.gapfix"), "--out"],
        ["index", "build", "--manifest", str(src), "--collection", "c", "--data-dir"],
    ):
        r = CliRunner().invoke(app, [*args, str(tmp_path / "out"), "--progress", "off"])
        lines = r.stderr.strip().splitlines()
        assert r.exit_code == 2 and len(lines) == 1, r.output
        assert lines[0].startswith("gapfix: error:") and "manifest" in lines[0]
        assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("damage", ["truncate", "delete"])
def test_correct_checks_every_input_shard_before_writing(pairs_run, tmp_path, damage):
    src = tmp_path / "src"
    shutil.copytree(pairs_run, src)
    last = sorted((src / "shards").iterdir())[-1]
    if damage == "truncate":
        last.write_bytes(last.read_bytes()[:300])
    else:
        last.unlink()
    img = np.concatenate(list(iter_embedding_blocks(pairs_run, "image")))
    txt = np.concatenate(list(iter_embedding_blocks(pairs_run, "text")))
    make_transform("centering").fit(img, txt).save(tmp_path / "c.gapfix")
    with pytest.raises(InputError, match=last.name):
        run_correct(src, tmp_path / "c.gapfix", tmp_path / "fix", progress_mode="off")
    assert not (tmp_path / "fix").exists()  # no half-corrected output


def test_items_beyond_the_store_limits_do_not_sink_index_build(ckpt, encoder, tmp_path):
    """Embed records what the store can never hold (a 300-character id, 70 KB of metadata) as
    failures and cuts a caption over 64 KiB for display; index build then takes the rest."""
    import csv

    from gapfix.jobs import build_index
    from gapfix.jobs.failures import read_failures
    from gapfix.store import Store
    from gapfix.store.items import MAX_CAPTION_BYTES

    rows = [
        {"id": "ok", "caption": "a short caption", "note": "x"},
        {"id": "long-caption", "caption": "word " * 14_000, "note": "x"},
        {"id": "i" * 300, "caption": "fine text", "note": "x"},
        {"id": "fat-metadata", "caption": "fine text", "note": "m" * 70_000},
    ]
    table = tmp_path / "t.csv"
    with table.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["id", "caption", "note"])
        w.writeheader()
        w.writerows(rows)
    out = tmp_path / "emb"
    s = run_embed(table, out, T.tiny_options(ckpt), encoder=encoder, log=lambda _m: None)
    assert s["failures"] == 2
    failed = {f["id"]: f["reason"] for f in read_failures(out)}
    assert "longer than 256 characters" in failed["i" * 300]
    assert "metadata is larger" in failed["fat-metadata"]
    build_index(out, tmp_path / "data", "c", progress_mode="off", log=lambda _m: None)
    with Store(tmp_path / "data") as store:
        c = store.get("c")
        assert c.count() == 2
        caption = c.get_item("long-caption").caption
        assert len(caption.encode()) <= MAX_CAPTION_BYTES and caption.startswith("word word")
