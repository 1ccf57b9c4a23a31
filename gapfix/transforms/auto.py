"""`auto`: choose the method and its hyper-parameters by k-fold cross-validation.

Objectives: ``retrieval`` (paired; mean of both cross-modal R@1), ``mixed`` (paired;
mixed-modality R@10), ``zeroshot`` (images + integer labels + one text row per class; top-1),
and ``balanced`` (default): the best mixed-modality R@10 among candidates whose cross-validated
text->image and image->text R@1 do not fall below the identity's by more than ``tolerance``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from gapfix.errors import InputError
from gapfix.evaluation import cross_modal_recall, mixed_modality, zeroshot_accuracy
from gapfix.transforms.base import GapTransform
from gapfix.validation import check_embeddings, check_labels, check_paired, check_same_dim

OBJECTIVES = ("balanced", "retrieval", "mixed", "zeroshot")

DEFAULT_CANDIDATES: list[tuple[str, dict[str, Any]]] = [
    ("identity", {}),
    ("mean-shift", {"lam": 0.25}),
    ("mean-shift", {"lam": 0.5}),
    ("mean-shift", {"lam": 0.75}),
    ("mean-shift", {"lam": 1.0}),
    ("centering", {}),
    ("standardize", {}),
    ("whiten", {"shrinkage": 0.5}),
    ("whiten", {"shrinkage": 0.8}),
    ("whiten", {"shrinkage": 0.9}),
    ("whiten", {"shrinkage": 0.95}),
    ("ablate-dims", {"k": 4}),
    ("ablate-dims", {"k": 16}),
    ("procrustes", {}),
]
MAX_EVAL_ROWS = 5000


class AutoTransform(GapTransform):
    """Cross-validated choice among candidate transforms; delegates to the refitted winner.

    Fitted attributes: ``best_`` (the chosen transform, refitted on all calibration data),
    ``chosen_`` (its method and params) and ``fit_table_`` (one row per candidate with its
    cross-validated metrics and whether it was admissible).
    """

    method = "auto"
    param_bounds = (
        ("folds", 2, 100),
        ("repeats", 1, 100),
        ("tolerance", 0.0, 1.0),
        ("seed", 0, 2**32 - 1),
    )

    def __init__(
        self,
        objective: str = "balanced",
        folds: int = 3,
        repeats: int = 3,
        methods: str | list[str] | None = None,
        tolerance: float = 0.01,
        seed: int = 0,
        renormalize: bool = True,
    ) -> None:
        super().__init__(renormalize)
        self.objective = objective
        self.folds = folds
        self.repeats = repeats
        self.methods = methods
        self.tolerance = tolerance
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

    def _candidates(self, paired: bool, dim: int) -> list[tuple[str, dict[str, Any]]]:
        cands = [
            c
            for c in DEFAULT_CANDIDATES
            if (paired or c[0] != "procrustes") and int(c[1].get("k", 0)) < dim
        ]
        wanted = self._wanted_methods()
        if wanted:
            cands = [c for c in cands if c[0] in wanted or c[0] == "identity"]
        return cands

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
        if self.objective not in OBJECTIVES:
            raise InputError(
                f"unknown objective {self.objective!r}; choose from {', '.join(OBJECTIVES)}",
                param="objective",
            )
        self._wanted_methods()

    def fit(self, image: Any, text: Any, labels: Any = None) -> AutoTransform:
        from gapfix.transforms import make_transform

        self.validate_params()
        image = check_embeddings(image, "image", min_rows=2)
        text = check_embeddings(text, "text", min_rows=2)
        check_same_dim(image, text)
        if self.objective == "zeroshot":
            if labels is None:
                raise InputError(
                    "objective 'zeroshot' needs --labels (one per image row)", "labels"
                )
            lab = check_labels(labels, image.shape[0], text.shape[0])
            n = image.shape[0]
        else:
            if labels is not None:
                raise InputError(
                    f"labels are only used by objective 'zeroshot' (got {self.objective!r})",
                    "labels",
                )
            check_paired(image, text, f"auto with objective {self.objective!r}")
            lab = None
            n = image.shape[0]
        k = int(self.folds)
        if k < 2:
            raise InputError(f"folds must be at least 2, got {k}", param="folds")
        k = min(k, n // 2)
        if k < 2:
            raise InputError(f"auto needs at least 4 calibration rows, got {n}", param="image")
        rng = np.random.default_rng(int(self.seed))
        splits = [rng.permutation(n) % k for _ in range(max(int(self.repeats), 1))]
        candidates = self._candidates(paired=lab is None, dim=image.shape[1])
        scores: list[list[dict[str, float]]] = [[] for _ in candidates]
        # folds outer, candidates inner: candidates that share a training fold share its
        # work (one covariance eigendecomposition serves every whitening shrinkage)
        for fold_of, f in ((s, f) for s in splits for f in range(k)):
            train, val = fold_of != f, fold_of == f
            for i, (method, params) in enumerate(candidates):
                if lab is None:
                    t = make_transform(method, renormalize=self.renormalize, **params)
                    t.fit(image[train], text[train])
                    scores[i].append(_paired_scores(t, image[val], text[val]))
                else:
                    t = make_transform(method, renormalize=self.renormalize, **params)
                    t.fit(image[train], text)
                    scores[i].append(_zeroshot_scores(t, image[val], text, lab[val]))
        rows = []
        for (method, params), cand_scores in zip(candidates, scores, strict=True):
            mean = {key: float(np.mean([s[key] for s in cand_scores])) for key in cand_scores[0]}
            rows.append({"method": method, "params": params, **mean})
        best = self._choose(rows)
        self.fit_table_ = rows
        self.chosen_ = {"method": rows[best]["method"], "params": rows[best]["params"]}
        self.best_ = make_transform(
            self.chosen_["method"], renormalize=self.renormalize, **self.chosen_["params"]
        )
        self.best_.fit(image, text)
        self.dim_ = self.best_.dim_
        self.fit_stats_ = {**self.best_.fit_stats_, "chosen": self.chosen_, "folds": k}
        self._stale = False
        return self

    def _choose(self, rows: list[dict[str, Any]]) -> int:
        for row in rows:
            row["admissible"] = True
        if self.objective == "zeroshot":
            key = [r["zeroshot_top1"] for r in rows]
        elif self.objective == "retrieval":
            key = [(r["t2i_R@1"] + r["i2t_R@1"]) / 2 for r in rows]
        elif self.objective == "mixed":
            key = [r["mixed_R@10"] for r in rows]
        else:
            base = next(r for r in rows if r["method"] == "identity")
            tol = float(self.tolerance) + 1e-12
            for r in rows:
                r["admissible"] = (
                    r["t2i_R@1"] >= base["t2i_R@1"] - tol and r["i2t_R@1"] >= base["i2t_R@1"] - tol
                )
            key = [
                (r["mixed_R@10"], r["t2i_R@1"] + r["i2t_R@1"]) if r["admissible"] else (-1.0, -1.0)
                for r in rows
            ]
        best = max(range(len(rows)), key=lambda i: key[i])
        for i, r in enumerate(rows):
            r["chosen"] = i == best
        return best

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


def _subsample(n: int, limit: int) -> np.ndarray:
    if n <= limit:
        return np.arange(n)
    return np.sort(np.random.default_rng(0).choice(n, limit, replace=False))


def _paired_scores(t: GapTransform, image: np.ndarray, text: np.ndarray) -> dict[str, float]:
    idx = _subsample(image.shape[0], MAX_EVAL_ROWS)
    ci, ct = t.transform(image[idx], "image"), t.transform(text[idx], "text")
    recall = cross_modal_recall(ci, ct, ks=(1,))
    mixed = mixed_modality(ci, ct)
    gap = float(np.linalg.norm(ci.mean(axis=0) - ct.mean(axis=0)))
    return {
        "t2i_R@1": recall["text_to_image"]["R@1"],
        "i2t_R@1": recall["image_to_text"]["R@1"],
        "mixed_R@10": mixed["R@10"],
        "gap": gap,
    }


def _zeroshot_scores(
    t: GapTransform, image: np.ndarray, class_text: np.ndarray, labels: np.ndarray
) -> dict[str, float]:
    ci, ct = t.transform(image, "image"), t.transform(class_text, "text")
    gap = float(np.linalg.norm(ci.mean(axis=0) - ct.mean(axis=0)))
    return {"zeroshot_top1": zeroshot_accuracy(ci, ct, labels), "gap": gap}
