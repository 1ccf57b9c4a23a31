"""How `auto` decides: objective scorers, the candidate registry, and the selection rule.

Both registries are open: ``register_objective`` adds an objective (its per-fold scorer, the
metric it maximises and the metrics it must not lower), ``register_candidate`` adds a method
configuration that `auto` tries when the method is registered and the calibration set is
large enough to judge it.

The rule, on repeated k-fold estimates (see ``gapfix.transforms.crossval``):
1. admissible: for every guarded metric, the lower confidence bound of the paired difference
   from ``identity`` (mean - z * SE) is >= -tolerance;
2. one-standard-error rule: among admissible candidates, the best objective minus its standard
   error is the bar; of those above it, the one that moves the data least wins (higher
   shrinkage, smaller lambda, centering before whitening);
3. small data (n < 100 or n < d): when the rule keeps ``identity`` although the gap is large,
   the candidates that halve the held-out gap face a looser test: the data must not show a
   cost beyond tolerance (mean + z * SE >= -tolerance); among those that pass, the same
   one-standard-error rule picks the least-moving. Otherwise ``identity`` stays, and the rule
   says why.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

SMALL_ROWS = 100
GAP_CLOSED = 0.5  # a candidate "closes the gap" when its held-out gap is at most this share
# order of how far each method family moves the data (identity first); unknown methods last
FAMILY_ORDER = (
    "identity", "mean-shift", "ablate-dims", "centering", "standardize", "whiten", "procrustes",
    "contrastive-adapter",
)  # fmt: skip
# the learned adapter is judged on 1000+ pairs and 2+ per dimension: held-out folds of 333+
# pairs, and training folds with more pairs than each d x d map has rows
ADAPTER_MIN_ROWS = 1000
# (image, text) strengths of the partial-whitening candidates
PARTIAL_STRENGTHS = ((0.7, 1.0), (0.8, 1.0), (1.0, 0.8), (0.9, 0.9))


@dataclass(frozen=True)
class Objective:
    """What `auto` maximises (``metric``) and which metrics may not fall (``guards``).

    ``scorer(transform, image, text, labels, fold) -> dict`` computes a fold's metrics; None
    uses the paired (cross-modal + mixed) or, for ``paired=False``, the zero-shot scorer.
    """

    name: str
    metric: str
    paired: bool = True
    guards: tuple[str, ...] = ()
    scorer: Callable[..., dict[str, float]] | None = None
    needs: tuple[str, ...] = ()  # extra fit data passed to ``scorer`` by keyword


@dataclass(frozen=True)
class Candidate:
    """One configuration `auto` tries.

    It is judged only on at least ``min_rows`` calibration rows and ``rows_per_dim`` rows per
    dimension (a d x d map fitted on fewer pairs than dimensions is under-determined). A costly
    candidate (one trained per fold) is judged on the folds of its first ``max_repeats``
    repeats only, against identity on the same folds: fewer folds, a larger standard error,
    so the one-standard-error rule takes it only when it is clearly better.
    """

    method: str
    params: dict[str, Any] = field(default_factory=dict)
    min_rows: int = 4
    rows_per_dim: float = 0.0
    paired_only: bool = False
    max_repeats: int | None = None
    needs: tuple[str, ...] = ()  # modules it imports (torch is optional for gapfix)

    def available(self) -> bool:
        """Whether the modules it needs are installed."""
        import importlib.util

        return all(importlib.util.find_spec(m) is not None for m in self.needs)

    def fits(self, n: int, dim: int, paired: bool) -> bool:
        """Whether ``n`` calibration rows of dimension ``dim`` can judge this candidate."""
        if self.paired_only and not paired:
            return False
        if int(self.params.get("k", 0)) >= dim:
            return False
        return n >= self.min_rows and n >= self.rows_per_dim * dim


OBJECTIVE_REGISTRY: dict[str, Objective] = {}
CANDIDATES: list[Candidate] = []


def fair_scores(
    t: Any, image: np.ndarray, class_text: np.ndarray, labels: np.ndarray, fold: Any, *,
    groups: np.ndarray, harmful: dict[str, np.ndarray],
) -> dict[str, float]:  # fmt: skip
    """``objective="fair"``'s fold metrics: zero-shot top-1 and gap (`zeroshot_scores`) plus
    ``fair_score`` = minus the worst group's harmful-label rate on the held-out images."""
    from gapfix.fairness import fair_objective
    from gapfix.transforms.crossval import zeroshot_scores

    out = zeroshot_scores(t, image, class_text, labels, fold)
    v = fold.val
    fair = fair_objective(t, image[v], class_text, labels[v], groups[v], harmful)
    out["fair_score"] = -float(fair["worst_group_rate"])
    return out


