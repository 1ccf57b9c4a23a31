"""Server subprocesses on 127.0.0.1 for the start-up and load benchmarks: ``gapfix serve``, or
any command that answers a readiness URL (``chroma run``)."""

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
def process_server(
    cmd: list[str], ready_url: str, log: Path, env: dict[str, str], name: str
) -> Iterator[float]:
    """Run ``cmd`` (output to ``log``) until ``ready_url`` answers 200; yield the seconds that
    took; SIGTERM (then SIGKILL after 60 s) on exit."""
    t0 = time.perf_counter()
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        with httpx.Client(timeout=2) as client:
            while True:
                if proc.poll() is not None or time.perf_counter() - t0 > 300:
                    raise RuntimeError(f"{name} did not start: {log.read_text()[-2000:]}")
                with contextlib.suppress(httpx.TransportError):
                    if client.get(ready_url).status_code == 200:
                        break
                time.sleep(0.01)
        yield time.perf_counter() - t0
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def serve(
    data_dir: Path, args: tuple[str, ...] = ("--model", "none"), env: dict | None = None
) -> Iterator[tuple[str, float]]:
    """Start ``gapfix serve ARGS``; yield ``(url, seconds from start to /readyz 200)``."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("GAPFIX_")}
    full_env.update(env or {})
    cmd = [GAPFIX, "serve", *args, "--data-dir", str(data_dir), "--host", "127.0.0.1",
           "--port", str(port), "--log-level", "warning"]  # fmt: skip
    log = data_dir.parent / f"serve-{port}.log"
    with process_server(cmd, f"{url}/readyz", log, full_env, "gapfix serve") as took:
        yield url, took
