"""A real ``gapfix serve`` process: restart returns to the same state; kill -9 during ingest
loses at most the request in flight and corrupts nothing; a model that cannot be fetched stops
start-up with a non-zero exit and a message saying how to run offline."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

pytestmark = pytest.mark.slow

GAPFIX = str(Path(sys.executable).parent / "gapfix")
D = 64
KEY = "process-test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


class Server:
    """``gapfix serve --model none`` on 127.0.0.1 with its log in a file."""

    def __init__(
        self,
        data_dir: Path,
        log: Path,
        extra_env: dict[str, str] | None = None,
        model_args: tuple[str, ...] = ("--model", "none"),
        log_level: str = "warning",
    ):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("GAPFIX_")}
        env.update({"GAPFIX_API_KEYS": KEY, **(extra_env or {})})
        self.log = log
        with log.open("a") as out:
            self.proc = subprocess.Popen(
                [GAPFIX, "serve", *model_args, "--data-dir", str(data_dir),
                 "--port", str(self.port), "--log-level", log_level],
                env=env, stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        self.client = httpx.Client(base_url=self.url, timeout=30.0, headers=AUTH)

    def wait_ready(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(
                    f"server exited {self.proc.returncode}:\n{self.log.read_text()[-3000:]}"
                )
            with contextlib.suppress(httpx.TransportError):
                if self.client.get("/readyz").status_code == 200:
                    return
            time.sleep(0.1)
        pytest.fail(f"not ready in {timeout}s:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=60)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.client.close()


@contextlib.contextmanager
def serve(data_dir: Path, log: Path) -> Iterator[Server]:
    server = Server(data_dir, log)
    try:
        server.wait_ready()
        yield server
    finally:
        server.kill()


def snapshot(c: httpx.Client, queries: np.ndarray) -> dict:
    """Everything observable about collection ``c``."""
    out = {
        "collections": c.get("/v1/collections").json(),
        "transform": c.get("/v1/collections/c/transform").json(),
        "gap": c.get("/v1/collections/c/gap").json(),
        "items": [c.get(f"/v1/collections/c/items/{i}").json() for i in ("i0", "t5", "d7")],
    }
    for corrected in (False, True):
        body = {
            "queries": [{"vector": q.tolist(), "modality": "text"} for q in queries],
            "k": 10,
            "corrected": corrected,
        }
        out[f"search_{corrected}"] = c.post("/v1/collections/c/search", json=body).json()
    return out


def test_restart_returns_to_the_same_state(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    img = unit(rng.standard_normal((60, D)) + 1.5 * np.eye(D)[0])
    txt = unit(rng.standard_normal((60, D)) - 1.5 * np.eye(D)[0])
    data, log = tmp_path / "data", tmp_path / "serve.log"
    with serve(data, log) as s:
        c = s.client
        assert c.post("/v1/collections", json={"name": "c", "index": "hnsw"}).status_code == 201
        items = [{"id": f"i{n}", "vector": img[n].tolist(), "modality": "image"} for n in range(20)]
        items += [
            {"id": f"t{n}", "vector": txt[n].tolist(), "modality": "text", "text": f"cap {n}"}
            for n in range(20)
        ]
        items += [
            {"id": f"d{n}", "image_vector": img[n].tolist(), "text_vector": txt[n].tolist(),
             "metadata": {"n": n}}
            for n in range(20, 60)
        ]  # fmt: skip
        assert c.post("/v1/collections/c/items", json={"items": items}).status_code == 200
        assert c.delete("/v1/collections/c/items/i3").status_code == 200
        r = c.post("/v1/collections/c/transform", json={"method": "centering"})
        assert r.status_code == 200 and r.json()["status"] == "active"
        before = snapshot(c, txt[:5])
        assert s.stop() == 0
    with serve(data, log) as s:
        after = snapshot(s.client, txt[:5])
    assert after == before
    assert before["transform"]["active"]["method"] == "centering"
    assert before["collections"]["collections"][0]["count"] == 79


def test_kill_9_during_ingest_loses_at_most_the_request_in_flight(tmp_path: Path) -> None:
    data, log = tmp_path / "data", tmp_path / "serve.log"
    rng = np.random.default_rng(1)
    batch_size, n_batches = 50, 400
    vecs = unit(rng.standard_normal((batch_size * n_batches, D)))
    acked: list[int] = []
    sent: list[int] = []
    stop = threading.Event()

    server = Server(data, log)
    try:
        server.wait_ready()
        c = server.client
        assert c.post("/v1/collections", json={"name": "c"}).status_code == 201
        fit = [
            {"id": f"f{n}", "image_vector": vecs[n].tolist(), "text_vector": vecs[-n - 1].tolist()}
            for n in range(10)
        ]
        assert c.post("/v1/collections/c/items", json={"items": fit}).status_code == 200
        r = c.post("/v1/collections/c/transform", json={"method": "mean-shift"})
        assert r.json()["status"] == "active"  # writes now update raw and corrected indexes

        def ingest() -> None:
            with httpx.Client(base_url=server.url, timeout=30.0, headers=AUTH) as w:
                for b in range(n_batches):
                    if stop.is_set():
                        return
                    rows = range(b * batch_size, (b + 1) * batch_size)
                    items = [
                        {"id": f"v{i}", "vector": vecs[i].tolist(), "modality": "text"}
                        for i in rows
                    ]
                    sent.append(b)
                    try:
                        r = w.post("/v1/collections/c/items", json={"items": items})
                    except httpx.TransportError:
                        return
                    assert r.status_code == 200, r.text
                    acked.append(b)

        writer = threading.Thread(target=ingest)
        writer.start()
        deadline = time.monotonic() + 60
        while len(acked) < 8 and time.monotonic() < deadline:
            time.sleep(0.01)
        server.proc.send_signal(signal.SIGKILL)  # mid-ingest: a batch is (almost surely) in flight
        server.proc.wait()
        stop.set()
        writer.join()
    finally:
        server.kill()
    assert len(acked) >= 8

    with serve(data, log) as s:
        c = s.client
        info = c.get("/v1/collections/c").json()
        # every acknowledged batch is there; of the batch in flight, all or nothing
        in_flight = [b for b in sent if b not in acked]
        assert len(in_flight) <= 1
        assert info["count"] - 10 in (
            len(acked) * batch_size,
            (len(acked) + len(in_flight)) * batch_size,
        )
        for b in acked[:: max(1, len(acked) // 5)] + acked[-1:]:
            r = c.get(f"/v1/collections/c/items/v{b * batch_size + 7}")
            assert r.status_code == 200
        # the indexes agree with what is stored: each stored vector finds itself first
        check = [b * batch_size for b in acked[-3:]]
        queries = [{"vector": vecs[i].tolist(), "modality": "text"} for i in check]
        for corrected in (False, True):
            r = c.post(
                "/v1/collections/c/search",
                json={"queries": queries, "k": 1, "corrected": corrected, "modalities": ["text"]},
            )
            tops = [hits[0]["id"] for hits in r.json()["batches"]]
            assert tops == [f"v{i}" for i in check]
        # and it keeps working: more writes, then a clean stop
        more = [{"id": "after", "vector": vecs[0].tolist(), "modality": "image"}]
        assert c.post("/v1/collections/c/items", json={"items": more}).status_code == 200
        assert s.stop() == 0


def test_unfetchable_model_fails_fast_with_instructions(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GAPFIX_")}
    env.update(HF_HUB_OFFLINE="1", GAPFIX_MODEL_CACHE=str(tmp_path / "empty-cache"))
    t0 = time.monotonic()
    proc = subprocess.run(
        [GAPFIX, "serve", "--model", "ViT-B-32", "--pretrained", "laion2b_s34b_b79k",
         "--data-dir", str(tmp_path / "data"), "--port", str(free_port())],
        env=env, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    elapsed = time.monotonic() - t0
    assert proc.returncode == 2  # `gapfix serve` checks the weights before starting uvicorn
    err = proc.stderr.strip()
    assert err.startswith("gapfix: error: cannot fetch weights") and "\n" not in err
    assert "--pretrained /path/to" in err
    assert elapsed < 60  # no download attempt, no hang, no torch import before the check


def _tiny_checkpoint(path: Path) -> Path:
    from safetensors.torch import save_file

    from gapfix.encoders import load_encoder
    from gapfix.encoders.testing import register_tiny_model

    enc = load_encoder(register_tiny_model(), "none")
    save_file({k: v.contiguous() for k, v in enc.model.state_dict().items()}, str(path))
    return path


def test_broken_checkpoint_is_a_one_line_error(tmp_path: Path) -> None:
    good = _tiny_checkpoint(tmp_path / "tiny.safetensors")
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(good.read_bytes()[:5000])  # truncated: the weights cannot be read
    env = {k: v for k, v in os.environ.items() if not k.startswith("GAPFIX_")}
    proc = subprocess.run(
        [GAPFIX, "serve", "--model", "gapfix-tiny", "--pretrained", str(broken),
         "--data-dir", str(tmp_path / "data"), "--port", str(free_port())],
        env=env, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert proc.returncode == 2  # not uvicorn's start-up failure (3) with a traceback
    err = proc.stderr.strip()
    assert err.startswith("gapfix: error: cannot load model 'gapfix-tiny'") and "\n" not in err
    assert not (tmp_path / "data").exists()  # nothing started, nothing written


def test_model_mode_loads_the_model_once(tmp_path: Path) -> None:
    ckpt = _tiny_checkpoint(tmp_path / "tiny.safetensors")
    log = tmp_path / "serve.log"
    server = Server(
        tmp_path / "data", log, model_args=("--model", "gapfix-tiny", "--pretrained", str(ckpt)),
        log_level="info",
    )  # fmt: skip
    try:
        server.wait_ready()
        r = server.client.post("/v1/embed", json={"texts": ["a dog on a beach"]})
        assert r.status_code == 200 and len(r.json()["texts"][0]) == 32
        text = log.read_text()
        assert "using the encoder preloaded for gapfix-tiny" in text
        # the pre-start load logs before logging is configured; a second load would show here
        assert "loaded encoder" not in text
        assert server.stop() == 0
    finally:
        server.kill()


def test_a_bad_or_busy_data_dir_is_a_one_line_error(tmp_path: Path) -> None:
    from gapfix.locks import release, try_lock

    afile = tmp_path / "afile"
    afile.write_text("")
    busy = tmp_path / "busy"
    busy.mkdir()
    fd = try_lock(busy / ".lock")  # another store holds it
    env = {k: v for k, v in os.environ.items() if not k.startswith("GAPFIX_")}
    try:
        for data_dir, says in ((afile, "is not a folder"), (busy, "in use by another")):
            proc = subprocess.run(
                [GAPFIX, "serve", "--model", "none", "--data-dir", str(data_dir),
                 "--port", str(free_port())],
                env=env, capture_output=True, text=True, timeout=120,
            )  # fmt: skip
            err = proc.stderr.strip()
            assert proc.returncode == 2 and "\n" not in err, proc.stderr[-2000:]
            assert err.startswith("gapfix: error: --data-dir") and says in err
    finally:
        release(fd)
