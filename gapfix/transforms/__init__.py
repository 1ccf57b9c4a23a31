"""Gap-closing transforms: a registry of methods by CLI name, and a factory."""

from __future__ import annotations

from typing import Any

from gapfix.errors import InputError
from gapfix.transforms.adapter import ContrastiveAdapter
from gapfix.transforms.auto import OBJECTIVES, AutoTransform
from gapfix.transforms.base import GapTransform, Kernel, param_defaults
from gapfix.transforms.methods import (
    AblateDims,
    Centering,
    Identity,
    MeanShift,
    Procrustes,
    Standardize,
    TargetGap,
    Whiten,
)

TRANSFORMS: dict[str, type[GapTransform]] = {
    cls.method: cls
    for cls in (
        Identity,
        MeanShift,
        TargetGap,
        Centering,
        Standardize,
        Whiten,
        AblateDims,
        Procrustes,
        ContrastiveAdapter,
        AutoTransform,
    )
}
METHODS = tuple(TRANSFORMS)


def _coerce(value: Any, default: Any, name: str) -> Any:
    """Convert CLI/JSON strings to the type of the parameter's default."""
    if not isinstance(value, str) or isinstance(default, str) or default is None:
        if isinstance(default, bool) and not isinstance(value, bool):
            raise InputError(f"parameter {name!r} must be true or false, got {value!r}", name)
        if isinstance(default, int | float) and not isinstance(default, bool):
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise InputError(f"parameter {name!r} must be a number, got {value!r}", name)
            if isinstance(default, int) and float(value) != int(value):
                raise InputError(f"parameter {name!r} must be an integer, got {value!r}", name)
            return type(default)(value)
        return value
    try:
        if isinstance(default, bool):
            lowered = value.strip().lower()
            if lowered not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(value)
            return lowered in ("true", "1", "yes")
        if isinstance(default, int):
            return int(value)
        return float(value)
    except ValueError:
        kind = type(default).__name__
        raise InputError(f"parameter {name!r} must be a {kind}, got {value!r}", name) from None


def make_transform(method: str, **params: Any) -> GapTransform:
    """Build an unfitted transform by CLI name (``mean-shift``, ``auto``, ...)."""
    cls = TRANSFORMS.get(method)
    if cls is None:
        raise InputError(f"unknown method {method!r}; choose from {', '.join(METHODS)}", "method")
    valid = param_defaults(cls)
    unknown = sorted(set(params) - set(valid))
    if unknown:
        raise InputError(
            f"unknown parameter(s) {unknown} for method {method!r}; valid: {sorted(valid)}",
            "params",
        )
    kwargs = {k: _coerce(v, valid[k], k) for k, v in params.items()}
    transform = cls(**kwargs)
    transform.validate_params()  # fail before any data is read
    return transform


def parse_params(pairs: list[str] | None) -> dict[str, str]:
    """Parse ``["k=v", ...]`` into a dict (values stay strings until ``make_transform``)."""
    out: dict[str, str] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise InputError(f"--param expects key=value, got {pair!r}", param="param")
        out[key.strip()] = value.strip()
    return out


__all__ = [
    "METHODS",
    "OBJECTIVES",
    "TRANSFORMS",
    "AblateDims",
    "AutoTransform",
    "Centering",
    "ContrastiveAdapter",
    "GapTransform",
    "Identity",
    "Kernel",
    "MeanShift",
    "Procrustes",
    "Standardize",
    "TargetGap",
    "Whiten",
    "make_transform",
    "parse_params",
]
