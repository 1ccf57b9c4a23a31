"""``gapfix serve``: run the HTTP API (uvicorn, app factory ``service.app:create_app``).

Flags override the matching ``GAPFIX_*`` variables; every other setting (API keys, limits,
device, ...) is read from the environment by the service's pydantic settings. The library does
not import the service: uvicorn loads it by its import string.
"""

from __future__ import annotations

import logging
import os
import signal
from pathlib import Path

import typer

from gapfix.cli._app import app, guarded

APP_FACTORY = "service.app:create_app"
HTTP_PROTOCOL = "service.http_protocol:HTTPProtocol"  # uvicorn's, its 400s in the JSON envelope


def _exit_cleanly(signum: int, frame: object) -> None:
    raise SystemExit(0)


def _setting(name: str, default: str) -> str:
    """A ``GAPFIX_*`` variable read as the service's settings read it: name case-insensitive,
    value stripped, ``default`` only when unset (an empty value stays empty)."""
    value = os.environ.get(name)
    if value is None:
        value = next((v for k, v in os.environ.items() if k.upper() == name), default)
    return value.strip()


def _check_data_dir() -> None:
    """Refuse a data dir that is a file or that another store holds, before anything starts
    (the service opens the store inside uvicorn's start-up, where this is a traceback)."""
    from gapfix.errors import InputError
    from gapfix.locks import release, try_lock

    path = Path(_setting("GAPFIX_DATA_DIR", "data") or "data")
    if path.exists() and not path.is_dir():
        raise InputError(f"--data-dir {path} exists and is not a folder", "--data-dir")
    if path.is_dir():
        fd = try_lock(path / ".lock")
        if fd is None:
            raise InputError(
                f"--data-dir {path} is in use by another gapfix store (another gapfix serve?)",
                "--data-dir",
            )
        release(fd)


def _preload_model() -> None:
    """Load the configured model before uvicorn starts, so that weights that are neither local
    nor reachable, a broken checkpoint, or a bad device or precision is a one-line error
    (exit 2); the service's start-up then takes this encoder instead of loading it again."""
    import inspect

    from gapfix.encoders.loading import load_encoder, preload_encoder

    defaults = inspect.signature(load_encoder).parameters
    model = _setting("GAPFIX_MODEL", defaults["model"].default)
    if model.lower() in ("none", ""):  # vectors mode, as in service.settings
        return
    threads = _setting("GAPFIX_TORCH_THREADS", "")
    if threads.isdigit() and int(threads) > 0:  # as the service would set it before loading
        import torch

        torch.set_num_threads(int(threads))
    preload_encoder(
        model,
        _setting("GAPFIX_PRETRAINED", defaults["pretrained"].default),
        device=_setting("GAPFIX_DEVICE", defaults["device"].default),
        precision=_setting("GAPFIX_PRECISION", defaults["precision"].default),
        cache_dir=_setting("GAPFIX_MODEL_CACHE", "") or None,
        backend=_setting("GAPFIX_BACKEND", "torch"),
    )


@app.command()
@guarded
def serve(
    model: str = typer.Option(
        None,
        "--model",
        help="open_clip model (default ViT-B-32); 'none' = vectors mode (clients send vectors).",
        show_default=False,
    ),
    pretrained: str = typer.Option(
        None,
        "--pretrained",
        help="Weights: a tag (default laion2b_s34b_b79k), a local checkpoint, hf-hub:..., none.",
        show_default=False,
    ),
    data_dir: Path = typer.Option(
        None,
        "--data-dir",
        help="Directory of the collections (default ./data).",
        show_default=False,
    ),
    backend: str = typer.Option(
        None,
        "--backend",
        help="Encoder backend: torch (default), onnx (ONNX Runtime, CPU) or compile "
        "(torch.compile).",
        show_default=False,
    ),
    host: str = typer.Option("127.0.0.1", "--host", envvar="GAPFIX_HOST", help="Bind address."),
    port: int = typer.Option(
        8000, "--port", envvar="GAPFIX_PORT", min=1, max=65535, help="TCP port."
    ),
    log_level: str = typer.Option("info", "--log-level", help="debug, info, warning, error."),
) -> None:
    """Serve embedding, correction and gap-corrected search over HTTP (OpenAPI at /docs)."""
    import uvicorn

    level = log_level.lower()
    if level not in ("critical", "error", "warning", "info", "debug"):
        raise typer.BadParameter(f"unknown log level {log_level!r}", param_hint="--log-level")
    overrides = {
        "GAPFIX_MODEL": model,
        "GAPFIX_PRETRAINED": pretrained,
        "GAPFIX_BACKEND": backend,
        "GAPFIX_DATA_DIR": None if data_dir is None else str(data_dir),
        "GAPFIX_HOST": host,
        "GAPFIX_PORT": str(port),
    }
    if backend is not None:
        from gapfix.encoders.backends import check_backend

        check_backend(backend)  # a bad name is a one-line error (exit 2), even in vectors mode
    for key, value in overrides.items():
        if value is not None:
            os.environ[key] = value
    _check_data_dir()  # one-line errors (exit 2) instead of a failed start-up with a traceback
    _preload_model()
    logging.basicConfig(  # force: open_clip's root-level logging during the load set a default
        level=getattr(logging, level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        force=True,
    )
    # uvicorn shuts down gracefully on SIGTERM, then re-raises the signal to the handler it
    # found: make that a clean exit (status 0), as Docker and Kubernetes expect on stop.
    signal.signal(signal.SIGTERM, _exit_cleanly)
    uvicorn.run(
        APP_FACTORY,
        factory=True,
        http=HTTP_PROTOCOL,
        host=host,
        port=port,
        log_level=level,
        proxy_headers=False,
        server_header=False,
        timeout_graceful_shutdown=30,
    )