def register_objective(objective: Objective) -> None:
    """Add (or replace) an objective of `auto`."""
    OBJECTIVE_REGISTRY[objective.name] = objective


def register_candidate(candidate: Candidate) -> None:
    """Add a candidate configuration to `auto`'s default list."""
    CANDIDATES.append(candidate)


for _objective in (
    Objective("balanced", "mixed_R@10", guards=("t2i_R@1", "i2t_R@1")),
    Objective("retrieval", "R@1_mean"),
    Objective("mixed", "mixed_R@10"),
    Objective("zeroshot", "zeroshot_top1", paired=False),
    Objective(
        "fair",
        "fair_score",
        paired=False,
        guards=("zeroshot_top1",),
        scorer=fair_scores,
        needs=("groups", "harmful"),
    ),
):
    register_objective(_objective)

for _candidate in (
    Candidate("identity"),
    *(Candidate("mean-shift", {"lam": lam}) for lam in (0.25, 0.5, 0.75, 1.0)),
    Candidate("centering"),
    Candidate("standardize"),
    *(Candidate("whiten", {"shrinkage": a}) for a in (0.5, 0.98)),
    *(  # plain and partial whitening (one modality keeps part of its raw geometry); each
        # shrinkage's variants follow each other and share one whitener per fold
        Candidate("whiten", {"shrinkage": a, **strengths})
        for a in (0.8, 0.9, 0.95)
        for strengths in (
            {},
            *({"image_strength": bi, "text_strength": bt} for bi, bt in PARTIAL_STRENGTHS),
        )
    ),
    Candidate("whiten", {"shrinkage": "lw"}),
    Candidate("whiten", {"shrinkage": "oas"}),
    *(Candidate("ablate-dims", {"k": k}) for k in (4, 16)),
    Candidate("procrustes", paired_only=True, min_rows=100, rows_per_dim=1.0),
    Candidate(
        "contrastive-adapter",
        {"patience": 5},
        paired_only=True,
        min_rows=ADAPTER_MIN_ROWS,
        rows_per_dim=2.0,
        max_repeats=1,
        needs=("torch",),
    ),
):
    register_candidate(_candidate)


def moves(row: dict[str, Any]) -> tuple[float, float]:
    """How far a candidate moves the data (smaller = more conservative), for the tie-break.

    The family order first; within a family the held-out rows' measured displacement
    (``moved``) where the scorer reports it, else the parameters (higher shrinkage, lower
    strength, smaller lambda or k move less).
    """
    method, params = row["method"], row["params"]
    family = FAMILY_ORDER.index(method) if method in FAMILY_ORDER else len(FAMILY_ORDER)
    if "moved" in row:
        return family, float(row["moved"])
    if method == "whiten":
        amount = row.get("shrinkage", params.get("shrinkage", 0.0))
        strength = (params.get("image_strength", 1.0) + params.get("text_strength", 1.0)) / 2
        return family, float(strength) * (1.0 - float(amount))
    return family, float(params.get("lam", params.get("k", 0.0)))


def label(row: dict[str, Any]) -> str:
    """``method (k=v, ...)`` for messages."""
    params = ", ".join(f"{k}={v}" for k, v in row["params"].items())
    return row["method"] + (f" ({params})" if params else "")


