"""Encode throughput through the HTTP service vs a bare open_clip loop (target >= 0.9).

Service: ``POST /v1/embed`` with ``batch`` base64 JPEGs per request (in-process ASGI, the
app's own lifespan, decode + preprocess + micro-batched forward + JSON out). Bare loop: the
same JPEG bytes decoded with Pillow, open_clip's preprocessing, ``model.encode_image`` under
``torch.inference_mode``, same model and batch size. Random init (no weights can be fetched
here; a forward pass costs the same). ViT-S-32 on CPU, ViT-B-32 on GPU.
"""

from __future__ import annotations

import asyncio
import base64
import io
import os
import tempfile
import time
from pathlib import Path

from benchmarks._common import BenchResult


def _jpegs(n: int) -> list[bytes]:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (240, 320, 3), dtype=np.uint8)).save(buf, "JPEG")
        out.append(buf.getvalue())
    return out


def run() -> list[BenchResult]:
    import httpx
    import torch
    import torch.nn.functional as F
    from PIL import Image

    from gapfix.encoders import load_encoder
    from service.app import create_app
    from service.settings import Settings

    cuda = torch.cuda.is_available()
    model_name = os.environ.get("GAPFIX_BENCH_ENCODE_MODEL", "ViT-B-32" if cuda else "ViT-S-32")
    batch = 64 if cuda else 16
    n = batch * (8 if cuda else 2)
    images = _jpegs(n)
    bodies = [
        {"images": [base64.b64encode(b).decode() for b in images[s : s + batch]]}
        for s in range(0, n, batch)
    ]
    enc = load_encoder(model_name, "none", max_batch_size=batch)
    model, preprocess = enc.model, enc.preprocess

    def bare() -> None:
        with torch.inference_mode():
            for s in range(0, n, batch):
                px = torch.stack(
                    [
                        preprocess(Image.open(io.BytesIO(b)).convert("RGB"))
                        for b in images[s : s + batch]
                    ]
                )
                F.normalize(model.encode_image(px.to(enc.device)).float(), dim=-1).cpu().numpy()

    def timed(fn) -> float:
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0

    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(  # type: ignore[call-arg]
            _env_file=None, model=model_name, pretrained="none", data_dir=Path(tmp),
            max_batch_size=batch, max_images_per_request=batch,
        )  # fmt: skip
        app = create_app(settings)

        async def main() -> tuple[float, float]:
            async with app.router.lifespan_context(app):
                transport = httpx.ASGITransport(app=app)
                async with httpx.AsyncClient(
                    transport=transport, base_url="http://b", timeout=600
                ) as c:

                    async def service() -> None:
                        for body in bodies:
                            r = await c.post("/v1/embed", json=body)
                            assert r.status_code == 200, r.text

                    await service()  # warm-up both sides
                    await asyncio.to_thread(bare)
                    best_s = best_b = float("inf")
                    for _ in range(2):  # interleaved, best of 2
                        t0 = time.perf_counter()
                        await service()
                        best_s = min(best_s, time.perf_counter() - t0)
                        best_b = min(best_b, await asyncio.to_thread(timed, bare))
                    return best_s, best_b

        t_service, t_bare = asyncio.run(main())
    return [
        BenchResult(
            name="HTTP /v1/embed images vs bare open_clip loop",
            value=n / t_service, unit="img/s", baseline=n / t_bare,
            baseline_name="Pillow decode + preprocess + encode_image loop", target=0.9,
            note=f"{model_name} random init, {enc.device}, batch {batch}, {n} JPEGs 320x240",
        )
    ]  # fmt: skip
