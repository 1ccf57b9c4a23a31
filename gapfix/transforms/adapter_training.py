"""Training loop of the contrastive adapter: per-modality affine maps learned with torch.

Each modality gets ``f(u) = n((u - shift) @ matrix)`` on unit rows ``u`` (the same form every
apply path runs). The loss, on the frozen calibration pairs:

- symmetric InfoNCE between paired images and texts (or, with labels, image -> class prompt);
- geodesic multi-modal mixup (Oh et al., NeurIPS 2023): ``m_j = slerp(f(x_j), g(y_j), lam)``
  with ``lam ~ Beta(alpha, alpha)`` lies between the modalities on the sphere; the mixtures of
  *other* pairs are extra hard negatives for each query;
- intra-modality uniformity (Wang & Isola; AlignCLIP's separation of same-modality rows):
  ``log mean_{i != j} exp(-2 ||f_i - f_j||^2)`` per modality;
- an L2 pull of every parameter toward its initial value;

and stops early on the symmetric InfoNCE of a held-out inner split, keeping the best epoch.
All randomness (splits, batches, mixup weights) comes from one numpy generator seeded by
``seed``, so a fit is deterministic on a given device.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

_THREADS_LOCK = threading.Lock()


@dataclass(frozen=True)
class AdapterConfig:
    """Hyper-parameters of one training run (see ContrastiveAdapter for their meaning)."""

    epochs: int
    lr: float
    temperature: float
    mix_weight: float
    mix_alpha: float
    uniform_weight: float
    pull: float
    val_fraction: float
    patience: int
    batch_size: int
    seed: int
    device: str
    threads: int


@dataclass
class AdapterResult:
    """Learned maps (float32) and what training did."""

    shift_image: np.ndarray
    shift_text: np.ndarray
    matrix_image: np.ndarray
    matrix_text: np.ndarray
    stats: dict[str, Any]


def _finite(value: float) -> float | None:
    """``value``, or None when it is NaN/inf (artifact metadata and responses are JSON)."""
    return float(value) if math.isfinite(value) else None


def resolve_device(name: str) -> Any:
    """``cpu``, ``cuda``/``cuda:N``, or ``auto`` (CUDA when available) as a torch.device."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _slerp(a: Any, b: Any, lam: Any) -> Any:
    """Spherical interpolation between unit rows ``a`` and ``b`` (weight ``lam`` on ``b``)."""
    import torch

    cos = (a * b).sum(dim=1, keepdim=True).clamp(-1 + 1e-6, 1 - 1e-6)
    theta = torch.acos(cos)
    sin = torch.sin(theta)
    return (torch.sin((1 - lam) * theta) * a + torch.sin(lam * theta) * b) / sin


def _uniformity(z: Any) -> Any:
    """Wang & Isola's uniformity ``log mean_{i != j} exp(-2 ||z_i - z_j||^2)`` of unit rows."""
    import torch

    n = z.shape[0]
    sq = (2 - 2 * (z @ z.T)).clamp_min(0)
    off = ~torch.eye(n, dtype=torch.bool, device=z.device)
    return torch.logsumexp(-2 * sq[off], dim=0) - math.log(max(n * (n - 1), 1))


def _mix_loss(q: Any, pos: Any, mixed: Any, neg_ok: Any, tau: float) -> Any:
    """InfoNCE of query rows ``q`` against their positive and the other pairs' mixtures."""
    import torch

    s_pos = (q * pos).sum(dim=1, keepdim=True) / tau
    s_mix = (q @ mixed.T / tau).masked_fill(~neg_ok, float("-inf"))
    logits = torch.cat([s_pos, s_mix], dim=1)
    return (torch.logsumexp(logits, dim=1) - s_pos[:, 0]).mean()


class _Maps:
    """The trainable parameters: shift and matrix per modality, and their initial values."""

    def __init__(self, torch: Any, init: tuple[np.ndarray, ...], device: Any) -> None:
        def tensor(a: np.ndarray, grad: bool) -> Any:
            return torch.tensor(a, dtype=torch.float32, device=device, requires_grad=grad)

        # order: shift_image, shift_text, matrix_image, matrix_text
        self.init = [tensor(a, False) for a in init]
        self.params = [tensor(a, True) for a in init]

    def image(self, u: Any) -> Any:
        import torch.nn.functional as F

        c, w = self.params[0], self.params[2]
        return F.normalize((u - c) @ w, dim=1)

    def text(self, u: Any) -> Any:
        import torch.nn.functional as F

        c, w = self.params[1], self.params[3]
        return F.normalize((u - c) @ w, dim=1)

    def pull(self) -> Any:
        return sum(((p - p0) ** 2).sum() for p, p0 in zip(self.params, self.init, strict=True))

    def snapshot(self) -> list[np.ndarray]:
        return [p.detach().cpu().numpy().astype(np.float32).copy() for p in self.params]


