"""Shared fixtures: real CLIP embeddings (COCO, ViT-B/16) and synthetic gapped embeddings."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from milvus_server import milvus_uri  # noqa: F401  (session fixture: a Milvus Lite server)

FIXTURES = Path(__file__).parent / "fixtures"
COCO = FIXTURES / "coco_val2017_clip_vitb16_dev250.npz"
CONVIRT = FIXTURES / "convirt_dev500.npz"


@pytest.fixture(scope="session")
def coco() -> dict[str, np.ndarray]:
    """250 real COCO image/caption pairs from CLIP ViT-B/16 plus the random-init control."""
    with np.load(COCO) as data:
        return {k: data[k] for k in data.files}


@pytest.fixture(scope="session")
def convirt() -> dict[str, np.ndarray]:
    """500 real medical image/report pairs from ConVIRT (cross-modal R@1 near chance) plus its
    random-init control; provenance in ../shared/data/README.md (MIT, Weixin-Liang/Modality-Gap)."""
    with np.load(CONVIRT) as data:
        return {k: data[k] for k in data.files}


@pytest.fixture(scope="module")
def one_torch_thread():
    """The tiny model's ops are too small for threads; with a decode worker on a 2-core box
    extra torch threads only wait on each other (keeps the suite fast, results unchanged)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> str:
    """A checkpoint file of the tiny random-init CLIP (written, then loaded back by tests)."""
    from gapfix.jobs import testing as T

    return T.write_tiny_checkpoint(tmp_path_factory.mktemp("model") / "tiny.pt")


@pytest.fixture(scope="module")
def encoder(ckpt):
    """The tiny CLIP loaded from ``ckpt`` through the real open_clip loading path."""
    from gapfix.encoders import load_encoder

    return load_encoder("gapfix-tiny", ckpt)


def make_gapped(n: int, d: int = 64, gap: float = 0.8, seed: int = 0, noise: float = 0.5):
    """Synthetic paired embeddings in two offset cones (a controllable modality gap)."""
    rng = np.random.default_rng(seed)
    content = rng.standard_normal((n, d)).astype(np.float32)
    offset = np.zeros(d, dtype=np.float32)
    offset[0] = 1.0
    img = content + noise * rng.standard_normal((n, d)).astype(np.float32) + gap * 3 * offset
    txt = content + noise * rng.standard_normal((n, d)).astype(np.float32) - gap * 3 * offset
    img /= np.linalg.norm(img, axis=1, keepdims=True)
    txt /= np.linalg.norm(txt, axis=1, keepdims=True)
    return img, txt


@pytest.fixture
def gapped() -> tuple[np.ndarray, np.ndarray]:
    return make_gapped(400)


@pytest.fixture(autouse=True)
def _restore_gapfix_environment():
    """`gapfix serve` run in-process (CliRunner) writes its flags to ``GAPFIX_*`` variables for
    the app factory; put the environment back after every test so none leaks into the next
    (a leaked ``GAPFIX_STORE`` made every later server start refuse its store)."""
    before = {k: v for k, v in os.environ.items() if k.startswith("GAPFIX_")}
    yield
    for key in [k for k in os.environ if k.startswith("GAPFIX_") and k not in before]:
        del os.environ[key]
    os.environ.update(before)
