"""OpenAI-compatible ``POST /v1/embeddings``, ``GET /v1/models`` and ``GET /v1/models/{id}``.

The OpenAI SDK, LangChain's ``OpenAIEmbeddings`` and anything else speaking OpenAI's API get
gapfix's vectors: raw (as ``/v1/embed``), or through a named transform (``extra_body=
{"transform": NAME}``), a collection's active transform, or ``GAPFIX_DEFAULT_TRANSFORM``.
Errors come in OpenAI's shape (``service.compat_errors``).
"""

from __future__ import annotations

import base64
from typing import Any

import numpy as np
import orjson
from fastapi import APIRouter, Depends, Response
from starlette.concurrency import run_in_threadpool

from service import correcting
from service.compat_errors import OpenAIRoute
from service.deps import StateDep, require_read
from service.encoding import check_counts
from service.errors import ApiError
from service.image_inputs import load_image_inputs
from service.schemas_openai import (
    EmbeddingsRequest,
    EmbeddingsResponse,
    ModelCard,
    ModelList,
    OpenAIError,
)
from service.state import AppState

router = APIRouter(
    route_class=OpenAIRoute, prefix="/v1", tags=["openai"], dependencies=[Depends(require_read)]
)

ERRORS: dict[int | str, dict[str, Any]] = {
    c: {"model": OpenAIError, "description": d}
    for c, d in (
        (400, "invalid_request_error"),
        (401, "invalid_api_key"),
        (404, "model_not_found / not found"),
        (409, "the transform's dimension differs from the model's"),
        (413, "too many inputs"),
    )
}


def _served(state: AppState) -> list[ModelCard]:
    if state.model_id is None:  # vectors mode: nothing to embed with
        return []
    return [ModelCard(id=state.model_id, created=int(state.started_at), owned_by="gapfix")]


def _check_model(state: AppState, model: str) -> None:
    served = [m.id for m in _served(state)]
    if model not in served:
        where = f"; it serves {', '.join(served)}" if served else " (vectors mode: no model)"
        raise ApiError(
            404,
            f"The model {model!r} does not exist on this server{where}",
            param="model",
            type="model_not_found",
        )


def _inputs(req: EmbeddingsRequest) -> list[str]:
    """The inputs as a list of strings (400 for token arrays and empty inputs)."""
    value = req.input
    items: list[Any] = [value] if isinstance(value, str) else list(value)
    if not items:
        raise ApiError(400, "'input' is empty: give a string or a non-empty list", "input")
    for i, item in enumerate(items):
        if not isinstance(item, str):
            raise ApiError(
                400,
                "token arrays are not supported: send strings (this server tokenizes with the "
                "model's own tokenizer; LangChain: OpenAIEmbeddings(check_embedding_ctx_length="
                "False))",
                param="input",
            )
        if not item:
            raise ApiError(400, f"input[{i}] is an empty string", param=f"input[{i}]")
    return items


@router.post(
    "/embeddings",
    response_model=EmbeddingsResponse,
    summary="Create embeddings (OpenAI-compatible)",
    responses=ERRORS,
)
async def embeddings(req: EmbeddingsRequest, state: StateDep) -> Response:
    """OpenAI's embeddings call. ``input``: a string or a list of strings; with ``modality:
    image`` each is a ``data:image/...;base64,`` URI. Vectors are unit length: raw, or through
    ``transform`` (a name), ``collection``'s active transform, or the server's default
    transform when neither is given (``"transform": null`` asks for raw vectors)."""
    _check_model(state, req.model)
    dim = int(state.dim or 0)
    if req.dimensions is not None and req.dimensions != dim:
        raise ApiError(
            400,
            f"dimensions {req.dimensions} is not supported: the model {state.model_id} embeds "
            f"in {dim} dimensions",
            param="dimensions",
        )
    items = _inputs(req)
    texts = items if req.modality == "text" else []
    check_counts(state, len(texts), len(items) - len(texts))
    explicit = "transform" in req.model_fields_set
    target = correcting.resolve(
        state, req.transform, req.collection, use_default=not explicit and not req.collection
    )
    correcting.check_model_dim(state, target)
    if req.modality == "text":  # usage: the model tokenizer's count, from the same pass
        raw, tokens = await state.batcher.encode_texts_counted(texts)
    else:
        images = await load_image_inputs(state, items)
        raw, tokens = await state.batcher.encode_images(images), 0

    def finish() -> np.ndarray:
        out = target.apply(raw, req.modality, req.role) if target.transform is not None else raw
        return np.ascontiguousarray(out, dtype="<f4")

    vectors = await run_in_threadpool(finish) if target.transform is not None else finish()
    if req.encoding_format == "base64":
        rows: Any = [base64.b64encode(v.tobytes()).decode() for v in vectors]
    else:
        rows = list(vectors)
    body = {
        "object": "list",
        "data": [{"object": "embedding", "index": i, "embedding": e} for i, e in enumerate(rows)],
        "model": state.model_id,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }
    headers = {}
    if target.transform is not None:
        headers = {"X-Gapfix-Transform": target.name or target.method or "",
                   "X-Gapfix-Fingerprint": target.fingerprint or ""}  # fmt: skip
    return Response(
        orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY),
        media_type="application/json",
        headers=headers,
    )


@router.get("/models", response_model=ModelList, summary="List models (OpenAI-compatible)")
async def list_models(state: StateDep) -> ModelList:
    """The served model (none in vectors mode)."""
    return ModelList(data=_served(state))


@router.get(
    "/models/{model_id:path}",
    response_model=ModelCard,
    summary="Retrieve a model (OpenAI-compatible)",
    responses=ERRORS,
)
async def get_model(model_id: str, state: StateDep) -> ModelCard:
    """The served model by id; 404 ``model_not_found`` for any other id."""
    _check_model(state, model_id)
    return _served(state)[0]
