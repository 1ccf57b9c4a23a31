"""Bad input found in a sweep: metadata nested too deep, loosely coerced numbers and booleans,
and requests so malformed that uvicorn answers them itself, each refused in the envelope."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import uvicorn
from fastapi.testclient import TestClient

from service.app import create_app
from service.http_protocol import H11JSONProtocol, HTTPProtocol
from service.settings import Settings

D = 4
GAPFIX = str(Path(sys.executable).parent / "gapfix")


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    s = Settings(_env_file=None, model="none", data_dir=tmp_path / "data")  # type: ignore[call-arg]
    with TestClient(create_app(s)) as c:
        assert c.post("/v1/collections", json={"name": "c", "dim": D}).status_code == 201
        yield c


def nested(depth: int) -> dict:
    """A JSON object ``depth`` levels deep (``{}`` is 1)."""
    out: dict = {}
    cur = out
    for _ in range(depth - 1):
        cur["a"] = {}
        cur = cur["a"]
    return out


def err(r: Any, status: int, param: str | None) -> dict:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and body["error"]["param"] == param, body
    return body["error"]


def count(client: TestClient) -> int:
    return client.get("/v1/collections/c").json()["count"]


def test_metadata_nested_too_deep_is_refused_at_ingest(client: TestClient) -> None:
    v = [1.0, 0.0, 0.0, 0.0]
    ok = {"id": "ok", "vector": v, "modality": "image", "metadata": nested(64)}
    assert client.post("/v1/collections/c/items", json={"items": [ok]}).status_code == 200
    for depth in (65, 300):  # 255+ used to be stored, then made every search returning it a 500
        deep = {"id": "deep", "vector": v, "modality": "image", "metadata": nested(depth)}
        r = client.post("/v1/collections/c/items", json={"items": [dict(ok, id="x"), deep]})
        assert "64 levels" in err(r, 400, "items[1].metadata")["message"]
        assert count(client) == 1
    listed = {"id": "list", "vector": v, "modality": "text", "metadata": {"a": [[[[]]]] * 2}}
    deep_list = json.loads("[" * 70 + "]" * 70)
    bad = dict(listed, id="list2", metadata={"a": deep_list})
    err(client.post("/v1/collections/c/items", json={"items": [bad]}), 400, "items[0].metadata")
    assert client.post("/v1/collections/c/items", json={"items": [listed]}).status_code == 200
    r = client.post("/v1/collections/c/search", json={"query": {"vector": v, "modality": "image"}})
    assert r.status_code == 200 and {h["id"] for h in r.json()["results"]} == {"ok", "list"}


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/v1/collections", {"name": "d", "dim": True}, "dim"),
        ("/v1/collections", {"name": "d", "dim": "8"}, "dim"),
        ("/v1/collections", {"name": "d", "dim": 8.0}, "dim"),
        ("/v1/collections/c/search", {"query": {"id": "a"}, "k": "10"}, "k"),
        ("/v1/collections/c/search", {"query": {"id": "a"}, "k": True}, "k"),
        ("/v1/collections/c/search", {"query": {"id": "a"}, "corrected": "false"}, "corrected"),
        ("/v1/collections/c/search", {"query": {"id": "a"}, "exclude_self": 0}, "exclude_self"),
        (
            "/v1/collections/c/search",
            {"query": {"vector": [True, False, True, True], "modality": "text"}},
            "query.vector[0]",
        ),
        (
            "/v1/collections/c/search",
            {"query": {"vector": [1, "0.5", 0, 0], "modality": "text"}},
            "query.vector[1]",
        ),
        (
            "/v1/collections/c/items",
            {"items": [{"id": "a", "vector": ["1", "0", "0", "0"], "modality": "text"}]},
            "items[0].vector[0]",
        ),
        (
            "/v1/collections/c/items",
            {
                "items": [
                    {
                        "id": "a",
                        "image_vector": [1, 0, 0, 1],
                        "text_vector": [0, 1, 0, 0],
                        "weight": "0.5",
                    }
                ]
            },
            "items[0].weight",
        ),
        ("/v1/collections/c/items", {"items": [{"id": "a", "text": "x"}], "upsert": 1}, "upsert"),
        (
            "/v1/correct",
            {"modality": "text", "vectors": [[True] * D], "collection": "c"},
            "vectors[0][0]",
        ),
        ("/v1/embed", {"texts": ["a"], "corrected": "yes", "collection": "c"}, "corrected"),
        (
            "/v1/collections/c/transform",
            {"method": "centering", "wait_seconds": "1"},
            "wait_seconds",
        ),
    ],
)
def test_numbers_and_booleans_are_not_coerced(
    client: TestClient, path: str, body: dict, param: str
) -> None:
    e = err(client.post(path, json=body), 422, param)
    assert e["type"] == "validation_error"
    assert count(client) == 0 and client.get("/v1/collections/d").status_code == 404


def test_json_integers_are_still_valid_floats(client: TestClient) -> None:
    rng = np.random.default_rng(0)
    items = [
        {"id": "doc", "image_vector": [1, 0, 0, 0], "text_vector": [0, 1, 0, 0], "weight": 1},
        *(
            {"id": f"{m}{k}", "vector": rng.standard_normal(D).tolist(), "modality": m}
            for k in range(12)
            for m in ("image", "text")
        ),
    ]
    assert client.post("/v1/collections/c/items", json={"items": items}).status_code == 200
    r = client.post("/v1/collections/c/search", json={"query": {"vector": [0, 0, 1, 0], "modality": "text"}, "k": 3})  # fmt: skip
    assert r.status_code == 200 and len(r.json()["results"]) == 3
    r = client.post("/v1/collections/c/transform", json={"method": "centering", "wait_seconds": 5})
    assert r.status_code in (200, 202), r.text
    r = client.post("/v1/correct", json={"modality": "text", "vectors": [[1, 2, 3, 4]], "collection": "c"})  # fmt: skip
    assert r.status_code == 200, r.text


# ------------------------------------------------------------------------ uvicorn's own 400s
MALFORMED = [
    b"NOT AN HTTP REQUEST\r\n\r\n",  # bad request line
    b"GET /healthz HTTP/1.1\r\nHost: x\r\nBad Header Name: 1\r\n\r\n",  # invalid header name
    b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: \x00\r\n\r\n",  # invalid header value
    b"POST /v1/embed HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",  # chunk
]


def raw_request(port: int, data: bytes) -> tuple[int, dict[str, str], bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(data)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (ln.split(":", 1) for ln in lines)}
    return int(status_line.split()[1]), headers, body


def assert_json_400(port: int) -> None:
    for data in MALFORMED:
        status, headers, body = raw_request(port, data)
        assert status == 400, (data, body)
        assert headers["content-type"] == "application/json", (data, headers)
        assert int(headers["content-length"]) == len(body)
        error = json.loads(body)["error"]
        assert error["type"] == "invalid_request" and "malformed HTTP request" in error["message"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("protocol", [H11JSONProtocol, HTTPProtocol], ids=["h11", "auto"])
def test_uvicorn_protocols_answer_malformed_requests_in_the_envelope(
    tmp_path: Path, protocol: type
) -> None:
    s = Settings(_env_file=None, model="none", data_dir=tmp_path / "data")  # type: ignore[call-arg]
    port = free_port()
    config = uvicorn.Config(create_app(s), host="127.0.0.1", port=port, http=protocol,
                            log_level="critical")  # fmt: skip
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        assert server.started
        assert_json_400(port)
        assert httpx.get(f"http://127.0.0.1:{port}/healthz").json() == {"status": "ok"}
    finally:
        server.should_exit = True
        thread.join(30)


@pytest.mark.slow
def test_gapfix_serve_answers_malformed_requests_in_the_envelope(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("GAPFIX_")}
    log = tmp_path / "serve.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [GAPFIX, "serve", "--model", "none", "--data-dir", str(tmp_path / "data"),
             "--port", str(port), "--log-level", "warning"],
            env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        assert_json_400(port)
    finally:
        proc.terminate()
        proc.wait(30)
