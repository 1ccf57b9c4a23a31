"""How the two towers of an open_clip model run: eager torch, ONNX Runtime or `torch.compile`.

- ``torch``: ``model.encode_image`` / ``model.encode_text`` as they are (eager);
- ``onnx``: ONNX Runtime on CPU. Each tower is exported once with ``torch.onnx.export`` and the
  files are cached under ``<cache>/onnx/<key>/`` where ``key`` hashes the weights, the
  architecture, the torch version and the opset, so a later start loads them without exporting;
- ``compile``: ``torch.compile`` of each tower (inductor, dynamic shapes: compiles once per
  tower, on the first call, which a warm-up pays for).

For open_clip's CLIP text tower (causal, pooled at the end-of-text token) the torch and compile
text towers take tokens cut after a batch's longest text (`encode_text_cut`); the ONNX graph
keeps the full context.

Every backend must give the vectors of eager fp32 within `TOLERANCE` (cosine distance of the
L2-normalised vectors); tests check it. Low-precision *weights* on GPU are `to_precision`.
This module imports torch lazily: its names are usable where torch is not loaded (settings).
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import threading
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gapfix.encoders.errors import ModelLoadError
from gapfix.errors import InputError

logger = logging.getLogger("gapfix.encoders")

BACKENDS = ("torch", "onnx", "compile")
ONNX_OPSET = 17
# Largest cosine distance (1 - cos) between a backend's normalised vectors and eager fp32's.
# Measured on gapfix-tiny (CPU): onnx 6e-8, compile 6e-8, fp16 6e-7, bf16 5e-5.
TOLERANCE = {"onnx": 1e-6, "compile": 1e-6, "fp16": 1e-3, "bf16": 5e-3}
_EXPORT_LOCK = threading.Lock()


def check_backend(backend: str) -> str:
    """``backend`` normalised (stripped, lower case); `InputError` unless it is one of `BACKENDS`."""
    name = str(backend or "").strip().lower()
    if name not in BACKENDS:
        raise InputError(
            f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}", param="backend"
        )
    return name


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/gapfix`` (``~/.cache/gapfix``): exported ONNX towers live under it."""
    root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "gapfix"


class Towers:
    """The image and text towers as callables on device tensors -> (n, dim) features.

    ``text_lengths`` (when set) gives, per row of tokens, how many leading positions the text
    tower's output depends on: the encoder then cuts each batch to its longest row.
    """

    def __init__(
        self,
        name: str,
        image: Callable[[Any], Any],
        text: Callable[[Any], Any],
        text_lengths: Callable[[Any], Any] | None = None,
    ) -> None:
        self.name = name
        self.image = image
        self.text = text
        self.text_lengths = text_lengths


def cuttable(model: Any) -> bool:
    """True for open_clip's built-in CLIP text tower with a causal mask and EOT pooling: its
    output at the pooled position depends on the positions up to it only, so padding after the
    longest text of a batch can be cut off (exactly; 77 -> ~20 positions for typical prompts)."""
    import torch

    return (
        not hasattr(model, "text")
        and isinstance(getattr(model, "attn_mask", None), torch.Tensor)
        and getattr(model, "text_pool_type", None) in ("argmax", "eos")
        and all(hasattr(model, a) for a in ("token_embedding", "positional_embedding", "ln_final"))
    )


def pooled_positions(model: Any, tokens: Any) -> Any:
    """Per row, the position the text tower pools (the EOT token) plus one."""
    if model.text_pool_type == "eos":
        return (tokens == model.text_eos_id).int().argmax(dim=-1) + 1
    return tokens.argmax(dim=-1) + 1


def encode_text_cut(model: Any, tokens: Any) -> Any:
    """``model.encode_text`` on a token tensor cut to fewer than the context's positions (the
    positional embedding and causal mask cut alike); for models where `cuttable` holds."""
    import torch
    from open_clip.transformer import text_global_pool

    n = tokens.shape[1]
    cast = model.transformer.get_cast_dtype()
    x = model.token_embedding(tokens).to(cast) + model.positional_embedding[:n].to(cast)
    x = model.transformer(x, attn_mask=model.attn_mask[:n, :n])
    x = model.ln_final(x)
    eos = getattr(model, "text_eos_id", None)
    x = text_global_pool(x, tokens, model.text_pool_type, eos_token_id=eos)
    proj = model.text_projection
    if proj is None:
        return x
    return proj(x) if isinstance(proj, torch.nn.Linear) else x @ proj


def _text_fn(model: Any) -> tuple[Callable[[Any], Any], Callable[[Any], Any] | None]:
    if not cuttable(model):
        return model.encode_text, None
    return (lambda t: encode_text_cut(model, t)), (lambda t: pooled_positions(model, t))


def _tower_modules(model: Any, cut: bool) -> tuple[Any, Any]:
    """Each tower as an ``nn.Module`` (for compile and export); ``cut``: the text tower takes
    tokens cut short (`encode_text_cut`)."""
    import torch

    class ImageTower(torch.nn.Module):
        def __init__(self, m: torch.nn.Module) -> None:
            super().__init__()
            self.m = m

        def forward(self, pixels: torch.Tensor) -> torch.Tensor:
            return self.m.encode_image(pixels)

    class TextTower(torch.nn.Module):
        def __init__(self, m: torch.nn.Module) -> None:
            super().__init__()
            self.m = m

        def forward(self, tokens: torch.Tensor) -> torch.Tensor:
            return encode_text_cut(self.m, tokens) if cut else self.m.encode_text(tokens)

    return ImageTower(model).eval(), TextTower(model).eval()


