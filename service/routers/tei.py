"""Hugging Face text-embeddings-inference contract: ``POST /embed``, ``GET /info``,
``GET /health``, answered as TEI answers them (``[[...]]``; TEI's error shape).

Texts go through ``GAPFIX_DEFAULT_TRANSFORM`` when one is set (TEI clients cannot name one)."""

from __future__ import annotations

import orjson
from fastapi import APIRouter, Depends, Response
from starlette.concurrency import run_in_threadpool

from gapfix import __version__
from gapfix.errors import PayloadTooLargeError
from service import correcting
from service.compat_errors import TEIRoute, tei_error
from service.deps import StateDep, require_read
from service.errors import ApiError
from service.schemas_compat import TEIEmbedRequest, TEIError, TEIInfo
from service.state import AppState

router = APIRouter(route_class=TEIRoute, tags=["tei"])

TEI_ERRORS = {
    c: {"model": TEIError, "description": d}
    for c, d in ((413, "batch too large"), (422, "validation"), (503, "unhealthy"))
}
DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


def _require_model(state: AppState) -> None:
    if state.batcher is None:
        raise ApiError(400, "this server runs in vectors mode (no model loaded)",
                       type="model_unavailable")  # fmt: skip


@router.post(
    "/embed",
    response_model=list[list[float]],
    summary="Embed texts (TEI-compatible)",
    dependencies=[Depends(require_read)],
    responses=TEI_ERRORS,
)
async def tei_embed(req: TEIEmbedRequest, state: StateDep) -> Response:
    """TEI's ``/embed``: one unit vector per input, always a list of lists."""
    _require_model(state)
    texts = [req.inputs] if isinstance(req.inputs, str) else list(req.inputs)
    if not texts:
        raise ApiError(422, "`inputs` cannot be empty", param="inputs")
    limit = state.settings.max_texts_per_request
    if len(texts) > limit:
        raise PayloadTooLargeError(
            f"batch size {len(texts)} > maximum allowed batch size {limit}", param="inputs"
        )
    if req.prompt_name is not None:
        raise ApiError(422, "prompt_name is not supported by this model", "prompt_name")
    if req.truncation_direction is not None and req.truncation_direction.lower() != "right":
        raise ApiError(422, "only right truncation is supported", "truncation_direction")
    if req.dimensions is not None and req.dimensions != state.dim:
        raise ApiError(
            422,
            f"dimensions {req.dimensions} is not supported: the model embeds in {state.dim}",
            "dimensions",
        )
    target = correcting.default(state)
    correcting.check_model_dim(state, target)
    raw = await state.batcher.encode_texts(texts)
    out = await run_in_threadpool(target.apply, raw, "text") if target.transform else raw
    return Response(orjson.dumps(out, option=orjson.OPT_SERIALIZE_NUMPY),
                    media_type="application/json")  # fmt: skip


@router.get("/info", response_model=TEIInfo, summary="Model info (TEI-compatible)")
async def tei_info(state: StateDep) -> TEIInfo:
    """What TEI's ``/info`` reports, for the served model (limits from gapfix's settings)."""
    _require_model(state)
    s, enc = state.settings, state.encoder
    context = int(enc.context_length or 77)
    return TEIInfo(
        model_id=str(enc.model_id),
        model_sha=None,
        model_dtype=DTYPES.get(str(enc.precision), str(enc.precision)),
        model_type={"embedding": {"pooling": "clip"}},
        max_concurrent_requests=s.max_batch_size,
        max_input_length=context,
        max_batch_tokens=s.max_batch_size * context,
        max_batch_requests=s.max_batch_size,
        max_client_batch_size=s.max_texts_per_request,
        auto_truncate=True,
        tokenization_workers=1,
        version=__version__,
        sha=None,
        docker_label=None,
    )


@router.get("/health", summary="Health (TEI-compatible)", responses=TEI_ERRORS)
async def tei_health(state: StateDep) -> Response:
    """200 with an empty body while the model is loaded and the service started; else 503."""
    if state.batcher is None or not state.started or state.stopping:
        return tei_error(503, "the model is not loaded" if state.batcher is None else
                         "the service is not ready")  # fmt: skip
    return Response(status_code=200)
