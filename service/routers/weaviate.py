"""Weaviate's multi2vec-clip inference contract: ``POST /vectorize``, ``GET /meta``,
``GET /.well-known/live``, ``GET /.well-known/ready``.

Point Weaviate's ``CLIP_INFERENCE_API`` here with ``GAPFIX_DEFAULT_TRANSFORM`` set: texts and
images are corrected by that transform, which closes the modality gap that makes text fields
degrade a multi2vec-clip class (weaviate issue 3535). Errors are ``{"error": "..."}``, which
Weaviate reports with the status."""

from __future__ import annotations

import orjson
from fastapi import APIRouter, Depends, Response
from starlette.concurrency import run_in_threadpool

from gapfix import __version__
from service import correcting
from service.compat_errors import WeaviateRoute
from service.deps import StateDep, require_read
from service.encoding import check_counts, decode_images, encode
from service.errors import ApiError
from service.schemas_compat import VectorizeError, VectorizeRequest, VectorizeResponse, WeaviateMeta

router = APIRouter(route_class=WeaviateRoute, tags=["weaviate"])


@router.post(
    "/vectorize",
    response_model=VectorizeResponse,
    summary="Vectorize texts and images (Weaviate multi2vec-clip)",
    dependencies=[Depends(require_read)],
    responses={c: {"model": VectorizeError} for c in (400, 404, 409, 413, 503)},
)
async def vectorize(req: VectorizeRequest, state: StateDep) -> Response:
    """``{texts, images (base64)}`` -> ``{textVectors, imageVectors}``, through the default
    transform when one is set."""
    if state.batcher is None:
        raise ApiError(400, "this server runs in vectors mode (no model loaded)",
                       type="model_unavailable")  # fmt: skip
    texts, images = req.texts or [], req.images or []
    check_counts(state, len(texts), len(images))
    target = correcting.default(state)
    correcting.check_model_dim(state, target)
    decoded = await decode_images(state, [(f"images[{i}]", b) for i, b in enumerate(images)])
    tv, iv = await encode(state, texts, [img for img, _ in decoded])

    def finish() -> bytes:
        t = target.apply(tv, "text") if tv is not None else []
        i = target.apply(iv, "image") if iv is not None else []
        body = {"textVectors": list(t), "imageVectors": list(i)}
        return orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)

    return Response(await run_in_threadpool(finish), media_type="application/json")


@router.get("/meta", response_model=WeaviateMeta, summary="Module meta (Weaviate)")
async def meta(state: StateDep) -> WeaviateMeta:
    """What Weaviate shows as the module's meta: model, dimension, default transform."""
    target = None
    name = state.settings.default_transform
    if name is not None and state.transforms is not None:
        entry = state.transforms.get_or_none(name)
        target = {"name": name, "registered": entry is not None}
        if entry is not None:
            target |= {"fingerprint": entry.fingerprint, "method": entry.method}
    return WeaviateMeta(model=state.model_id, dim=state.dim, transform=target,
                        gapfix_version=__version__)  # fmt: skip


@router.get("/.well-known/live", status_code=204, summary="Liveness (Weaviate)")
async def live() -> Response:
    """204 while the process serves."""
    return Response(status_code=204)


@router.get("/.well-known/ready", status_code=204, summary="Readiness (Weaviate)")
async def ready(state: StateDep) -> Response:
    """204 once the model is loaded and the service started; 503 before."""
    if state.batcher is None or not state.started or state.stopping:
        return Response(status_code=503)
    return Response(status_code=204)
