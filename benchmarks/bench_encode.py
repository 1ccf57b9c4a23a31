"""Encoder throughput vs a bare open_clip loop: same model, same batch size, same inputs.

- images: `ClipEncoder.encode_images` on preprocessed tensors vs ``model.encode_image`` +
  normalise + copy to CPU, batch by batch, under ``torch.inference_mode`` (and the same
  autocast on GPU);
- images, concurrent: many asyncio clients sending one image each through a `MicroBatcher`,
  which must merge them back into full batches to keep up with the bare loop;
- texts: `ClipEncoder.encode_texts` (tokenizing included) vs tokenizer + ``model.encode_text``.

Random init (no weights can be downloaded here; the cost of a forward pass does not depend on
the weights). Default model: ViT-B-32 on GPU, ViT-S-32 on CPU to keep the run under a minute
(``GAPFIX_BENCH_ENCODE_MODEL`` / ``_N`` / ``_BATCH`` override). Runs are interleaved and the
best of ``REPEAT`` is kept for each side. Target: ratio >= 0.9.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time

from benchmarks._common import BenchResult

REPEAT = 2
TARGET = 0.9


def _settings(cuda: bool) -> tuple[str, int, int, int]:
    """Model, batch size, number of images, number of texts (a ViT-S-32 text costs ~2 images)."""
    model = os.environ.get("GAPFIX_BENCH_ENCODE_MODEL", "ViT-B-32" if cuda else "ViT-S-32")
    batch = int(os.environ.get("GAPFIX_BENCH_ENCODE_BATCH", "64" if cuda else "16"))
    n = int(os.environ.get("GAPFIX_BENCH_ENCODE_N", str(batch * (16 if cuda else 2))))
    return model, batch, n, max(batch, n // 2)


def run() -> list[BenchResult]:
    import torch
    import torch.nn.functional as F

    from gapfix.encoders import MicroBatcher, load_encoder

    cuda = torch.cuda.is_available()
    model_name, batch, n, n_texts = _settings(cuda)
    enc = load_encoder(model_name, "none", max_batch_size=batch)
    model, device = enc.model, enc.device
    pixels = torch.randn(n, *enc.pixel_shape)
    texts = [f"a photo of object number {i}, seen from the side" for i in range(n_texts)]

    def autocast():
        if enc.precision in ("fp16", "bf16"):
            dtype = torch.float16 if enc.precision == "fp16" else torch.bfloat16
            return torch.autocast(device_type="cuda", dtype=dtype)
        return contextlib.nullcontext()

    def bare_images() -> None:
        with torch.inference_mode(), autocast():
            for s in range(0, n, batch):
                z = model.encode_image(pixels[s : s + batch].to(device))
                F.normalize(z.float(), dim=-1).cpu().numpy()

    def bare_texts() -> None:
        with torch.inference_mode(), autocast():
            for s in range(0, n_texts, batch):
                z = model.encode_text(enc.tokenizer(texts[s : s + batch]).to(device))
                F.normalize(z.float(), dim=-1).cpu().numpy()

    async def concurrent_clients() -> None:
        todo = iter(range(n))

        async def client(b: MicroBatcher) -> None:
            for i in todo:  # shared iterator: n one-image requests spread over the clients
                await b.encode_images(pixels[i : i + 1])

        async with MicroBatcher(enc, max_batch_size=batch, max_wait_ms=5) as b:
            await asyncio.gather(*(client(b) for _ in range(2 * batch)))

    cases = {
        "bare_images": bare_images,
        "encoder_images": lambda: enc.encode_images(pixels),
        "batcher_images": lambda: asyncio.run(concurrent_clients()),
        "bare_texts": bare_texts,
        "encoder_texts": lambda: enc.encode_texts(texts),
    }
    with torch.inference_mode():  # warm-up (allocator, kernels, tokenizer cache)
        enc.encode_images(pixels[:batch])
        enc.encode_texts(texts[:batch])
        bare_texts()
    best = dict.fromkeys(cases, float("inf"))
    for _ in range(REPEAT):  # interleaved, so drift in machine load hits every side alike
        for name, fn in cases.items():
            t0 = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t0)
    rate = {name: (n_texts if "texts" in name else n) / t for name, t in best.items()}

    where = f"{model_name} random init, {device.type} {enc.precision}, batch {batch}, n={n}"
    return [
        BenchResult(
            "encode images: ClipEncoder.encode_images vs bare open_clip loop",
            rate["encoder_images"],
            "img/s",
            baseline=rate["bare_images"],
            baseline_name="bare encode_image loop",
            target=TARGET,
            note=f"{where}; preprocessed tensors",
        ),
        BenchResult(
            "encode images: MicroBatcher, 1-image requests vs bare loop",
            rate["batcher_images"],
            "img/s",
            baseline=rate["bare_images"],
            baseline_name="bare encode_image loop",
            target=TARGET,
            note=f"{where}; {2 * batch} concurrent asyncio clients, max_wait 5 ms",
        ),
        BenchResult(
            "encode texts: ClipEncoder.encode_texts vs bare open_clip loop",
            rate["encoder_texts"],
            "texts/s",
            baseline=rate["bare_texts"],
            baseline_name="bare tokenizer + encode_text loop",
            target=TARGET,
            note=where.replace(f"n={n}", f"n={n_texts}"),
        ),
    ]
