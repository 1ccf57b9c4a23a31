"""Build a `ClipEncoder` from an open_clip architecture and a weight source, failing fast offline.

Weight sources (``pretrained``):

- an open_clip pretrained tag (``laion2b_s34b_b79k``): taken from the local cache when present,
  otherwise downloaded by open_clip, after a quick reachability check of the host;
- ``hf-hub:org/repo`` (as ``model`` or ``pretrained``): config and weights from the Hugging Face
  Hub, or from its local cache when the Hub cannot be reached;
- a local checkpoint file (``.pt``/``.pth``/``.bin``/``.safetensors``) or an open_clip model
  directory (with ``open_clip_config.json``), or ``local-dir:/path`` as ``model``;
- ``none``: random weights, for tests and demos only (logged loudly).

Without network access and without cached weights, `load_encoder` raises `ModelLoadError`
within seconds, saying how to point at a local checkpoint.
"""

from __future__ import annotations

import contextlib
import difflib
import logging
import os
import socket
import threading
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import open_clip
import torch

from gapfix.encoders.backends import check_backend, make_towers, to_precision
from gapfix.encoders.configs import register_model_configs
from gapfix.encoders.encoder import ClipEncoder
from gapfix.encoders.errors import ModelLoadError
from gapfix.encoders.images import DEFAULT_MAX_PIXELS
from gapfix.errors import GapfixError, InputError

logger = logging.getLogger("gapfix.encoders")

HF_PREFIX = "hf-hub:"
LOCAL_DIR_PREFIX = "local-dir:"
RANDOM_INIT = ("", "none", "random")
RANDOM_INIT_SEED = 0
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt", ".npz")
# open_clip's default weight file names on the Hub, safetensors first (as open_clip prefers).
HUB_WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
PROBE_TIMEOUT_S = 3.0
PRECISIONS = ("auto", "fp32", "fp16", "bf16")
MAX_CAUSE_CHARS = 1000


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


_HANDOFF: dict[tuple[str, ...], ClipEncoder] = {}
_HANDOFF_LOCK = threading.Lock()


def _handoff_key(
    model: str, pretrained: str | None, dev: torch.device, prec: str, cache: str | None
) -> tuple[str, ...]:
    weights = (
        "none" if pretrained is None or pretrained.strip().lower() in RANDOM_INIT else pretrained
    )
    return (model, weights, str(dev), prec, str(Path(cache)) if cache else "")


def preload_encoder(
    model: str,
    pretrained: str | None,
    device: str = "auto",
    precision: str = "auto",
    cache_dir: str | os.PathLike | None = None,
    backend: str = "torch",
) -> ClipEncoder:
    """Load an encoder now and hand it to the next `load_encoder` call for the same model,
    weights, device, precision and cache (once), and the same backend unless that call leaves
    ``backend`` unset. ``gapfix serve`` uses it so that a broken checkpoint is a one-line error
    before the server starts, and the model still loads once."""
    encoder = load_encoder(
        model, pretrained, device, precision, cache_dir=cache_dir, backend=backend
    )
    dev = resolve_device(device)
    key = _handoff_key(model, pretrained, dev, resolve_precision(precision, dev),
                       str(cache_dir) if cache_dir is not None else None)  # fmt: skip
    with _HANDOFF_LOCK:
        _HANDOFF[key] = encoder
    return encoder


