"""`auto`: choose the method and its hyper-parameters by repeated k-fold cross-validation.

Objectives (``gapfix.transforms.selection``): ``balanced`` (default; the best mixed-modality
R@10 among candidates whose text->image and image->text R@1 provably stay within
``tolerance`` of the identity's), ``retrieval`` (mean of both R@1), ``mixed`` (mixed R@10) and
``zeroshot`` (images + integer labels + one text row per class; top-1). The decision uses the
one-standard-error rule on cross-validated estimates with their standard errors; the table
(``fit_table_``) shows them, and ``fit_stats_["rule"]`` says which rule decided.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from gapfix.blocks import normalized
from gapfix.errors import InputError
from gapfix.transforms import crossval, selection
from gapfix.transforms.base import GapTransform
from gapfix.validation import check_embeddings, check_labels, check_paired, check_same_dim

OBJECTIVES = tuple(selection.OBJECTIVE_REGISTRY)
SEARCH_ITERATIONS = 6  # evaluations of the continuous shrinkage search
FIT_BLAS_THREADS = 1


class AutoTransform(GapTransform):
    """Cross-validated choice among candidate transforms; delegates to the refitted winner.

    Fitted attributes: ``best_`` (the chosen transform, refitted on all calibration data),
    ``chosen_`` (its method and params) and ``fit_table_`` (one row per candidate: each
    metric's cross-validated mean, standard error ``*_se``, paired difference from identity
    ``*_diff`` and its error ``*_diff_se``, and whether it was admissible / chosen).
    ``fit_stats_`` adds ``rule`` (what decided), ``out_of_fold`` (the winner's and identity's
    held-out figures) and ``warnings``.
    """

    method = "auto"
    param_bounds = (
        ("folds", 2, 100),
        ("repeats", 1, 100),
        ("tolerance", 0.0, 1.0),
        ("z", 0.0, 10.0),
        ("seed", 0, 2**32 - 1),
    )

    def __init__(
        self,
        objective: str = "balanced",
        folds: int = 2,
        repeats: int = 5,
        methods: str | list[str] | None = None,
        tolerance: float = 0.01,
        z: float = 1.645,
        seed: int = 0,
        renormalize: bool = True,
    ) -> None:
        super().__init__(renormalize)
        self.objective = objective
        self.folds = folds
        self.repeats = repeats
        self.methods = methods
        self.tolerance = tolerance
        self.z = z
        self.seed = seed

    @property
    def paired(self) -> bool:
        return self.objective != "zeroshot"

    def partial_fit(self, image: Any = None, text: Any = None) -> GapTransform:
        raise InputError(
            "auto cross-validates on calibration data held in memory; stream-fit a named "
            "method instead (or fit auto on a sample)",
            param="method",
        )

    def _candidates(self, paired: bool, n: int, dim: int) -> list[selection.Candidate]:
        """Registered candidates this data can judge (and the ``methods`` filter allows)."""
        from gapfix.transforms import TRANSFORMS

        wanted = self._wanted_methods()
        out = []
        for c in selection.CANDIDATES:
            if c.method not in TRANSFORMS or not c.fits(n, dim, paired) or not c.available():
                continue
            if wanted and c.method not in wanted and c.method != "identity":
                continue
            out.append(c)
        return out

    def _wanted_methods(self) -> set[str]:
        """The ``methods`` parameter (comma-separated names or a list of them) as a set."""
        from gapfix.transforms import TRANSFORMS

        given = self.methods
        if given is None:
            return set()
        if isinstance(given, str):
            names = given.split(",")
        elif isinstance(given, list | tuple) and all(isinstance(m, str) for m in given):
            names = list(given)
        else:
            raise InputError(
                "parameter 'methods' of 'auto' must be comma-separated method names or a list "
                f"of them, got {given!r}",
                param="methods",
            )
        wanted = {m.strip() for m in names if m.strip()}
        unknown = wanted - set(TRANSFORMS)
        if unknown:
            raise InputError(
                f"unknown methods for auto: {', '.join(sorted(unknown))}; "
                f"choose from {', '.join(TRANSFORMS)}",
                param="methods",
            )
        return wanted

    def validate_params(self) -> None:
        """Ranges, the objective and the method names, before any data is read."""
        super().validate_params()
        known = selection.OBJECTIVE_REGISTRY
        if self.objective not in known:
            raise InputError(
                f"unknown objective {self.objective!r}; choose from {', '.join(known)}",
                param="objective",
            )
        self._wanted_methods()

    def fit(
        self, image: Any, text: Any, labels: Any = None, *, groups: Any = None, harmful: Any = None
    ) -> AutoTransform:
        """Cross-validate the candidates and fit the chosen one on all rows. ``groups`` (one
        label per image row) and ``harmful`` (category -> class indices) are for
        ``objective="fair"``."""
        self.validate_params()
        image = check_embeddings(image, "image", min_rows=2)
        text = check_embeddings(text, "text", min_rows=2)
        check_same_dim(image, text)
        objective = selection.OBJECTIVE_REGISTRY[self.objective]
        lab = None
        if not objective.paired:
            if labels is None:
                raise InputError(
                    f"objective {self.objective!r} needs --labels (one per image row)", "labels"
                )
            lab = check_labels(labels, image.shape[0], text.shape[0])
        else:
            if labels is not None:
                raise InputError(
                    f"labels are only used by objective 'zeroshot' (got {self.objective!r})",
                    "labels",
                )
            check_paired(image, text, f"auto with objective {self.objective!r}")
        self._extra = self._objective_data(
            objective, image.shape[0], text.shape[0], groups, harmful
        )
        n, dim = image.shape
        k = min(int(self.folds), n // 2)
        if k < 2:
            raise InputError(f"auto needs at least 4 calibration rows, got {n}", param="image")
        from threadpoolctl import threadpool_limits

        # one BLAS thread for the whole search: its products are small, and threaded BLAS
        # on a busy machine measured 4x slower here (250 COCO pairs: 27 s vs 110 s, load 11)
        with threadpool_limits(limits=FIT_BLAS_THREADS, user_api="blas"):
            rows = self._cross_validate(image, text, lab, objective, k, n, dim)
            best, rule = selection.decide(rows, objective, self.tolerance, float(self.z), n, dim)
            self.fit_table_ = rows
            self.chosen_ = {"method": rows[best]["method"], "params": rows[best]["params"]}
            from gapfix.transforms import make_transform

            self.best_ = make_transform(
                self.chosen_["method"], renormalize=self.renormalize, **self.chosen_["params"]
            )
            self.best_.fit(image, text)
        self.dim_ = self.best_.dim_
        base = next(r for r in rows if r["method"] == "identity")
        metrics = [m for m in rows[best] if f"{m}_se" in rows[best] and not m.endswith("_diff")]
        self.fit_stats_ = {
            **self.best_.fit_stats_,
            "chosen": self.chosen_,
            "folds": k,
            "repeats": int(self.repeats),
            "rule": rule,
            "out_of_fold": {m: rows[best][m] for m in metrics},
            "out_of_fold_identity": {m: base[m] for m in metrics},
            "warnings": _warnings(rows, objective, float(self.tolerance)),
        }
        self._extra = {}  # the objective's data is not kept with the fitted transform
        self._stale = False
        return self

    def _objective_data(
        self, objective: selection.Objective, n_image: int, n_class: int, groups: Any, harmful: Any
    ) -> dict[str, Any]:
        """The extra data ``objective`` scores with (checked), or {} when it needs none."""
        if not objective.needs:
            if groups is not None or harmful is not None:
                raise InputError(
                    f"groups and harmful are used by objective 'fair' (got {self.objective!r})",
                    "groups",
                )
            return {}
        from gapfix.fairness import check_groups, check_harmful

        if groups is None or not harmful:
            raise InputError(
                f"objective {self.objective!r} needs --groups (one group label per image row) "
                "and --harmful (class indices counted harmful)",
                "groups" if groups is None else "harmful",
            )
        return {
            "groups": check_groups(groups, n_image),
            "harmful": check_harmful(harmful, n_class),
        }

    def _cross_validate(
        self,
        image: np.ndarray,
        text: np.ndarray,
        lab: np.ndarray | None,
        objective: selection.Objective,
        k: int,
        n: int,
        dim: int,
    ) -> list[dict[str, Any]]:
        """Score every candidate (and a searched shrinkage) on shared folds; summarise."""
        # unit rows for every scorer call below, as ``cross_validate`` scores its candidates:
        # the folds' moments are of unit rows, and ``moved`` compares mapped rows with these
        image, text = normalized(image), normalized(text)
        chosen = self._candidates(paired=lab is None, n=n, dim=dim)
        full = [(c.method, dict(c.params)) for c in chosen if c.max_repeats is None]
        scores, folds, ratio = crossval.cross_validate(
            full, image, text, lab, folds=k, repeats=max(int(self.repeats), 1),
            seed=int(self.seed), renormalize=self.renormalize, scorer=objective.scorer,
            extra=self._extra,
        )  # fmt: skip
        base = scores[[m for m, _ in full].index("identity")]
        candidates, bases = list(full), [base] * len(full)
        if any(m == "whiten" for m, _ in full):
            searched = self._search_shrinkage(image, text, lab, objective, folds, base, ratio)
            candidates.append(("whiten", {"shrinkage": searched[0]}))
            scores.append(searched[1])
            bases.append(base)
        for c in chosen:  # costly candidates: the folds of their first repeats only
            if c.max_repeats is None:
                continue
            some = folds[: k * c.max_repeats]
            candidates.append((c.method, dict(c.params)))
            one = crossval.score_candidate(
                c.method, dict(c.params), image, text, lab, some, self.renormalize,
                objective.scorer, self._extra,
            )  # fmt: skip
            scores.append(one)
            bases.append(base[: len(some)])
        rows = []
        for (method, params), cand, b in zip(candidates, scores, bases, strict=True):
            summary = crossval.summarize(cand, b, ratio)
            rows.append({"method": method, "params": params, "folds_used": len(cand), **summary})
        return rows

    def _search_shrinkage(
        self,
        image: np.ndarray,
        text: np.ndarray,
        lab: np.ndarray | None,
        objective: selection.Objective,
        folds: list[crossval.Fold],
        base: list[dict[str, float]],
        ratio: float,
    ) -> tuple[float, list[dict[str, float]]]:
        """A bounded scalar search over whitening shrinkage on the same folds (and moments).

        Maximises the objective's cross-validated mean, less a penalty where a guarded metric
        falls more than ``tolerance`` below identity as a point estimate.
        """
        from scipy.optimize import minimize_scalar

        seen: dict[float, list[dict[str, float]]] = {}

        def fold_scores(a: float) -> list[dict[str, float]]:
            a = round(float(a), 3)
            if a not in seen:
                seen[a] = crossval.score_candidate(
                    "whiten", {"shrinkage": a}, image, text, lab, folds, self.renormalize,
                    objective.scorer, self._extra,
                )  # fmt: skip
            return seen[a]

        def loss(a: float) -> float:
            summary = crossval.summarize(fold_scores(a), base, ratio)
            short = sum(
                max(-float(self.tolerance) - summary[f"{g}_diff"], 0.0) for g in objective.guards
            )
            return -(summary[objective.metric] - 10.0 * short)

        found = minimize_scalar(
            loss, bounds=(0.0, 1.0), method="bounded",
            options={"xatol": 0.005, "maxiter": SEARCH_ITERATIONS},
        )  # fmt: skip
        a = round(float(found.x), 3)
        return a, fold_scores(a)

    def transform(
        self, z: Any, modality: str = "image", out: Any = None, role: str | None = None
    ) -> Any:
        self._check_fitted()
        return self.best_.transform(z, modality, out=out, role=role)

    def _check_fitted(self) -> None:
        if not hasattr(self, "best_"):
            from gapfix.errors import NotFittedError

            raise NotFittedError(
                "AutoTransform is not fitted yet: call fit(image=..., text=...) first"
            )

    def kernel(self, modality: str, role: str | None = None) -> Any:
        self._check_fitted()
        return self.best_.kernel(modality, role)

    def fitted_state(self) -> dict[str, np.ndarray]:
        return self.best_.fitted_state()

    def to_summary(self) -> dict[str, Any]:
        summary = super().to_summary()
        summary["chosen"] = self.chosen_
        summary["fit_table"] = self.fit_table_
        return summary


def _warnings(
    rows: list[dict[str, Any]], objective: selection.Objective, tolerance: float
) -> list[str]:
    """Degenerate fits: candidates whose held-out objective falls below the identity's."""
    metric = objective.metric
    base = next(r for r in rows if r["method"] == "identity")[metric]
    below = [
        f"{selection.label(r)} {r[metric]:.3f}"
        for r in rows
        if r["method"] != "identity" and r[f"{metric}_diff"] < -tolerance
    ]
    if not below:
        return []
    return [
        f"degenerate fits, {metric} below raw ({base:.3f}) on held-out rows: " + "; ".join(below)
    ]
