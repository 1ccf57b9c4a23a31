"""The FastAPI application: ``create_app(settings) -> FastAPI`` (uvicorn factory).

Start-up (lifespan) loads the encoder, unless ``GAPFIX_MODEL=none`` (vectors mode), and opens
the store; a model that cannot be loaded stops start-up with the encoder's message. Shutdown
drains encode requests, then flushes and closes the store.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from gapfix import __version__
from gapfix.encoders import ModelLoadError
from service import errors
from service.compat_errors import ContractErrorMiddleware
from service.middleware import BodyLimitMiddleware, MetricsMiddleware
from service.routers import (
    collections,
    correct,
    embed,
    gap,
    health,
    items,
    openai,
    search,
    tei,
    transform,
    transforms,
    ui,
    weaviate,
)
from service.settings import Settings
from service.state import AppState

log = logging.getLogger("gapfix.service")

DESCRIPTION = """\
Post-hoc modality-gap correction for CLIP-style embeddings, served: embed texts and images,
store them per collection, fit a gap-closing transform on what is stored, and search the
corrected (or, for comparison, the raw) vectors.

Errors always have the shape `{"error": {"type", "message", "param"}}`. Write endpoints need
`Authorization: Bearer <key>` when API keys are configured (reads too with
`GAPFIX_PROTECT_READS=true`).
"""

TAGS = [
    {"name": "embed", "description": "Texts and images to vectors with the server's model."},
    {"name": "correct", "description": "Vectors through a collection's active transform."},
    {"name": "collections", "description": "Named collections, one FAISS index kind each."},
    {"name": "items", "description": "Images, texts and documents (image + text) by id."},
    {"name": "search", "description": "Mixed-modality search, corrected or raw."},
    {"name": "gap", "description": "Modality-gap statistics of a collection."},
    {"name": "transform", "description": "Fit and activate gap-closing transforms."},
    {"name": "transforms", "description": "Named transforms, independent of collections."},
    {"name": "health", "description": "Liveness, readiness, metrics, capabilities."},
    {"name": "openai", "description": "OpenAI-compatible embeddings and models."},
    {"name": "tei", "description": "Hugging Face text-embeddings-inference contract."},
    {"name": "weaviate", "description": "Weaviate multi2vec-clip inference contract."},
]


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app. ``settings`` default: ``Settings()`` from ``GAPFIX_*`` variables."""
    settings = settings or Settings()
    state = AppState(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            await state.start()
        except ModelLoadError as exc:
            log.error("gapfix: error: cannot load the model: %s", exc)
            await state.stop()
            raise
        except BaseException:
            await state.stop()
            raise
        try:
            yield
        finally:
            await state.stop()

    app = FastAPI(
        title="gapfix",
        version=__version__,
        description=DESCRIPTION,
        openapi_tags=TAGS,
        lifespan=lifespan,
    )
    app.state.gapfix = state
    errors.install(app)
    modules = (
        health,
        embed,
        correct,
        collections,
        items,
        search,
        gap,
        transform,
        transforms,
        openai,
        tei,
        weaviate,
        ui,
    )
    for module in modules:
        app.include_router(module.router)

    # Added innermost first: CORS (optional) wraps metrics, which wraps the contracts' error
    # shapes (OpenAI, TEI, Weaviate routes), which wrap the body limit.
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(ContractErrorMiddleware)
    routes = [route for module in modules for route in module.router.routes]
    app.add_middleware(MetricsMiddleware, routes=routes)
    if settings.origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.origins,
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Authorization", "Content-Type"],
        )
    return app