def load_encoder(
    model: str = "ViT-B-32",
    pretrained: str | None = "laion2b_s34b_b79k",
    device: str = "auto",
    precision: str = "auto",
    max_batch_size: int = 64,
    cache_dir: str | os.PathLike | None = None,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    backend: str | None = None,
) -> ClipEncoder:
    """Load an open_clip model with its preprocessing and tokenizer as a `ClipEncoder`.

    ``model`` is any ``open_clip.list_models()`` name (plus gapfix's own configs such as
    ``gapfix-tiny``), ``hf-hub:org/repo`` or ``local-dir:/path``; ``pretrained`` a tag, a
    checkpoint path, ``hf-hub:org/repo`` or ``none``. ``device``: ``auto`` (cuda if available,
    else cpu) or a torch device string; ``precision``: ``auto`` (bf16, else fp16, weights
    on GPU; fp32 on CPU), ``fp32``, ``fp16`` or ``bf16`` (the weights are converted: GPU
    only); ``backend``: ``torch`` (default), ``onnx`` (ONNX Runtime, CPU; exported once into
    ``cache_dir``/onnx or ~/.cache/gapfix/onnx) or ``compile`` (`gapfix.encoders.backends`).
    Raises `ModelLoadError` (fast, with
    instructions) when weights cannot be found or fetched, `InputError` for bad settings.
    """
    if not isinstance(max_batch_size, int) or max_batch_size < 1:
        raise InputError(f"max_batch_size must be a positive integer, got {max_batch_size!r}")
    if max_pixels < 1:
        raise InputError(f"max_pixels must be positive, got {max_pixels!r}", param="max_pixels")
    wanted = None if backend is None else check_backend(backend)
    dev = resolve_device(device)
    prec = resolve_precision(precision, dev)
    cache = str(cache_dir) if cache_dir is not None else None
    key = _handoff_key(model, pretrained, dev, prec, cache)
    with _HANDOFF_LOCK:
        ready = _HANDOFF.get(key)
        if ready is not None and wanted in (None, ready.backend):
            del _HANDOFF[key]
        else:
            ready = None
    if ready is not None:  # loaded by preload_encoder (gapfix serve); runtime limits are ours
        ready.max_batch_size, ready.max_pixels = max_batch_size, int(max_pixels)
        logger.info("using the encoder preloaded for %s", ready.model_id)
        return ready
    src = resolve_weights(model, pretrained, cache_dir=cache)
    if src.kind == "random":
        logger.warning(
            "!!! RANDOM WEIGHTS: model %r is running with pretrained=none. Its embeddings are "
            "meaningless; use this for tests and demos only. Pass --pretrained <tag|path> for "
            "real weights. !!!",
            src.model,
        )
    try:
        with _seeded_if(src.kind == "random"):
            clip_model, _, preprocess = open_clip.create_model_and_transforms(
                src.model,
                pretrained=src.pretrained,
                device=dev,
                precision="fp32",  # converted below, after the weights are loaded
                cache_dir=cache,
                pretrained_text=src.kind != "random",
                **src.preprocess,
            )
        tokenizer = open_clip.get_tokenizer(src.model, cache_dir=cache)
        clip_model = to_precision(clip_model.eval(), prec)
        towers = make_towers(
            clip_model,
            wanted or "torch",
            dev,
            cache_dir=cache,
            pixel_shape=tuple(preprocess(_blank()).shape),
            context_length=int(getattr(tokenizer, "context_length", 0)) or None,
            arch=src.model,
        )
        encoder = ClipEncoder(
            clip_model,
            preprocess,
            tokenizer,
            device=dev,
            precision=prec,
            max_batch_size=max_batch_size,
            model_id=src.model_id,
            max_pixels=max_pixels,
            towers=towers,
        )
    except GapfixError:
        raise
    except Exception as e:
        raise ModelLoadError(
            f"cannot load model {model!r} with pretrained={pretrained!r}: {_cause(e)}. "
            + (offline_hint(model) if src.kind in ("tag", "hub") else ""),
            param="pretrained" if src.kind in ("file", "tag", "hub") else "model",
        ) from e
    logger.info(
        "loaded encoder %s on %s (%s, backend %s), dim %d",
        src.model_id, dev, prec, encoder.backend, encoder.dim,
    )  # fmt: skip
    return encoder


def _blank():
    from PIL import Image

    return Image.new("RGB", (8, 8))


@contextlib.contextmanager
def _seeded_if(random_init: bool) -> Iterator[None]:
    """Random weights from a fixed seed (the caller's RNG state untouched): every load of
    ``name/none`` is the same model, so a resumed job or each Ray actor embeds alike."""
    if not random_init:
        yield
        return
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_INIT_SEED)
        yield


def _cause(exc: Exception) -> str:
    """An exception as one line of bounded length: named by its type when it has no message
    (an empty or 0-byte checkpoint), long ones (every key of another model's checkpoint) cut."""
    text = " ".join(str(exc).split())
    if not text:
        hint = " (the checkpoint holds no weights)" if isinstance(exc, StopIteration) else ""
        return type(exc).__name__ + hint
    if len(text) > MAX_CAUSE_CHARS:
        text = f"{text[:MAX_CAUSE_CHARS]} ... ({len(text) - MAX_CAUSE_CHARS} more characters)"
    return text


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` -> cuda if available else cpu; otherwise the named device, which must exist."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise InputError(f"unknown device {device!r}: {e}", param="device") from e
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ModelLoadError("device 'cuda' requested but CUDA is not available", "device")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ModelLoadError(f"device {device!r} does not exist", "device")
    return dev


def resolve_precision(precision: str, device: torch.device) -> str:
    """Weights' dtype name: ``auto`` = bf16 (or fp16) on GPU, fp32 elsewhere."""
    if precision not in PRECISIONS:
        raise InputError(
            f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}",
            param="precision",
        )
    if device.type != "cuda":
        if precision in ("fp16", "bf16"):
            logger.warning("precision %s is GPU-only; running fp32 on %s", precision, device)
        return "fp32"
    if precision == "auto":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return precision


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
