"""Encoder tests on the tiny open_clip architecture (random init; no weights can be downloaded)."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import socket
import struct
import threading
import time
import zlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from prometheus_client import REGISTRY
from safetensors.torch import save_file

from gapfix.encoders import (
    ClipEncoder,
    EncoderClosedError,
    MicroBatcher,
    ModelLoadError,
    decode_image,
    load_encoder,
    resolve_weights,
)
from gapfix.encoders.loading import resolve_device, resolve_precision
from gapfix.encoders.testing import register_tiny_model, tiny_config
from gapfix.encoders.weights import probe
from gapfix.errors import InputError, PayloadTooLargeError

TINY = register_tiny_model()
TEXTS = ["a photo of a cat", "a dog on a skateboard", "", "red square", "x " * 100]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny models gain nothing from intra-op threads, and on a busy 2-core machine OpenMP
    spinning makes each call ~50x slower; restore the setting for other test modules."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def enc(_one_thread) -> ClipEncoder:
    return load_encoder(TINY, "none", max_batch_size=4)


@pytest.fixture()
def offline(monkeypatch):
    """Make sure no test ever downloads weights, even on a machine with network access."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def image_bytes(fmt: str, size=(40, 30), color=(200, 30, 30), **save) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, fmt, **save)
    return buf.getvalue()


