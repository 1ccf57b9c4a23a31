"""`gapfix correct --sink`: corrected vectors upserted into Milvus (a Milvus Lite server) and
Qdrant (qdrant-client's local mode), from real COCO CLIP embeddings."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from gapfix import make_transform
from gapfix.errors import InputError
from gapfix.jobs import read_manifest, run_correct
from gapfix.jobs import testing as T
from gapfix.jobs.failures import read_failures
from gapfix.jobs.sinks import SinkUnavailable, parse_sink, sink_keys

CLI = [
    sys.executable,
    "-c",
    "import sys; from gapfix.cli import main; sys.argv[0] = 'gapfix'; main()",
]


def _quiet(_msg: str) -> None:
    pass


@pytest.fixture(scope="module")
def job(coco, tmp_path_factory):
    """250 COCO pairs as 5 embed shards of 50 items, a centering transform, and what
    `gapfix apply` makes of them (the reference the sinks must hold)."""
    from typer.testing import CliRunner

    from gapfix.cli import app

    root = tmp_path_factory.mktemp("sinks")
    img, txt = coco["image"], coco["text"]
    manifest = T.write_pair_shards(root / "emb", img, txt, shard_size=50)
    tr = root / "centering.safetensors"
    make_transform("centering").fit(img, txt).save(tr)
    applied = {}
    for modality, x in (("image", img), ("text", txt)):
        np.save(root / f"{modality}.npy", x)
        res = CliRunner().invoke(app, ["apply", "--transform", str(tr), "--modality", modality,
                                       "--input", str(root / f"{modality}.npy"),
                                       "--output", str(root / f"{modality}-fixed.npy")])  # fmt: skip
        assert res.exit_code == 0, res.output
        applied[modality] = np.load(root / f"{modality}-fixed.npy")
    return {"root": root, "manifest": manifest, "transform": tr, "img": img, "txt": txt,
            "applied": applied}  # fmt: skip


def _milvus(uri: str, coll: str) -> str:
    return f"milvus://{uri.removeprefix('http://')}/{coll}"


def _keys(n: int) -> list[str]:
    return [f"pair-{i:06d}#{m}" for i in range(n) for m in ("image", "text")]


def _milvus_rows(uri: str, coll: str, keys: list[str]) -> dict[str, dict]:
    from pymilvus import MilvusClient

    client = MilvusClient(uri=uri)
    try:
        rows = client.get(coll, ids=keys)
        count = client.query(coll, filter="", output_fields=["count(*)"])[0]["count(*)"]
    finally:
        client.close()
    out = {r["id"]: r for r in rows}
    out["__count__"] = count
    return out


def _check_vectors(job, rows: dict[str, dict], vec) -> None:
    """Every pair's raw vectors are the input, corrected ones `gapfix apply`'s, within 1e-5."""
    for i in range(len(job["img"])):
        for modality, x in (("image", job["img"]), ("text", job["txt"])):
            r = rows[f"pair-{i:06d}#{modality}"]
            np.testing.assert_allclose(vec(r, "raw"), x[i], atol=1e-5)
            np.testing.assert_allclose(vec(r, "corrected"), job["applied"][modality][i], atol=1e-5)


# ------------------------------------------------------------------------------ URIs


def test_sink_uris_parse_and_unknown_schemes_are_refused():
    s = parse_sink("milvus://bob:pw@db.example:19530/vectors?db=prod")
    assert (s.kind, s.host, s.port, s.collection, s.db, s.secret) == (
        "milvus", "db.example", 19530, "vectors", "prod", "bob:pw",
    )  # fmt: skip
    assert "pw" not in s.display and "pw" not in repr(s)
    q = parse_sink("qdrant+local:///data/q/coco")
    assert (q.kind, q.path, q.collection) == ("qdrant", "/data/q", "coco")
    for bad, msg in [
        ("postgres://h:1/c", "unknown scheme 'postgres'"),
        ("coco", "unknown scheme '(none)'"),
        ("milvus://h/c", "HOST:PORT/COLLECTION"),
        ("milvus://h:1/", "HOST:PORT/COLLECTION"),
        ("milvus://h:x/c", "Port could not be cast"),
        ("qdrant://h:1/a/b", "HOST:PORT/COLLECTION"),
        ("qdrant+local://relative/c", "ABSOLUTE"),
        ("milvus://h:1/9lives", "must start with a letter"),
    ]:
        with pytest.raises(InputError, match=re.escape(msg)):
            parse_sink(bad)


def test_keys_split_only_ids_with_two_rows():
    ids, mods = ["a", "a", "b", "c", "c"], ["image", "text", "text", "image", "text"]
    assert sink_keys(ids, mods) == ["a#image", "a#text", "b", "c#image", "c#text"]


def test_cli_unknown_scheme_is_one_line_exit_2_and_writes_nothing(job, tmp_path):
    out = tmp_path / "out"
    before = sorted(p.name for p in job["manifest"].parent.iterdir())
    proc = subprocess.run(
        [*CLI, "correct", "--manifest", str(job["manifest"]), "--transform",
         str(job["transform"]), "--sink", "redis://127.0.0.1:6379/c", "--out", str(out)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "unknown scheme 'redis'" in lines[0], proc.stderr
    assert not out.exists()
    assert sorted(p.name for p in job["manifest"].parent.iterdir()) == before


def test_unreachable_milvus_is_refused_before_anything_is_written(job, tmp_path):
    import socket

    with socket.socket() as s:  # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.monotonic()
    with pytest.raises(SinkUnavailable, match="cannot connect to Milvus"):
        run_correct(job["manifest"], job["transform"], tmp_path / "o",
                    sink=f"milvus://127.0.0.1:{port}/c", log=_quiet)  # fmt: skip
    assert time.monotonic() - t0 < 60 and not (tmp_path / "o").exists()


# ------------------------------------------------------------------------------ Milvus


def test_milvus_sink_holds_apply_s_vectors_and_reruns_add_nothing(job, milvus_uri, tmp_path):
    sink = _milvus(milvus_uri, "coco_fix")
    s = run_correct(job["manifest"], job["transform"], None, sink=sink, log=_quiet,
                    progress_mode="off")  # fmt: skip
    assert s["complete"] and s["shards_written"] == 5 and s["failures"] == 0
    assert s["rows"] == {"image": 250, "text": 250}
    out = Path(s["out"])
    assert out.parent == job["manifest"].parent / "sinks"  # default job folder
    assert not (out / "shards").exists(), "a sink run writes no parquet"
    m = read_manifest(out)
    assert m["sink"]["uri"] == sink and m["transform"]["method"] == "centering"
    keys = _keys(250)
    rows = _milvus_rows(milvus_uri, "coco_fix", keys)
    assert rows["__count__"] == 500
    _check_vectors(job, rows, lambda r, f: np.asarray(r[f], np.float32))
    r = rows["pair-000007#text"]
    assert r["modality"] == "text" and r["metadata"] == {"row": 7, "split": "dev"}

    # rerun: nothing to do; a lost shard record: that shard is upserted again, no duplicates
    again = run_correct(job["manifest"], job["transform"], None, sink=sink, log=_quiet,
                        progress_mode="off")  # fmt: skip
    assert again["shards_skipped"] == 5 and again["shards_written"] == 0
    m["shards"] = [rec for rec in m["shards"] if rec["index"] != 2]
    m.pop("root")
    (out / "manifest.json").write_text(json.dumps(m))
    redo = run_correct(job["manifest"], job["transform"], None, sink=sink, log=_quiet,
                       progress_mode="off")  # fmt: skip
    assert redo["shards_written"] == 1 and redo["rows"] == {"image": 50, "text": 50}
    assert _milvus_rows(milvus_uri, "coco_fix", keys[:2])["__count__"] == 500


def test_milvus_refused_rows_go_to_failures_jsonl(coco, job, milvus_uri, tmp_path):
    from pymilvus import DataType, MilvusClient

    # an existing collection of the right shape whose ids are at most 24 characters
    client = MilvusClient(uri=milvus_uri)
    schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
    schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=24)
    schema.add_field("modality", DataType.VARCHAR, max_length=16)
    schema.add_field("metadata", DataType.JSON)
    schema.add_field("raw", DataType.FLOAT_VECTOR, dim=512)
    schema.add_field("corrected", DataType.FLOAT_VECTOR, dim=512)
    params = client.prepare_index_params()
    for f in ("raw", "corrected"):
        params.add_index(f, index_type="AUTOINDEX", metric_type="COSINE")
    client.create_collection("short_ids", schema=schema, index_params=params)
    client.close()
    n = 40
    ids = [f"p{i}" if i % 7 else f"a-much-longer-identifier-{i:04d}" for i in range(n)]
    manifest = T.write_pair_shards(tmp_path / "emb", coco["image"][:n], coco["text"][:n], 10, ids)
    s = run_correct(manifest, job["transform"], tmp_path / "job",
                    sink=_milvus(milvus_uri, "short_ids"), sink_batch=16, log=_quiet)  # fmt: skip
    long_keys = sorted(f"{i}#{m}" for i in ids if len(i) > 10 for m in ("image", "text"))
    assert len(long_keys) == 12 and s["complete"]
    fails = read_failures(tmp_path / "job")
    assert sorted(f["id"] for f in fails) == long_keys
    assert all("refused by the database" in f["reason"] and "max_length" in f["reason"]
               for f in fails)  # fmt: skip
    assert {f["modality"] for f in fails} == {"image", "text"}
    assert s["failures"] == 12 and read_manifest(tmp_path / "job")["totals"]["rows"] == 68
    short = [f"{i}#{m}" for i in ids if len(i) <= 10 for m in ("image", "text")]
    assert _milvus_rows(milvus_uri, "short_ids", short)["__count__"] == 68


def test_milvus_collection_with_another_schema_is_refused_naming_the_field(
    job, milvus_uri, tmp_path
):
    from pymilvus import MilvusClient

    client = MilvusClient(uri=milvus_uri)
    client.create_collection("other_schema", dimension=8)  # quick setup: id INT64 + "vector"
    client.close()
    proc = subprocess.run(
        [*CLI, "correct", "--manifest", str(job["manifest"]), "--transform",
         str(job["transform"]), "--sink", _milvus(milvus_uri, "other_schema"),
         "--out", str(tmp_path / "o")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "field 'id' has type INT64, expected VARCHAR" in lines[0], lines
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_kill_9_mid_job_then_rerun_has_every_row_once(coco, job, milvus_uri, tmp_path):
    n = 250
    manifest = T.write_pair_shards(tmp_path / "emb", coco["image"], coco["text"], shard_size=2)
    sink = _milvus(milvus_uri, "killed")
    args = [*CLI, "correct", "--manifest", str(manifest), "--transform", str(job["transform"]),
            "--sink", sink, "--out", str(tmp_path / "job"), "--sink-batch", "2",
            "--progress", "off"]  # fmt: skip
    state = tmp_path / "job" / "manifest.json"
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                done = json.loads(state.read_text())["totals"]["shards_done"]
            except (OSError, ValueError, KeyError):
                done = 0
            if done >= 10:
                os.kill(proc.pid, signal.SIGKILL)
                break
            time.sleep(0.005)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    proc.stderr.close()
    finished = read_manifest(state)["totals"]["shards_done"]
    assert 10 <= finished < 125
    rerun = subprocess.run([*args, "--json"], capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    summary = json.loads(rerun.stdout)
    assert summary["shards_skipped"] == finished and summary["complete"]
    assert summary["totals"]["rows"] == 2 * n and summary["totals"]["failures"] == 0
    rows = _milvus_rows(milvus_uri, "killed", _keys(n))
    assert rows["__count__"] == 2 * n and len(rows) - 1 == 2 * n  # all present, each once
    _check_vectors(job, rows, lambda r, f: np.asarray(r[f], np.float32))


@pytest.mark.slow
def test_ray_blocks_write_their_own_batches(job, milvus_uri, tmp_path):
    ray = pytest.importorskip("ray")
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        s = run_correct(job["manifest"], job["transform"], tmp_path / "job",
                        sink=_milvus(milvus_uri, "coco_ray"), ray="local", workers=1,
                        sink_batch=64, log=_quiet, progress_mode="off")  # fmt: skip
    finally:
        if started:
            ray.shutdown()
    assert s["complete"] and s["shards_written"] == 5 and s["rows"] == {"image": 250, "text": 250}
    rows = _milvus_rows(milvus_uri, "coco_ray", _keys(250))
    assert rows["__count__"] == 500
    _check_vectors(job, rows, lambda r, f: np.asarray(r[f], np.float32))


# ------------------------------------------------------------------------------ Qdrant


def _qdrant_rows(path: Path, coll: str) -> dict[str, dict]:
    from qdrant_client import QdrantClient

    client = QdrantClient(path=str(path))
    try:
        points, _ = client.scroll(coll, limit=10_000, with_payload=True, with_vectors=True)
    finally:
        client.close()
    return {p.payload["id"]: {**p.payload, **p.vector, "point": p.id} for p in points}


def test_qdrant_local_sink_holds_apply_s_vectors_and_resumes(job, tmp_path):
    from gapfix.jobs.sinks.qdrant import point_id

    sink = f"qdrant+local://{tmp_path}/q/coco"
    s = run_correct(job["manifest"], job["transform"], tmp_path / "job", sink=sink, log=_quiet)
    assert s["complete"] and s["rows"] == {"image": 250, "text": 250}
    rows = _qdrant_rows(tmp_path / "q", "coco")
    assert len(rows) == 500
    _check_vectors(job, rows, lambda r, f: np.asarray(r[f], np.float32))
    r = rows["pair-000003#image"]
    assert r["modality"] == "image" and r["metadata"] == {"row": 3, "split": "dev"}
    assert r["point"] == point_id("pair-000003#image")
    # a lost shard record: redone as upserts of the same points
    m = read_manifest(tmp_path / "job")
    m["shards"] = m["shards"][1:]
    m.pop("root")
    (tmp_path / "job" / "manifest.json").write_text(json.dumps(m))
    redo = run_correct(job["manifest"], job["transform"], tmp_path / "job", sink=sink, log=_quiet)
    assert redo["shards_written"] == 1 and redo["shards_skipped"] == 4
    assert len(_qdrant_rows(tmp_path / "q", "coco")) == 500


def test_qdrant_refused_rows_go_to_failures_jsonl(coco, job, tmp_path):
    img, txt = coco["image"][:20].copy(), coco["text"][:20].copy()
    img[3, 5] = np.nan  # Qdrant refuses vectors with NaN
    txt[11, 0] = np.nan
    manifest = T.write_pair_shards(tmp_path / "emb", img, txt, 8)
    s = run_correct(manifest, job["transform"], tmp_path / "job",
                    sink=f"qdrant+local://{tmp_path}/q/nan", sink_batch=5, log=_quiet)  # fmt: skip
    fails = read_failures(tmp_path / "job")
    assert sorted((f["id"], f["modality"], f["shard"]) for f in fails) == [
        ("pair-000003#image", "image", 0), ("pair-000011#text", "text", 1),
    ]  # fmt: skip
    assert all("NaN" in f["reason"] for f in fails) and s["failures"] == 2
    assert len(_qdrant_rows(tmp_path / "q", "nan")) == 38
    assert read_manifest(tmp_path / "job")["totals"]["rows"] == 38


def test_qdrant_collection_with_another_schema_is_refused_naming_the_field(job, tmp_path):
    from qdrant_client import QdrantClient, models

    client = QdrantClient(path=str(tmp_path / "q"))
    client.create_collection(
        "small",
        vectors_config={"raw": models.VectorParams(size=8, distance=models.Distance.COSINE),
                        "corrected": models.VectorParams(size=512,
                                                         distance=models.Distance.COSINE)},
    )  # fmt: skip
    client.create_collection(
        "plain", vectors_config=models.VectorParams(size=512, distance=models.Distance.COSINE)
    )
    client.close()
    for coll, msg in [("small", "vector 'raw' has size 8"), ("plain", "one unnamed vector")]:
        with pytest.raises(InputError, match=msg):
            run_correct(job["manifest"], job["transform"], tmp_path / coll,
                        sink=f"qdrant+local://{tmp_path}/q/{coll}", log=_quiet)  # fmt: skip
        assert not (tmp_path / coll).exists()


def test_qdrant_local_with_ray_is_refused(job, tmp_path):
    with pytest.raises(InputError, match="with --ray use a Qdrant server"):
        run_correct(job["manifest"], job["transform"], tmp_path / "o", ray="local",
                    sink=f"qdrant+local://{tmp_path}/q/c", log=_quiet)  # fmt: skip
    assert not (tmp_path / "o").exists()


def test_a_missing_client_package_is_a_one_line_input_error(job, tmp_path, monkeypatch):
    from gapfix.jobs.sinks import open_sink

    monkeypatch.delitem(sys.modules, "gapfix.jobs.sinks.qdrant", raising=False)
    monkeypatch.setitem(sys.modules, "qdrant_client", None)  # as if not installed
    with pytest.raises(InputError, match=re.escape("pip install 'gapfix[qdrant]'")):
        open_sink(f"qdrant+local://{tmp_path}/q/c")


def test_milvus_down_mid_job_stops_it_without_failures_and_a_rerun_finishes(
    job, milvus_uri, tmp_path, monkeypatch
):
    from pymilvus.exceptions import MilvusException

    from gapfix.jobs.sinks.milvus import MilvusSink

    sink, out = _milvus(milvus_uri, "outage"), tmp_path / "job"
    send, calls = MilvusSink._send, []

    def flaky(self, payload):
        calls.append(len(payload))
        if len(calls) > 3:  # what pymilvus raises when the server has gone away
            raise MilvusException(code=2, message="Fail connecting to server")
        return send(self, payload)

    monkeypatch.setattr(MilvusSink, "_send", flaky)
    with pytest.raises(SinkUnavailable, match="Fail connecting to server"):
        run_correct(job["manifest"], job["transform"], out, sink=sink, sink_batch=50, log=_quiet)
    m = read_manifest(out)
    assert 0 < len(m["shards"]) < 5 and m["totals"]["failures"] == 0  # an outage is no refusal
    assert read_failures(out) == []
    monkeypatch.setattr(MilvusSink, "_send", send)
    again = run_correct(job["manifest"], job["transform"], out, sink=sink, log=_quiet)
    assert again["complete"] and again["shards_skipped"] == len(m["shards"])
    assert again["totals"]["rows"] == 500 and again["totals"]["failures"] == 0
    rows = _milvus_rows(milvus_uri, "outage", _keys(250))
    assert rows["__count__"] == 500
