"""`make gpu-check`: the `gpu`-marked tests plus the GPU benchmarks, as one table.

Run on a machine with a CUDA GPU (it takes a few minutes; the budget is 8)::

    python -m benchmarks.gpu_check            # tests + benchmarks + table
    python -m benchmarks.gpu_check --no-tests # benchmarks only

Measured, each against a same-device baseline in the same run:

- apply on CUDA tensors: centering vs ``torch.clone`` (both one pass over memory) and whiten vs
  ``torch.addmm`` (the same matrix product);
- FAISS flat search, GPU vs CPU (needs the ``faiss-gpu-cu12`` build, see README);
- open_clip ViT-B-32 image encoding (random-init weights, nothing downloaded): fp16 and bf16
  weights vs fp32, and the vectors' largest cosine distance from fp32.

Without CUDA it prints one line saying so and exits 0 (nothing to check). Results also go to
``bench-results/gpu-check.json``; exit code 1 if the tests failed.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from benchmarks._common import BenchResult


def _cuda_time(fn: Callable[[], object], repeat: int = 5) -> float:
    """Best wall time of ``fn`` in seconds, synchronising the device around each call."""
    import torch

    fn()
    torch.cuda.synchronize()
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return best


def bench_apply(n: int = 1_000_000, d: int = 512) -> list[BenchResult]:
    """Transforms applied to CUDA tensors vs clone/addmm of the same tensors."""
    import torch

    import gapfix

    rng = np.random.default_rng(0)
    img = rng.standard_normal((4096, d)).astype(np.float32)
    txt = rng.standard_normal((4096, d)).astype(np.float32) + 0.5
    x = torch.randn(n, d, device="cuda")
    out = []
    cen = gapfix.make_transform("centering").fit(image=img, text=txt)
    t = _cuda_time(lambda: cen.transform(x, modality="image"))
    base = _cuda_time(lambda: x.clone())
    out.append(BenchResult("gpu apply centering", n / t, "rows/s", n / base, "torch.clone", 0.3))
    wh = gapfix.make_transform("whiten", shrinkage=0.5).fit(image=img, text=txt)
    m = torch.randn(d, d, device="cuda")
    b = torch.randn(d, device="cuda")
    t = _cuda_time(lambda: wh.transform(x, modality="image"))
    base = _cuda_time(lambda: torch.addmm(b, x, m))
    out.append(BenchResult("gpu apply whiten", n / t, "rows/s", n / base, "torch.addmm", 0.5))
    return out


def bench_faiss(n: int = 1_000_000, d: int = 512, nq: int = 1024, k: int = 10) -> list[BenchResult]:
    """Flat inner-product search on the GPU vs the CPU, same vectors and queries."""
    import faiss

    if faiss.get_num_gpus() < 1:
        return [BenchResult("faiss gpu flat", 0.0, "q/s", note="faiss has no GPU support here")]
    rng = np.random.default_rng(0)
    xb = rng.standard_normal((n, d), dtype=np.float32)
    xq = rng.standard_normal((nq, d), dtype=np.float32)
    cpu = faiss.IndexFlatIP(d)
    cpu.add(xb)
    gpu = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, cpu)
    gpu.search(xq, k)
    t0 = time.perf_counter()
    gpu.search(xq, k)
    t_gpu = time.perf_counter() - t0
    t0 = time.perf_counter()
    cpu.search(xq, k)
    t_cpu = time.perf_counter() - t0
    return [BenchResult("faiss gpu flat 1M x 512", nq / t_gpu, "q/s", nq / t_cpu, "faiss cpu")]


def bench_encode(batch: int = 256) -> list[BenchResult]:
    """ViT-B-32 image encoding with fp16/bf16 weights vs fp32 on the GPU (random init)."""
    import torch

    from gapfix.encoders import load_encoder

    pixels = None
    ref = None
    rates: dict[str, float] = {}
    drift: dict[str, float] = {}
    for precision in ("fp32", "fp16", "bf16"):
        enc = load_encoder("ViT-B-32", "none", device="cuda", precision=precision)
        if pixels is None:
            pixels = torch.rand(batch, *enc.pixel_shape, device="cuda")
        with torch.inference_mode():
            t = _cuda_time(lambda enc=enc, px=pixels: enc.forward_images(px), repeat=3)
            vec = enc.postprocess(enc.forward_images(pixels))
        rates[precision] = batch / t
        if ref is None:
            ref = vec
        else:
            drift[precision] = float(1.0 - (np.asarray(vec) * np.asarray(ref)).sum(1).min())
        del enc
        torch.cuda.empty_cache()
    return [
        BenchResult(
            f"encode ViT-B-32 {p}",
            rates[p],
            "img/s",
            rates["fp32"],
            "fp32",
            note=f"max cosine distance from fp32 {drift[p]:.1e}",
        )
        for p in ("fp16", "bf16")
    ]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-tests", action="store_true", help="benchmarks only")
    args = parser.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print("gpu-check: no CUDA GPU on this machine; nothing to check")
        return 0
    rc = 0
    if not args.no_tests:
        rc = subprocess.call([sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-rs"])
    results: list[BenchResult] = []
    for bench in (bench_apply, bench_faiss, bench_encode):
        try:
            results.extend(bench())
        except Exception as exc:  # report every figure that could be measured
            results.append(BenchResult(bench.__name__, 0.0, "-", note=f"failed: {exc}"))
    print(f"\ngapfix gpu-check on {torch.cuda.get_device_name(0)} (tests rc={rc})")
    print(f"| {'benchmark':<28} | {'value':>14} | {'baseline':>26} | ratio | note")
    print(f"|{'-' * 30}|{'-' * 16}|{'-' * 28}|-------|-----")
    for r in results:
        base = f"{r.baseline:.4g} ({r.baseline_name})" if r.baseline else "-"
        ratio = f"{r.ratio:.2f}" if r.ratio is not None else "-"
        print(f"| {r.name:<28} | {r.value:>10.4g} {r.unit:<3} | {base:>26} | {ratio:>5} | {r.note}")
    out = Path("bench-results")
    out.mkdir(exist_ok=True)
    (out / "gpu-check.json").write_text(json.dumps([r.to_dict() for r in results], indent=2))
    return 1 if rc not in (0, 5) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
