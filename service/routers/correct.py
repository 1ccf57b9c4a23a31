"""``POST /v1/correct``: raw vectors through a collection's active transform."""

from __future__ import annotations

import numpy as np
from fastapi import APIRouter, Depends
from starlette.concurrency import run_in_threadpool

from service.deps import StoreDep, require_read
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
async def correct(req: CorrectRequest, store: StoreDep) -> CorrectResponse:
    """Apply the collection's active transform to raw ``vectors`` of ``modality``; output is
    L2-normalised. With no active transform the vectors come back normalised only."""
    coll = store.get(req.collection)

    def run() -> tuple[np.ndarray, str | None]:
        t = coll.active_transform
        return coll.correct(req.vectors, req.modality), (None if t is None else t.method)

    out, method = await run_in_threadpool(run)
    return CorrectResponse(
        collection=coll.name, modality=req.modality, transform=method, vectors=out.tolist()
    )
