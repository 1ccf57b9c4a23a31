"""The gap-closing methods: shifts, centering, scaling, whitening, ablation, Procrustes."""

from __future__ import annotations

from typing import Any

import numpy as np

from gapfix.blocks import normalized
from gapfix.errors import InputError
from gapfix.transforms.base import GapTransform
from gapfix.transforms.moments import Moments
from gapfix.validation import check_embeddings


class Identity(GapTransform):
    """No correction (renormalisation only): the baseline every method is compared to."""

    method = "identity"


class MeanShift(GapTransform):
    """Shift along the gap vector g = muX - muY (Liang et al. 2022).

    x' = n(x - lam*g/2), y' = n(y + lam*g/2). ``lam=1`` moves the centroids together before
    renormalisation; negative values widen the gap.
    """

    method = "mean-shift"
    param_bounds = (("lam", -10.0, 10.0),)
    fitted_arrays = ("gap_vector_",)

    def __init__(self, lam: float = 1.0, renormalize: bool = True) -> None:
        super().__init__(renormalize)
        self.lam = lam

    def _fit_moments(self, image: Moments, text: Moments) -> None:
        self.gap_vector_ = (image.mean - text.mean).astype(np.float32)

    def _shift_amount(self) -> float:
        return float(self.lam)

    def _kernel_parts(self, modality: str) -> dict[str, Any]:
        half = self._shift_amount() * self.gap_vector_.astype(np.float64) / 2
        return {"shift": half if modality == "image" else -half}


def _gap_after_shift(
    xs: np.ndarray, ys: np.ndarray, g: np.ndarray, lam: float, renormalize: bool = True
) -> float:
    def centroid(z: np.ndarray, sign: float) -> np.ndarray:
        shifted = z - sign * lam * g / 2
        if renormalize:
            shifted /= np.maximum(np.linalg.norm(shifted, axis=1, keepdims=True), 1e-12)
        return shifted.mean(axis=0)

    return float(np.linalg.norm(centroid(xs, 1.0) - centroid(ys, -1.0)))


class TargetGap(MeanShift):
    """Mean shift with lam solved by bisection so the centroid gap of the output (renormalised,
    unless ``renormalize=False``) equals ``gap``.

    Targets above today's gap widen it (negative lam). A target below the smallest gap a shift
    can reach is an error naming that minimum.
    """

    method = "target-gap"
    param_bounds = (("gap", 0.0, 1.999), ("tol", 1e-12, 1.0))
    fitted_arrays = ("gap_vector_", "lam_")

    def __init__(self, gap: float = 0.1, tol: float = 1e-4, renormalize: bool = True) -> None:
        GapTransform.__init__(self, renormalize)
        self.gap = gap
        self.tol = tol

    def _fit_moments(self, image: Moments, text: Moments) -> None:
        g = (image.mean - text.mean).astype(np.float64)
        xs, ys = (s.astype(np.float64) for s in self.calibration_sample())

        def f(lam: float) -> float:  # the gap of what transform() returns, minus the target
            return _gap_after_shift(xs, ys, g, lam, self.renormalize) - float(self.gap)

        if f(0.0) > 0:  # close the gap: search between 0 and the shift of smallest gap
            grid = np.linspace(0.0, 2.0, 41)
            values = [f(lam) for lam in grid]
            best = int(np.argmin(values))
            if values[best] > self.tol:
                reachable = values[best] + float(self.gap)
                raise InputError(
                    f"target gap {self.gap} is below the smallest gap a mean shift reaches on "
                    f"this data ({reachable:.4f})",
                    param="gap",
                )
            lo, hi = 0.0, float(grid[best])
        else:  # widen the gap: search for a negative lam
            lo, hi = -1.0, 0.0
            while f(lo) < 0:
                lo *= 2
                if lo < -1e4:
                    raise InputError(f"target gap {self.gap} cannot be reached", param="gap")
            lo, hi = hi, lo  # f(lo) <= 0 side first
        lam = _bisect(f, lo, hi, self.tol)
        self.gap_vector_ = g.astype(np.float32)
        self.lam_ = np.array([lam], dtype=np.float64)

    def _shift_amount(self) -> float:
        return float(np.asarray(self.lam_).ravel()[0])


