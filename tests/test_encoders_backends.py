"""Encoder backends (`--backend torch|onnx|compile`) and low-precision weights: every backend's
vectors match eager fp32 within `gapfix.encoders.backends.TOLERANCE` (tiny model, random init
and a round-tripped checkpoint)."""

from __future__ import annotations

import pickle
import sys

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from gapfix.cli import app
from gapfix.encoders import ClipEncoder, ModelLoadError, load_encoder
from gapfix.encoders import backends as B
from gapfix.encoders.testing import register_tiny_model
from gapfix.errors import InputError
from gapfix.jobs.model import cpu_stage
from gapfix.jobs.testing import write_tiny_checkpoint

TINY = register_tiny_model()
TEXTS = ["a photo of a cat", "a dog on a skateboard", "", "red square", "x " * 100]
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def pixels() -> torch.Tensor:
    return torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def cos_dist(a: np.ndarray, b: np.ndarray) -> float:
    """Largest 1 - cosine between matching rows (both L2-normalised)."""
    assert a.shape == b.shape and a.dtype == b.dtype == np.float32
    return float(1.0 - (a * b).sum(axis=1).min())


def assert_matches(enc: ClipEncoder, ref: ClipEncoder, pixels, tolerance: float) -> None:
    assert cos_dist(enc.encode_images(pixels), ref.encode_images(pixels)) <= tolerance
    assert cos_dist(enc.encode_texts(TEXTS), ref.encode_texts(TEXTS)) <= tolerance


def test_check_backend_and_bad_names():
    assert B.check_backend(" ONNX ") == "onnx"
    for bad in ("tensorrt", "", "torch2"):
        with pytest.raises(InputError, match="unknown backend"):
            B.check_backend(bad)
    with pytest.raises(InputError, match="unknown backend"):
        load_encoder(TINY, "none", device="cpu", backend="jax")


@pytest.mark.parametrize("command", ["serve", "embed"])
def test_cli_bad_backend_is_one_line_exit_2(command, tmp_path):
    args = {
        "serve": ["serve", "--model", "none", "--backend", "tensorrt"],
        "embed": ["embed", str(tmp_path), "--out", str(tmp_path / "o"), "--backend", "tensorrt"],
    }[command]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 2, r.output
    assert "unknown backend 'tensorrt'" in r.output and "Traceback" not in r.output
    assert not (tmp_path / "o").exists()


def test_settings_backend_validated(monkeypatch):
    from pydantic import ValidationError

    from service.settings import Settings

    monkeypatch.setenv("GAPFIX_BACKEND", "onnx")
    assert Settings().backend == "onnx"
    monkeypatch.setenv("GAPFIX_BACKEND", "tensorrt")
    with pytest.raises(ValidationError, match="unknown backend"):
        Settings()


def test_onnx_random_init_matches_eager(tmp_path, pixels):
    ref = load_encoder(TINY, "none", device="cpu", max_batch_size=4)
    enc = load_encoder(TINY, "none", device="cpu", backend="onnx", cache_dir=tmp_path)
    assert enc.backend == "onnx" and enc.describe()["backend"] == "onnx"
    assert_matches(enc, ref, pixels, B.TOLERANCE["onnx"])  # 6 images: chunks of 4 + 2
    assert enc.encode_images(pixels[:0]).shape == (0, enc.dim)
    assert enc.towers.text_lengths is None  # the exported text graph has a fixed context
    light = pickle.loads(pickle.dumps(cpu_stage(enc)))  # the CPU stage ships to workers
    assert light.tokenize(["a"]).shape == (1, enc.context_length)


def test_onnx_checkpoint_export_cached_by_weights(tmp_path, pixels, monkeypatch):
    ckpt0 = write_tiny_checkpoint(tmp_path / "w0.pt", seed=0)
    ckpt1 = write_tiny_checkpoint(tmp_path / "w1.pt", seed=1)
    cache = tmp_path / "cache"
    ref = load_encoder(TINY, ckpt0, device="cpu")
    enc = load_encoder(TINY, ckpt0, device="cpu", backend="onnx", cache_dir=cache)
    assert_matches(enc, ref, pixels, B.TOLERANCE["onnx"])
    exported = sorted(p.name for p in (cache / "onnx").iterdir())
    assert len(exported) == 1
    assert sorted(p.name for p in (cache / "onnx" / exported[0]).iterdir()) == [
        "image.onnx",
        "text.onnx",
    ]

    def no_export(*a, **k):
        raise AssertionError("exported again")

    with monkeypatch.context() as m:  # same weights, another load: the cached files serve
        m.setattr(B, "_export", no_export)
        again = load_encoder(TINY, ckpt0, device="cpu", backend="onnx", cache_dir=cache)
        assert_matches(again, ref, pixels, B.TOLERANCE["onnx"])
    other = load_encoder(TINY, ckpt1, device="cpu", backend="onnx", cache_dir=cache)
    assert len(list((cache / "onnx").iterdir())) == 2  # other weights, another export
    ref1 = load_encoder(TINY, ckpt1, device="cpu")
    assert_matches(other, ref1, pixels, B.TOLERANCE["onnx"])
    assert cos_dist(other.encode_texts(TEXTS), ref.encode_texts(TEXTS)) > 0.01


