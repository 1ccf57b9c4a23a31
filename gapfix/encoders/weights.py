"""Where an encoder's weights come from: open_clip tags, Hugging Face Hub repos, local files.

``resolve_weights`` turns (model, pretrained) into a ``WeightSource`` that open_clip can load
now: a tag or Hub repo from the local cache without touching the network; otherwise the host
is probed (``probe``, a few seconds at most) and ``ModelLoadError`` names a local checkpoint
to use instead (``offline_hint``). Nothing is downloaded here.
"""

from __future__ import annotations

import difflib
import logging
import os
import socket
import threading
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import open_clip

from gapfix.encoders.configs import register_model_configs
from gapfix.encoders.errors import ModelLoadError
from gapfix.errors import InputError

logger = logging.getLogger("gapfix.encoders")

HF_PREFIX = "hf-hub:"
LOCAL_DIR_PREFIX = "local-dir:"
RANDOM_INIT = ("", "none", "random")
RANDOM_INIT_SEED = 0
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt", ".npz")
# open_clip's default weight file names on the Hub, safetensors first (as open_clip prefers).
HUB_WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
PROBE_TIMEOUT_S = 3.0


def offline_hint(model: str) -> str:
    """How to run without network access: point at a local checkpoint."""
    if model.startswith(HF_PREFIX):
        where = (
            "`--model <architecture, e.g. ViT-B-32> --pretrained /path/to/open_clip_model"
            ".safetensors` (or GAPFIX_PRETRAINED=/path/to/ckpt), or `--model local-dir:/path/to/"
            "a/copy/of/the/repo`"
        )
    else:
        where = (
            f"`--model {model} --pretrained /path/to/ckpt.pt` (.pt/.bin/.safetensors; or "
            "GAPFIX_PRETRAINED=/path/to/ckpt.pt)"
        )
    return (
        "To run offline, download the checkpoint on a machine with access and point gapfix at "
        f"it: {where}, or copy a Hugging Face cache that holds it (HF_HOME). "
        "`--pretrained none` starts with random weights (tests and demos only)."
    )


@dataclass(frozen=True)
class WeightSource:
    """Where the weights of an encoder come from, resolved to something loadable now.

    ``model`` and ``pretrained`` are what open_clip's ``create_model_and_transforms`` gets;
    ``preprocess`` holds image-preprocessing arguments for it when a file stands in for a tag
    (the tag's settings; for a checkpoint file, those all the architecture's tags share);
    ``model_id`` names model + weights (e.g. ``ViT-B-32/laion2b_s34b_b79k``).
    """

    kind: str  # "random" | "file" | "tag" | "hub" | "local-dir"
    model: str
    pretrained: str | None
    model_id: str
    preprocess: dict = field(default_factory=dict)


