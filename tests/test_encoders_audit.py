"""Regression tests from an audit of the encoder layer and ``gapfix serve`` (tiny random model)."""

from __future__ import annotations

import asyncio
import io
import os
import signal
import time

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from gapfix.cli import app
from gapfix.encoders import MicroBatcher, ModelLoadError, decode_image, load_encoder
from gapfix.encoders.testing import register_tiny_model

TINY = register_tiny_model()
SERVE_VARS = ["GAPFIX_MODEL", "GAPFIX_PRETRAINED", "GAPFIX_DATA_DIR", "GAPFIX_HOST", "GAPFIX_PORT"]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def enc(_one_thread):
    return load_encoder(TINY, "none", max_batch_size=8)


def png(img: Image.Image, **save) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG", **save)
    return buf.getvalue()


# ---- images --------------------------------------------------------------------------------


def test_16bit_greyscale_is_scaled_not_clipped():
    """Pillow's own I;16 -> RGB conversion clips every value over 255 to white."""
    ramp = np.array([[0, 1000, 32768, 65535]], np.uint16)
    out = decode_image(png(Image.fromarray(ramp)))
    assert out.mode == "RGB"
    assert [out.getpixel((x, 0)) for x in range(4)] == [
        (0, 0, 0),
        (3, 3, 3),
        (127, 127, 127),
        (255, 255, 255),
    ]
    # a transparent grey value (tRNS) is composited over white, the others are kept
    keyed = decode_image(png(Image.fromarray(ramp), transparency=1000))
    assert keyed.getpixel((1, 0)) == (255, 255, 255) and keyed.getpixel((0, 0)) == (0, 0, 0)


def test_rgb_png_with_a_transparent_colour_is_composited_over_white():
    """An RGB PNG can key one colour as transparent (tRNS), as L and P images can."""
    pixels = np.zeros((2, 2, 3), np.uint8)
    pixels[0, 0] = (5, 6, 7)
    out = decode_image(png(Image.fromarray(pixels), transparency=(0, 0, 0)))
    assert out.mode == "RGB"
    assert out.getpixel((1, 1)) == (255, 255, 255) and out.getpixel((0, 0)) == (5, 6, 7)


def test_pil_images_converted_like_decoded_bytes(enc):
    """A PIL image given directly is converted exactly as the same image sent as bytes."""
    rgba = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    grey16 = Image.fromarray(np.full((8, 8), 20000, np.uint16))
    for img in (rgba, grey16):
        np.testing.assert_allclose(
            enc.encode_images([img]), enc.encode_images([png(img)]), atol=1e-6
        )


# ---- encoder and batcher -----------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16])
def test_pixels_of_any_float_dtype(enc, dtype):
    """check_pixels accepts any floating tensor; the model used to fail on non-float32."""
    pixels = torch.randn(3, 3, 32, 32)
    expected = enc.encode_images(pixels.to(dtype).float())
    np.testing.assert_allclose(enc.encode_images(pixels.to(dtype)), expected, atol=1e-5)

    async def main():
        async with MicroBatcher(enc, max_wait_ms=50) as batcher:
            return await asyncio.gather(
                batcher.encode_images(pixels[:1]), batcher.encode_images(pixels[1:].to(dtype))
            )

    a, b = asyncio.run(main())
    np.testing.assert_allclose(a, enc.encode_images(pixels[:1]), atol=1e-5)
    np.testing.assert_allclose(b, expected[1:], atol=1e-5)


def test_batcher_max_batch_size_bounds_every_model_call(enc, monkeypatch):
    """A request larger than the batcher's max_batch_size (below the encoder's) is split."""
    sizes: list[int] = []
    forward = enc.forward_texts

    def spy(tokens: torch.Tensor) -> torch.Tensor:
        sizes.append(int(tokens.shape[0]))
        return forward(tokens)

    monkeypatch.setattr(enc, "forward_texts", spy)
    texts = [f"text {i}" for i in range(20)]
    requests = [texts[:1], texts[1:8], texts[8:10], texts[10:]]

    async def main():
        async with MicroBatcher(enc, max_batch_size=3, max_wait_ms=20) as batcher:
            return await asyncio.gather(*(batcher.encode_texts(r) for r in requests))

    results = asyncio.run(main())
    monkeypatch.undo()
    assert max(sizes) <= 3 and sum(sizes) == len(texts)
    np.testing.assert_allclose(np.vstack(results), enc.encode_texts(texts), atol=1e-5)


# ---- loading -------------------------------------------------------------------------------


