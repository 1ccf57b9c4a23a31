"""Test helpers: a tiny open_clip architecture that builds and runs in milliseconds on CPU."""

from __future__ import annotations

import copy
import json

from gapfix.encoders.configs import CONFIG_DIR, register_config, register_model_configs

TINY_MODEL = "gapfix-tiny"


def tiny_config() -> dict:
    """The packaged ``gapfix-tiny`` config (ViT 2x64 on 32 px images, text 2x64, 16 tokens)."""
    return json.loads((CONFIG_DIR / f"{TINY_MODEL}.json").read_text())


def register_tiny_model(name: str = TINY_MODEL, embed_dim: int | None = None) -> str:
    """Register the tiny CLIP config with open_clip and return its model name.

    ``name="gapfix-tiny"`` (default) registers the packaged JSON config; another ``name`` or an
    ``embed_dim`` override registers a copy under that name (e.g. to test dimension mismatch).
    Use with ``load_encoder(name, pretrained="none")`` for random weights.
    """
    if name == TINY_MODEL and embed_dim is None:
        register_model_configs()
        return name
    if name == TINY_MODEL:
        raise ValueError(f"pass a new name to register {TINY_MODEL!r} with other settings")
    cfg = copy.deepcopy(tiny_config())
    if embed_dim is not None:
        cfg["embed_dim"] = int(embed_dim)
    return register_config(name, cfg)