def resolve_weights(
    model: str, pretrained: str | None, cache_dir: str | None = None
) -> WeightSource:
    """Work out where the weights come from; fetch nothing, fail fast when they are unreachable.

    A tag or Hub repo already in the local cache resolves to the cached files without touching
    the network; otherwise the host is probed (a few seconds at most) and `ModelLoadError` is
    raised, with `offline_hint`, when it cannot be reached.
    """
    register_model_configs()
    model = (model or "").strip()
    pre = (pretrained or "").strip()
    if not model:
        raise InputError("model name is empty", param="model")
    if model.startswith(LOCAL_DIR_PREFIX):
        path = model[len(LOCAL_DIR_PREFIX) :]
        return _local_dir(path, model_arg=model)
    if model.startswith(HF_PREFIX) or pre.startswith(HF_PREFIX):
        repo = model[len(HF_PREFIX) :] if model.startswith(HF_PREFIX) else pre[len(HF_PREFIX) :]
        if model.startswith(HF_PREFIX) and pre and pre.lower() not in RANDOM_INIT:
            logger.warning("ignoring pretrained=%r: model %r brings its own weights", pre, model)
        return _hub_repo(repo.strip("/"), cache_dir)

    name = model.replace("/", "-")  # open_clip's own normalisation ("ViT-B/32" -> "ViT-B-32")
    if name not in open_clip.list_models():
        close = difflib.get_close_matches(name, open_clip.list_models(), n=5, cutoff=0.6)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise ModelLoadError(
            f"unknown model architecture {model!r}.{hint} See open_clip.list_models(), or use "
            "hf-hub:org/repo or local-dir:/path.",
            param="model",
        )
    if pre.lower() in RANDOM_INIT:
        return WeightSource("random", name, None, f"{name}/none")
    path = Path(pre).expanduser()
    if path.is_file():
        return WeightSource("file", name, str(path), f"{name}/{path.name}", _file_preprocess(name))
    if path.is_dir():
        if (path / "open_clip_config.json").is_file():
            return _local_dir(str(path), model_arg=f"{LOCAL_DIR_PREFIX}{path}")
        raise ModelLoadError(
            f"pretrained={pre!r} is a directory; pass the checkpoint file inside it "
            "(.pt/.bin/.safetensors)",
            param="pretrained",
        )
    cfg = open_clip.get_pretrained_cfg(name, pre)
    if cfg:
        return _tag(name, pre, cfg, cache_dir)
    if os.sep in pre or "/" in pre or pre.lower().endswith(CHECKPOINT_SUFFIXES):
        raise ModelLoadError(f"checkpoint file not found: {pre}", param="pretrained")
    tags = open_clip.list_pretrained_tags_by_model(name)
    raise ModelLoadError(
        f"unknown pretrained tag {pre!r} for {name}"
        + (f" (known tags: {', '.join(tags)})" if tags else " (open_clip has no tags for it)")
        + "; pass a tag, a checkpoint file path, hf-hub:org/repo, or none",
        param="pretrained",
    )


def _local_dir(path: str, model_arg: str) -> WeightSource:
    p = Path(path).expanduser()
    if not (p / "open_clip_config.json").is_file():
        raise ModelLoadError(f"no open_clip_config.json in model directory {path}", "model")
    return WeightSource("local-dir", model_arg, None, f"local-dir:{p.name}")


def _tag_preprocess(cfg: dict) -> dict:
    """A pretrained tag's image preprocessing, as create_model_and_transforms arguments."""
    return {
        key: cfg[src]
        for key, src in (
            ("image_mean", "mean"),
            ("image_std", "std"),
            ("image_interpolation", "interpolation"),
            ("image_resize_mode", "resize_mode"),
        )
        if cfg.get(src) is not None
    }


def _file_preprocess(name: str) -> dict:
    """Preprocessing for a checkpoint file: that of the architecture's tags when they all agree
    (e.g. SigLIP's 0.5 mean/std and squash resize), else open_clip's defaults, with a warning."""
    tags = open_clip.list_pretrained_tags_by_model(name)
    found = {tag: _tag_preprocess(open_clip.get_pretrained_cfg(name, tag)) for tag in tags}
    distinct = {repr(sorted(p.items())) for p in found.values()}
    if len(distinct) == 1:
        return next(iter(found.values()))
    if len(distinct) > 1:
        logger.warning(
            "the pretrained tags of %s use different image preprocessing; a checkpoint file gets "
            "open_clip's defaults (tags: %s)",
            name,
            ", ".join(tags),
        )
    return {}


def _tag(name: str, tag: str, cfg: dict, cache_dir: str | None) -> WeightSource:
    model_id = f"{name}/{tag}"
    preprocess = _tag_preprocess(cfg)
    if "file" in cfg:
        return WeightSource("file", name, cfg["file"], model_id, preprocess)
    hub = cfg.get("hf_hub", "")
    url = cfg.get("url", "")
    if hub:
        repo, filename = os.path.split(hub)  # "org/repo/" -> default file names
        candidates = _hub_candidates(filename)
        for fname in candidates:
            cached = _hub_cached(repo, fname, cache_dir)
            if cached:
                return WeightSource("tag", name, cached, model_id, preprocess)
        where = f"Hugging Face cache ({cache_dir or _hf_cache_root()}), {repo}/{candidates[-1]}"
        _require_network(_hub_endpoint(), model_id, where, name)
    elif url:
        cached = Path(cache_dir or "~/.cache/clip").expanduser() / os.path.basename(url)
        if not cached.is_file():
            _require_network(url, model_id, str(cached), name)
        # open_clip verifies the cached file's checksum and re-downloads it when needed.
    return WeightSource("tag", name, tag, model_id)