def png_header(width: int, height: int) -> bytes:
    """A well-formed PNG whose header claims ``width x height`` (the data is tiny)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def metric(name: str, **labels) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def unit_rows(z: np.ndarray) -> bool:
    return bool(np.allclose(np.linalg.norm(z, axis=1), 1.0, atol=1e-5))


# ---- encoding ----------------------------------------------------------------------------


def test_random_init_encodes_texts_and_images(enc, caplog):
    z = enc.encode_texts(TEXTS)
    assert z.shape == (len(TEXTS), 32) and z.dtype == np.float32 and z.flags.c_contiguous
    assert unit_rows(z)
    assert not np.allclose(z[0], z[1])  # different texts, different vectors
    imgs = [image_bytes("PNG"), image_bytes("JPEG", color=(0, 90, 250)), Image.new("L", (9, 7))]
    zi = enc.encode_images(imgs)
    assert zi.shape == (3, 32) and zi.dtype == np.float32 and unit_rows(zi)
    assert enc.dim == 32 and enc.model_id == "gapfix-tiny/none" and str(enc.device) == "cpu"
    assert enc.describe()["image_shape"] == [3, 32, 32]
    assert enc.encode_texts([]).shape == (0, 32) and enc.encode_images([]).shape == (0, 32)
    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    with caplog.at_level(logging.WARNING, logger="gapfix.encoders"):
        again = load_encoder(TINY, "none")
    assert "RANDOM WEIGHTS" in caplog.text
    assert torch.equal(torch.rand(3), before)  # the caller's RNG is left as it was
    # the same random model every time: a resumed job (or each Ray actor) embeds alike
    np.testing.assert_allclose(again.encode_texts(TEXTS), z, atol=1e-5)  # batching: last bits


def test_matches_bare_open_clip_and_chunks(enc):
    """Same numbers as the bare model; inputs over max_batch_size are split into chunks."""
    pixels = torch.randn(10, 3, 32, 32)
    with torch.inference_mode():
        bare = F.normalize(enc.model.encode_image(pixels), dim=-1).numpy()
        tokens = enc.tokenizer(TEXTS)
        bare_t = F.normalize(enc.model.encode_text(tokens), dim=-1).numpy()
    chunks0 = metric("gapfix_encode_batch_size_count", modality="image")
    sum0 = metric("gapfix_encode_batch_size_sum", modality="image")
    core0 = metric("gapfix_stage_duration_seconds_count", stage="encode_core")
    np.testing.assert_allclose(enc.encode_images(pixels), bare, atol=1e-5)
    assert metric("gapfix_encode_batch_size_count", modality="image") - chunks0 == 3  # 4+4+2
    assert metric("gapfix_encode_batch_size_sum", modality="image") - sum0 == 10
    assert metric("gapfix_stage_duration_seconds_count", stage="encode_core") - core0 == 1
    pre0 = metric("gapfix_stage_duration_seconds_count", stage="encode_pre")
    post0 = metric("gapfix_stage_duration_seconds_count", stage="encode_post")
    np.testing.assert_allclose(enc.encode_texts(TEXTS), bare_t, atol=1e-5)
    assert metric("gapfix_stage_duration_seconds_count", stage="encode_pre") - pre0 == 1
    assert metric("gapfix_stage_duration_seconds_count", stage="encode_post") - post0 == 1
    # bytes go through decode_image + the model's own preprocessing
    data = image_bytes("PNG", size=(50, 20))
    expected = enc.encode_images(enc.preprocess(decode_image(data)).unsqueeze(0))
    np.testing.assert_allclose(enc.encode_images([data]), expected, atol=1e-6)


def test_bad_encoder_inputs(enc):
    with pytest.raises(InputError, match="list of strings"):
        enc.encode_texts("a single string")
    with pytest.raises(InputError) as e:
        enc.encode_texts(["ok", 3])
    assert e.value.param == "texts[1]"
    with pytest.raises(InputError, match="shape"):
        enc.encode_images(torch.zeros(2, 3, 16, 16))
    with pytest.raises(InputError) as e:
        enc.encode_images([image_bytes("PNG"), b"not an image"])
    assert e.value.param == "images[1]"
    with pytest.raises(InputError, match="list of images"):
        enc.encode_images(image_bytes("PNG"))


def test_extreme_aspect_ratio_rejected():
    small = load_encoder(TINY, "none", max_pixels=100_000)
    assert small.encode_images([image_bytes("PNG", size=(60, 40))]).shape == (1, 32)
    with pytest.raises(PayloadTooLargeError) as e:
        small.encode_images([image_bytes("PNG", size=(3000, 1))])
    assert e.value.param == "images[0]"


# ---- weights: local checkpoints, cache, offline --------------------------------------------


def _wrapped(sd):
    return {"state_dict": {f"module.{k}": v for k, v in sd.items()}}


@pytest.mark.parametrize(
    ("filename", "wrap"),
    [("tiny.pt", None), ("tiny-wrapped.bin", _wrapped), ("tiny.safetensors", None)],
)
def test_checkpoint_roundtrip(enc, tmp_path, filename, wrap):
    gen = torch.Generator().manual_seed(7)
    sd = {  # other weights than the (seeded) random init, so a load that ignored them shows
        k: (v + 0.05 * torch.randn(v.shape, generator=gen) if v.is_floating_point() else v)
        .detach()
        .clone()
        .contiguous()
        for k, v in enc.model.state_dict().items()
    }
    path = tmp_path / filename
    if filename.endswith(".safetensors"):
        save_file(sd, str(path))
    else:
        torch.save(wrap(sd) if wrap else sd, path)
    loaded = load_encoder(TINY, str(path))
    assert loaded.model_id == f"gapfix-tiny/{filename}"
    for name, value in loaded.model.state_dict().items():
        assert torch.equal(value, sd[name]), name
    assert not np.allclose(loaded.encode_texts(TEXTS), enc.encode_texts(TEXTS), atol=1e-3)
    enc.model.load_state_dict(sd)  # the same weights in the fixture's encoder ...
    try:
        imgs = [image_bytes("PNG"), image_bytes("WEBP", color=(10, 200, 10))]
        # ... encode alike; kernels may differ in the last float32 bit with memory alignment
        np.testing.assert_allclose(loaded.encode_texts(TEXTS), enc.encode_texts(TEXTS), atol=1e-6)
        np.testing.assert_allclose(loaded.encode_images(imgs), enc.encode_images(imgs), atol=1e-6)
    finally:
        enc.model.load_state_dict(load_encoder(TINY, "none").model.state_dict())


def test_bad_checkpoints(tmp_path):
    other = register_tiny_model("gapfix-tiny-16", embed_dim=16)
    mismatched = tmp_path / "other.pt"
    torch.save(load_encoder(other, "none").model.state_dict(), mismatched)
    with pytest.raises(ModelLoadError, match="size mismatch") as e:
        load_encoder(TINY, str(mismatched))
    assert e.value.param == "pretrained"
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"this is not a checkpoint")
    with pytest.raises(ModelLoadError):
        load_encoder(TINY, str(garbage))
    with pytest.raises(ModelLoadError, match="not found"):
        load_encoder(TINY, str(tmp_path / "missing.pt"))
    with pytest.raises(ModelLoadError, match="directory"):
        load_encoder(TINY, str(tmp_path))


def test_unknown_model_and_tag():
    with pytest.raises(ModelLoadError, match="ViT-B-32") as e:
        load_encoder("ViT-B-33", "none")
    assert e.value.param == "model"
    with pytest.raises(ModelLoadError, match="laion2b_s34b_b79k") as e:
        load_encoder("ViT-B-32", "no-such-tag")
    assert e.value.param == "pretrained"


@pytest.mark.parametrize(
    ("model", "pretrained"),
    [
        ("ViT-B-32", "laion2b_s34b_b79k"),
        ("hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K", None),
        ("ViT-B-32", "hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K"),
    ],
)
def test_uncached_weights_fail_fast_offline(offline, tmp_path, model, pretrained):
    t0 = time.perf_counter()
    with pytest.raises(ModelLoadError) as e:
        load_encoder(model, pretrained, cache_dir=tmp_path)
    assert time.perf_counter() - t0 < 20
    assert "--pretrained /path/to/" in e.value.message
    assert "GAPFIX_PRETRAINED" in e.value.message
    assert "not in the local cache" in e.value.message


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_hub_fails_fast(monkeypatch, tmp_path):
    """Without HF_HUB_OFFLINE, the reachability probe catches a dead endpoint in seconds."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    for var in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{_closed_port()}")
    t0 = time.perf_counter()
    with pytest.raises(ModelLoadError, match=r"unreachable|HF_HUB_OFFLINE"):
        load_encoder("ViT-B-32", "laion2b_s34b_b79k", cache_dir=tmp_path)
    assert time.perf_counter() - t0 < 20