def decide(
    rows: list[dict[str, Any]], objective: Objective, tolerance: float, z: float, n: int, dim: int
) -> tuple[int, str]:
    """Mark ``admissible``/``chosen`` on the summarised rows; return the winner and the rule."""
    tol = float(tolerance) + 1e-12
    guards = objective.guards
    base = next(i for i, r in enumerate(rows) if r["method"] == "identity")
    for r in rows:  # the data show each guarded cost is within tolerance
        r["admissible"] = all(r[f"{g}_diff"] - z * _se(r, f"{g}_diff") >= -tol for g in guards)
    pick, rule = one_se_rule(rows, [i for i, r in enumerate(rows) if r["admissible"]], objective)
    if pick == base and guards:
        pick, rule = _fallback(rows, objective, tol, z, base, n, dim, rule)
    for i, r in enumerate(rows):
        r["chosen"] = i == pick
    return pick, rule


def one_se_rule(
    rows: list[dict[str, Any]], allowed: list[int], objective: Objective
) -> tuple[int, str]:
    """The least-moving candidate whose objective is within one SE of the best allowed one."""
    metric = objective.metric
    best = max(allowed, key=lambda i: (rows[i][metric], tuple(-v for v in _rank(rows, i))))
    bar = rows[best][metric] - _se(rows[best], metric)
    within = [i for i in allowed if rows[i][metric] >= bar]
    pick = min(within, key=lambda i: _rank(rows, i))
    return pick, (
        f"one-standard-error rule: best admissible {metric} {rows[best][metric]:.3f} ± "
        f"{_se(rows[best], metric):.3f} ({label(rows[best])}); of the {len(within)} within one "
        f"standard error, {label(rows[pick])} moves the data least"
    )


def _fallback(
    rows: list[dict[str, Any]],
    objective: Objective,
    tol: float,
    z: float,
    base: int,
    n: int,
    dim: int,
    rule: str,
) -> tuple[int, str]:
    """Nothing passed the confidence bound: on small data, a looser test may still pass."""
    guards = ", ".join(objective.guards)
    gap0 = rows[base]["gap"]
    closing = [i for i, r in enumerate(rows) if i != base and r["gap"] <= GAP_CLOSED * gap0]
    if not closing:
        return base, "kept identity: no candidate halves the gap on held-out pairs"
    if n >= SMALL_ROWS and n >= dim:
        return base, (
            f"kept identity: no gap-closing candidate kept {guards} within {tol:.3f} of "
            f"identity at the confidence bound (mean - {z:g} SE)"
        )
    loose = [  # the looser test: the data do not show a cost beyond tolerance
        i
        for i in closing
        if all(
            rows[i][f"{g}_diff"] + z * _se(rows[i], f"{g}_diff") >= -tol for g in objective.guards
        )
    ]
    for i in loose:
        rows[i]["admissible_small_data"] = True
    if loose:
        pick, why = one_se_rule(rows, loose, objective)
        return pick, (
            f"small-data fallback (n={n}, d={dim}): no candidate passed the confidence bound; "
            f"among gap-closing candidates whose {guards} cost is not shown to exceed {tol:.3f} "
            f"(mean + {z:g} SE), {why}"
        )
    least = min(closing, key=lambda j: _rank(rows, j))
    drops = ", ".join(f"{g} {rows[least][f'{g}_diff']:+.3f}" for g in objective.guards)
    return base, (
        f"kept identity: small data (n={n}) and every gap-closing candidate costs more than "
        f"{tol:.3f} on held-out pairs (the least-moving, {label(rows[least])}: {drops})"
    )


def _rank(rows: list[dict[str, Any]], i: int) -> tuple[float, float]:
    return moves(rows[i])


def _se(row: dict[str, Any], key: str) -> float:
    value = row.get(f"{key}_se", 0.0)
    return 0.0 if value != value else float(value)  # NaN (one fold) counts as no spread
