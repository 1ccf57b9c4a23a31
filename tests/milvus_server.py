"""A Milvus Lite gRPC server for tests: ``start_milvus_lite(data_dir) -> (Popen, uri)`` and the
session-scoped ``milvus_uri`` fixture (``milvus://127.0.0.1:PORT``), registered from conftest.

``python -m milvus_lite server`` (the installed ``milvus-lite``) speaks Milvus's gRPC protocol,
so the store uses the same pymilvus code path as against a Milvus cluster. It takes ~4 s to
start on the 2-core dev box.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

START_TIMEOUT_S = 60.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_milvus_lite(
    data_dir: Path, port: int | None = None, timeout: float = START_TIMEOUT_S
) -> tuple[subprocess.Popen, str]:
    """Start a Milvus Lite server on 127.0.0.1 storing in ``data_dir``; wait until it accepts
    connections. Returns the process and the store URI ``milvus://127.0.0.1:PORT``."""
    port = port or free_port()
    data_dir.mkdir(parents=True, exist_ok=True)
    log = open(data_dir.parent / f"milvus-lite-{port}.log", "ab")  # noqa: SIM115
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "milvus_lite",
            "server",
            "--data-dir",
            str(data_dir),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    log.close()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"milvus_lite server exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return proc, f"milvus://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.1)
    stop_milvus_lite(proc)
    raise RuntimeError(f"milvus_lite server did not listen on port {port} within {timeout} s")


def stop_milvus_lite(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="session")
def milvus_uri(tmp_path_factory: pytest.TempPathFactory):
    """One Milvus Lite server for the test session; its store URI."""
    proc, uri = start_milvus_lite(tmp_path_factory.mktemp("milvus") / "data")
    yield uri
    stop_milvus_lite(proc)