def test_probe(monkeypatch):
    for var in ("http_proxy", "HTTP_PROXY"):
        monkeypatch.delenv(var, raising=False)
    assert "unreachable" in probe(f"http://127.0.0.1:{_closed_port()}", timeout=2)
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        assert probe(f"http://127.0.0.1:{server.getsockname()[1]}", timeout=2) is None


def _fake_hf_cache(root, repo: str, files: dict[str, bytes]) -> None:
    commit = "0123456789abcdef0123456789abcdef01234567"
    base = root / f"models--{repo.replace('/', '--')}"
    (base / "refs").mkdir(parents=True)
    (base / "refs" / "main").write_text(commit)
    snap = base / "snapshots" / commit
    snap.mkdir(parents=True)
    for name, data in files.items():
        (snap / name).write_bytes(data)


def test_cached_hub_repo_loads_offline(offline, enc, tmp_path):
    sd = {k: v.detach().clone().contiguous() for k, v in enc.model.state_dict().items()}
    save_file(sd, str(tmp_path / "w.safetensors"))
    config = {"model_cfg": tiny_config(), "preprocess_cfg": {}}
    files = {
        "open_clip_config.json": json.dumps(config).encode(),
        "open_clip_model.safetensors": (tmp_path / "w.safetensors").read_bytes(),
    }
    _fake_hf_cache(tmp_path / "hub", "gapfix/tiny-clip", files)
    loaded = load_encoder("hf-hub:gapfix/tiny-clip", cache_dir=tmp_path / "hub")
    assert loaded.model_id == "hf-hub:gapfix/tiny-clip"
    np.testing.assert_allclose(loaded.encode_texts(TEXTS), enc.encode_texts(TEXTS), atol=1e-6)


def test_cached_tag_resolves_to_file_offline(offline, tmp_path):
    repo = "laion/CLIP-ViT-B-32-laion2B-s34B-b79K"
    _fake_hf_cache(tmp_path, repo, {"open_clip_model.safetensors": b"weights"})
    src = resolve_weights("ViT-B-32", "laion2b_s34b_b79k", cache_dir=str(tmp_path))
    assert src.kind == "tag" and src.pretrained.endswith("open_clip_model.safetensors")
    assert src.model_id == "ViT-B-32/laion2b_s34b_b79k"
    assert src.preprocess["image_interpolation"] == "bicubic"  # the tag's preprocessing kept


def test_checkpoint_file_gets_the_architectures_preprocessing(tmp_path, caplog):
    ckpt = tmp_path / "ckpt.safetensors"
    ckpt.write_bytes(b"not loaded by resolve_weights")
    src = resolve_weights("ViT-H-14-378", str(ckpt))  # its only tag squashes, not crops
    assert src.kind == "file" and src.pretrained == str(ckpt)
    assert src.preprocess["image_resize_mode"] == "squash"
    with caplog.at_level(logging.WARNING, logger="gapfix.encoders"):
        assert resolve_weights("ViT-L-14", str(ckpt)).preprocess == {}  # tags disagree
    assert "different image preprocessing" in caplog.text
    assert resolve_weights(TINY, str(ckpt)).preprocess == {}  # no tags: open_clip defaults


