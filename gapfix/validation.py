"""Input checks shared by the library, the CLI and the service: shapes, finiteness, dims."""

from __future__ import annotations

from typing import Any

import numpy as np

from gapfix.errors import InputError

MODALITIES = ("image", "text")
CHECK_BLOCK_ROWS = 65_536


def check_modality(modality: str, param: str = "modality") -> str:
    """Return ``modality`` if it is ``image`` or ``text``, else raise InputError."""
    if modality not in MODALITIES:
        raise InputError(f"modality must be 'image' or 'text', got {modality!r}", param=param)
    return modality


def check_embeddings(
    x: Any,
    name: str = "embeddings",
    min_rows: int = 1,
    dim: int | None = None,
    convert: bool = True,
) -> np.ndarray:
    """Validate a 2-D float array of embeddings and return it as float32 (no copy if possible).

    Rejects 1-D/3-D input, fewer than ``min_rows`` rows, NaN/inf, all-zero rows, and a
    dimension other than ``dim`` (when given). Memory-mapped input is checked in blocks;
    ``convert=False`` returns it in its own dtype (no full float32 copy) for blocked callers.
    """
    if type(x).__module__.startswith("torch"):  # a tensor on any device: fit reads numpy
        x = x.detach().cpu().float().numpy()
    if not hasattr(x, "shape") or not hasattr(x, "dtype"):
        try:
            x = np.asarray(x, dtype=np.float32)
        except (TypeError, ValueError) as exc:
            raise InputError(f"{name}: not a numeric array ({exc})", param=name) from None
    if x.ndim != 2:
        raise InputError(
            f"{name}: expected a 2-D array (rows x dim), got {x.ndim}-D shape {tuple(x.shape)}",
            param=name,
        )
    if not np.issubdtype(x.dtype, np.floating) and not np.issubdtype(x.dtype, np.integer):
        raise InputError(f"{name}: expected float values, got dtype {x.dtype}", param=name)
    n, d = x.shape
    if n < min_rows:
        raise InputError(f"{name}: needs at least {min_rows} rows, got {n}", param=name)
    if d < 1:
        raise InputError(f"{name}: dimension must be at least 1", param=name)
    if dim is not None and d != dim:
        raise InputError(
            f"{name}: dimension {d} does not match the expected dimension {dim}", param=name
        )
    for start in range(0, n, CHECK_BLOCK_ROWS):
        with np.errstate(over="ignore"):  # values beyond float32 become inf, refused below
            block = np.asarray(x[start : start + CHECK_BLOCK_ROWS], dtype=np.float32)
        finite = np.isfinite(block)
        if not finite.all():
            row = start + int(np.argwhere(~finite)[0, 0])
            raise InputError(f"{name}: row {row} contains NaN or inf", param=name)
        zero = ~block.any(axis=1)
        if zero.any():
            row = start + int(np.argmax(zero))
            raise InputError(f"{name}: row {row} is a zero vector", param=name)
    if convert and x.dtype != np.float32:
        x = x.astype(np.float32)
    return x


def check_same_dim(image: np.ndarray, text: np.ndarray) -> int:
    """Return the shared dimension of the two modalities or raise InputError."""
    if image.shape[1] != text.shape[1]:
        raise InputError(
            f"image dimension {image.shape[1]} differs from text dimension {text.shape[1]}",
            param="text",
        )
    return int(image.shape[1])


def check_paired(image: np.ndarray, text: np.ndarray, what: str = "this") -> None:
    """Raise InputError unless row i of image is paired with row i of text (same row count)."""
    if image.shape[0] != text.shape[0]:
        raise InputError(
            f"{what} needs paired data (row i of image <-> row i of text), got "
            f"{image.shape[0]} image rows and {text.shape[0]} text rows",
            param="text",
        )


def check_labels(labels: Any, n_rows: int, n_classes: int) -> np.ndarray:
    """Validate integer class labels (one per image row, each indexing a text row)."""
    lab = np.asarray(labels)
    if lab.ndim != 1:
        raise InputError(f"labels: expected a 1-D array, got shape {lab.shape}", param="labels")
    if lab.shape[0] != n_rows:
        raise InputError(f"labels: {lab.shape[0]} labels for {n_rows} image rows", param="labels")
    if not np.issubdtype(lab.dtype, np.integer):
        if np.issubdtype(lab.dtype, np.floating) and np.all(np.mod(lab, 1) == 0):
            lab = lab.astype(np.int64)
        else:
            raise InputError(f"labels: expected integers, got dtype {lab.dtype}", param="labels")
    if lab.size and (lab.min() < 0 or lab.max() >= n_classes):
        raise InputError(
            f"labels: values must be in [0, {n_classes - 1}] (one text row per class), "
            f"got range [{lab.min()}, {lab.max()}]",
            param="labels",
        )
    return lab.astype(np.int64)
