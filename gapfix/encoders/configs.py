"""Registry of gapfix's own open_clip model configs (``gapfix/model_configs/*.json``)."""

from __future__ import annotations

import json
import tempfile
import threading
from pathlib import Path

import open_clip

from gapfix.errors import InputError

CONFIG_DIR = Path(__file__).resolve().parent.parent / "model_configs"

_lock = threading.Lock()
_registered = False
_extra_dir: Path | None = None


def register_model_configs() -> list[str]:
    """Add every JSON config in ``gapfix/model_configs`` to open_clip's registry (idempotent).

    Returns the names registered (file stems), e.g. ``["gapfix-tiny"]``.
    """
    global _registered
    names = sorted(p.stem for p in CONFIG_DIR.glob("*.json"))
    with _lock:
        if not _registered or any(n not in open_clip.list_models() for n in names):
            open_clip.add_model_config(CONFIG_DIR)
            _registered = True
    return names


def register_config(name: str, config: dict) -> str:
    """Register an extra open_clip model config under ``name`` (written to a temp dir)."""
    global _extra_dir
    if not name or "/" in name or name.startswith(("hf-hub:", "local-dir:")):
        raise InputError(f"invalid model config name {name!r}", param="name")
    if not all(k in config for k in ("embed_dim", "vision_cfg", "text_cfg")):
        raise InputError("model config needs embed_dim, vision_cfg and text_cfg", param="config")
    with _lock:
        if _extra_dir is None:
            _extra_dir = Path(tempfile.mkdtemp(prefix="gapfix-model-configs-"))
        path = _extra_dir / f"{name}.json"
        path.write_text(json.dumps(config, indent=2))
        open_clip.add_model_config(path)
    return name