def _hub_repo(repo: str, cache_dir: str | None) -> WeightSource:
    if not repo or repo.count("/") != 1:
        raise ModelLoadError(f"hf-hub id must look like hf-hub:org/repo, got {repo!r}", "model")
    model_id = f"{HF_PREFIX}{repo}"
    cfg_file = _hub_cached(repo, "open_clip_config.json", cache_dir)
    if cfg_file:
        snapshot = Path(cfg_file).parent
        if any((snapshot / f).is_file() for f in HUB_WEIGHT_FILES):
            # Fully cached: load it as an open_clip model directory, no network at all.
            return WeightSource("hub", f"{LOCAL_DIR_PREFIX}{snapshot}", None, model_id)
    where = f"Hugging Face cache ({cache_dir or _hf_cache_root()})"
    _require_network(_hub_endpoint(), model_id, where, model_id)
    return WeightSource("hub", model_id, None, model_id)


def _hub_candidates(filename: str) -> list[str]:
    """File names open_clip would fetch for a Hub tag, safetensors alternatives first."""
    if not filename or filename == "open_clip_pytorch_model.bin":
        return list(HUB_WEIGHT_FILES)
    if filename.endswith((".bin", ".pth")):
        return [filename[:-4] + ".safetensors", filename]
    return [filename]


def _hub_cached(repo: str, filename: str, cache_dir: str | None) -> str | None:
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo, filename, cache_dir=cache_dir)
    return found if isinstance(found, str) and os.path.isfile(found) else None


def _hf_cache_root() -> str:
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def _hub_endpoint() -> str:
    from huggingface_hub import constants

    return os.environ.get("HF_ENDPOINT") or constants.ENDPOINT


def _offline_env() -> bool:
    from huggingface_hub import constants

    flags = (os.environ.get("HF_HUB_OFFLINE", ""), os.environ.get("TRANSFORMERS_OFFLINE", ""))
    return constants.HF_HUB_OFFLINE or any(f.upper() in ("1", "ON", "YES", "TRUE") for f in flags)


def _require_network(url: str, model_id: str, where: str, model: str) -> None:
    """Raise `ModelLoadError` unless ``url``'s host (or its proxy) accepts a TCP connection."""
    if _offline_env():
        reason = "HF_HUB_OFFLINE is set"
    else:
        reason = probe(url)
        if reason is None:
            return
    raise ModelLoadError(
        f"cannot fetch weights for {model_id}: {reason}, and they are not in the local cache "
        f"({where}). {offline_hint(model)}",
        param="pretrained",
    )


def probe(url: str, timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """Check that ``url``'s host (or the proxy configured for it) is reachable within
    ``timeout`` seconds, DNS included. Returns None if so, else a short reason."""
    parsed = urlparse(url)
    host = parsed.hostname or ""
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    proxy = urllib.request.getproxies().get(parsed.scheme)
    if proxy and not urllib.request.proxy_bypass(host):
        p = urlparse(proxy if "://" in proxy else f"http://{proxy}")
        host, port = p.hostname or host, p.port or 80
    result: list[str | None] = []

    def connect() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            result.append(None)
        except OSError as e:
            result.append(f"{host}:{port} is unreachable ({e})")

    worker = threading.Thread(target=connect, daemon=True, name="gapfix-probe")
    worker.start()
    worker.join(timeout + 0.5)  # bounds a hanging DNS lookup too
    return result[0] if result else f"{host}:{port} did not answer within {timeout:.0f} s"
