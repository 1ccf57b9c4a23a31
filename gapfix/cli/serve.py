"""``gapfix serve``: run the HTTP API (uvicorn, app factory ``service.app:create_app``).

Flags override the matching ``GAPFIX_*`` variables; every other setting (API keys, limits,
device, keep-alive, access log, ...) is read from the environment by the service's pydantic
settings. The library does not import the service: uvicorn loads the app by its import string,
and the settings are loaded by module name. Vectors mode (``--model none``) imports neither
torch nor open_clip.
"""

from __future__ import annotations

import importlib
import logging
import os
import signal
from pathlib import Path
from typing import Any

import typer

from gapfix.cli._app import app, guarded

APP_FACTORY = "service.app:create_app"
HTTP_PROTOCOL = "service.http_protocol:HTTPProtocol"  # uvicorn's, its 400s in the JSON envelope
SETTINGS_MODULE = "service.settings"


def _exit_cleanly(signum: int, frame: object) -> None:
    raise SystemExit(0)


def _settings() -> Any:
    """The service's settings, read from the ``GAPFIX_*`` variables exactly as the service
    reads them (the library does not import the service: loaded by name, like the app). A bad
    value is an `InputError` naming the variable."""
    from pydantic import ValidationError

    from gapfix.errors import InputError

    try:
        return importlib.import_module(SETTINGS_MODULE).Settings()
    except ValidationError as exc:
        first = exc.errors()[0]
        name = "GAPFIX_" + "_".join(str(p) for p in first["loc"]).upper()
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise InputError(f"{name}: {first['msg']}{more}", name) from None


def _check_data_dir(path: Path) -> None:
    """Refuse a data dir that is a file or that another store holds, before anything starts
    (the service opens the store inside uvicorn's start-up, where this is a traceback)."""
    from gapfix.errors import InputError
    from gapfix.locks import release, try_lock

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


def _check_store(settings: Any) -> None:
    """With ``--store milvus://...``: a bad URI or an unreachable Milvus is a one-line error
    (exit 2) before anything starts; ``embedded`` checks the data dir instead."""
    if settings.store == "embedded":
        _check_data_dir(settings.data_dir)
        return
    from gapfix.store.milvus.conn import connect, parse_store_uri

    client = connect(
        parse_store_uri(settings.store, settings.milvus_secure),
        token=settings.milvus_token,
        timeout=settings.milvus_timeout_s,
        server_pem_path=settings.milvus_server_pem_path,
        server_name=settings.milvus_server_name,
        ca_pem_path=settings.milvus_ca_pem_path,
        client_pem_path=settings.milvus_client_pem_path,
        client_key_path=settings.milvus_client_key_path,
    )
    client.close()


def _preload_model(settings: Any) -> None:
    """Load the configured model before uvicorn starts, so that weights that are neither local
    nor reachable, a broken checkpoint, or a bad device or precision is a one-line error
    (exit 2); the service's start-up then takes this encoder instead of loading it again.
    Vectors mode returns before torch or open_clip is imported."""
    if settings.vectors_mode:
        return
    from gapfix.encoders.loading import preload_encoder

    if settings.torch_threads:  # as the service would set it before loading
        import torch

        torch.set_num_threads(settings.torch_threads)
    preload_encoder(
        settings.model,
        settings.pretrained,
        device=settings.device,
        precision=settings.precision,
        cache_dir=settings.model_cache,
        backend=settings.backend,
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
    store: str = typer.Option(
        None,
        "--store",
        help="Where collections live: 'embedded' (default; in --data-dir) or "
        "milvus://HOST:PORT[/db] (token/TLS: GAPFIX_MILVUS_* variables).",
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
        "GAPFIX_STORE": store,
        "GAPFIX_HOST": host,
        "GAPFIX_PORT": str(port),
    }
    if backend is not None:
        from gapfix.encoders.backends import check_backend

        check_backend(backend)  # a bad name is a one-line error (exit 2), even in vectors mode
    for key, value in overrides.items():
        if value is not None:
            os.environ[key] = value
    settings = _settings()
    _check_store(settings)  # one-line errors (exit 2), not a start-up traceback
    _preload_model(settings)
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
        http=HTTP_PROTOCOL,  # httptools when installed (a dependency), else h11
        host=host,
        port=port,
        log_level=level,
        proxy_headers=False,
        server_header=False,
        timeout_graceful_shutdown=30,
        # longer than client pools keep idle connections, so they don't reuse one the server
        # is closing at that moment (uvicorn's default, 5 s, raced httpx's 5 s expiry)
        timeout_keep_alive=settings.timeout_keep_alive_s,
        access_log=settings.access_log,
        loop="auto",  # uvloop when installed (a dependency)
    )