def make_towers(
    model: Any,
    backend: str,
    device: Any,
    *,
    cache_dir: str | os.PathLike | None = None,
    pixel_shape: tuple[int, ...] = (),
    context_length: int | None = None,
    arch: str = "",
) -> Towers:
    """The towers of ``model`` for ``backend`` (see the module docstring).

    ``onnx`` needs a CPU device and the ``onnxruntime`` package (`ModelLoadError` otherwise);
    ``pixel_shape``/``context_length`` shape its export inputs, ``arch`` enters its cache key.
    """
    backend = check_backend(backend)
    text_fn, lengths = _text_fn(model)
    if backend == "torch":
        return Towers("torch", model.encode_image, text_fn, lengths)
    if backend == "compile":
        import torch

        image, text = _tower_modules(model, cut=lengths is not None)
        # dynamic: one graph per tower for every batch size and text length
        return Towers(
            "compile",
            torch.compile(image, dynamic=True),
            torch.compile(text, dynamic=True),
            lengths,
        )
    if getattr(device, "type", str(device)) != "cpu":
        raise InputError(
            f"backend onnx runs on CPU (ONNX Runtime); got device {device}: pass --device cpu",
            param="backend",
        )
    return _onnx_towers(model, cache_dir, pixel_shape, context_length or 77, arch)


def weights_hash(model: Any) -> str:
    """blake2b of every tensor of ``model.state_dict()`` (names, dtypes, shapes and bytes)."""
    import torch

    h = hashlib.blake2b(digest_size=16)
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _onnx_towers(
    model: Any,
    cache_dir: str | os.PathLike | None,
    pixel_shape: tuple[int, ...],
    context_length: int,
    arch: str,
) -> Towers:
    """ONNX Runtime sessions of both towers. The text tower keeps the full context: the
    TorchScript exporter fixes nn.MultiheadAttention's sequence length in the graph."""
    try:
        import onnxruntime as ort
    except ImportError as e:
        raise ModelLoadError(
            "backend onnx needs onnxruntime: pip install 'gapfix[onnx]'", param="backend"
        ) from e
    import torch

    root = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    key = hashlib.blake2b(
        f"{weights_hash(model)}|{arch}|{pixel_shape}|{context_length}|{torch.__version__}|"
        f"{ONNX_OPSET}".encode(),
        digest_size=16,
    ).hexdigest()
    folder = root / "onnx" / key
    with _EXPORT_LOCK:
        if not (folder / "image.onnx").is_file() or not (folder / "text.onnx").is_file():
            _export(model, folder, pixel_shape, context_length)
        else:
            logger.info("onnx: using the towers exported before in %s", folder)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = torch.get_num_threads()
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    providers = ["CPUExecutionProvider"]
    image = ort.InferenceSession(str(folder / "image.onnx"), opts, providers=providers)
    text = ort.InferenceSession(str(folder / "text.onnx"), opts, providers=providers)

    def run_image(pixels: torch.Tensor) -> torch.Tensor:
        x = pixels.detach().to("cpu", torch.float32).contiguous().numpy()
        return torch.from_numpy(image.run(None, {"pixels": x})[0])

    def run_text(tokens: torch.Tensor) -> torch.Tensor:
        x = tokens.detach().to("cpu", torch.int64).contiguous().numpy()
        return torch.from_numpy(text.run(None, {"tokens": x})[0])

    return Towers("onnx", run_image, run_text)


def _export(model: Any, folder: Path, pixel_shape: tuple[int, ...], context_length: int) -> None:
    """Export both towers into ``folder``, atomically: a half-written export is never used."""
    import torch

    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    image, text = _tower_modules(model, cut=False)
    dummy_pixels = torch.zeros((2, *pixel_shape), dtype=torch.float32)
    dummy_tokens = torch.zeros((2, context_length), dtype=torch.int64)
    logger.info("onnx: exporting the towers to %s (once per weights)", folder)
    try:
        # Grad mode on: under no_grad/inference_mode, nn.MultiheadAttention takes its fused
        # fast path, an operator the exporter does not know.
        with warnings.catch_warnings(), torch.inference_mode(False), torch.enable_grad():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notices
            for mod, arg, name, inp in (
                (image, dummy_pixels, "image.onnx", "pixels"),
                (text, dummy_tokens, "text.onnx", "tokens"),
            ):
                torch.onnx.export(
                    mod,
                    (arg,),
                    str(tmp / name),
                    input_names=[inp],
                    output_names=["features"],
                    dynamic_axes={inp: {0: "n"}, "features": {0: "n"}},
                    opset_version=ONNX_OPSET,
                    dynamo=False,
                )
        if folder.exists():  # another process finished first: keep its files
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            os.replace(tmp, folder)
    except Exception:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def to_precision(model: Any, precision: str) -> Any:
    """Convert ``model``'s weights to ``precision`` (``fp16``/``bf16``; ``fp32``: unchanged)."""
    import torch

    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision)
    return model if dtype is None else model.to(dtype)