def _bisect(f: Any, a: float, b: float, tol: float, max_iter: int = 100) -> float:
    """Root of f on [a, b] where f(a) and f(b) have opposite signs (or one is ~0)."""
    fa = f(a)
    for _ in range(max_iter):
        mid = (a + b) / 2
        fm = f(mid)
        if abs(fm) <= tol:
            return mid
        if (fm > 0) == (fa > 0):
            a, fa = mid, fm
        else:
            b = mid
    return (a + b) / 2


class Centering(GapTransform):
    """Per-modality centering (GR-CLIP / I0T): x' = n(x - muX), y' = n(y - muY).

    With ``query_text_mean=True``, ``fit(..., query_text=Q)`` also learns a separate mean for
    query texts, used by ``transform(z, "text", role="query")``.
    """

    method = "centering"
    fitted_arrays = ("mean_image_", "mean_text_", "mean_query_text_")

    def __init__(self, query_text_mean: bool = False, renormalize: bool = True) -> None:
        super().__init__(renormalize)
        self.query_text_mean = query_text_mean

    def fit(self, image: Any, text: Any, labels: Any = None, query_text: Any = None) -> Centering:
        self._query: Moments | None = None
        if self.query_text_mean:
            if query_text is None:
                raise InputError("query_text_mean=True needs query_text rows to fit", "query_text")
            q = check_embeddings(query_text, "query_text", min_rows=2)
            self._query = Moments(q.shape[1])
            self._query.update(normalized(q))  # unit rows, as fit and transform use
        super().fit(image, text, labels)
        return self

    def _fit_moments(self, image: Moments, text: Moments) -> None:
        self.mean_image_ = image.mean.astype(np.float32)
        self.mean_text_ = text.mean.astype(np.float32)
        query = getattr(self, "_query", None)
        self.mean_query_text_ = None if query is None else query.mean.astype(np.float32)

    def _kernel_parts(self, modality: str) -> dict[str, Any]:
        if modality == "text:query" and self.mean_query_text_ is not None:
            return {"shift": self.mean_query_text_}
        return {"shift": self.mean_image_ if modality == "image" else self.mean_text_}


class Standardize(GapTransform):
    """Per-modality, per-dimension z-score, then renormalise."""

    method = "standardize"
    param_bounds = (("eps", 1e-12, 1.0),)
    fitted_arrays = ("mean_image_", "mean_text_", "std_image_", "std_text_")

    def __init__(self, eps: float = 1e-6, renormalize: bool = True) -> None:
        super().__init__(renormalize)
        self.eps = eps

    def _fit_moments(self, image: Moments, text: Moments) -> None:
        self.mean_image_ = image.mean.astype(np.float32)
        self.mean_text_ = text.mean.astype(np.float32)
        self.std_image_ = np.sqrt(image.var + self.eps).astype(np.float32)
        self.std_text_ = np.sqrt(text.var + self.eps).astype(np.float32)

    def _kernel_parts(self, modality: str) -> dict[str, Any]:
        mean, std = (
            (self.mean_image_, self.std_image_)
            if modality == "image"
            else (self.mean_text_, self.std_text_)
        )
        return {"shift": mean, "scale": 1.0 / std.astype(np.float64)}


SHRINKAGE_ESTIMATORS = ("lw", "oas")


