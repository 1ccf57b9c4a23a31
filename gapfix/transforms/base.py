"""Base class of gap-closing transforms (scikit-learn estimator style).

Every transform maps an embedding of one modality through a per-modality affine map
``y = ((x - shift) * scale) @ matrix`` (each part optional), then renormalises to unit length.
Fitting is streaming: ``partial_fit`` accumulates float64 moments (and a bounded reservoir
sample used for fit statistics and methods that need rows); ``fit`` is reset + one pass.
"""

from __future__ import annotations

import functools
import inspect
import threading
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from gapfix.blocks import iter_blocks, normalized
from gapfix.errors import InputError, NotFittedError
from gapfix.kernels import rows_affine
from gapfix.transforms.moments import (
    FIT_BLOCK_ROWS,
    CrossMoments,
    FixedRows,
    Moments,
    Reservoir,
    SharedFit,
)
from gapfix.validation import check_embeddings, check_modality, check_paired, check_same_dim

APPLY_BLOCK_ROWS = 65_536
MATMUL_BLOCK_ROWS = 32_768
SAMPLE_ROWS = 20_000


@dataclass(frozen=True)
class Kernel:
    """Precomputed per-modality map: ``y = x @ matrix + bias`` or ``y = x * scale + bias``."""

    matrix: np.ndarray | None = None
    scale: np.ndarray | None = None
    bias: np.ndarray | None = None

    @classmethod
    def affine(
        cls,
        shift: np.ndarray | None = None,
        scale: np.ndarray | None = None,
        matrix: np.ndarray | None = None,
        offset: np.ndarray | None = None,
    ) -> Kernel:
        """Fold ``((x - shift) * scale) @ matrix + offset`` into one multiply and one add
        (``offset`` only with a matrix)."""
        f32 = np.float32
        if matrix is not None:
            m = matrix.astype(np.float64)
            if scale is not None:
                m = scale.astype(np.float64)[:, None] * m
            bias = None if offset is None else offset.astype(np.float64)
            if shift is not None:
                bias = -(shift.astype(np.float64) @ m) + (0.0 if bias is None else bias)
            return cls(
                matrix=np.ascontiguousarray(m, f32), bias=None if bias is None else bias.astype(f32)
            )
        if scale is not None:
            bias = None if shift is None else -(shift.astype(np.float64) * scale)
            return cls(scale=scale.astype(f32), bias=None if bias is None else bias.astype(f32))
        return cls(bias=None if shift is None else (-shift).astype(f32))

    def apply(self, x: np.ndarray, out: np.ndarray, renormalize: bool = True) -> None:
        """Write the (renormalised) map of the unit rows ``x / ||x||`` into ``out`` (float32).

        Every map acts on directions, as the store and the statistics see embeddings, so rows
        of any length give the same result as their unit rows. Matrix kernels run BLAS on
        blocks, then a fused bias + renormalise pass while the block is in cache; shift/scale
        kernels are one fused pass (see gapfix.kernels).
        """
        if self.matrix is None:
            rows_affine(x, out, self.scale, self.bias, renormalize, unit_input=True)
            return
        for sl in iter_blocks(x.shape[0], MATMUL_BLOCK_ROWS):
            block, dest = np.asarray(x[sl], dtype=np.float32), out[sl]
            norms = np.sqrt(np.einsum("ij,ij->i", block, block, dtype=np.float32))
            np.matmul(block, self.matrix, out=dest)
            rows_affine(dest, dest, None, self.bias, renormalize, norms=norms)


ROLES = (None, "query", "corpus")


def _is_torch(z: Any) -> bool:
    return type(z).__module__.startswith("torch")


def _tf32_possible(torch: Any, device: Any) -> bool:
    """True when a float32 CUDA matmul may run in TF32 (10-bit mantissa) on ``device``."""
    matmul = torch.backends.cuda.matmul
    return device.type == "cuda" and (
        matmul.allow_tf32
        or torch.get_float32_matmul_precision() != "highest"
        or getattr(matmul, "fp32_precision", "none") == "tf32"
    )


@functools.cache
def param_defaults(cls: type) -> dict[str, Any]:
    """A transform class's constructor parameters and their defaults (read once per class)."""
    sig = inspect.signature(cls.__init__)
    return {p: sig.parameters[p].default for p in sig.parameters if p != "self"}


