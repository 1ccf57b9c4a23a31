"""`contrastive-adapter`: per-modality affine maps learned contrastively on calibration pairs.

A post-hoc version of what the seed papers do in training (InfoNCE, geodesic multi-modal
mixup hard negatives, intra-modality uniformity), on frozen embeddings. The result is an
ordinary artifact: per modality ``n((u - shift) @ matrix)``, so every apply path (numba, BLAS,
torch, the store and the service) runs it unchanged. The training loop lives in
``gapfix.transforms.adapter_training``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from gapfix.blocks import normalized
from gapfix.errors import InputError
from gapfix.transforms.adapter_training import AdapterConfig, train_adapter
from gapfix.transforms.base import GapTransform
from gapfix.transforms.moments import Moments, SharedFit
from gapfix.validation import check_embeddings, check_labels, check_paired, check_same_dim

INITS = ("identity", "centering", "whiten")
DEVICES = ("cpu", "cuda", "auto")
MIN_PAIRS = 8


class ContrastiveAdapter(GapTransform):
    """Per-modality linear maps + shift trained with InfoNCE on the calibration pairs.

    Parameters: ``init`` (``centering``: start at per-modality centering, the closed-form
    winner on CLIP; ``identity``: start at no change), ``epochs`` (maximum), ``lr`` (Adam),
    ``temperature`` of the contrastive losses, ``mix_weight``/``mix_alpha`` (geodesic mixup
    hard negatives, lam ~ Beta(alpha, alpha)), ``uniform_weight`` (intra-modality
    uniformity), ``pull`` (L2 pull of every parameter toward its initial value),
    ``val_fraction``/``patience`` (early stopping on an inner split), ``batch_size``,
    ``seed``, ``device`` (``cpu``, ``cuda``, ``auto``) and ``threads`` (torch's process-wide CPU
    thread count while training, restored after; 0 leaves it as it is).

    ``fit(image, text)`` trains on paired rows. ``fit(image, class_text, labels=L)`` trains on
    (image, class prompt) pairs instead: calibration with labelled images, which the label-free
    methods never see.
    """

    method = "contrastive-adapter"
    fitted_arrays = ("shift_image_", "shift_text_", "matrix_image_", "matrix_text_")
    param_bounds = (
        ("init_shrinkage", 0.0, 1.0),
        ("epochs", 1, 100_000),
        ("lr", 1e-7, 1.0),
        ("temperature", 1e-3, 10.0),
        ("mix_weight", 0.0, 100.0),
        ("mix_alpha", 1e-3, 1000.0),
        ("uniform_weight", 0.0, 100.0),
        ("pull", 0.0, 1e6),
        ("val_fraction", 0.05, 0.5),
        ("patience", 1, 100_000),
        ("batch_size", 2, 10_000_000),
        ("seed", 0, 2**32 - 1),
        ("threads", 0, 1024),
    )

    def __init__(
        self,
        init: str = "centering",
        init_shrinkage: float = 0.9,
        epochs: int = 100,
        lr: float = 1e-3,
        temperature: float = 0.05,
        mix_weight: float = 0.5,
        mix_alpha: float = 0.5,
        uniform_weight: float = 0.1,
        pull: float = 1.0,
        val_fraction: float = 0.2,
        patience: int = 10,
        batch_size: int = 512,
        seed: int = 0,
        device: str = "cpu",
        threads: int = 1,
        renormalize: bool = True,
    ) -> None:
        super().__init__(renormalize)
        self.init = init
        self.init_shrinkage = init_shrinkage
        self.epochs = epochs
        self.lr = lr
        self.temperature = temperature
        self.mix_weight = mix_weight
        self.mix_alpha = mix_alpha
        self.uniform_weight = uniform_weight
        self.pull = pull
        self.val_fraction = val_fraction
        self.patience = patience
        self.batch_size = batch_size
        self.seed = seed
        self.device = device
        self.threads = threads

    @property
    def paired(self) -> bool:
        return True

    def validate_params(self) -> None:
        """Ranges, the initial map and the device name, before any data is read."""
        super().validate_params()
        if self.init not in INITS:
            raise InputError(
                f"parameter 'init' of {self.method!r} must be one of {', '.join(INITS)}, "
                f"got {self.init!r}",
                param="init",
            )
        dev = str(self.device)
        if dev not in DEVICES and not (dev.startswith("cuda:") and dev[5:].isdigit()):
            raise InputError(
                f"parameter 'device' of {self.method!r} must be cpu, cuda, cuda:N or auto, "
                f"got {self.device!r}",
                param="device",
            )
        if dev.startswith("cuda"):
            import torch

            if not torch.cuda.is_available():
                raise InputError(f"device {dev!r} asked for, but CUDA is not available", "device")

    def partial_fit(self, image: Any = None, text: Any = None) -> GapTransform:
        raise InputError(
            "contrastive-adapter trains on calibration pairs held in memory; fit it on a "
            "sample with --image/--text (or stream-fit a closed-form method)",
            param="method",
        )

    def fit(self, image: Any, text: Any, labels: Any = None) -> ContrastiveAdapter:
        """Train on paired rows, or on (image, class prompt) pairs when ``labels`` is given."""
        self.validate_params()
        image = check_embeddings(image, "image", min_rows=2)
        text = check_embeddings(text, "text", min_rows=2)
        check_same_dim(image, text)
        lab = None
        if labels is None:
            check_paired(image, text, f"method {self.method!r} without labels")
        else:
            lab = check_labels(labels, image.shape[0], text.shape[0])
        if image.shape[0] < MIN_PAIRS:
            raise InputError(
                f"{self.method} needs at least {MIN_PAIRS} calibration pairs to train and "
                f"validate, got {image.shape[0]}",
                param="image",
            )
        self._train_rows = (normalized(image), normalized(text), lab)
        try:
            self._reset(image.shape[1])
            self._accumulate(image, text)
            self._finish()
        finally:
            self._train_rows = None
        self.fit_stats_["adapter"] = self.train_stats_
        return self

    def fit_shared(self, shared: SharedFit) -> ContrastiveAdapter:
        """Train on a fold's own pairs: a learned map needs the rows, not only the moments
        that closed-form methods share (`gapfix fit`'s out-of-fold report, `auto`)."""
        if shared.cross is None:
            raise InputError(f"method {self.method!r} needs paired rows", param="text")
        return self.fit(shared.image_rows, shared.text_rows)

    def _config(self) -> AdapterConfig:
        return AdapterConfig(
            epochs=int(self.epochs),
            lr=float(self.lr),
            temperature=float(self.temperature),
            mix_weight=float(self.mix_weight),
            mix_alpha=float(self.mix_alpha),
            uniform_weight=float(self.uniform_weight),
            pull=float(self.pull),
            val_fraction=float(self.val_fraction),
            patience=int(self.patience),
            batch_size=int(self.batch_size),
            seed=int(self.seed),
            device=str(self.device),
            threads=int(self.threads),
        )

    def _fit_moments(self, image: Moments, text: Moments) -> None:
        x, y, lab = self._train_rows
        dim = image.dim
        eye = np.eye(dim, dtype=np.float32)
        if self.init == "identity":
            zero = np.zeros(dim, dtype=np.float32)
            init = (zero, zero.copy(), eye, eye.copy())
        elif self.init == "centering":
            init = (image.mean.astype(np.float32), text.mean.astype(np.float32), eye, eye.copy())
        else:  # strongly shrunk whitening, the closed-form winner on the COCO dev file
            from gapfix.transforms.methods import Whiten

            w = Whiten(shrinkage=float(self.init_shrinkage)).fit(x, y)
            init = (w.mean_image_, w.mean_text_, w.whitener_image_, w.whitener_text_)
        result = train_adapter(x, y, lab, init, self._config())
        for name, value in (
            ("shift_image_", result.shift_image),
            ("shift_text_", result.shift_text),
            ("matrix_image_", result.matrix_image),
            ("matrix_text_", result.matrix_text),
        ):
            if not np.isfinite(value).all():
                raise InputError(
                    f"{self.method} training diverged ({name} is not finite); lower 'lr'",
                    param="lr",
                )
            setattr(self, name, value)
        self.train_stats_ = result.stats

    def _kernel_parts(self, modality: str) -> dict[str, Any]:
        if modality == "image":
            return {"shift": self.shift_image_, "matrix": self.matrix_image_}
        return {"shift": self.shift_text_, "matrix": self.matrix_text_}


__all__ = ["MIN_PAIRS", "ContrastiveAdapter"]