def test_device_and_precision():
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu) == "fp32"
    assert resolve_precision("bf16", cpu) == "fp32"  # low-precision weights are GPU-only
    with pytest.raises(InputError):
        resolve_precision("int8", cpu)
    with pytest.raises(InputError):
        resolve_device("not-a-device")
    if not torch.cuda.is_available():
        assert resolve_device("auto") == cpu
        with pytest.raises(ModelLoadError, match="CUDA"):
            resolve_device("cuda")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_autocast_matches_cpu(enc, tmp_path):
    path = tmp_path / "tiny.pt"
    torch.save(enc.model.state_dict(), path)
    gpu = load_encoder(TINY, str(path), device="cuda", precision="auto")
    assert gpu.precision in ("bf16", "fp16")
    z = gpu.encode_texts(TEXTS)
    assert z.dtype == np.float32 and unit_rows(z)
    np.testing.assert_allclose(z, enc.encode_texts(TEXTS), atol=3e-2)


# ---- image decoding ------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "GIF"])
def test_decode_formats(fmt):
    img = decode_image(image_bytes(fmt, size=(40, 30), color=(250, 0, 0)))
    assert img.mode == "RGB" and img.size == (40, 30)
    r, g, b = img.getpixel((20, 15))
    assert r > 200 and g < 60 and b < 60


def test_decode_gif_first_frame_and_alpha():
    frames = [Image.new("RGB", (16, 16), c) for c in ((255, 0, 0), (0, 0, 255))]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=50)
    assert decode_image(buf.getvalue()).getpixel((8, 8)) == (255, 0, 0)
    buf = io.BytesIO()
    Image.new("RGBA", (8, 8), (0, 0, 0, 0)).save(buf, "PNG")  # fully transparent
    assert decode_image(buf.getvalue()).getpixel((4, 4)) == (255, 255, 255)