class Whiten(GapTransform):
    """Per-modality ZCA whitening with shrinkage towards a scaled identity, then renormalise.

    Sigma_s = (1 - a) * Sigma + a * (tr(Sigma)/d) * I;  W = Sigma_s^(-1/2).  ``shrinkage`` is a
    number ``a`` in [0, 1] or chosen from the data per modality: ``"lw"`` (Ledoit-Wolf, the
    default) or ``"oas"`` (Oracle Approximating Shrinkage), both from ``sklearn.covariance`` on
    the calibration rows. The coefficients used are kept in ``shrinkage_`` (image, text).

    ``image_strength`` and ``text_strength`` (b in (0, 1], 1 = plain whitening) blend each unit
    row of that modality with its whitened image, scaled to the same mean squared norm as the
    rows: ``y = (1 - b) x + b (x - mean) W / rms``, an affine map like the others. b < 1 keeps
    part of the raw geometry; on the COCO dev file, images at 0.7-0.8 with texts fully whitened
    keep both R@1 more often than plain whitening and lose no mixed R@10. ``rms_`` holds the
    scales (image, text).
    """

    method = "whiten"
    param_bounds = (
        ("eps", 1e-12, 1.0),
        ("image_strength", 1e-3, 1.0),
        ("text_strength", 1e-3, 1.0),
    )
    needs_outer = True
    fitted_arrays = (
        "mean_image_", "mean_text_", "whitener_image_", "whitener_text_", "shrinkage_", "rms_",
    )  # fmt: skip

    def __init__(
        self,
        shrinkage: float | str = "lw",
        eps: float = 1e-6,
        image_strength: float = 1.0,
        text_strength: float = 1.0,
        renormalize: bool = True,
    ) -> None:
        super().__init__(renormalize)
        self.shrinkage = shrinkage
        self.eps = eps
        self.image_strength = image_strength
        self.text_strength = text_strength

    def validate_params(self) -> None:
        """``shrinkage``: 'lw', 'oas' or a number in [0, 1] (numeric strings become floats)."""
        super().validate_params()
        value = self.shrinkage
        if isinstance(value, str) and value.strip().lower() in SHRINKAGE_ESTIMATORS:
            self.shrinkage = value.strip().lower()
            return
        try:
            number = float(value)  # type: ignore[arg-type]
            ok = not isinstance(value, bool) and 0.0 <= number <= 1.0
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise InputError(
                "parameter 'shrinkage' of 'whiten' must be in [0, 1] or one of 'lw' "
                f"(Ledoit-Wolf), 'oas', got {value!r}",
                param="shrinkage",
            )
        self.shrinkage = number

    def _fit_moments(self, image: Moments, text: Moments) -> None:
        self.mean_image_ = image.mean.astype(np.float32)
        self.mean_text_ = text.mean.astype(np.float32)
        samples = self.calibration_sample()
        amounts = [self._amount(z) for z in samples]
        self.shrinkage_ = np.array(amounts, dtype=np.float64)
        self.whitener_image_, rms_image = self._whitener(image, amounts[0])
        self.whitener_text_, rms_text = self._whitener(text, amounts[1])
        self.rms_ = np.array([rms_image, rms_text], dtype=np.float64)

    def _amount(self, rows: np.ndarray) -> float:
        """The shrinkage coefficient for one modality (estimated from its rows if asked)."""
        if not isinstance(self.shrinkage, str):
            return float(self.shrinkage)
        from sklearn.covariance import OAS, ledoit_wolf_shrinkage

        if rows.shape[0] < 2:
            return 1.0
        z = np.asarray(rows, dtype=np.float64)
        if self.shrinkage == "lw":
            return float(ledoit_wolf_shrinkage(z))
        return float(OAS(store_precision=False).fit(z).shrinkage_)

    def _whitener(self, moments: Moments, a: float) -> tuple[np.ndarray, float]:
        """W for shrinkage ``a``, and the RMS norm of the whitened calibration rows.

        Memoised on the moments with the eigendecomposition: ``auto``'s candidates that
        share a fold and a shrinkage (with different strengths) share one W.
        """
        return moments.memo(("whitener", float(a), self.eps), lambda: self._whitener_of(moments, a))

    def _whitener_of(self, moments: Moments, a: float) -> tuple[np.ndarray, float]:
        # Shrinkage towards a scaled identity keeps the eigenvectors of cov, so one
        # eigendecomposition (memoised on the moments) serves every shrinkage value.
        raw, v32 = moments.cov_eigh32()  # a float32 product: half the time, ~1e-6 relative error
        vals = np.maximum((1 - a) * raw + a * (raw.sum() / raw.size), 0.0) + self.eps
        inv_sqrt = 1.0 / np.sqrt(vals)
        rms = float(np.sqrt(max(np.sum(np.maximum(raw, 0.0) / vals), 1e-12)))
        # W = f0 I + V (f - f0) V^T with f0 the null space's factor: fitted on fewer rows than
        # dimensions, only the rows' span differs from f0, so W costs d^2 r instead of d^3
        f0 = 1.0 / np.sqrt(max(a * raw.sum() / raw.size, 0.0) + self.eps)
        diff = inv_sqrt - f0
        keep = np.abs(diff) > 1e-7 * inv_sqrt.max()
        v = v32[:, keep]
        w = (v * diff[keep].astype(np.float32)) @ v.T
        w[np.diag_indices_from(w)] += np.float32(f0)
        return w, rms

    def load_state(
        self, arrays: dict[str, np.ndarray], dim: int, fit_stats: dict[str, Any]
    ) -> None:
        """Restore the arrays; a strength below 1 needs ``rms_`` (refused here, not on use)."""
        super().load_state(arrays, dim, fit_stats)
        self._check_scale()

    def _check_scale(self) -> None:
        partial = min(float(self.image_strength), float(self.text_strength)) < 1.0
        if partial and getattr(self, "rms_", None) is None:
            from gapfix.errors import ArtifactError

            raise ArtifactError(
                "whiten with a strength below 1 needs the fitted array 'rms_'", param="transform"
            )

    def _kernel_parts(self, modality: str) -> dict[str, Any]:
        i = 0 if modality == "image" else 1
        mean = (self.mean_image_, self.mean_text_)[i]
        w = (self.whitener_image_, self.whitener_text_)[i]
        b = float((self.image_strength, self.text_strength)[i])
        if b >= 1.0:
            return {"shift": mean, "matrix": w}
        self._check_scale()
        # (1 - b) x + (b / rms) (x - mean) W  ==  x M + offset
        part = (b / float(self.rms_[i])) * w.astype(np.float64)
        m = part + (1.0 - b) * np.eye(w.shape[0])
        return {"matrix": m, "offset": -(mean.astype(np.float64) @ part)}


