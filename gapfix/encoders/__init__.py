"""CLIP encoders (open_clip): load a model, encode texts and images, batch concurrent requests.

Public API (imported lazily, so ``import gapfix.encoders`` does not load torch/open_clip):
`load_encoder`, `ClipEncoder`, `MicroBatcher`, `decode_image`, `ModelLoadError`,
`EncoderClosedError`, `register_model_configs`; tests use `gapfix.encoders.testing`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "load_encoder": "gapfix.encoders.loading",
    "resolve_weights": "gapfix.encoders.weights",
    "ClipEncoder": "gapfix.encoders.encoder",
    "MicroBatcher": "gapfix.encoders.batching",
    "decode_image": "gapfix.encoders.images",
    "SUPPORTED_FORMATS": "gapfix.encoders.images",
    "DEFAULT_MAX_PIXELS": "gapfix.encoders.images",
    "ModelLoadError": "gapfix.encoders.errors",
    "EncoderClosedError": "gapfix.encoders.errors",
    "register_model_configs": "gapfix.encoders.configs",
}

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "SUPPORTED_FORMATS",
    "ClipEncoder",
    "EncoderClosedError",
    "MicroBatcher",
    "ModelLoadError",
    "decode_image",
    "load_encoder",
    "register_model_configs",
    "resolve_weights",
]

if TYPE_CHECKING:
    from gapfix.encoders.batching import MicroBatcher
    from gapfix.encoders.configs import register_model_configs
    from gapfix.encoders.encoder import ClipEncoder
    from gapfix.encoders.errors import EncoderClosedError, ModelLoadError
    from gapfix.encoders.images import DEFAULT_MAX_PIXELS, SUPPORTED_FORMATS, decode_image
    from gapfix.encoders.loading import load_encoder
    from gapfix.encoders.weights import resolve_weights


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'gapfix.encoders' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
