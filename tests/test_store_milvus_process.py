"""A real ``gapfix serve --store milvus://...`` process over a Milvus Lite server: kill -9 and a
restart give the same answers, and kill -9 in the middle of a transform switch leaves either
the old transform whole or (after the restart resumes it) the new one whole -- never a mix."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from gapfix.store.milvus.conn import SLOTS, connect, parse_store_uri
from gapfix.store.milvus.meta import Meta
from gapfix.store.milvus.rows import COMPONENT_FIELDS, Components
from gapfix.store.milvus.switch import transform_from_bytes
from tests.milvus_server import free_port, start_milvus_lite, stop, store_uri
from tests.test_store_milvus import coco_items

pytestmark = pytest.mark.slow

GAPFIX = str(Path(sys.executable).parent / "gapfix")
NAME = "coco"


class Server:
    """``gapfix serve --model none --store URI`` with its log in a file."""

    def __init__(self, store: str, log: Path, switch_batch: int) -> None:
        self.port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("GAPFIX_")}
        env["GAPFIX_MILVUS_SWITCH_BATCH"] = str(switch_batch)
        self.log = log
        with log.open("a") as out:
            self.proc = subprocess.Popen(
                [GAPFIX, "serve", "--model", "none", "--store", store, "--port", str(self.port),
                 "--log-level", "warning"],
                env=env, stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        self.client = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=60.0)

    def wait_ready(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"server exited {self.proc.returncode}:\n{self.log.read_text()}")
            with contextlib.suppress(httpx.TransportError):
                if self.client.get("/readyz").status_code == 200:
                    return
            time.sleep(0.1)
        pytest.fail(f"not ready in {timeout}s:\n{self.log.read_text()[-3000:]}")

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)
        self.client.close()


def answers(server: Server, txt: np.ndarray) -> dict[bool, list[list[tuple[str, float]]]]:
    out = {}
    for corrected in (False, True):
        queries = [{"vector": v.tolist(), "modality": "text"} for v in txt]
        r = server.client.post(
            f"/v1/collections/{NAME}/search",
            json={"queries": queries, "k": 10, "corrected": corrected},
        )
        assert r.status_code == 200, r.text
        out[corrected] = [[(h["id"], h["score"]) for h in hs] for hs in r.json()["batches"]]
    return out


def same_answers(a: dict, b: dict) -> None:
    for corrected in (False, True):
        for x, y in zip(a[corrected], b[corrected], strict=True):
            assert [i for i, _ in x] == [i for i, _ in y]
            assert np.allclose([s for _, s in x], [s for _, s in y], atol=1e-5)


def milvus_state(uri: str) -> tuple[dict, dict[str, np.ndarray], Components, Meta]:
    """The collection's meta row, every row's slot vectors, and the raw components."""
    mc = connect(parse_store_uri(uri))
    meta = Meta(mc)
    doc, _ = meta.get_collection(NAME)
    # plain dicts first: pymilvus decodes vector fields lazily by position, so sorting its
    # result list in place would pair rows with other rows' vectors
    found = mc.query(NAME, filter="", output_fields=[*COMPONENT_FIELDS, *SLOTS], limit=16384)
    rows = [dict(r) for r in found]
    rows.sort(key=lambda r: r["id"])
    slots = {s: np.asarray([r[s] for r in rows], np.float32) for s in SLOTS}
    return doc, slots, Components.from_rows(rows, doc["dim"]), meta


def expected(meta: Meta, fp: str, comps: Components) -> np.ndarray:
    t = transform_from_bytes(meta.get_artifact(NAME, fp))
    return comps.corrected(t)[0]


def test_kill9_restart_and_kill9_during_a_switch(tmp_path: Path) -> None:
    proc, uri = start_milvus_lite(tmp_path / "milvus")
    uri = store_uri(uri)
    server = None
    try:
        server = Server(uri, tmp_path / "serve.log", switch_batch=2)
        server.wait_ready()
        items, _, txt = coco_items()
        assert server.client.post("/v1/collections", json={"name": NAME}).status_code == 201
        for i in range(0, len(items), 100):
            r = server.client.post(f"/v1/collections/{NAME}/items",
                                   json={"items": items[i : i + 100]})  # fmt: skip
            assert r.status_code == 200, r.text
        r = server.client.post(f"/v1/collections/{NAME}/transform",
                               json={"method": "centering", "wait_seconds": 60})  # fmt: skip
        assert r.status_code == 200 and r.json()["status"] == "active", r.text
        before = answers(server, txt[:20])
        doc0, slots0, comps0, meta0 = milvus_state(uri)
        assert np.allclose(slots0[doc0["slot"]], expected(meta0, doc0["active"], comps0), atol=1e-5)

        # kill -9, restart: the same answers
        server.kill9()
        server = Server(uri, tmp_path / "serve.log", switch_batch=2)
        server.wait_ready()
        same_answers(before, answers(server, txt[:20]))

        # kill -9 in the middle of the switch to another transform
        r = server.client.post(f"/v1/collections/{NAME}/transform",
                               json={"method": "standardize", "wait_seconds": 0})  # fmt: skip
        assert r.status_code == 202, r.text
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            job = server.client.get(f"/v1/collections/{NAME}/transform").json()["job"] or {}
            if job.get("phase") == "indexing":
                break
            time.sleep(0.02)
        time.sleep(0.3)
        server.kill9()
        doc, slots, comps, meta = milvus_state(uri)
        assert doc["pending"] is not None, "the switch finished before the kill; slow it down"
        old = expected(meta, doc["active"], comps)
        assert np.allclose(slots[doc["slot"]], old, atol=1e-5)  # the old space is whole
        new = expected(meta, doc["pending"]["fp"], comps)
        done = np.isclose(slots[doc["pending"]["slot"]], new, atol=1e-5).all(axis=1)
        assert 0 < done.sum() < len(done)  # the kill did land half-way through
        # search during the stopped switch answered from the old space; restart resumes it
        server = Server(uri, tmp_path / "serve.log", switch_batch=64)
        server.wait_ready()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            info = server.client.get(f"/v1/collections/{NAME}/transform").json()
            if info["status"] == "active":
                break
            time.sleep(0.1)
        assert info["status"] == "active" and info["active"]["method"] == "standardize", info
        doc2, slots2, comps2, meta2 = milvus_state(uri)
        assert doc2["pending"] is None and doc2["active"] == doc["pending"]["fp"]
        assert np.allclose(slots2[doc2["slot"]], expected(meta2, doc2["active"], comps2),
                           atol=1e-5)  # fmt: skip
        # corrected answers are the new transform's: top 10 by inner product, recomputed here
        t = transform_from_bytes(meta2.get_artifact(NAME, doc2["active"]))
        q = t.transform(txt[:20], "text", role="query")
        ids = np.array(comps2.ids)
        got = answers(server, txt[:20])[True]
        vecs = slots2[doc2["slot"]]
        for n in range(20):
            top = ids[np.argsort(-(vecs @ q[n]))[:10]]
            assert [i for i, _ in got[n]] == top.tolist()
        server.kill9()
        server = None
    finally:
        if server is not None:
            server.kill9()
        stop(proc)
