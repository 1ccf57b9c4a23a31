"""The pure parts of the Chroma comparison (benchmarks/bench_chroma.py) and the shared wrk
helpers (benchmarks/_wrk.py): wrk report parsing, the Lua bodies script, request bodies, hit
parsing, recall over HTTP, the ef_search match, the result table, the skip without Chroma.
No Chroma install and nothing beyond loopback."""

from __future__ import annotations

import http.server
import json
import re
import shutil
import threading

import faiss
import httpx
import numpy as np
import pytest

from benchmarks import bench_chroma as bc
from benchmarks._wrk import lua_script, parse_report, run_wrk, to_ms, write_lua
from benchmarks.bench_load import search_bodies

# a real `wrk --latency` report (a loopback server answering every 7th request with 500)
REPORT = """Running 2s test @ http://127.0.0.1:18779/x
  2 threads and 4 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency    44.23ms    6.46ms  51.90ms   96.11%
    Req/Sec    44.88      8.07    60.00     80.00%
  Latency Distribution
     50%   44.01ms
     75%   47.64ms
     90%   48.07ms
     99%    1.02s
  180 requests in 2.01s, 20.78KB read
  Socket errors: connect 0, read 2, write 0, timeout 0
  Non-2xx or 3xx responses: 25
Requests/sec:     89.66
Transfer/sec:     10.35KB
"""


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_wrk_report_is_parsed_into_answered_rate_percentiles_and_errors():
    m = parse_report(REPORT)
    assert m["qps"] == pytest.approx((180 - 25) / 2.01)  # refused requests do not count
    assert m["p50"] == pytest.approx(44.01) and m["p99"] == pytest.approx(1020.0)
    assert m["non2xx"] == 25
    assert m["socket_errors"] == "connect 0, read 2, write 0, timeout 0"
    clean = parse_report(REPORT.replace("  Non-2xx or 3xx responses: 25\n", ""))
    assert clean["non2xx"] == 0 and clean["qps"] == pytest.approx(180 / 2.01)
    minutes = parse_report(REPORT.replace("in 2.01s", "in 1.50m"))
    assert minutes["qps"] == pytest.approx(155 / 90)
    assert [to_ms(t) for t in ("812.00us", "3.21ms", "2.50s")] == pytest.approx(
        [0.812, 3.21, 2500.0]
    )


def test_lua_script_carries_every_body_verbatim_in_order():
    bodies = [json.dumps({"q": [0.5, -1e-7], "s": 'a "quoted" \\ \u00e9'}), "{}"]
    text = lua_script(bodies)
    assert text.startswith('wrk.method = "POST"\n')
    assert 'wrk.headers["Content-Type"] = "application/json"' in text
    literals = re.findall(r"^  (\".*\"),$", text, re.M)
    assert [json.loads(lit) for lit in literals] == bodies  # Lua reads the same escapes
    assert "i = i % #bodies + 1" in text


def test_request_bodies_and_hit_parsing_for_both_servers():
    q = _unit(np.random.default_rng(0).standard_normal((3, 8)))
    chroma = [json.loads(b) for b in bc.chroma_bodies(q)]
    assert [b["n_results"] for b in chroma] == [10, 10, 10]
    np.testing.assert_allclose(chroma[1]["query_embeddings"], q[1:2], rtol=1e-7)
    assert set(chroma[0]) == {"query_embeddings", "n_results"}  # Chroma's default include
    gapfix = json.loads(search_bodies(q)[2])
    assert gapfix["k"] == 10 and gapfix["corrected"] is False
    np.testing.assert_allclose(gapfix["query"]["vector"], q[2], rtol=1e-7)
    # answers as each server writes them
    chroma_answer = {"ids": [["i12", "i3"]], "distances": [[-0.9, -0.8]], "metadatas": [[None]]}
    assert bc.chroma_rows(chroma_answer) == [12, 3]
    hits = [{"id": "i7", "score": 0.9}, {"id": "i70", "score": 0.8}]
    assert bc.gapfix_rows({"results": hits}) == [7, 70]


def test_recall_over_http_counts_the_true_neighbours_each_answer_returns():
    rng = np.random.default_rng(1)
    x = _unit(rng.standard_normal((500, 16)))
    q = _unit(rng.standard_normal((20, 16)))
    _, truth = faiss.knn(q, x, 10, metric=faiss.METRIC_INNER_PRODUCT)
    seen = []

    def answer(request: httpx.Request, drop: int) -> httpx.Response:
        body = json.loads(request.content)
        seen.append(request.url.path)
        v = np.asarray(body["query_embeddings"], np.float32)
        top = np.argsort(-(x @ v[0]))[:10]
        ids = [f"i{n}" for n in top[: 10 - drop]] + [f"i{n}" for n in range(1000, 1000 + drop)]
        return httpx.Response(200, json={"ids": [ids]})

    url = "http://127.0.0.1:1/api/v2/q"
    bodies = bc.chroma_bodies(q)
    exact = httpx.MockTransport(lambda r: answer(r, 0))
    assert bc.http_recall(url, bodies, truth, bc.chroma_rows, exact) == pytest.approx(1.0)
    lossy = httpx.MockTransport(lambda r: answer(r, 3))
    assert bc.http_recall(url, bodies, truth, bc.chroma_rows, lossy) == pytest.approx(0.7)
    assert seen == ["/api/v2/q"] * 40
    failing = httpx.MockTransport(lambda r: httpx.Response(500, json={}))
    with pytest.raises(httpx.HTTPStatusError):
        bc.http_recall(url, bodies, truth, bc.chroma_rows, failing)


