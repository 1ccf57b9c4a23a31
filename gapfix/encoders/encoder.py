"""`ClipEncoder`: an open_clip model split into pre / core / post stages for dynamic batching.

- pre (CPU): decode + preprocess images (`preprocess_images`), tokenize texts (`tokenize`);
- core (device): model forward in chunks of at most ``max_batch_size`` (`forward_images`,
  `forward_texts`) under ``torch.inference_mode``, through the towers of the chosen backend
  (`gapfix.encoders.backends`: eager torch, ONNX Runtime or ``torch.compile``); inputs are cast
  to the weights' dtype (fp16/bf16 weights on GPU), autocast only for fp32 weights asked to run
  at fp16/bf16;
- post: L2-normalise in float32 and copy to a numpy array (`postprocess`).

Each stage is timed in ``gapfix_stage_duration_seconds{stage=encode_pre|encode_core|
encode_post}``; every forward pass records its size in ``gapfix_encode_batch_size{modality}``.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from gapfix.encoders.backends import Towers
from gapfix.encoders.errors import ModelLoadError
from gapfix.encoders.images import DEFAULT_MAX_PIXELS, decode_image, to_rgb
from gapfix.errors import InputError, PayloadTooLargeError
from gapfix.metrics import ENCODE_BATCH_SIZE, STAGE_LATENCY

ImageInput = bytes | bytearray | memoryview | Image.Image

_PRE = STAGE_LATENCY.labels("encode_pre")
_CORE = STAGE_LATENCY.labels("encode_core")
_POST = STAGE_LATENCY.labels("encode_post")
_AUTOCAST = {"fp16": torch.float16, "bf16": torch.bfloat16}
# Texts are cut at this many characters per context token before tokenizing (a CLIP token
# spans at most 32): the tokenizer truncates anyway, but only after tokenizing all of it.
CHARS_PER_TOKEN = 256


@contextlib.contextmanager
def _timed(metric) -> Iterator[None]:
    t0 = time.perf_counter()
    try:
        yield
    finally:
        metric.observe(time.perf_counter() - t0)


class ClipEncoder:
    """Encode texts and images to L2-normalised float32 vectors with an open_clip model.

    Built by `gapfix.encoders.load_encoder`. Thread-safe for concurrent calls (inference only).
    Attributes: ``dim``, ``model_id``, ``device``, ``precision``, ``backend``,
    ``max_batch_size``, ``max_pixels``, ``pixel_shape`` (C, H, W), ``context_length``.
    ``towers`` (default: the model's eager ``encode_image``/``encode_text``) run the forward.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        preprocess: Callable[[Image.Image], torch.Tensor],
        tokenizer: Callable[[list[str]], torch.Tensor],
        *,
        device: str | torch.device = "cpu",
        precision: str = "fp32",
        max_batch_size: int = 64,
        model_id: str = "",
        max_pixels: int = DEFAULT_MAX_PIXELS,
        towers: Towers | None = None,
    ) -> None:
        self.model = model.eval()
        self.towers = towers or Towers("torch", model.encode_image, model.encode_text)
        self.backend = self.towers.name
        self.weight_dtype = next(model.parameters()).dtype
        self.preprocess = preprocess
        self.tokenizer = tokenizer
        self.device = torch.device(device)
        self.precision = precision
        self.max_batch_size = int(max_batch_size)
        self.model_id = model_id
        self.max_pixels = int(max_pixels)
        self.draft_decode = False  # True: JPEGs decoded at a reduced scale >= the model size
        lp = self.device.type == "cuda" and self.weight_dtype == torch.float32
        self._autocast_dtype = _AUTOCAST.get(precision) if lp else None
        self.context_length = int(getattr(tokenizer, "context_length", 0)) or None
        self.pixel_shape: tuple[int, ...] = tuple(preprocess(Image.new("RGB", (8, 8))).shape)
        # One tiny pass per tower: finds the output dimension and checks that they agree.
        with torch.inference_mode(), self._autocast():
            text_dim = self.towers.text(self.tokenizer([""]).to(self.device)).shape[-1]
            zeros = torch.zeros((1, *self.pixel_shape), device=self.device, dtype=self.weight_dtype)
            image_dim = self.towers.image(zeros).shape[-1]
        if text_dim != image_dim:
            raise ModelLoadError(f"model towers disagree: text dim {text_dim}, image {image_dim}")
        self.dim = int(text_dim)

    def __repr__(self) -> str:
        return (
            f"ClipEncoder(model_id={self.model_id!r}, dim={self.dim}, device={self.device}, "
            f"precision={self.precision}, backend={self.backend}, "
            f"max_batch_size={self.max_batch_size})"
        )

    def describe(self) -> dict:
        """JSON-safe summary (for logs, /readyz, metadata stored with a collection)."""
        return {
            "model_id": self.model_id,
            "dim": self.dim,
            "device": str(self.device),
            "precision": self.precision,
            "backend": self.backend,
            "max_batch_size": self.max_batch_size,
            "image_shape": list(self.pixel_shape),
            "context_length": self.context_length,
        }

    # ---- pre ----------------------------------------------------------------------------

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        """Tokenize with the model's own tokenizer -> LongTensor (n, context_length) on CPU.

        Texts longer than the context are truncated by the tokenizer; very long ones (over
        ``CHARS_PER_TOKEN`` characters per context token) are first cut, whitespace collapsed.
        """
        texts = _check_texts(texts)
        with _timed(_PRE):
            if not texts:
                return torch.zeros((0, self.context_length or 1), dtype=torch.long)
            limit = (self.context_length or 77) * CHARS_PER_TOKEN
            return self.tokenizer([_cut(t, limit) for t in texts])

    def preprocess_images(self, images: Sequence[ImageInput]) -> torch.Tensor:
        """Decode (bytes) and preprocess with the model's transforms -> (n, C, H, W) on CPU.

        Bytes go through `decode_image` (format check, pixel limit, EXIF, RGB); PIL images get
        the same RGB conversion (`to_rgb`). Raises `InputError` / `PayloadTooLargeError` naming ``images[i]``.
        """
        if isinstance(images, bytes | bytearray | memoryview | Image.Image | str):
            raise InputError("images must be a list of images, not a single value", "images")
        with _timed(_PRE):
            out = []
            for i, item in enumerate(images):
                param = f"images[{i}]"
                if isinstance(item, Image.Image):
                    img = to_rgb(item)
                elif isinstance(item, bytes | bytearray | memoryview):
                    img = decode_image(item, self.max_pixels, param=param, draft=self.draft())
                else:
                    raise InputError(f"expected image bytes, got {type(item).__name__}", param)
                self._check_resize(img, param)
                out.append(self.preprocess(img))
            if not out:
                return torch.zeros((0, *self.pixel_shape))
            return torch.stack(out)

    def draft(self, at_least: int = 0) -> int | None:
        """The ``draft`` size for `decode_image`: the model's input side (or ``at_least``, if
        larger) when ``draft_decode`` is set, else None (full decode)."""
        return max(max(self.pixel_shape[1:]), at_least) if self.draft_decode else None

    def _check_resize(self, img: Image.Image, param: str) -> None:
        # A resize of the shorter side to the model size blows up extreme aspect ratios.
        short, long = sorted(img.size)
        side = max(self.pixel_shape[1:])
        if short == 0 or side * side * (long / short) > self.max_pixels:
            raise PayloadTooLargeError(
                f"image {img.width}x{img.height} has an extreme aspect ratio", param=param
            )

    # ---- core ---------------------------------------------------------------------------

    def forward_texts(self, tokens: torch.Tensor) -> torch.Tensor:
        """Text tower on token ids, in chunks of ``max_batch_size`` -> (n, dim) float32.

        Where the tower allows it (``towers.text_lengths``), texts are sorted by length and each
        chunk is cut to its longest text: the padding after it costs nothing.
        """
        if tokens.ndim != 2:
            raise InputError(f"tokens must be 2-D (n, context), got shape {tuple(tokens.shape)}")
        lengths_of = self.towers.text_lengths
        if lengths_of is None or tokens.shape[0] == 0:
            return self._forward(self.towers.text, tokens, "text")
        lengths = lengths_of(tokens)
        order = torch.argsort(lengths, stable=True)
        ends = lengths[order]

        def cut(start: int, chunk: torch.Tensor) -> torch.Tensor:
            return chunk[:, : int(ends[start : start + chunk.shape[0]].max())]

        out = self._forward(self.towers.text, tokens[order], "text", cut=cut)
        return out[torch.argsort(order.to(out.device))]

    def forward_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """Image tower on preprocessed pixels (n, C, H, W) -> (n, dim) float32 features.

        Pixels are cast to the weights' dtype (float32, or fp16/bf16 on GPU).
        """
        self.check_pixels(pixels)
        return self._forward(self.towers.image, pixels, "image", self.weight_dtype)

    def check_pixels(self, pixels: torch.Tensor) -> None:
        """Raise `InputError` unless ``pixels`` is a float tensor of shape (n, *pixel_shape)."""
        if not isinstance(pixels, torch.Tensor) or not pixels.is_floating_point():
            raise InputError("pixels must be a floating-point torch tensor", param="images")
        if pixels.ndim != 4 or tuple(pixels.shape[1:]) != self.pixel_shape:
            raise InputError(
                f"pixels must have shape (n, {', '.join(map(str, self.pixel_shape))}), got "
                f"{tuple(pixels.shape)}",
                param="images",
            )

    def _forward(
        self,
        fn: Callable,
        x: torch.Tensor,
        modality: str,
        dtype: torch.dtype | None = None,
        cut: Callable[[int, torch.Tensor], torch.Tensor] | None = None,
    ) -> torch.Tensor:
        n = x.shape[0]
        if n == 0:
            return torch.zeros((0, self.dim), device=self.device)
        sizes = ENCODE_BATCH_SIZE.labels(modality)
        with _timed(_CORE), torch.inference_mode(), self._autocast():
            outs = []
            for start in range(0, n, self.max_batch_size):
                chunk = x[start : start + self.max_batch_size]
                if cut is not None:
                    chunk = cut(start, chunk)
                chunk = chunk.to(self.device, dtype=dtype or chunk.dtype, non_blocking=True)
                sizes.observe(chunk.shape[0])
                outs.append(fn(chunk).float())
            out = outs[0] if len(outs) == 1 else torch.cat(outs)
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
        return out

    def _autocast(self):
        if self._autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self._autocast_dtype)

    # ---- post ---------------------------------------------------------------------------

    def postprocess(self, features: torch.Tensor) -> np.ndarray:
        """L2-normalise in float32 -> C-contiguous float32 numpy array (n, dim)."""
        with _timed(_POST), torch.inference_mode():
            z = F.normalize(features.float(), dim=-1).cpu()
            return np.ascontiguousarray(z.numpy(), dtype=np.float32)

    # ---- all stages ---------------------------------------------------------------------

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Texts -> (n, dim) float32, L2-normalised."""
        return self.postprocess(self.forward_texts(self.tokenize(texts)))

    def encode_images(self, images: Sequence[ImageInput] | torch.Tensor) -> np.ndarray:
        """Images (encoded bytes, PIL images, or an already preprocessed (n, C, H, W) tensor)
        -> (n, dim) float32, L2-normalised."""
        pixels = images if isinstance(images, torch.Tensor) else self.preprocess_images(images)
        return self.postprocess(self.forward_images(pixels))


def _cut(text: str, limit: int) -> str:
    """``text`` unchanged up to ``limit`` characters, else whitespace-collapsed and cut there
    (tokenizing megabytes takes seconds per text, all for tokens the context drops)."""
    return text if len(text) <= limit else " ".join(text.split())[:limit]


def _check_texts(texts: Sequence[str]) -> list[str]:
    if isinstance(texts, str | bytes) or not isinstance(texts, Sequence):
        raise InputError("texts must be a list of strings", param="texts")
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise InputError(f"expected a string, got {type(t).__name__}", param=f"texts[{i}]")
    return list(texts)
