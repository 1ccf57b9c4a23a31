"""``GET /v1/collections/{c}/gap``: modality-gap statistics of what is stored, raw and corrected."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from starlette.concurrency import run_in_threadpool

from gapfix.stats import pca_2d
from gapfix.store import Collection
from service.deps import CollectionDep, require_read
from service.errors import responses
from service.routing import JSONRoute
from service.schemas import GapResponse

router = APIRouter(
    route_class=JSONRoute,
    prefix="/v1/collections/{collection}",
    tags=["gap"],
    dependencies=[Depends(require_read)],
)


def gap_report(coll: Collection, pca: bool, max_points: int) -> dict[str, Any]:
    """``Collection.gap_statistics`` (+ 2-D PCA coordinates of both spaces when ``pca``)."""
    out = {"collection": coll.name, **coll.gap_statistics()}
    if not pca:
        return out
    rv = coll.raw_vectors()
    c = rv.counts
    paired = c["image"] == 0 and c["text"] == 0 and c["document"] >= 1
    img, txt = (rv.pair_image, rv.pair_text) if paired else (rv.image, rv.text)
    if len(img) < 1 or len(txt) < 1 or len(img) + len(txt) < 3:
        out["pca"] = None
        return out
    t = coll.active_transform
    raw = pca_2d(img, txt, max_points=max_points, paired=paired)
    corrected = (
        raw
        if t is None
        else pca_2d(
            t.transform(img, "image"),
            t.transform(txt, "text"),
            max_points=max_points,
            paired=paired,
        )
    )
    out["pca"] = {"raw": raw, "corrected": corrected}
    return out


@router.get(
    "/gap",
    response_model=GapResponse,
    summary="Gap statistics",
    responses=responses(401, 404, 422),
)
async def gap(
    coll: CollectionDep,
    pca: Annotated[bool, Query(description="Add 2-D PCA coordinates of both spaces.")] = False,
    max_points: Annotated[
        int, Query(ge=10, le=5000, description="PCA points per modality.")
    ] = 1000,
) -> dict[str, Any]:
    """Centroid gap (exact), and gap statistics of a sample of at most 5000 vectors per
    modality, raw and through the active transform; paired statistics when every item is a
    document. ``?pca=true`` adds 2-D PCA coordinates (raw and corrected) for plotting."""
    return await run_in_threadpool(gap_report, coll, pca, max_points)