def test_ef_search_match_takes_the_smallest_that_reaches_chromas_recall():
    recalls = {16: 0.90, 32: 0.98, 48: 0.9975, 64: 0.9985, 96: 1.0}
    assert bc.pick_ef(recalls, 0.9975) == 48
    assert bc.pick_ef(recalls, 0.97) == 32
    assert bc.pick_ef(recalls, 0.5) == 16
    assert bc.pick_ef({16: 0.9, 32: 0.95, 64: 0.95}, 0.99) == 32  # unreachable: best, smallest


def test_bare_hnsw_recall_grows_with_ef_search_to_exact():
    rng = np.random.default_rng(2)
    x = _unit(rng.standard_normal((3000, 32)))
    q = _unit(rng.standard_normal((50, 32)))
    _, truth = faiss.knn(q, x, 10, metric=faiss.METRIC_INNER_PRODUCT)
    recalls = bc.bare_hnsw_recalls(x, q, truth, (10, 40, 400))
    assert list(recalls) == [10, 40, 400]
    assert recalls[10] <= recalls[40] <= recalls[400]
    assert recalls[400] == pytest.approx(1.0)
    assert recalls[10] < 0.99  # isotropic 32-d data: ef_search=10 misses some


def test_results_carry_the_ratios_the_issue_targets():
    def m(qps: float, p50: float, p99: float, non2xx: int = 0) -> dict:
        return {"qps": qps, "p50": p50, "p99": p99, "non2xx": non2xx, "socket_errors": ""}

    gapfix = {1: m(300, 3, 5), 32: m(900, 30, 60), 128: m(950, 120, 200, 4)}
    chroma = {1: m(500, 2, 4), 32: m(600, 50, 90), 128: m(640, 190, 300)}
    out = bc.compare(gapfix, chroma, (0.996, 0.994), 48, 100_000)
    by = {r.name: r for r in out}
    qps = [r for r in out if r.unit == "queries/s"]
    assert [r.ratio for r in qps] == pytest.approx([0.6, 1.5, 950 / 640])
    assert [r.target for r in qps] == [1.5, 1.5, None]
    assert "hnsw 100k x 512" in qps[0].name and "4 non-2xx" in qps[2].note
    p99 = by["wrk loopback, hnsw 100k x 512, p99 at concurrency 32: Chroma's over gapfix's"]
    assert p99.ratio == pytest.approx(1.5) and p99.target == 1.0
    recall = out[-1]
    assert (recall.value, recall.baseline) == (0.996, 0.994)
    assert recall.note == "gapfix ef_search=48 (default 64)"


def test_a_failed_chroma_install_is_reported_and_the_benchmark_skips(tmp_path, monkeypatch, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    py, why = bc.chroma_python(blocker / "venv")  # cannot create a venv under a file
    assert py is None and "chromadb==1.5.9" in why
    monkeypatch.setattr(bc, "chroma_python", lambda: (None, "installing chromadb failed"))
    monkeypatch.setattr(bc.shutil, "which", lambda name: "/usr/bin/wrk")
    assert bc.run() == []
    assert "installing chromadb failed: Chroma comparison skipped" in capsys.readouterr().out


@pytest.mark.skipif(shutil.which("wrk") is None, reason="Debian's wrk is not installed")
def test_wrk_posts_the_scripts_bodies_to_a_loopback_server(tmp_path):
    got: list[bytes] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            got.append(self.rfile.read(int(self.headers["Content-Length"])))
            self.send_response(200 if len(got) % 5 else 503)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        q = _unit(np.random.default_rng(3).standard_normal((4, 512)))
        bodies = bc.chroma_bodies(q)
        write_lua(tmp_path / "s.lua", bodies)
        url = f"http://127.0.0.1:{server.server_address[1]}/query"
        m = run_wrk(url, tmp_path / "s.lua", 1, 1.0)
    finally:
        server.shutdown()
        server.server_close()
    assert len(got) >= 8
    # one body per request, in turn (wrk calls `request` once before it starts sending)
    first = bodies.index(got[0].decode())
    assert [b.decode() for b in got[:8]] == (bodies * 3)[first : first + 8]
    assert abs(m["non2xx"] - len(got) // 5) <= 1  # every 5th answered 503
    assert m["qps"] > 0 and 0 < m["p50"] <= m["p99"]
