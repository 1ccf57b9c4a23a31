"""Transform artifacts: one safetensors file (arrays) with JSON metadata. No pickle.

Metadata key ``gapfix`` holds JSON: format version, method, params, fit statistics (gap
before/after, counts per modality), embedding dim, optional model id, gapfix version, and for
``auto`` the chosen method and the cross-validation table.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from gapfix.atomic import atomic_write_bytes
from gapfix.errors import ArtifactError

FORMAT_VERSION = "1.1"
META_KEY = "gapfix"


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


def transform_metadata(transform: Any, model_id: str | None = None) -> dict[str, Any]:
    """The JSON metadata an artifact of ``transform`` carries."""
    from gapfix import __version__

    meta: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "gapfix_version": __version__,
        "method": transform.method,
        "params": transform.get_params(),
        "dim": int(transform.dim_),
        "fit_stats": getattr(transform, "fit_stats_", {}),
        "model_id": model_id,
    }
    if transform.method == "auto":
        meta["chosen"] = transform.chosen_
        meta["fit_table"] = transform.fit_table_
    return _jsonable(meta)


def save_transform(
    transform: Any, path: str | os.PathLike[str], model_id: str | None = None
) -> None:
    """Write ``transform`` to ``path`` atomically (temp file + fsync + rename)."""
    atomic_write_bytes(path, transform_bytes(transform, model_id))


def transform_bytes(transform: Any, model_id: str | None = None) -> bytes:
    """The bytes of ``transform``'s artifact (what ``save_transform`` writes)."""
    from safetensors.numpy import save

    arrays = transform.fitted_state()
    meta = transform_metadata(transform, model_id)
    return save(arrays, metadata={META_KEY: json.dumps(meta)})


def read_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read only the JSON metadata of an artifact."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="numpy") as fh:
            raw = (fh.metadata() or {}).get(META_KEY)
    except FileNotFoundError:
        raise ArtifactError(f"transform file not found: {path}", param="transform") from None
    except Exception as exc:  # safetensors raises its own error types for corrupt headers
        raise ArtifactError(
            f"not a gapfix transform file: {path} ({exc})", param="transform"
        ) from None
    if raw is None:
        raise ArtifactError(f"{path} is a safetensors file without gapfix metadata", "transform")
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ArtifactError(f"{path}: corrupt gapfix metadata ({exc})", param="transform") from None


def load_transform(path: str | os.PathLike[str]) -> Any:
    """Load a fitted transform saved by ``save``; refuses unknown major format versions."""
    from safetensors.numpy import load_file

    from gapfix.transforms import TRANSFORMS, make_transform

    meta = read_metadata(path)
    if not isinstance(meta, dict):
        raise ArtifactError(f"{path}: corrupt gapfix metadata (not an object)", "transform")
    version = str(meta.get("format_version", "?"))
    if version.split(".")[0] != FORMAT_VERSION.split(".")[0]:
        raise ArtifactError(
            f"{path}: artifact format version {version} is not supported "
            f"(this gapfix reads {FORMAT_VERSION.split('.')[0]}.x)",
            param="transform",
        )
    method = meta.get("method")
    if method not in TRANSFORMS:
        raise ArtifactError(f"{path}: unknown method {method!r}", param="transform")
    try:
        arrays = load_file(str(path))
    except Exception as exc:
        raise ArtifactError(f"{path}: unreadable arrays ({exc})", param="transform") from None
    try:
        dim = int(meta["dim"])
        params = dict(meta.get("params") or {})
        fit_stats = dict(meta.get("fit_stats") or {})
        chosen = meta["chosen"] if method == "auto" else None
        if chosen is not None:
            chosen = {"method": str(chosen["method"]), "params": dict(chosen["params"])}
    except (KeyError, TypeError, ValueError) as exc:
        raise ArtifactError(
            f"{path}: corrupt gapfix metadata ({type(exc).__name__}: {exc})", "transform"
        ) from None
    if dim < 1:
        raise ArtifactError(f"{path}: corrupt gapfix metadata (dim {dim})", "transform")
    _check_arrays(arrays, dim, path)
    if chosen is not None:
        transform = make_transform("auto", **params)
        inner = make_transform(
            chosen["method"], renormalize=params.get("renormalize", True), **chosen["params"]
        )
        inner.load_state(arrays, dim, fit_stats)
        transform.best_ = inner
        transform.chosen_ = chosen
        transform.fit_table_ = meta.get("fit_table", [])
        transform.dim_ = dim
        transform.fit_stats_ = fit_stats
    else:
        transform = make_transform(method, **params)
        transform.load_state(arrays, dim, fit_stats)
    missing = [a for a in transform_arrays(transform) if a not in arrays]
    if missing:
        raise ArtifactError(f"{path}: missing arrays {missing}", param="transform")
    transform.model_id = meta.get("model_id")
    return transform


MATRIX_ARRAYS = (
    "whitener_image_",
    "whitener_text_",
    "rotation_",
    "matrix_image_",
    "matrix_text_",
)


def _check_arrays(arrays: dict[str, np.ndarray], dim: int, path: Any) -> None:
    """Refuse arrays whose shape does not fit ``dim`` or that hold NaN/inf (a damaged file).

    The fused kernels index the per-dimension arrays without bounds checks.
    """
    for name, a in arrays.items():
        if name == "lam_":
            ok = a.shape == (1,)
        elif name == "shrinkage_":
            ok = a.shape == (2,) and bool(np.all((a >= 0) & (a <= 1)))
        elif name == "rms_":
            ok = a.shape == (2,) and bool(np.all(a > 0))
        elif name == "dims_":
            ok = (
                a.ndim == 1
                and a.size >= 1
                and np.issubdtype(a.dtype, np.integer)
                and bool(np.all((a >= 0) & (a < dim)))
            )
        elif name in MATRIX_ARRAYS:
            ok = a.shape == (dim, dim)
        else:
            ok = a.shape == (dim,)
        if not ok:
            raise ArtifactError(
                f"{path}: array {name!r} has shape {a.shape} (dtype {a.dtype}), "
                f"which does not fit dim {dim}",
                param="transform",
            )
        if np.issubdtype(a.dtype, np.floating) and not np.isfinite(a).all():
            raise ArtifactError(f"{path}: array {name!r} holds NaN or inf", param="transform")


def transform_arrays(transform: Any) -> list[str]:
    """Names of the arrays a fitted transform of this kind must have (optional ones excluded)."""
    target = getattr(transform, "best_", transform)
    # shrinkage_: absent before format 1.1; rms_: before whitening's strength (needed below 1)
    optional = {"mean_query_text_", "shrinkage_", "rms_"}
    return [a for a in target.fitted_arrays if a not in optional]
