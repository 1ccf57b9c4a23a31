"""Fairness audit of zero-shot classification: how often each group gets a harmful label.

The seed paper's second downstream claim (Liang et al., NeurIPS 2022, "Mind the Gap", Table 2,
after CLIP's FairFace probe): classify face images zero-shot among the FairFace classes plus
harmful ones (crime-related: 'thief', 'criminal', 'suspicious person'; non-human: 'animal',
'gorilla', 'chimpanzee', 'orangutan') and report, per group, the share of images given a label
of each harmful category -- the *denigration* figures -- before and after changing the gap.

Inputs: image embeddings, one text row per class prompt, one group label per image, and named
sets of harmful class indices. ``fair_objective`` scores a fitted transform for
``auto --objective fair``: minimise the worst group's harmful rate while top-1 does not fall.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from gapfix.blocks import iter_blocks, normalized
from gapfix.errors import InputError
from gapfix.validation import check_embeddings, check_labels, check_same_dim

ANY = "any harmful"
QUERY_BLOCK = 1024


def predict(image: np.ndarray, class_text: np.ndarray) -> np.ndarray:
    """Zero-shot top-1 class of each image row (argmax of cosine over class prompts)."""
    out = np.empty(image.shape[0], dtype=np.int64)
    for sl in iter_blocks(image.shape[0], QUERY_BLOCK):
        out[sl] = (image[sl] @ class_text.T).argmax(axis=1)
    return out


def check_groups(groups: Any, n_images: int, param: str = "groups") -> np.ndarray:
    """One group label per image row (integers or strings), as a 1-D array."""
    g = np.asarray(groups)
    if g.ndim != 1:
        raise InputError(
            f"{param}: expected a 1-D array of group labels, got shape {g.shape}", param
        )
    if g.shape[0] != n_images:
        raise InputError(f"{param}: {g.shape[0]} group labels for {n_images} image rows", param)
    if g.dtype.kind == "f" and not np.isfinite(g).all():
        raise InputError(f"{param}: group labels contain NaN or inf", param)
    if g.dtype.kind not in "iubfUS":
        raise InputError(f"{param}: group labels must be integers or strings, not {g.dtype}", param)
    return g


def _indices(text: str, n_classes: int, param: str) -> np.ndarray:
    try:
        idx = [int(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise InputError(
            f"{param}: expected comma-separated class indices, got {text!r}", param
        ) from None
    return _check_indices(np.asarray(idx, dtype=np.int64), n_classes, param)


def check_harmful(harmful: dict[str, Any], n_classes: int) -> dict[str, np.ndarray]:
    """``category -> class indices`` with every index a valid class of ``n_classes``."""
    return {
        k: _check_indices(np.asarray(v).ravel(), n_classes, "harmful") for k, v in harmful.items()
    }


def _check_indices(idx: np.ndarray, n_classes: int, param: str) -> np.ndarray:
    if idx.ndim != 1 or idx.size == 0:
        raise InputError(f"{param}: needs at least one class index", param)
    if not np.issubdtype(idx.dtype, np.integer):
        raise InputError(f"{param}: class indices must be integers, got {idx.dtype}", param)
    bad = idx[(idx < 0) | (idx >= n_classes)]
    if bad.size:
        raise InputError(
            f"{param}: class index {int(bad[0])} is out of range: --text has {n_classes} class "
            f"rows (indices 0..{n_classes - 1})",
            param,
        )
    return np.unique(idx)


def parse_harmful(specs: list[str], n_classes: int, param: str = "--harmful") -> dict[str, Any]:
    """Named sets of harmful class indices from ``NAME=i,j``, ``i,j`` or a file per spec.

    A file (``.npy`` of integers, or text with comma/whitespace-separated integers) may also be
    named: ``crime=crime.npy``. Unnamed sets are called ``harmful`` (``harmful2``, ... after).
    """
    if not specs:
        raise InputError(f"{param}: give at least one set of harmful class indices", param)
    sets: dict[str, np.ndarray] = {}
    for i, spec in enumerate(specs):
        name, sep, body = spec.partition("=")
        if not sep:
            name, body = ("harmful" if i == 0 else f"harmful{i + 1}"), spec
        name, body = name.strip(), body.strip()
        if not name or name == ANY or name in sets:
            raise InputError(f"{param}: set name {name!r} is empty, reserved or repeated", param)
        if Path(body).suffix.lower() in (".npy", ".txt", ".csv") or Path(body).is_file():
            sets[name] = _indices_from_file(Path(body), n_classes, param)
        else:
            sets[name] = _indices(body, n_classes, param)
    return sets


def _indices_from_file(path: Path, n_classes: int, param: str) -> np.ndarray:
    if not path.is_file():
        raise InputError(f"{param}: file not found: {path}", param)
    if path.suffix.lower() == ".npy":
        try:
            idx = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise InputError(f"{param}: cannot read {path} ({exc})", param) from None
        if np.issubdtype(idx.dtype, np.floating) and np.all(np.mod(idx, 1) == 0):
            idx = idx.astype(np.int64)
        return _check_indices(np.ravel(idx), n_classes, param)
    text = path.read_text(encoding="utf-8", errors="replace")
    return _indices(",".join(re.split(r"[,\s]+", text.strip())), n_classes, param)


def group_rates(
    pred: np.ndarray, groups: np.ndarray, harmful: dict[str, np.ndarray]
) -> dict[str, Any]:
    """Per-group harmful-label rates for each set and any set; gaps between groups."""
    names = [str(g) for g in np.unique(groups)]
    members = {str(g): groups == g for g in np.unique(groups)}
    every = np.unique(np.concatenate(list(harmful.values())))
    denigration: dict[str, dict[str, float]] = {}
    for set_name, idx in {**harmful, ANY: every}.items():
        hit = np.isin(pred, idx)
        denigration[set_name] = {g: float(hit[members[g]].mean()) for g in names}
    per_label = {int(c): {g: float((pred[members[g]] == c).mean()) for g in names} for c in every}
    rates = denigration[ANY]
    worst = max(names, key=lambda g: rates[g])
    best = min(names, key=lambda g: rates[g])
    return {
        "groups": {g: int(members[g].sum()) for g in names},
        "harmful_rate": rates,
        "harmful_rate_overall": float(np.isin(pred, every).mean()),
        "worst_group": worst,
        "worst_group_rate": rates[worst],
        "largest_gap": rates[worst] - rates[best],
        "largest_gap_groups": [worst, best],
        "denigration": {
            name: {**by_group, "largest_gap": max(by_group.values()) - min(by_group.values())}
            for name, by_group in denigration.items()
            if name != ANY
        },
        "per_label": per_label,
    }


def audit_one(
    image: np.ndarray,
    class_text: np.ndarray,
    groups: np.ndarray,
    harmful: dict[str, np.ndarray],
    labels: np.ndarray | None = None,
) -> dict[str, Any]:
    """The audit of one embedding space (unit rows): rates, gaps, and top-1 when labelled."""
    pred = predict(image, class_text)
    out = group_rates(pred, groups, harmful)
    if labels is not None:
        out["top1"] = float((pred == labels).mean())
    return out


def fairness_audit(
    image: Any,
    class_text: Any,
    groups: Any,
    harmful: dict[str, Any],
    transform: Any = None,
    labels: Any = None,
) -> dict[str, Any]:
    """Audit raw embeddings and, with a fitted transform, the corrected ones.

    ``harmful`` maps a category name (e.g. ``crime-related``) to class indices of
    ``class_text``; ``labels`` (true class per image, optional) adds top-1 accuracy.
    """
    image = check_embeddings(image, "image", min_rows=1)
    class_text = check_embeddings(class_text, "text", min_rows=2)
    check_same_dim(image, class_text)
    g = check_groups(groups, image.shape[0])
    sets = check_harmful(harmful, class_text.shape[0])
    lab = None if labels is None else check_labels(labels, image.shape[0], class_text.shape[0])
    result = {"raw": audit_one(normalized(image), normalized(class_text), g, sets, lab)}
    if transform is not None:
        ci = transform.transform(image, "image")
        ct = transform.transform(class_text, "text")
        result["corrected"] = audit_one(ci, ct, g, sets, lab)
    result["harmful_sets"] = {k: v.tolist() for k, v in sets.items()}
    return result


def fair_objective(
    transform: Any,
    image: np.ndarray,
    class_text: np.ndarray,
    labels: np.ndarray,
    groups: np.ndarray,
    harmful: dict[str, Any],
    tolerance: float = 0.0,
) -> dict[str, float | bool]:
    """Score of a fitted transform for ``auto --objective fair`` on evaluation data.

    Minimise the worst group's harmful-label rate subject to zero-shot top-1 not falling below
    the raw embeddings' by more than ``tolerance``. Returns ``score`` (higher is better:
    minus the worst group's rate when admissible, else -inf), ``admissible``,
    ``worst_group_rate`` (corrected and raw), ``largest_gap``, ``top1`` and ``top1_raw``.
    """
    audit = fairness_audit(image, class_text, groups, harmful, transform, labels)
    raw, cor = audit["raw"], audit["corrected"]
    admissible = bool(cor["top1"] >= raw["top1"] - float(tolerance) - 1e-12)
    return {
        "score": -cor["worst_group_rate"] if admissible else float("-inf"),
        "admissible": admissible,
        "worst_group_rate": cor["worst_group_rate"],
        "worst_group_rate_raw": raw["worst_group_rate"],
        "largest_gap": cor["largest_gap"],
        "top1": cor["top1"],
        "top1_raw": raw["top1"],
    }


__all__ = [
    "ANY",
    "audit_one",
    "check_groups",
    "check_harmful",
    "fair_objective",
    "fairness_audit",
    "group_rates",
    "parse_harmful",
    "predict",
]
