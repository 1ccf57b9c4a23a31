"""Build a `ClipEncoder` from an open_clip architecture and a weight source, failing fast offline.

Weight sources (``pretrained``):

- an open_clip pretrained tag (``laion2b_s34b_b79k``): taken from the local cache when present,
  otherwise downloaded by open_clip, after a quick reachability check of the host;
- ``hf-hub:org/repo`` (as ``model`` or ``pretrained``): config and weights from the Hugging Face
  Hub, or from its local cache when the Hub cannot be reached;
- a local checkpoint file (``.pt``/``.pth``/``.bin``/``.safetensors``) or an open_clip model
  directory (with ``open_clip_config.json``), or ``local-dir:/path`` as ``model``;
- ``none``: random weights, for tests and demos only (logged loudly).

Without network access and without cached weights, `load_encoder` raises `ModelLoadError`
within seconds, saying how to point at a local checkpoint.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import open_clip
import torch

from gapfix.encoders.backends import check_backend, make_towers, to_precision
from gapfix.encoders.encoder import ClipEncoder
from gapfix.encoders.errors import ModelLoadError
from gapfix.encoders.images import DEFAULT_MAX_PIXELS
from gapfix.encoders.weights import (
    RANDOM_INIT,
    RANDOM_INIT_SEED,
    offline_hint,
    resolve_weights,
)
from gapfix.errors import GapfixError, InputError

logger = logging.getLogger("gapfix.encoders")

PRECISIONS = ("auto", "fp32", "fp16", "bf16")
MAX_CAUSE_CHARS = 1000


_HANDOFF: dict[tuple[str, ...], ClipEncoder] = {}
_HANDOFF_LOCK = threading.Lock()


def _handoff_key(
    model: str, pretrained: str | None, dev: torch.device, prec: str, cache: str | None
) -> tuple[str, ...]:
    weights = (
        "none" if pretrained is None or pretrained.strip().lower() in RANDOM_INIT else pretrained
    )
    return (model, weights, str(dev), prec, str(Path(cache)) if cache else "")


def preload_encoder(
    model: str,
    pretrained: str | None,
    device: str = "auto",
    precision: str = "auto",
    cache_dir: str | os.PathLike | None = None,
    backend: str = "torch",
) -> ClipEncoder:
    """Load an encoder now and hand it to the next `load_encoder` call for the same model,
    weights, device, precision and cache (once), and the same backend unless that call leaves
    ``backend`` unset. ``gapfix serve`` uses it so that a broken checkpoint is a one-line error
    before the server starts, and the model still loads once."""
    encoder = load_encoder(
        model, pretrained, device, precision, cache_dir=cache_dir, backend=backend
    )
    dev = resolve_device(device)
    key = _handoff_key(model, pretrained, dev, resolve_precision(precision, dev),
                       str(cache_dir) if cache_dir is not None else None)  # fmt: skip
    with _HANDOFF_LOCK:
        _HANDOFF[key] = encoder
    return encoder


def load_encoder(
    model: str = "ViT-B-32",
    pretrained: str | None = "laion2b_s34b_b79k",
    device: str = "auto",
    precision: str = "auto",
    max_batch_size: int = 64,
    cache_dir: str | os.PathLike | None = None,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    backend: str | None = None,
) -> ClipEncoder:
    """Load an open_clip model with its preprocessing and tokenizer as a `ClipEncoder`.

    ``model`` is any ``open_clip.list_models()`` name (plus gapfix's own configs such as
    ``gapfix-tiny``), ``hf-hub:org/repo`` or ``local-dir:/path``; ``pretrained`` a tag, a
    checkpoint path, ``hf-hub:org/repo`` or ``none``. ``device``: ``auto`` (cuda if available,
    else cpu) or a torch device string; ``precision``: ``auto`` (bf16, else fp16, weights
    on GPU; fp32 on CPU), ``fp32``, ``fp16`` or ``bf16`` (the weights are converted: GPU
    only); ``backend``: ``torch`` (default), ``onnx`` (ONNX Runtime, CPU; exported once into
    ``cache_dir``/onnx or ~/.cache/gapfix/onnx) or ``compile`` (`gapfix.encoders.backends`).
    Raises `ModelLoadError` (fast, with
    instructions) when weights cannot be found or fetched, `InputError` for bad settings.
    """
    if not isinstance(max_batch_size, int) or max_batch_size < 1:
        raise InputError(f"max_batch_size must be a positive integer, got {max_batch_size!r}")
    if max_pixels < 1:
        raise InputError(f"max_pixels must be positive, got {max_pixels!r}", param="max_pixels")
    wanted = None if backend is None else check_backend(backend)
    dev = resolve_device(device)
    prec = resolve_precision(precision, dev)
    cache = str(cache_dir) if cache_dir is not None else None
    key = _handoff_key(model, pretrained, dev, prec, cache)
    with _HANDOFF_LOCK:
        ready = _HANDOFF.get(key)
        if ready is not None and wanted in (None, ready.backend):
            del _HANDOFF[key]
        else:
            ready = None
    if ready is not None:  # loaded by preload_encoder (gapfix serve); runtime limits are ours
        ready.max_batch_size, ready.max_pixels = max_batch_size, int(max_pixels)
        logger.info("using the encoder preloaded for %s", ready.model_id)
        return ready
    src = resolve_weights(model, pretrained, cache_dir=cache)
    if src.kind == "random":
        logger.warning(
            "!!! RANDOM WEIGHTS: model %r is running with pretrained=none. Its embeddings are "
            "meaningless; use this for tests and demos only. Pass --pretrained <tag|path> for "
            "real weights. !!!",
            src.model,
        )
    try:
        with _seeded_if(src.kind == "random"):
            clip_model, _, preprocess = open_clip.create_model_and_transforms(
                src.model,
                pretrained=src.pretrained,
                device=dev,
                precision="fp32",  # converted below, after the weights are loaded
                cache_dir=cache,
                pretrained_text=src.kind != "random",
                **src.preprocess,
            )
        tokenizer = open_clip.get_tokenizer(src.model, cache_dir=cache)
        clip_model = to_precision(clip_model.eval(), prec)
        towers = make_towers(
            clip_model,
            wanted or "torch",
            dev,
            cache_dir=cache,
            pixel_shape=tuple(preprocess(_blank()).shape),
            context_length=int(getattr(tokenizer, "context_length", 0)) or None,
            arch=src.model,
        )
        encoder = ClipEncoder(
            clip_model,
            preprocess,
            tokenizer,
            device=dev,
            precision=prec,
            max_batch_size=max_batch_size,
            model_id=src.model_id,
            max_pixels=max_pixels,
            towers=towers,
        )
    except GapfixError:
        raise
    except Exception as e:
        raise ModelLoadError(
            f"cannot load model {model!r} with pretrained={pretrained!r}: {_cause(e)}. "
            + (offline_hint(model) if src.kind in ("tag", "hub") else ""),
            param="pretrained" if src.kind in ("file", "tag", "hub") else "model",
        ) from e
    logger.info(
        "loaded encoder %s on %s (%s, backend %s), dim %d",
        src.model_id, dev, prec, encoder.backend, encoder.dim,
    )  # fmt: skip
    return encoder


def _blank():
    from PIL import Image

    return Image.new("RGB", (8, 8))


@contextlib.contextmanager
def _seeded_if(random_init: bool) -> Iterator[None]:
    """Random weights from a fixed seed (the caller's RNG state untouched): every load of
    ``name/none`` is the same model, so a resumed job or each Ray actor embeds alike."""
    if not random_init:
        yield
        return
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_INIT_SEED)
        yield


def _cause(exc: Exception) -> str:
    """An exception as one line of bounded length: named by its type when it has no message
    (an empty or 0-byte checkpoint), long ones (every key of another model's checkpoint) cut."""
    text = " ".join(str(exc).split())
    if not text:
        hint = " (the checkpoint holds no weights)" if isinstance(exc, StopIteration) else ""
        return type(exc).__name__ + hint
    if len(text) > MAX_CAUSE_CHARS:
        text = f"{text[:MAX_CAUSE_CHARS]} ... ({len(text) - MAX_CAUSE_CHARS} more characters)"
    return text


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` -> cuda if available else cpu; otherwise the named device, which must exist."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise InputError(f"unknown device {device!r}: {e}", param="device") from e
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ModelLoadError("device 'cuda' requested but CUDA is not available", "device")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ModelLoadError(f"device {device!r} does not exist", "device")
    return dev


def resolve_precision(precision: str, device: torch.device) -> str:
    """Weights' dtype name: ``auto`` = bf16 (or fp16) on GPU, fp32 elsewhere."""
    if precision not in PRECISIONS:
        raise InputError(
            f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}",
            param="precision",
        )
    if device.type != "cuda":
        if precision in ("fp16", "bf16"):
            logger.warning("precision %s is GPU-only; running fp32 on %s", precision, device)
        return "fp32"
    if precision == "auto":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return precision
