"""Transform speed on 1,000,000 x 512 float32 rows, as ratios to memory/BLAS baselines.

- shift-type apply (centering, mean-shift): rows/s / rows/s of ``np.copyto`` on the same array
  (one read + one write of the data: the memory-bandwidth bound), target >= 0.7;
- whiten apply: GFLOP/s / numpy float32 matmul GFLOP/s on the same shapes, target >= 0.7;
- streaming fit over 10M x 512 rows in 100k-row shards: peak RSS of the fitting process, < 1 GiB;
- on a CUDA GPU (torch tensors in, out): shift-type apply / ``clone`` of the same tensor, and
  whiten apply / bare ``torch.addmm`` (highest float32 precision); skipped without a GPU.
  ``GAPFIX_BENCH_TORCH_DEVICE=cpu`` runs this part on CPU tensors instead.
Set GAPFIX_BENCH_ROWS to shrink the arrays on small machines.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np

from benchmarks._common import BenchResult, best_time
from gapfix import make_transform

ROWS = int(os.environ.get("GAPFIX_BENCH_ROWS", 1_000_000))
DIM = 512
STREAM_ROWS = int(os.environ.get("GAPFIX_BENCH_STREAM_ROWS", 10_000_000))

STREAM_SCRIPT = r"""
import re, sys, numpy as np
from gapfix import make_transform
rows, dim, shard = int(sys.argv[1]), int(sys.argv[2]), 100_000
t = make_transform(sys.argv[3])
rng = np.random.default_rng(0)
offset = np.zeros(dim, np.float32); offset[0] = 1.0
for start in range(0, rows, shard):
    n = min(shard, rows - start)
    img = rng.standard_normal((n, dim), dtype=np.float32) + offset
    txt = rng.standard_normal((n, dim), dtype=np.float32) - offset
    t.partial_fit(image=img, text=txt)
    del img, txt
t.finalize()
# VmHWM: this process's own peak RSS (ru_maxrss would include the parent's, kept across exec)
hwm = int(re.search(r"VmHWM:\s+(\d+) kB", open("/proc/self/status").read()).group(1)) * 1024
print(hwm, t.fit_stats_["n_image"])
"""


def _data(rows: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((rows, DIM), dtype=np.float32)
    y = rng.standard_normal((rows, DIM), dtype=np.float32) + 0.1
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    y /= np.linalg.norm(y, axis=1, keepdims=True)
    return x, y


def _apply_results() -> list[BenchResult]:
    x, y = _data(ROWS)
    out = np.empty_like(x)
    copy_s = best_time(lambda: np.copyto(out, x))
    results = []
    for method in ("centering", "mean-shift"):
        t = make_transform(method).fit(x[:50_000], y[:50_000])
        s = best_time(lambda t=t: t.transform(x, "image", out=out))
        results.append(
            BenchResult(
                name=f"apply {method} ({ROWS:,}x{DIM})",
                value=ROWS / s, unit="rows/s", baseline=ROWS / copy_s,
                baseline_name="np.copyto same array", target=0.7,
            )
        )  # fmt: skip
    w = make_transform("whiten").fit(x[:50_000], y[:50_000])
    flops = 2.0 * ROWS * DIM * DIM
    mat = w.kernel("image").matrix
    mm_s = best_time(lambda: np.matmul(x, mat, out=out))
    wh_s = best_time(lambda: w.transform(x, "image", out=out))
    results.append(
        BenchResult(
            name=f"apply whiten ({ROWS:,}x{DIM})",
            value=flops / wh_s / 1e9, unit="GFLOP/s", baseline=flops / mm_s / 1e9,
            baseline_name="np.matmul same shapes", target=0.7,
        )
    )  # fmt: skip
    return results


def _torch_time(torch, fn, device: str) -> float:
    def synced() -> None:
        fn()
        if device == "cuda":
            torch.cuda.synchronize()

    return best_time(synced, repeat=5)


def _torch_apply_results(device: str) -> list[BenchResult]:
    """Apply on torch tensors on ``device``, against a clone / addmm of the same tensor."""
    import torch

    x, y = _data(ROWS)
    xt = torch.from_numpy(x).to(device)
    copy_s = _torch_time(torch, xt.clone, device)
    results = []
    for method in ("centering", "mean-shift"):
        t = make_transform(method).fit(x[:50_000], y[:50_000])
        s = _torch_time(torch, lambda t=t: t.transform(xt, "image"), device)
        results.append(
            BenchResult(
                name=f"apply {method} on {device} tensors ({ROWS:,}x{DIM})",
                value=ROWS / s, unit="rows/s", baseline=ROWS / copy_s,
                baseline_name=f"torch clone on {device}",
                note="bias add and renormalise are 2 more passes over memory",
            )
        )  # fmt: skip
    w = make_transform("whiten").fit(x[:50_000], y[:50_000])
    k = w.kernel("image")
    mat = torch.from_numpy(k.matrix).to(device)
    bias = torch.from_numpy(k.bias).to(device)
    flops = 2.0 * ROWS * DIM * DIM
    mm_s = _torch_time(torch, lambda: torch.addmm(bias, xt, mat), device)
    wh_s = _torch_time(torch, lambda: w.transform(xt, "image"), device)
    results.append(
        BenchResult(
            name=f"apply whiten on {device} tensors ({ROWS:,}x{DIM})",
            value=flops / wh_s / 1e9, unit="GFLOP/s", baseline=flops / mm_s / 1e9,
            baseline_name=f"torch.addmm on {device}",
        )
    )  # fmt: skip
    return results


def _torch_device() -> str | None:
    wanted = os.environ.get("GAPFIX_BENCH_TORCH_DEVICE")
    if wanted:
        return wanted
    try:
        import torch
    except ImportError:
        return None
    return "cuda" if torch.cuda.is_available() else None


def run() -> list[BenchResult]:
    device = _torch_device()
    results = _torch_apply_results(device) if device else []
    results += _apply_results()  # frees the 1M-row arrays before the memory measurement
    for method in ("centering", "standardize"):
        proc = subprocess.run(
            [sys.executable, "-c", STREAM_SCRIPT, str(STREAM_ROWS), str(DIM), method],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        peak, n = (int(v) for v in proc.stdout.split())
        results.append(
            BenchResult(
                name=f"streaming fit {method} ({n:,}x{DIM} per modality)",
                value=peak / 2**30, unit="GiB peak RSS", baseline=1.0,
                baseline_name="1 GiB budget", note="ratio < 1 meets the target",
            )
        )  # fmt: skip
    return results
