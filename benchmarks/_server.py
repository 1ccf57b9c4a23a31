"""A ``gapfix serve`` subprocess on 127.0.0.1 for the start-up and load benchmarks."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

GAPFIX = str(Path(sys.executable).parent / "gapfix")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve(
    data_dir: Path, args: tuple[str, ...] = ("--model", "none"), env: dict | None = None
) -> Iterator[tuple[str, float]]:
    """Start ``gapfix serve ARGS``; yield ``(url, seconds from start to /readyz 200)``."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("GAPFIX_")}
    full_env.update(env or {})
    log = data_dir.parent / f"serve-{port}.log"
    t0 = time.perf_counter()
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [GAPFIX, "serve", *args, "--data-dir", str(data_dir), "--host", "127.0.0.1",
             "--port", str(port), "--log-level", "warning"],
            env=full_env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        with httpx.Client(timeout=2) as client:
            while True:
                if proc.poll() is not None or time.perf_counter() - t0 > 300:
                    raise RuntimeError(f"gapfix serve did not start: {log.read_text()[-2000:]}")
                with contextlib.suppress(httpx.TransportError):
                    if client.get(f"{url}/readyz").status_code == 200:
                        break
                time.sleep(0.01)
        yield url, time.perf_counter() - t0
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