def inner_split(n: int, val_fraction: float, rng: np.random.Generator) -> tuple[Any, Any]:
    """Shuffle ``range(n)`` into (train, validation) index arrays, each non-empty."""
    perm = rng.permutation(n)
    n_val = min(max(1, round(val_fraction * n)), n - 2)
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def train_adapter(
    image: np.ndarray,
    text: np.ndarray,
    labels: np.ndarray | None,
    init: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    cfg: AdapterConfig,
) -> AdapterResult:
    """Learn the two affine maps on unit rows ``image``/``text``, starting from ``init``
    (shift_image, shift_text, matrix_image, matrix_text).

    Without ``labels`` row i of image pairs with row i of text; with them, image row i pairs
    with class prompt ``text[labels[i]]`` and every other class prompt is a negative.
    """
    import torch

    device = resolve_device(cfg.device)
    if cfg.threads <= 0:  # leave torch's process-wide setting as it is
        return _train(torch, image, text, labels, init, cfg, device)
    with _THREADS_LOCK:  # process-wide: set for this run, restored after
        before = torch.get_num_threads()
        torch.set_num_threads(cfg.threads)
        try:
            return _train(torch, image, text, labels, init, cfg, device)
        finally:
            torch.set_num_threads(before)


def _train(
    torch: Any,
    image: np.ndarray,
    text: np.ndarray,
    labels: np.ndarray | None,
    init: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    cfg: AdapterConfig,
    device: Any,
) -> AdapterResult:
    import torch.nn.functional as F

    t0 = time.perf_counter()
    rng = np.random.default_rng(cfg.seed)
    n = image.shape[0]
    train_idx, val_idx = inner_split(n, cfg.val_fraction, rng)
    x = torch.tensor(image, dtype=torch.float32, device=device)
    y = torch.tensor(text, dtype=torch.float32, device=device)
    lab = None if labels is None else torch.tensor(labels, dtype=torch.long, device=device)
    maps = _Maps(torch, init, device)
    opt = torch.optim.Adam(maps.params, lr=cfg.lr)
    tau = float(cfg.temperature)

    def objective(idx_np: np.ndarray, lam_np: np.ndarray) -> Any:
        """InfoNCE + mixup hard negatives + uniformity of the rows ``idx_np`` (no pull)."""
        idx = torch.as_tensor(idx_np, device=device)
        fx = maps.image(x[idx])
        if lab is None:
            gy = maps.text(y[idx])
            logits = fx @ gy.T / tau
            target = torch.arange(len(idx), device=device)
            loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
            same = torch.eye(len(idx), dtype=torch.bool, device=device)
            pos = gy
        else:
            classes = maps.text(y)
            loss = F.cross_entropy(fx @ classes.T / tau, lab[idx])
            same = lab[idx][:, None] == lab[idx][None, :]
            pos, gy = classes[lab[idx]], classes
        if cfg.mix_weight > 0:
            mixed = _slerp(fx, pos, torch.tensor(lam_np, dtype=torch.float32, device=device))
            mix = _mix_loss(fx, pos, mixed, ~same, tau)
            if lab is None:
                mix = (mix + _mix_loss(pos, fx, mixed, ~same, tau)) / 2
            loss = loss + cfg.mix_weight * mix
        if cfg.uniform_weight > 0:
            loss = loss + cfg.uniform_weight * (_uniformity(fx) + _uniformity(gy)) / 2
        return loss

    def draw_lam(count: int) -> np.ndarray:
        return rng.beta(cfg.mix_alpha, cfg.mix_alpha, size=(count, 1))

    val_lam = draw_lam(len(val_idx))  # fixed, so validation losses compare across epochs

    def val_loss() -> float:
        with torch.no_grad():
            return float(objective(val_idx, val_lam))

    def step(batch: np.ndarray) -> float:
        loss = objective(batch, draw_lam(len(batch)))
        if cfg.pull > 0:
            loss = loss + cfg.pull * maps.pull()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return float(loss.detach())

    best, best_epoch, best_state = val_loss(), 0, maps.snapshot()
    first_val, epochs_run, last_train = best, 0, float("nan")
    bs = max(2, int(cfg.batch_size))
    for epoch in range(1, int(cfg.epochs) + 1):
        order = train_idx[rng.permutation(len(train_idx))]
        for start in range(0, len(order), bs):
            batch = order[start : start + bs]
            if len(batch) >= 2:
                last_train = step(batch)
        epochs_run = epoch
        current = val_loss()
        if not math.isfinite(current):
            break
        if current < best - 1e-6:
            best, best_epoch, best_state = current, epoch, maps.snapshot()
        elif epoch - best_epoch >= cfg.patience:
            break
    ci, ct, wi, wt = best_state
    stats = {
        "mode": "labels" if labels is not None else "pairs",
        "train_rows": len(train_idx),
        "val_rows": len(val_idx),
        "epochs_run": int(epochs_run),
        "best_epoch": int(best_epoch),
        "val_loss_initial": _finite(first_val),
        "val_loss_best": _finite(best),
        "train_loss_last": _finite(last_train),  # None when training diverged
        "device": str(device),
        "train_seconds": round(time.perf_counter() - t0, 3),
    }
    return AdapterResult(ci, ct, wi, wt, stats)
