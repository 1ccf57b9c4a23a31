"""Encoder backends on CPU against this machine's fp32 roofline, and against eager open_clip.

ViT-B-32, random init (no downloads; a forward pass costs the same whatever the weights).
For each backend (`torch` eager, `onnx`, `compile`; ``GAPFIX_BENCH_BACKENDS`` picks) and each
tower, the best of ``REPEAT`` timed passes over ``N`` inputs in batches of ``BATCH``:

- roofline fraction = items/s x model FLOPs per item / numpy fp32 matmul FLOP/s, the latter
  measured in the same run (best of several 2048^3 products, before and after the models, with
  the same threads); FLOPs per item are counted by ``torch.utils.flop_counter`` (2 per MAC);
- each backend's rate over eager open_clip's (``model.encode_image`` / ``encode_text``).

Texts are CLIP prompts of mixed lengths; the encoder cuts each batch's padding to its longest
text (exact for causal, argmax-pooled text towers), and the "eager, full context" row is the
bare open_clip call on all 77 positions. Target: image roofline fraction >= 0.6.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time

import numpy as np

from benchmarks._common import BenchResult

MODEL = os.environ.get("GAPFIX_BENCH_BACKENDS_MODEL", "ViT-B-32")
BACKENDS = os.environ.get("GAPFIX_BENCH_BACKENDS", "torch,onnx,compile").split(",")
BATCH = int(os.environ.get("GAPFIX_BENCH_BACKENDS_BATCH", "16"))
N = int(os.environ.get("GAPFIX_BENCH_BACKENDS_N", "32"))
REPEAT = 2
TARGET = 0.6
MATMUL_N = 2048


def matmul_flops(repeat: int = 5) -> float:
    """Best fp32 matmul FLOP/s numpy reaches here (2 n^3 per n x n product)."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((MATMUL_N, MATMUL_N), dtype=np.float32)
    b = rng.standard_normal((MATMUL_N, MATMUL_N), dtype=np.float32)
    a @ b  # warm-up: threads, caches
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * MATMUL_N**3 / best


def flops_per_item(fn, x) -> float:
    """FLOPs of ``fn(x)`` per row of ``x`` (matmuls, convolutions, attention). Grad mode on:
    without it nn.MultiheadAttention runs one fused op the counter does not see."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with torch.enable_grad(), FlopCounterMode(display=False) as counter:
        fn(x)
    return counter.get_total_flops() / x.shape[0]


def texts(n: int) -> list[str]:
    """CLIP-style prompts and captions of mixed length (5 to ~40 tokens)."""
    words = "a photo of the small red dog running on green grass near an old wooden house"
    words = words.split(" ")
    return [" ".join(words[: 3 + (7 * i) % len(words)] * (1 + i % 3)) for i in range(n)]


def _rates(fns: dict, n: int) -> dict[str, float]:
    """Items/s of each function over ``n`` items: runs alternated, best of ``REPEAT``."""
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(REPEAT):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t0)
    return {name: n / t for name, t in best.items()}


def run() -> list[BenchResult]:
    cache = tempfile.mkdtemp(prefix="gapfix-bench-onnx-")  # exported ViT-B-32: ~600 MB
    try:
        return _run(cache)
    finally:
        shutil.rmtree(cache, ignore_errors=True)


def _run(cache: str) -> list[BenchResult]:
    import torch

    from gapfix.encoders import load_encoder

    peak = 0.0
    pixels = torch.randn(N, 3, 224, 224)
    prompts = texts(N)
    rates: dict[str, dict[str, float]] = {}
    setup: dict[str, float] = {}
    flops: dict[str, float] = {}
    for backend in BACKENDS:
        t0 = time.perf_counter()
        enc = load_encoder(MODEL, "none", device="cpu", max_batch_size=BATCH, backend=backend,
                           cache_dir=cache)  # fmt: skip
        enc.encode_images(pixels[:BATCH])  # warm-up at the batch size (compiles)
        enc.encode_texts(prompts[:BATCH])
        setup[backend] = time.perf_counter() - t0
        fns = {
            "image": lambda e=enc: e.encode_images(pixels),
            "text": lambda e=enc: e.encode_texts(prompts),
        }
        if not flops:
            tokens = enc.tokenize(prompts)
            flops["image"] = flops_per_item(enc.model.encode_image, pixels[:1])
            flops["text_full"] = flops_per_item(enc.model.encode_text, tokens)
            fns["text_full"] = lambda m=enc.model, t=tokens: _bare_texts(m, t)
        peak = max(peak, matmul_flops())  # next to each model run: the machine is shared
        rates[backend] = _rates(fns, N)
        del enc
    peak = max(peak, matmul_flops())
    where = (
        f"{MODEL} random init, CPU fp32, {torch.get_num_threads()} threads, batch {BATCH}, n={N}"
    )
    results = []
    eager = rates.get("torch")
    for backend in BACKENDS:
        img = rates[backend]["image"]
        results.append(
            BenchResult(
                f"encode images, backend {backend}: fraction of the fp32 roofline",
                img * flops["image"] / peak,
                "of peak",
                target=TARGET,
                note=f"{img:.3g} img/s x {flops['image'] / 1e9:.2f} GFLOP/img / numpy matmul "
                f"{peak / 1e9:.1f} GFLOP/s; {where}; load + warm-up {setup[backend]:.1f}s",
            )
        )
        if eager and backend != "torch":
            for tower, unit in (("image", "img/s"), ("text", "texts/s")):
                results.append(
                    BenchResult(
                        f"encode {tower}s: backend {backend} vs eager open_clip",
                        rates[backend][tower],
                        unit,
                        baseline=eager[tower],
                        baseline_name="backend torch (eager)",
                        note=where,
                    )
                )
    if eager and "text_full" in eager:
        full = eager["text_full"]
        results.append(
            BenchResult(
                "encode texts: padding cut to the batch's longest text vs full 77-token context",
                eager["text"],
                "texts/s",
                baseline=full,
                baseline_name="bare model.encode_text, full context",
                note=f"{where}; text roofline fraction at full context "
                f"{full * flops['text_full'] / peak:.2f}",
            )
        )
    return results


def _bare_texts(model, tokens) -> None:
    import torch

    with torch.inference_mode():
        for s in range(0, tokens.shape[0], BATCH):
            model.encode_text(tokens[s : s + BATCH])
