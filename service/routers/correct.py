"""``POST /v1/correct``: raw vectors through a named transform or a collection's active one."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from starlette.concurrency import run_in_threadpool

from service import correcting
from service.deps import StateDep, require_read
from service.errors import responses
from service.routing import JSONRoute
from service.schemas import CorrectRequest, CorrectResponse

router = APIRouter(
    route_class=JSONRoute, prefix="/v1", tags=["correct"], dependencies=[Depends(require_read)]
)


@router.post(
    "/correct",
    response_model=CorrectResponse,
    summary="Correct vectors",
    responses=responses(400, 401, 404, 422),
)
async def correct(req: CorrectRequest, state: StateDep) -> CorrectResponse:
    """Apply the named ``transform`` (or the active transform of ``collection``) to raw
    ``vectors`` of ``modality``; output is L2-normalised. With no active transform the vectors
    come back normalised only. ``transform``/``fingerprint`` in the response name the transform
    the vectors went through, read together with it (a concurrent switch never mixes them)."""
    target = correcting.resolve(state, req.transform, req.collection, use_default=False)
    out = await run_in_threadpool(target.apply, req.vectors, req.modality, req.role)
    return CorrectResponse(
        collection=target.collection,
        modality=req.modality,
        transform=target.method,
        transform_name=target.name,
        fingerprint=target.fingerprint,
        vectors=out.tolist(),
    )
