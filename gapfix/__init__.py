"""gapfix: measure and close the modality gap of CLIP-style embeddings, after the fact."""

from __future__ import annotations

__version__ = "0.1.0"

from gapfix.errors import GapfixError, InputError, NotFittedError
from gapfix.transforms import METHODS, GapTransform, make_transform
from gapfix.transforms.artifact import load_transform

__all__ = [
    "METHODS",
    "GapTransform",
    "GapfixError",
    "InputError",
    "NotFittedError",
    "__version__",
    "load_transform",
    "make_transform",
]
