"""The opt-in scale benchmark (benchmarks/scale.py) at a tiny n: table, JSON, refusals."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

from benchmarks import scale
from benchmarks._scale_data import ClipLike, estimate_peak_bytes, exact_topk, machine_memory

FIELDS = {
    "kind",
    "n",
    "dim",
    "ingest_s",
    "ingest_per_s",
    "ingest_peak_rss_gib",
    "rss_per_vector_b",
    "index_file_per_vector_b",
    "close_s",
    "restart_ready_s",
    "recall_at_10",
    "search_qps",
    "switch_s",
    "switch_ok",
    "switch_searches",
    "switch_errors",
    "switch_search_p99_ms",
    "switch_peak_rss_gib",
    "peak_rss_gib",
    "start_rss_gib",
    "estimated_peak_gib",
}


def test_synthetic_data_is_clip_like_and_regenerates_identically():
    data = ClipLike(4_000, seed=3)
    _, x = data.chunk(0)
    assert x.shape == (4_000, 512) and x.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(x, data.chunk(0)[1])  # ground truth relies on this
    img, txt = x[0::2], x[1::2]
    gap = float(np.linalg.norm(img.mean(0) - txt.mean(0)))
    within = float((img[:500] @ img[500:1000].T).mean())
    assert 0.4 < gap < 0.9  # two cones apart, as CLIP's modality gap
    assert within > 0.1  # rows of one modality share a cone
    truth = exact_topk(data, data.queries(5), 10)
    brute = np.argsort(-(data.queries(5) @ x.T), axis=1)[:, :10]
    np.testing.assert_array_equal(np.sort(truth, 1), np.sort(brute, 1))


def test_main_at_tiny_n_prints_the_table_and_writes_the_json(tmp_path, capsys):
    out = tmp_path / "scale.json"
    argv = ["--n", "2000", "--kinds", "hnsw,ivfpq", "--queries", "20", "--batch", "500"]
    assert scale.main([*argv, "--out", str(out), "--dir", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "gapfix scale benchmark" in printed and "recall@10" in printed
    report = json.loads(out.read_text())
    assert report["meta"]["machine_memory_gib"] == pytest.approx(machine_memory() / 2**30)
    rows = report["rows"]
    assert [r["kind"] for r in rows] == ["hnsw", "ivfpq"]
    for r in rows:
        assert set(r) >= FIELDS
        assert r["n"] == 2000 and r["switch_ok"] is True and r["switch_errors"] == 0
        assert r["switch_searches"] > 0 and r["ingest_per_s"] > 0 and r["search_qps"] > 0
        # compare what the run itself added (this process may hold other tests' imports)
        assert r["peak_rss_gib"] - r["start_rss_gib"] <= r["estimated_peak_gib"]
    # 2,000 vectors: HNSW is near exact; ivfpq stays exact (untrained below train_size)
    assert rows[0]["recall_at_10"] >= 0.97
    assert rows[1]["recall_at_10"] == 1.0
    assert rows[0]["index_file_per_vector_b"] == pytest.approx(2330, rel=0.1)
    assert not list(tmp_path.glob("gapfix-scale-*"))  # data dirs removed


def test_an_n_too_large_for_this_machine_is_refused_in_one_line(tmp_path, capsys):
    out = tmp_path / "scale.json"
    n = 10_000_000_000
    assert scale.main(["--n", str(n), "--kinds", "ivfpq", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    need = estimate_peak_bytes(n, "ivfpq")[0] / 2**30
    assert "\n" not in err
    assert err.startswith(f"scale: --n {n} with ivfpq needs an estimated {need:.1f} GiB")
    assert "more than this machine's" in err
    assert not out.exists()


def test_the_estimate_for_10m_hnsw_exceeds_24_gib():
    need, phase = estimate_peak_bytes(10_000_000, "hnsw")
    assert need > 24 * 2**30 and phase


@pytest.mark.parametrize(
    "argv",
    [["--kinds", "annoy"], ["--n", "10"], ["--queries", "0"]],
)
def test_bad_arguments_exit_2_with_one_line(argv, capsys):
    with pytest.raises(SystemExit) as e:
        scale.main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("scale: ") and "\n" not in err


def test_an_n_whose_store_would_not_fit_on_the_disk_is_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(scale.shutil, "disk_usage", lambda _: SimpleNamespace(free=2**20))
    out = tmp_path / "scale.json"
    argv = ["--n", "100000", "--kinds", "hnsw", "--dir", str(tmp_path), "--out", str(out)]
    assert scale.main(argv) == 2
    err = capsys.readouterr().err.strip()
    # 100k x (4,100 B of SQLite + 2,346 B of HNSW) x 1.1
    assert err.startswith("scale: --n 100000 needs an estimated 0.7 GiB of disk under ")
    assert err.endswith("more than the 0.0 GiB free") and not out.exists()


def test_python_m_benchmarks_scale_runs_the_scale_module(capsys):
    from benchmarks.__main__ import main

    with pytest.raises(SystemExit) as e:
        main(["scale", "--n", "10"])
    assert e.value.code == 2
    assert capsys.readouterr().err.strip() == "scale: --n must be at least 1000, got 10"
