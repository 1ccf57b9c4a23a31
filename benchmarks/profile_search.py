"""Where a loaded server's time goes: ``py-spy`` samples ``gapfix serve --model none`` while
``wrk`` drives single-vector searches, and the samples are grouped by what the innermost frame
was doing (FAISS, item lookup in SQLite, JSON/pydantic, access logging, HTTP and framework
code, the event loop waiting, gapfix's own code).

    python -m benchmarks.profile_search [--index hnsw|flat] [--n 100000] [-c 32] [--seconds 8]

Needs ``py-spy`` (``pip install 'gapfix[profile]'``; sampling another process needs ptrace,
e.g. root) and Debian's ``wrk``. Prints one table: share of all samples (every thread) and of
the event-loop thread's samples per category, and the busiest functions.
"""

from __future__ import annotations

import argparse
import collections
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import numpy as np

from benchmarks._server import serve
from benchmarks._wrk import run_wrk, write_lua
from benchmarks.bench_load import CLUSTERS, DIM, clustered, populate, search_bodies

# (category, substrings of a frame "function (file:line)"), the first match wins
CATEGORIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("worker threads waiting for work", ("Condition.wait (", "_worker (concurrent")),
    ("thread hand-off (futures, locks)", ("Condition.notify", "concurrent/futures", "threading.py")),
    ("uvloop native (socket I/O, HTTP parsing)", ("Runner.run (",)),
    ("FAISS search", ("faiss",)),
    ("item lookup (SQLite)", ("sqlite3", "store/db.py")),
    ("JSON / pydantic", ("orjson", "json/", "pydantic", "jsonable_encoder")),
    ("access log / logging", ("logging/",)),
    ("HTTP + framework", ("uvicorn", "starlette", "fastapi", "httptools", "h11", "anyio",
                          "asyncio", "uvloop")),
    ("numpy", ("numpy",)),
    ("gapfix / service code", ("gapfix/", "service/")),
)  # fmt: skip


def category(stack: list[str]) -> str:
    """The category of a sampled stack (innermost frame last), by its innermost matching frame."""
    for frame in reversed(stack):
        for name, keys in CATEGORIES:
            if any(k in frame for k in keys):
                return name
    return "other"


def parse_raw(text: str) -> list[tuple[str, list[str], int]]:
    """py-spy ``--format raw`` lines (``thread;frame;...;frame count``) -> (thread, frames, n)."""
    out = []
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        out.append((frames[0], frames[1:], int(count)))
    return out


def summarize(samples: list[tuple[str, list[str], int]]) -> dict[str, dict[str, float]]:
    """Share of samples per category over all threads and over the busiest (event-loop) thread;
    ``top``: the innermost functions with most samples."""
    per_thread: collections.Counter[str] = collections.Counter()
    for thread, _, n in samples:
        per_thread[thread] += n
    loop = max(per_thread, key=per_thread.__getitem__) if per_thread else ""
    everything: collections.Counter[str] = collections.Counter()
    on_loop: collections.Counter[str] = collections.Counter()
    leaves: collections.Counter[str] = collections.Counter()
    loop_leaves: collections.Counter[str] = collections.Counter()
    for thread, frames, n in samples:
        c = category(frames)
        everything[c] += n
        if thread == loop:
            on_loop[c] += n
            if frames:
                loop_leaves[frames[-1]] += n
        if frames:
            leaves[frames[-1]] += n
    total, total_loop = sum(everything.values()) or 1, sum(on_loop.values()) or 1
    return {
        "all": {k: v / total for k, v in everything.most_common()},
        "loop": {k: v / total_loop for k, v in on_loop.most_common()},
        "top": {k: v / total for k, v in leaves.most_common(10)},
        "top_loop": {k: v / total_loop for k, v in loop_leaves.most_common(12)},
    }


def profile(index: str, n: int, connections: int, seconds: float) -> dict:
    """Serve ``n`` clustered vectors, load with wrk, sample with py-spy; ``summarize`` + q/s."""
    rng = np.random.default_rng(0)
    centers = rng.standard_normal((CLUSTERS, DIM), dtype=np.float32)
    x, queries = clustered(rng, n, centers), clustered(rng, 256, centers)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        populate(root / "data", x, index=index)
        write_lua(root / "q.lua", search_bodies(queries))
        with serve(root / "data") as (url, _):
            pid = _server_pid(url)
            out = root / "profile.txt"
            spy = ["py-spy", "record", "--pid", str(pid), "--duration", f"{seconds:g}",
                   "--format", "raw", "--output", str(out), "--threads", "--nonblocking"]  # fmt: skip
            sampler = threading.Thread(
                target=subprocess.run, args=(spy,), kwargs={"capture_output": True}
            )
            run_wrk(url + "/v1/collections/bench/search", root / "q.lua", connections, 1.0)
            sampler.start()
            load = run_wrk(
                url + "/v1/collections/bench/search", root / "q.lua", connections, seconds + 1
            )
            sampler.join()
            result = summarize(parse_raw(out.read_text() if out.exists() else ""))
    result["qps"] = load["qps"]
    return result


def _server_pid(url: str) -> int:
    port = url.rsplit(":", 1)[1]
    found = subprocess.run(["ss", "-Hltnp", f"sport = :{port}"], capture_output=True, text=True)
    pid = found.stdout.split("pid=")[1].split(",")[0]
    return int(pid)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--index", default="hnsw", choices=("hnsw", "flat"))
    p.add_argument("--n", type=int, default=100_000)
    p.add_argument("-c", "--connections", type=int, default=32)
    p.add_argument("--seconds", type=float, default=8.0)
    a = p.parse_args(argv)
    missing = [t for t in ("py-spy", "wrk", "ss") if shutil.which(t) is None]
    if missing:
        print(f"profile_search: needs {', '.join(missing)} on PATH", file=sys.stderr)
        return 2
    r = profile(a.index, a.n, a.connections, a.seconds)
    print(f"{a.index} {a.n} x {DIM}, wrk -c{a.connections}: {r['qps']:.0f} q/s")
    print(f"{'category':34} {'all threads':>12} {'event loop':>11}")
    for name in r["all"]:
        print(f"{name:34} {r['all'][name]:12.1%} {r['loop'].get(name, 0.0):11.1%}")
    print("\nbusiest innermost functions (share of all samples):")
    for frame, share in r["top"].items():
        print(f"  {share:6.1%}  {frame[:110]}")
    print("\nbusiest innermost functions on the event-loop thread (share of its samples):")
    for frame, share in r["top_loop"].items():
        print(f"  {share:6.1%}  {frame[:110]}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