class GapTransform:
    """Base class: parameters in ``__init__``, fitted attributes end in ``_``, ``fit`` returns self."""

    method: ClassVar[str] = ""
    requires_pairs: ClassVar[bool] = False
    needs_outer: ClassVar[bool] = False
    fitted_arrays: ClassVar[tuple[str, ...]] = ()
    # closed ranges of numeric constructor parameters, checked before any fitting
    param_bounds: ClassVar[tuple[tuple[str, float, float], ...]] = ()

    def __init__(self, renormalize: bool = True) -> None:
        self.renormalize = renormalize

    # ------------------------------------------------------------------ parameters
    @classmethod
    def param_names(cls) -> list[str]:
        return list(param_defaults(cls))

    def get_params(self) -> dict[str, Any]:
        """Constructor parameters and their values (JSON-safe)."""
        return {name: getattr(self, name) for name in self.param_names()}

    def validate_params(self) -> None:
        """Refuse a parameter outside its range (NaN and inf included) with an InputError."""
        for name, lo, hi in self.param_bounds:
            value = getattr(self, name)
            try:
                ok = lo <= float(value) <= hi  # False for NaN
            except (TypeError, ValueError):
                ok = False
            if not ok:
                raise InputError(
                    f"parameter {name!r} of {self.method!r} must be in [{lo:g}, {hi:g}], "
                    f"got {value!r}",
                    param=name,
                )

    @property
    def paired(self) -> bool:
        """Whether fitting needs row-i pairs (image row i <-> text row i)."""
        return self.requires_pairs

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"

    # ------------------------------------------------------------------ fitting
    def fit(self, image: Any, text: Any, labels: Any = None) -> GapTransform:
        """Fit on calibration embeddings (rows paired when both have the same count)."""
        self.validate_params()
        image = check_embeddings(image, "image", min_rows=2)
        text = check_embeddings(text, "text", min_rows=2)
        check_same_dim(image, text)
        if self.requires_pairs:
            check_paired(image, text, f"method {self.method!r}")
        self._reset(image.shape[1])
        self._accumulate(image, text)
        self._finish()
        return self

    def fit_shared(self, shared: SharedFit) -> GapTransform:
        """Fit from moments accumulated once and shared with other transforms (read only).

        ``auto`` computes each fold's moments (covariances, cross products, rows) once and
        fits every candidate from them, instead of one pass over the rows per candidate.
        """
        self.validate_params()
        if self.requires_pairs and shared.cross is None:
            raise InputError(f"method {self.method!r} needs paired rows", param="text")
        self._dim = shared.image.dim
        self._moments = {"image": shared.image, "text": shared.text}
        self._cross = shared.cross
        self._samples = {
            m: FixedRows(rows, SAMPLE_ROWS)
            for m, rows in (("image", shared.image_rows), ("text", shared.text_rows))
        }
        self._kernels = {}
        self._torch_cache = {}
        self._lock = threading.Lock()
        self._finish(gap_after=False)
        return self

    def partial_fit(self, image: Any = None, text: Any = None) -> GapTransform:
        """Accumulate one shard (either modality may be None); fitting completes lazily.

        Streams of pairs must pass matching image and text blocks together.
        """
        self.validate_params()
        blocks = {}
        for name, x in (("image", image), ("text", text)):
            if x is not None:
                blocks[name] = check_embeddings(x, name, min_rows=1)
        if not blocks:
            raise InputError("partial_fit needs image and/or text rows", param="image")
        dim = next(iter(blocks.values())).shape[1]
        if "image" in blocks and "text" in blocks:
            check_same_dim(blocks["image"], blocks["text"])
        if getattr(self, "_moments", None) is None:
            self._reset(dim)
        elif dim != self._dim:
            raise InputError(
                f"shard dimension {dim} differs from earlier shards ({self._dim})", "image"
            )
        if self.requires_pairs:
            if "image" not in blocks or "text" not in blocks:
                raise InputError(
                    f"method {self.method!r} needs paired shards (image and text)", "text"
                )
            check_paired(blocks["image"], blocks["text"], f"method {self.method!r}")
        self._accumulate(blocks.get("image"), blocks.get("text"))
        self._stale = True
        return self

    def finalize(self) -> GapTransform:
        """Finish a streaming fit (also done automatically before the first transform)."""
        if getattr(self, "_moments", None) is None:
            raise NotFittedError(f"{type(self).__name__} has not seen any data")
        self._finish()
        return self

    def _reset(self, dim: int) -> None:
        self._dim = dim
        self._moments = {m: Moments(dim, outer=self.needs_outer) for m in ("image", "text")}
        self._cross = CrossMoments(dim) if self.requires_pairs else None
        self._samples = {
            m: Reservoir(SAMPLE_ROWS, dim, seed=i) for i, m in enumerate(("image", "text"))
        }
        self._stale = True
        self._kernels: dict[str, Kernel] = {}
        self._torch_cache: dict[Any, Any] = {}
        self._lock = threading.Lock()

    def _accumulate(self, image: np.ndarray | None, text: np.ndarray | None) -> None:
        """Add the unit rows of each modality to its moments and sample, a block at a time."""
        for name, x in (("image", image), ("text", text)):
            if x is None:
                continue
            for sl in iter_blocks(x.shape[0], FIT_BLOCK_ROWS):
                block = normalized(x[sl])
                self._moments[name].update(block)
                res = self._samples[name]
                rows, slots = res.slots(block.shape[0])
                res.put(block, rows, slots)
        if self._cross is not None and image is not None and text is not None:
            for sl in iter_blocks(image.shape[0], FIT_BLOCK_ROWS):
                self._cross.update(normalized(image[sl]), normalized(text[sl]))

    def _finish(self, gap_after: bool = True) -> None:
        """Set the fitted attributes; ``gap_after=False`` skips mapping the calibration sample
        for the fit statistics (cross-validation scores its own held-out rows instead)."""
        with self._lock:
            mi, mt = self._moments["image"], self._moments["text"]
            if mi.n < 1 or mt.n < 1:
                raise InputError("fitting needs rows of both modalities", param="text")
            self._fit_moments(mi, mt)
            self.dim_ = self._dim
            self._kernels = {}
            self._torch_cache = {}
            self._stale = False
            self.fit_stats_ = {
                "n_image": int(mi.n),
                "n_text": int(mt.n),
                "dim": int(self._dim),
                "gap_before": float(np.linalg.norm(mi.mean - mt.mean)),
            }
            if gap_after:
                xs, ys = self.calibration_sample()
                after = self._mean_out(xs, "image") - self._mean_out(ys, "text")
                self.fit_stats_["gap_after"] = float(np.linalg.norm(after))
                self.fit_stats_["gap_after_rows"] = [int(xs.shape[0]), int(ys.shape[0])]

    def calibration_sample(self) -> tuple[np.ndarray, np.ndarray]:
        """The reservoir samples of image and text rows kept during fitting."""
        return self._samples["image"].sample(), self._samples["text"].sample()

    def _mean_out(self, x: np.ndarray, modality: str) -> np.ndarray:
        out = np.empty_like(x)
        self._apply_numpy(x, modality, out)
        return out.mean(axis=0, dtype=np.float64)

    def _fit_moments(self, image: Moments, text: Moments) -> None:
        """Set the fitted attributes from the accumulated moments (subclasses)."""

    def _kernel_parts(self, modality: str) -> dict[str, np.ndarray | None]:
        """Return ``shift``/``scale``/``matrix`` (and ``offset``) for ``modality`` (subclasses)."""
        return {}

    # ------------------------------------------------------------------ applying
    def _check_fitted(self) -> None:
        if getattr(self, "_stale", False) and getattr(self, "_moments", None) is not None:
            self._finish()
        if not hasattr(self, "dim_"):
            raise NotFittedError(
                f"{type(self).__name__} is not fitted yet: call fit(image=..., text=...) first"
            )

    def kernel(self, modality: str, role: str | None = None) -> Kernel:
        """The precomputed affine kernel for ``modality``.

        ``role="query"`` on text selects the query-text map where the method learned one
        (centering with ``query_text_mean``); every other combination is the modality's map.
        """
        if role not in ROLES:
            raise InputError(f"role must be 'query' or 'corpus', got {role!r}", param="role")
        key = "text:query" if modality == "text" and role == "query" else modality
        k = self._kernels.get(key)
        if k is None:
            parts = self._kernel_parts(key)
            k = Kernel.affine(
                parts.get("shift"), parts.get("scale"), parts.get("matrix"), parts.get("offset")
            )
            self._kernels[key] = k
        return k

    def transform(
        self, z: Any, modality: str = "image", out: Any = None, role: str | None = None
    ) -> Any:
        """Correct embeddings of one modality; numpy in -> numpy out, torch in -> torch out.

        The input is never modified. Output is float32 and unit length unless
        ``renormalize=False``. Large inputs (memmaps too) are processed in blocks.
        """
        self._check_fitted()
        check_modality(modality)
        if _is_torch(z):
            return self._transform_torch(z, modality, role)
        if not hasattr(z, "ndim"):
            z = np.asarray(z, dtype=np.float32)
        if z.ndim != 2:
            raise InputError(f"expected a 2-D array, got shape {tuple(z.shape)}", param="vectors")
        if z.shape[1] != self.dim_:
            raise InputError(
                f"vectors have dimension {z.shape[1]} but the transform was fitted on dimension "
                f"{self.dim_}",
                param="vectors",
            )
        if out is None:
            out = np.empty(z.shape, dtype=np.float32)
        elif out.shape != z.shape or out.dtype != np.float32:
            raise InputError("out must be a float32 array of the input's shape", param="out")
        self._apply_numpy(z, modality, out, role)
        return out

    def _apply_numpy(
        self, z: np.ndarray, modality: str, out: np.ndarray, role: str | None = None
    ) -> None:
        kern = self.kernel(modality, role)
        if z.dtype == np.float32 and z.flags.c_contiguous:
            kern.apply(z, out, self.renormalize)
            return
        for sl in iter_blocks(z.shape[0], APPLY_BLOCK_ROWS):  # other dtypes: convert per block
            kern.apply(np.ascontiguousarray(z[sl], dtype=np.float32), out[sl], self.renormalize)

    def _transform_torch(self, z: Any, modality: str, role: str | None) -> Any:
        import torch

        if z.ndim != 2 or z.shape[1] != self.dim_:
            raise InputError(
                f"vectors have shape {tuple(z.shape)}; the transform expects (n, {self.dim_})",
                param="vectors",
            )
        key = (modality, role, z.device)
        cached = self._torch_cache.get(key)
        if cached is None:
            kern = self.kernel(modality, role)
            cached = tuple(
                None if a is None else torch.from_numpy(a).to(z.device)
                for a in (kern.matrix, kern.scale, kern.bias)
            )
            self._torch_cache[key] = cached
        matrix, scale, bias = cached
        # Exact float32 whatever the caller set up: autocast off (it would run the matmul in
        # fp16/bf16), and float64 where CUDA matmuls may round inputs to TF32.
        with torch.inference_mode(), torch.autocast(z.device.type, enabled=False):
            y = z.to(torch.float32)
            # unit rows first, as on the numpy path (a new buffer: the input is never modified)
            y = y / torch.linalg.vector_norm(y, dim=1, keepdim=True).clamp_min_(1e-12)
            own = True
            if matrix is not None:
                if _tf32_possible(torch, z.device):
                    y64, m64 = y.double(), matrix.double()
                    y64 = y64 @ m64 if bias is None else torch.addmm(bias.double(), y64, m64)
                    y = y64.to(torch.float32)
                else:
                    y = y @ matrix if bias is None else torch.addmm(bias, y, matrix)
                own = True
            else:
                if scale is not None:
                    y, own = (y.mul_(scale) if own else y * scale), True
                if bias is not None:
                    y, own = (y.add_(bias) if own else y + bias), True
            if not own:
                y = y.clone()
            if self.renormalize:
                norms = torch.linalg.vector_norm(y, dim=1, keepdim=True)
                y.div_(norms.clamp_min_(1e-12))
        return y

    # ------------------------------------------------------------------ persistence
    def fitted_state(self) -> dict[str, np.ndarray]:
        """The fitted arrays (what an artifact stores)."""
        self._check_fitted()
        state = {}
        for name in self.fitted_arrays:
            value = getattr(self, name, None)
            if value is not None:
                state[name] = np.ascontiguousarray(value)
        return state

    def load_state(
        self, arrays: dict[str, np.ndarray], dim: int, fit_stats: dict[str, Any]
    ) -> None:
        """Restore fitted arrays read from an artifact."""
        for name in self.fitted_arrays:
            setattr(self, name, arrays.get(name))
        self.dim_ = dim
        self.fit_stats_ = fit_stats
        self._kernels = {}
        self._torch_cache = {}
        self._stale = False
        self._lock = threading.Lock()

    def save(self, path: Any, model_id: str | None = None) -> None:
        """Write one artifact file (safetensors arrays + JSON metadata)."""
        from gapfix.transforms.artifact import save_transform

        save_transform(self, path, model_id=model_id)

    def to_summary(self) -> dict[str, Any]:
        """A JSON-safe description: method, params, fit statistics."""
        self._check_fitted()
        return {
            "method": self.method,
            "params": self.get_params(),
            "dim": int(self.dim_),
            "fit_stats": getattr(self, "fit_stats_", {}),
        }
