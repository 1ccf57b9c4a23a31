"""Start-up: ``gapfix serve`` from process start to ``/readyz`` 200.

- vectors mode (``--model none``) over a data dir holding a 20k x 512 flat collection: no torch
  or open_clip import on this path (target: ready in <= 2 s);
- model mode with the tiny random-init model (``gapfix-tiny --pretrained none``): torch and
  open_clip import, model load and the warm-up forward pass at the largest batch size.

The best of ``ROUNDS`` starts is reported (start-up on a shared machine only gets slower).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np

from benchmarks._common import BenchResult
from benchmarks._server import serve
from gapfix.store import ItemIn, Store

N = 20_000
DIM = 512
ROUNDS = 3


def _populate(data_dir: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((N, DIM), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    with Store(data_dir, flush_interval=None) as store:
        coll = store.create_collection("bench", index="flat")
        coll.add([ItemIn(f"i{n}", image=x[n]) for n in range(N)])


def _ready_time(data_dir: Path, args: tuple[str, ...]) -> float:
    best = float("inf")
    for _ in range(ROUNDS):
        with serve(data_dir, args) as (_, seconds):
            best = min(best, seconds)
    return best


def run() -> list[BenchResult]:
    tmp = Path(tempfile.mkdtemp(prefix="gapfix-bench-startup-"))
    try:
        vectors_dir, model_dir = tmp / "vectors", tmp / "model"
        _populate(vectors_dir)
        vectors = _ready_time(vectors_dir, ("--model", "none"))
        model = _ready_time(model_dir, ("--model", "gapfix-tiny", "--pretrained", "none"))
        return [
            BenchResult(
                name=f"start-up to ready, vectors mode ({N // 1000}k x {DIM} flat collection)",
                value=vectors,
                unit="s",
                note=f"target <= 2 s; best of {ROUNDS}; no torch/open_clip import",
            ),
            BenchResult(
                name="start-up to ready, model mode (gapfix-tiny, random weights)",
                value=model,
                unit="s",
                note=f"best of {ROUNDS}; torch + open_clip import, load, warm-up at batch 64",
            ),
        ]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    for r in run():
        print(r.to_dict())
