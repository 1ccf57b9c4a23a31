"""The model side of embedding jobs, on top of `gapfix.encoders` (its pre/core stage methods).

`ModelSpec` is what a worker needs to load the same encoder anywhere (a Ray actor, a process);
`make_preparer` builds the CPU stage from an encoder; `embed_batch` runs the model on a
`PreparedBatch` and fills each slot's embedding.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from gapfix.jobs.prepare import PreparedBatch, Preparer

DEFAULT_MAX_PIXELS = 40_000_000

DEFAULT_MODEL = "ViT-B-32"
DEFAULT_PRETRAINED = "laion2b_s34b_b79k"


@dataclass(frozen=True)
class ModelSpec:
    """How to load the encoder (picklable, so workers can load their own copy)."""

    model: str = DEFAULT_MODEL
    pretrained: str = DEFAULT_PRETRAINED
    device: str = "auto"
    precision: str = "auto"
    max_batch_size: int = 64
    max_pixels: int = DEFAULT_MAX_PIXELS
    backend: str = "torch"

    def load(self) -> Any:
        from gapfix.encoders import load_encoder

        return load_encoder(
            self.model,
            self.pretrained,
            device=self.device,
            precision=self.precision,
            max_batch_size=self.max_batch_size,
            max_pixels=self.max_pixels,
            backend=self.backend,
        )


def cpu_stage(encoder: Any, max_pixels: int | None = None, draft: bool = False) -> Any:
    """A shallow copy of ``encoder`` without its weights: its pre-stage methods
    (``preprocess_images``, ``tokenize``) work, and it pickles small (workers, Ray tasks).
    ``max_pixels`` overrides the encoder's image pixel limit; ``draft``: JPEGs are decoded at
    a reduced scale no smaller than the model's input (`gapfix.encoders.decode_image`)."""
    import copy

    light = copy.copy(encoder)
    light.model = None
    if hasattr(light, "towers"):  # ONNX sessions and compiled graphs do not pickle
        light.towers = None
    if max_pixels is not None:
        light.max_pixels = int(max_pixels)
    if draft:
        light.draft_decode = True
    return light


def make_preparer(
    encoder: Any, max_pixels: int | None = None, thumbnail_size: int = 0, draft: bool = False
) -> Preparer:
    """The CPU stage (read, decode, preprocess, tokenize; thumbnails) of ``encoder``."""
    return Preparer(cpu_stage(encoder, max_pixels, draft), thumbnail_size)


def forward_images(encoder: Any, pixels: Any) -> np.ndarray:
    """L2-normalised float32 image embeddings of a preprocessed batch."""
    return encoder.postprocess(encoder.forward_images(pixels))


def forward_texts(encoder: Any, tokens: Any) -> np.ndarray:
    """L2-normalised float32 text embeddings of a tokenized batch."""
    return encoder.postprocess(encoder.forward_texts(tokens))


def embed_batch(encoder: Any, batch: PreparedBatch) -> None:
    """Run the model on a prepared batch; each good slot gets its embedding row."""
    if batch.pixels is not None:
        emb = forward_images(encoder, batch.pixels)
        for k, i in enumerate(batch.image_slots):
            batch.slots[i].embedding = emb[k]
    if batch.tokens is not None:
        emb = forward_texts(encoder, batch.tokens)
        for k, i in enumerate(batch.text_slots):
            batch.slots[i].embedding = emb[k]
