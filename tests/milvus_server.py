"""A Milvus Lite server for tests and benchmarks: ``python -m milvus_lite server`` on a free
loopback port. It speaks the gRPC protocol of a Milvus cluster, so pymilvus takes the same code
path as against a real deployment. Start-up takes about 1.5 s on an idle machine."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

HOST = "127.0.0.1"
START_TIMEOUT = 60.0


def free_port() -> int:
    """A free loopback TCP port."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _answers(uri: str) -> bool:
    from pymilvus import MilvusClient

    try:
        client = MilvusClient(uri=uri, timeout=2)
    except Exception:
        return False
    try:
        client.list_collections()
        return True
    except Exception:
        return False
    finally:
        client.close()


def launch_milvus_lite(data_dir: str | Path, port: int) -> subprocess.Popen:
    """Start a Milvus Lite server on ``data_dir`` and ``port`` without waiting for it."""
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    log = open(data_dir.parent / f"{data_dir.name}.milvus.log", "ab")  # noqa: SIM115
    args = [sys.executable, "-m", "milvus_lite", "server", "--data-dir", str(data_dir),
            "--host", HOST, "--port", str(port)]  # fmt: skip
    try:
        return subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
    finally:
        log.close()


def start_milvus_lite(data_dir: str | Path) -> tuple[subprocess.Popen, str]:
    """Start a Milvus Lite server on ``data_dir``; returns the process and its ``http://`` URI
    once it answers. The caller stops it (``proc.terminate()``)."""
    port = free_port()
    proc = launch_milvus_lite(data_dir, port)
    uri = f"http://{HOST}:{port}"
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"milvus_lite server exited with {proc.returncode} (see {data_dir})")
        with contextlib.suppress(OSError), socket.create_connection((HOST, port), timeout=0.5):
            if _answers(uri):
                return proc, uri
        time.sleep(0.1)
    stop(proc)
    raise RuntimeError(f"milvus_lite server did not answer on {uri} in {START_TIMEOUT:.0f}s")


def store_uri(uri: str) -> str:
    """The ``gapfix serve --store`` form (``milvus://HOST:PORT``) of a server's URI."""
    return "milvus://" + uri.removeprefix("http://")


def stop(proc: subprocess.Popen) -> None:
    """Stop a server started by `start_milvus_lite`."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="session")
def milvus_uri(tmp_path_factory) -> Iterator[str]:
    """The ``http://127.0.0.1:PORT`` URI of a Milvus Lite server shared by the session."""
    pytest.importorskip("milvus_lite")
    proc, uri = start_milvus_lite(tmp_path_factory.mktemp("milvus") / "data")
    try:
        yield uri
    finally:
        stop(proc)