def test_decode_applies_exif_orientation():
    img = Image.new("RGB", (40, 20))
    img.paste((255, 0, 0), (0, 0, 20, 20))  # left half red
    img.paste((0, 0, 255), (20, 0, 40, 20))  # right half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # display rotated 90 degrees clockwise
    buf = io.BytesIO()
    img.save(buf, "JPEG", exif=exif, quality=95)
    out = decode_image(buf.getvalue())
    assert out.size == (20, 40)
    assert out.getpixel((10, 5))[0] > 200  # left half is now on top
    assert out.getpixel((10, 35))[2] > 200


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_decode_truncated(fmt):
    noisy = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8))
    buf = io.BytesIO()
    noisy.save(buf, fmt)
    data = buf.getvalue()
    with pytest.raises(InputError, match=r"truncated|decode"):
        decode_image(data[: len(data) // 2])


@pytest.mark.parametrize(
    "data",
    [b"", b"garbage bytes", image_bytes("BMP"), "a string"],
    ids=["empty", "junk", "bmp", "str"],
)
def test_decode_rejects_bad_input(data):
    with pytest.raises(InputError) as e:
        decode_image(data, param="image")
    assert not isinstance(e.value, PayloadTooLargeError)
    assert e.value.param == "image"


def test_preloaded_encoder_is_handed_over_once(tmp_path) -> None:
    from gapfix.encoders.loading import preload_encoder

    first = preload_encoder(TINY, "none", device="cpu", precision="auto")
    other = load_encoder(TINY, "none", device="cpu", cache_dir=tmp_path, max_batch_size=3)
    assert other is not first  # another cache (or weights, device, precision): another encoder
    same = load_encoder(TINY, "random", precision="auto", max_batch_size=5, max_pixels=1000)
    assert same is first and same.max_batch_size == 5 and same.max_pixels == 1000
    assert load_encoder(TINY, "none") is not first  # handed over once


@pytest.mark.parametrize("fmt", ["BMP", "TIFF"])
def test_decode_names_a_recognised_but_unsupported_format(fmt):
    with pytest.raises(InputError, match=f"unsupported image format {fmt}; accepted: JPEG"):
        decode_image(image_bytes(fmt))


@pytest.mark.parametrize("side", [50_000, 7_000])
def test_decode_bomb_rejected_before_decoding(side):
    """50000^2 trips Pillow's own guard; 7000^2 = 49 M is under it but over our 40 M limit."""
    t0 = time.perf_counter()
    with pytest.raises(PayloadTooLargeError):
        decode_image(png_header(side, side))
    assert time.perf_counter() - t0 < 1.0
    with pytest.raises(PayloadTooLargeError, match="limit"):
        decode_image(image_bytes("PNG", size=(100, 100)), max_pixels=5_000)


# ---- micro-batching ------------------------------------------------------------------------


class Spy:
    """Wraps an encoder forward method, recording the batch size of every model call."""

    def __init__(self, fn, fail_if=None):
        self.fn, self.fail_if, self.sizes = fn, fail_if, []
        self.lock = threading.Lock()

    def __call__(self, x):
        with self.lock:
            self.sizes.append(int(x.shape[0]))
        if self.fail_if is not None and self.fail_if(x):
            raise ValueError("poisoned batch")
        return self.fn(x)


def test_batcher_merges_concurrent_requests(enc, monkeypatch):
    text_spy, image_spy = Spy(enc.forward_texts), Spy(enc.forward_images)
    monkeypatch.setattr(enc, "forward_texts", text_spy)
    monkeypatch.setattr(enc, "forward_images", image_spy)
    requests = [TEXTS[i % 5 : i % 5 + 1 + i % 2] for i in range(16)]
    images = [[image_bytes("PNG", color=(i * 15, 0, 0))] for i in range(6)]
    images.append(torch.randn(2, 3, 32, 32))

    async def main():
        async with MicroBatcher(enc, max_batch_size=8, max_wait_ms=50) as batcher:
            texts = [batcher.encode_texts(r) for r in requests]
            imgs = [batcher.encode_images(r) for r in images]
            return await asyncio.gather(*texts, *imgs), batcher.stats

    results, stats = asyncio.run(main())
    monkeypatch.undo()
    assert len(text_spy.sizes) < len(requests) and len(image_spy.sizes) < len(images)
    assert max(text_spy.sizes + image_spy.sizes) <= 8
    assert sum(text_spy.sizes) == sum(len(r) for r in requests)
    assert stats["text"]["requests"] == 16 and stats["text"]["batches"] == len(text_spy.sizes)
    for req, got in zip(requests + images, results, strict=True):
        single = enc.encode_texts(req) if isinstance(req[0], str) else enc.encode_images(req)
        assert got.shape == single.shape and got.dtype == np.float32
        np.testing.assert_allclose(got, single, atol=1e-5)


def test_batcher_large_request_and_empty(enc):
    async def main():
        async with MicroBatcher(enc, max_batch_size=3, max_wait_ms=1) as batcher:
            return await asyncio.gather(
                batcher.encode_texts(TEXTS * 2), batcher.encode_texts([]), batcher.encode_images([])
            )

    big, empty_t, empty_i = asyncio.run(main())
    np.testing.assert_allclose(big, enc.encode_texts(TEXTS * 2), atol=1e-5)
    assert empty_t.shape == (0, 32) and empty_i.shape == (0, 32)


def test_batcher_errors_reach_the_right_callers(enc, monkeypatch):
    spy = Spy(enc.forward_images, fail_if=lambda x: bool(torch.isnan(x).any()))
    monkeypatch.setattr(enc, "forward_images", spy)
    good = [[image_bytes("PNG", color=(0, i * 30, 0))] for i in range(4)]
    poisoned = torch.full((1, 3, 32, 32), float("nan"))

    async def main():
        async with MicroBatcher(enc, max_wait_ms=50) as batcher:
            calls = [batcher.encode_images(g) for g in good]
            calls.insert(2, batcher.encode_images([b"corrupt"]))  # fails in its pre stage
            calls.insert(4, batcher.encode_images(poisoned))  # fails inside a merged model call
            return await asyncio.gather(*calls, return_exceptions=True)

    results = asyncio.run(main())
    assert isinstance(results[2], InputError) and results[2].param == "images[0]"
    assert isinstance(results[4], ValueError) and "poisoned" in str(results[4])
    ok = [r for i, r in enumerate(results) if i not in (2, 4)]
    monkeypatch.undo()
    for g, r in zip(good, ok, strict=True):
        np.testing.assert_allclose(r, enc.encode_images(g), atol=1e-5)


def test_batcher_shutdown_and_cancellation(enc):
    async def main():
        batcher = MicroBatcher(enc, max_wait_ms=20)
        doomed = asyncio.ensure_future(batcher.encode_texts(["cancelled"]))
        pending = [asyncio.ensure_future(batcher.encode_texts([t])) for t in TEXTS]
        await asyncio.sleep(0)
        doomed.cancel()
        await batcher.aclose()  # lets accepted requests finish
        assert all(p.done() and p.exception() is None for p in pending)
        with pytest.raises(EncoderClosedError):
            await batcher.encode_texts(["late"])
        return [p.result() for p in pending]

    results = asyncio.run(main())
    np.testing.assert_allclose(np.vstack(results), enc.encode_texts(TEXTS), atol=1e-5)
