"""Liveness, readiness, Prometheus metrics, and what this server offers (``/v1/info``)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Response
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from starlette.concurrency import run_in_threadpool

from gapfix import __version__
from service.deps import StateDep, require_read
from service.errors import error_response, responses
from service.routing import JSONRoute
from service.schemas import Health, Info, Ready

router = APIRouter(route_class=JSONRoute, tags=["health"])


@router.get("/healthz", response_model=Health, summary="Liveness")
async def healthz() -> Health:
    """200 while the process serves requests."""
    return Health(status="ok")


@router.get(
    "/readyz",
    response_model=Ready,
    summary="Readiness",
    responses=responses(503),
)
async def readyz(state: StateDep) -> Response | Ready:
    """200 once the model, the store, its transforms and indexes are loaded and agree on the
    embedding dimension; 503 (with the reasons) otherwise."""
    ok, details = await run_in_threadpool(state.readiness)
    if not ok:
        return error_response(503, "; ".join(details["problems"]), type="not_ready")
    return Ready(status="ready", **details)


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics() -> Response:
    """Prometheus text exposition: per-route request counts and latency histograms, stage
    latencies, encode batch sizes, items and gap per collection."""
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)


@router.get(
    "/v1/info",
    response_model=Info,
    summary="Server capabilities",
    dependencies=[Depends(require_read)],
    responses=responses(401),
)
async def info(state: StateDep) -> Info:
    """Model (null in vectors mode), dimension, whether keys are needed, request limits. Needs
    a key when reads are protected (``GAPFIX_PROTECT_READS=true``), like every other read."""
    s = state.settings
    keys = bool(s.keys)
    return Info(
        version=__version__,
        model=state.model_id,
        dim=state.dim,
        vectors_mode=s.vectors_mode,
        auth={"writes": keys, "reads": keys and s.protect_reads},
        limits={
            "max_body_bytes": s.max_body_bytes,
            "max_image_pixels": s.max_image_pixels,
            "max_texts_per_request": s.max_texts_per_request,
            "max_images_per_request": s.max_images_per_request,
            "max_queries_per_request": s.max_queries_per_request,
            "max_k": s.max_k,
        },
    )
