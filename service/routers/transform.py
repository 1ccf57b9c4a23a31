"""The active transform of a collection: fit + activate (``POST``), show (``GET``), remove."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Response
from starlette.concurrency import run_in_threadpool

from service.deps import CollectionDep, StateDep, require_read, require_write
from service.errors import ApiError, responses
from service.routing import JSONRoute
from service.schemas import TransformInfo, TransformRequest

router = APIRouter(
    route_class=JSONRoute, prefix="/v1/collections/{collection}/transform", tags=["transform"]
)


@router.post(
    "",
    response_model=TransformInfo,
    summary="Fit and activate a transform",
    dependencies=[Depends(require_write)],
    responses={
        202: {
            "model": TransformInfo,
            "description": "Still fitting, or re-correcting the stored vectors, in the background"
            " (poll GET). A restart resumes re-correcting; a fit it interrupts is dropped.",
        },
        **responses(400, 401, 404, 422),
        409: {
            **responses(409)[409],
            "description": "A later transform request (or DELETE) superseded this one before "
            "it became active",
        },
    },
)
async def fit_transform(
    req: TransformRequest, coll: CollectionDep, state: StateDep, response: Response
) -> dict[str, Any]:
    """Fit ``method`` on the stored raw vectors (documents for paired methods and ``auto``)
    and activate it: every stored vector is re-corrected into a new index while searches keep
    using the old one, then the switch is atomic. 200 with ``status: active`` when that
    finished within the wait, else 202 with ``status: rebuilding`` (poll ``GET``); 409 when a
    later transform request (or a DELETE) superseded this one while it waited."""
    wait = state.settings.transform_wait_s if req.wait_seconds is None else req.wait_seconds
    await run_in_threadpool(coll.fit_transform, req.method, req.params, req.objective, wait)
    info = coll.transform_info()
    if info["status"] == "failed":
        raise ApiError(400, f"fitting {req.method!r} failed: {info['error']}", param="method",
                       type="transform_failed")  # fmt: skip
    response.status_code = 200 if info["status"] == "active" else 202
    return info


@router.get(
    "",
    response_model=TransformInfo,
    summary="Show the active transform",
    dependencies=[Depends(require_read)],
    responses=responses(401, 404),
)
async def get_transform(coll: CollectionDep) -> dict[str, Any]:
    """The active transform (method, params, fit statistics, auto's fit table) and ``status``:
    active, rebuilding (a new one is being applied) or failed (with the error)."""
    return coll.transform_info()


@router.delete(
    "",
    response_model=TransformInfo,
    summary="Remove the active transform",
    dependencies=[Depends(require_write)],
    responses=responses(401, 404),
)
async def remove_transform(coll: CollectionDep) -> dict[str, Any]:
    """Deactivate correction: corrected search becomes raw search."""
    await run_in_threadpool(coll.set_transform, None)
    return coll.transform_info()