@pytest.mark.parametrize("content", ["empty-dict", "zero-bytes"])
def test_empty_checkpoint_error_says_what_is_wrong(tmp_path, content):
    path = tmp_path / "ckpt.pt"
    if content == "empty-dict":
        torch.save({}, path)
    else:
        path.write_bytes(b"")
    with pytest.raises(ModelLoadError) as e:
        load_encoder(TINY, str(path))
    assert not e.value.message.rstrip().endswith(": .")  # the cause used to be blank
    assert "StopIteration" in e.value.message or "EOFError" in e.value.message


def test_long_load_error_is_cut(tmp_path):
    """A checkpoint of another model lists every key; the message stays readable."""
    enc = load_encoder(TINY, "none")
    path = tmp_path / "nested.pt"
    torch.save({"model": enc.model.state_dict()}, path)  # not a layout open_clip accepts
    with pytest.raises(ModelLoadError, match="Missing key") as e:
        load_encoder(TINY, str(path))
    assert len(e.value.message) < 1500 and "more characters" in e.value.message


# ---- gapfix serve pre-check ----------------------------------------------------------------


@pytest.fixture()
def serve_env(monkeypatch):
    """Clean GAPFIX_* variables; uvicorn.run replaced by a recorder (nothing is served)."""
    import uvicorn

    for key in [k for k in os.environ if k.upper().startswith("GAPFIX_")] + SERVE_VARS:
        monkeypatch.setenv(key, "")  # restored at teardown: serve writes os.environ itself
        monkeypatch.delenv(key)
    monkeypatch.setattr(signal, "signal", lambda *a: None)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    started: list[dict] = []
    monkeypatch.setattr(uvicorn, "run", lambda *a, **kw: started.append(kw))
    return started


def _serve(*args: str):
    return CliRunner().invoke(app, ["serve", *args])


@pytest.mark.parametrize(
    ("env", "needle"),
    [({"GAPFIX_DEVICE": "cuda:7"}, "device"), ({"GAPFIX_PRECISION": "fp8"}, "precision")],
)
def test_serve_checks_device_and_precision(serve_env, monkeypatch, env, needle):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    result = _serve("--model", TINY, "--pretrained", "none")
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gapfix: error:") and needle in lines[0]
    assert not serve_env


def test_serve_precheck_reads_settings_like_the_service(serve_env, monkeypatch):
    """An empty GAPFIX_MODEL is vectors mode and an empty GAPFIX_PRETRAINED random weights for
    the service; the pre-check used to check the default model and tag instead."""
    monkeypatch.setenv("GAPFIX_MODEL", "")
    assert _serve().exit_code == 0 and len(serve_env) == 1
    assert _serve("--model", TINY, "--pretrained", "").exit_code == 0 and len(serve_env) == 2
    bad = _serve("--model", TINY, "--pretrained", "no-such-tag")
    assert bad.exit_code == 2 and "no-such-tag" in bad.stderr and len(serve_env) == 2


def test_serve_takes_uvicorn_options_from_settings(serve_env, monkeypatch):
    """Keep-alive and the access log come from the service's settings; a bad value is one
    line naming the variable (exit 2), before anything starts."""
    monkeypatch.setenv("GAPFIX_TIMEOUT_KEEP_ALIVE_S", "42")
    assert _serve("--model", "none").exit_code == 0
    kw = serve_env[-1]
    assert kw["timeout_keep_alive"] == 42 and kw["access_log"] is False
    assert kw["loop"] == "auto"  # uvloop, installed as a dependency
    # httptools (a dependency) behind the protocol that answers parse errors in the envelope
    assert kw["http"] == "service.http_protocol:HTTPProtocol"
    from service.http_protocol import HTTPProtocol

    assert HTTPProtocol.__name__ == "HttpToolsJSONProtocol"
    monkeypatch.setenv("GAPFIX_QUEUE_BUDGET_MS", "-1")
    bad = _serve("--model", "none")
    assert bad.exit_code == 2 and len(serve_env) == 1
    assert (
        bad.stderr.strip()
        == "gapfix: error: GAPFIX_QUEUE_BUDGET_MS: Input should be greater than 0"
    )


def test_huge_text_is_cut_before_tokenizing(enc):
    """Megabytes of text took seconds per MB to tokenize, for tokens the context drops."""
    rng = np.random.default_rng(0)
    words = ["".join(w) for w in rng.choice(list("abcdefghijklmnopqrstuvwxyz"), (400_000, 7))]
    text = "   \n " * 1000 + " ".join(words)  # ~3 MB, after a run of whitespace
    t0 = time.perf_counter()
    tokens = enc.tokenize([text])
    assert time.perf_counter() - t0 < 3  # ~16 s before
    assert torch.equal(tokens, enc.tokenizer([" ".join(words[:2000])]))
    assert enc.encode_texts(["a b " * 5000]).shape == (1, 32)