class AblateDims(GapTransform):
    """Zero the ``k`` dimensions carrying most of ||muX - muY||^2, then renormalise.

    The output keeps dimension d (dropped coordinates are 0), which is equivalent to dropping
    them for cosine search and keeps indexes and artifacts dimension-stable.
    """

    method = "ablate-dims"
    param_bounds = (("k", 1, 1_000_000),)
    fitted_arrays = ("dims_", "gap_vector_")

    def __init__(self, k: int = 10, renormalize: bool = True) -> None:
        super().__init__(renormalize)
        self.k = k

    def _fit_moments(self, image: Moments, text: Moments) -> None:
        k = int(self.k)
        if not 0 < k < image.dim:
            raise InputError(f"k must be in [1, {image.dim - 1}], got {self.k}", param="k")
        g = image.mean - text.mean
        self.gap_vector_ = g.astype(np.float32)
        self.dims_ = np.argsort(-(g**2), kind="stable")[:k].astype(np.int64)

    def _kernel_parts(self, modality: str) -> dict[str, Any]:
        scale = np.ones(self.dim_, dtype=np.float32)
        scale[np.asarray(self.dims_, dtype=np.int64)] = 0.0
        return {"scale": scale}


class Procrustes(GapTransform):
    """Center both modalities, then rotate image space onto text space (paired data only).

    R = U V^T from the SVD of the centered cross-covariance X^T Y; x' = n((x - muX) R),
    y' = n(y - muY).
    """

    method = "procrustes"
    requires_pairs = True
    fitted_arrays = ("mean_image_", "mean_text_", "rotation_")

    def _fit_moments(self, image: Moments, text: Moments) -> None:
        assert self._cross is not None
        n = max(self._cross.n, 1)
        cxy = self._cross.cross / n - np.outer(image.mean, text.mean)
        u, _, vt = np.linalg.svd(cxy)
        self.rotation_ = (u @ vt).astype(np.float32)
        self.mean_image_ = image.mean.astype(np.float32)
        self.mean_text_ = text.mean.astype(np.float32)

    def _kernel_parts(self, modality: str) -> dict[str, Any]:
        if modality == "image":
            return {"shift": self.mean_image_, "matrix": self.rotation_}
        return {"shift": self.mean_text_}


__all__ = [
    "AblateDims",
    "Centering",
    "Identity",
    "MeanShift",
    "Procrustes",
    "Standardize",
    "TargetGap",
    "Whiten",
]