def test_onnx_needs_runtime_and_cpu(monkeypatch, tmp_path):
    model = load_encoder(TINY, "none", device="cpu").model
    with pytest.raises(InputError, match="runs on CPU"):
        B.make_towers(model, "onnx", torch.device("cuda"), cache_dir=tmp_path)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if not installed
    with pytest.raises(ModelLoadError, match=r"pip install 'gapfix\[onnx\]'"):
        load_encoder(TINY, "none", device="cpu", backend="onnx", cache_dir=tmp_path)
    assert not (tmp_path / "onnx").exists()


def test_preloaded_encoder_handed_over_by_backend(tmp_path):
    from gapfix.encoders.loading import preload_encoder

    first = preload_encoder(TINY, "none", device="cpu", cache_dir=tmp_path, backend="onnx")
    other = load_encoder(TINY, "none", device="cpu", cache_dir=tmp_path, backend="torch")
    assert other is not first and other.backend == "torch"  # another backend asked for
    same = load_encoder(TINY, "none", device="cpu", cache_dir=tmp_path)  # backend unset
    assert same is first and same.backend == "onnx"


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_low_precision_weights(precision, pixels):
    """The weights themselves are converted (the encoder casts its inputs to them); run on CPU
    here through the same code path the GPU takes."""
    ref = load_encoder(TINY, "none", device="cpu")
    lp = load_encoder(TINY, "none", device="cpu")
    model = B.to_precision(lp.model, precision)
    enc = ClipEncoder(model, lp.preprocess, lp.tokenizer, device="cpu", precision=precision)
    assert enc.weight_dtype == {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    assert next(model.parameters()).dtype == enc.weight_dtype
    assert_matches(enc, ref, pixels, B.TOLERANCE[precision])


@pytest.mark.slow
def test_compile_matches_eager(tmp_path, pixels):
    ckpt = write_tiny_checkpoint(tmp_path / "w.pt", seed=2)
    ref = load_encoder(TINY, ckpt, device="cpu", max_batch_size=4)
    enc = load_encoder(TINY, ckpt, device="cpu", backend="compile", max_batch_size=4)
    assert enc.backend == "compile"
    assert_matches(enc, ref, pixels, B.TOLERANCE["compile"])


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_gpu_low_precision_weights(precision, tmp_path, pixels):
    ckpt = write_tiny_checkpoint(tmp_path / "w.pt", seed=3)
    ref = load_encoder(TINY, ckpt, device="cpu")
    gpu = load_encoder(TINY, ckpt, device="cuda", precision=precision)
    assert gpu.precision == precision
    assert next(gpu.model.parameters()).dtype == gpu.weight_dtype != torch.float32
    assert_matches(gpu, ref, pixels, B.TOLERANCE[precision])


@pytest.mark.gpu
@pytest.mark.slow
@cuda
def test_gpu_compile_matches_eager(tmp_path, pixels):
    ckpt = write_tiny_checkpoint(tmp_path / "w.pt", seed=4)
    ref = load_encoder(TINY, ckpt, device="cuda", precision="fp32")
    enc = load_encoder(TINY, ckpt, device="cuda", precision="fp32", backend="compile")
    assert_matches(enc, ref, pixels, B.TOLERANCE["compile"])


def test_text_padding_cut_is_exact():
    """Texts sorted by length, each chunk cut to its longest: same vectors as open_clip on the
    full context, in the caller's order. (ONNX keeps the full context; compile cuts too.)"""
    enc = load_encoder(TINY, "none", device="cpu", max_batch_size=2)
    assert B.cuttable(enc.model) and enc.towers.text_lengths is not None
    texts = ["a b c d e f g h", "a", "x " * 100, "", "two cats"]
    tokens = enc.tokenize(texts)
    seen = []
    text = enc.towers.text
    enc.towers.text = lambda t: seen.append(t.shape[1]) or text(t)
    got = enc.encode_texts(texts)
    # with start and end tokens: ["", "a"] -> 3, ["two cats", "a b c ..."] -> 10, ["x x ..."]
    assert seen == [3, 10, tokens.shape[1]]
    with torch.inference_mode():
        bare = torch.nn.functional.normalize(enc.model.encode_text(tokens), dim=-1).numpy()
    assert cos_dist(got, bare) <= B.TOLERANCE["onnx"]
