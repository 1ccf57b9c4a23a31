"""``POST /v1/collections/{c}/search``: by text, image, vector or stored item; one or a batch."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
from fastapi import APIRouter, Depends
from starlette.concurrency import run_in_threadpool

from gapfix.errors import InputError, PayloadTooLargeError
from gapfix.store import Collection, Searched
from service.deps import CollectionDep, StateDep, require_read
from service.encoding import check_counts, decode_images, encode, require_model
from service.errors import responses
from service.routing import JSONRoute
from service.schemas import Query, SearchRequest, SearchResponse

SAME_SPACE_TRIES = 3

router = APIRouter(
    route_class=JSONRoute,
    prefix="/v1/collections/{collection}",
    tags=["search"],
    dependencies=[Depends(require_read)],
)


def _hits(hits: list[Any]) -> list[dict[str, Any]]:
    return [
        {
            "id": h.id,
            "score": h.score,
            "modality": h.modality,
            "metadata": h.metadata,
            "text": h.caption,
            "has_thumbnail": h.has_thumbnail,
        }
        for h in hits
    ]


async def query_vectors(
    state, coll: Collection, queries: list[Query], names: list[str]
) -> dict[int, tuple[str, np.ndarray]]:
    """``query index -> (modality, raw vector)`` for every non-id query (encoding as needed)."""
    out: dict[int, tuple[str, np.ndarray]] = {}
    texts = [(i, q.text) for i, q in enumerate(queries) if q.text is not None]
    images = [(i, q.image) for i, q in enumerate(queries) if q.image is not None]
    check_counts(state, len(texts), len(images), "search request")
    if texts or images:
        require_model(state, f"{names[(texts or images)[0][0]]}.{'text' if texts else 'image'}")
    decoded = await decode_images(state, [(f"{names[i]}.image", d) for i, d in images])
    tv, iv = await encode(state, [t for _, t in texts], [img for img, _ in decoded])
    for n, (i, _) in enumerate(texts):
        out[i] = ("text", tv[n])
    for n, (i, _) in enumerate(images):
        out[i] = ("image", iv[n])
    dim = coll.dim
    for i, q in enumerate(queries):
        if q.vector is not None:
            if dim is not None and len(q.vector) != dim:
                raise InputError(
                    f"query vector has dimension {len(q.vector)} but the collection has "
                    f"dimension {dim}",
                    param=f"{names[i]}.vector",
                )
            v = np.asarray(q.vector, np.float32)
            if not np.isfinite(v).all() or not v.any():
                raise InputError(
                    "query vector must be finite and non-zero", param=f"{names[i]}.vector"
                )
            out[i] = (q.modality, v)
    return out


async def run_search(
    state,
    coll: Collection,
    queries: list[Query],
    vectors: dict[int, tuple[str, np.ndarray]],
    req: SearchRequest,
) -> tuple[list[list[Any]], list[Any]]:
    """Search every query: vector queries per modality through the search batcher (merged with
    concurrent requests into one FAISS call), id queries off the event loop. Returns the hits
    per query and the transform of each part's space (None: raw)."""
    results: list[list[Any]] = [[] for _ in queries]
    groups = []
    for modality in ("text", "image"):
        idx = [i for i, (m, _) in vectors.items() if m == modality]
        if idx:
            mat = np.stack([vectors[i][1] for i in idx])
            groups.append(
                (
                    idx,
                    state.searcher.search(
                        coll, mat, modality, req.k, req.modalities, req.corrected
                    ),
                )
            )
    ids = [i for i, q in enumerate(queries) if q.id is not None]

    def by_id() -> list[Searched]:
        return [
            coll.search(
                k=req.k,
                modalities=req.modalities,
                corrected=req.corrected,
                item_id=queries[i].id,
                exclude_self=req.exclude_self,
            )
            for i in ids
        ]

    jobs = [g for _, g in groups] + ([run_in_threadpool(by_id)] if ids else [])
    done = await asyncio.gather(*jobs)
    spaces = []
    for (idx, _), found in zip(groups, done, strict=False):
        spaces.append(found.transform)
        for i, h in zip(idx, found.hits, strict=True):
            results[i] = h
    if ids:
        for i, found in zip(ids, done[-1], strict=True):
            spaces.append(found.transform)
            results[i] = found.hits[0]
    return results, spaces


@router.post(
    "/search",
    response_model=SearchResponse,
    summary="Search a collection",
    responses=responses(400, 401, 404, 413, 422, 429),
)
async def search(req: SearchRequest, coll: CollectionDep, state: StateDep) -> dict[str, Any]:
    """Top-``k`` items for a query: ``{"text"}``, ``{"image"}`` (base64), ``{"vector",
    "modality"}`` or ``{"id"}`` of a stored item; ``queries`` for a batch. ``corrected: false``
    searches the raw vectors, so the two can be compared; ``modalities`` filters the results.
    """
    s = state.settings
    batch = req.queries is not None
    queries = req.queries if batch else [req.query]
    if len(queries) > s.max_queries_per_request:
        raise PayloadTooLargeError(
            f"{len(queries)} queries in one request; the limit is {s.max_queries_per_request}",
            param="queries",
        )
    if req.k > s.max_k:
        raise InputError(f"k must be at most {s.max_k}", param="k")
    names = [f"queries[{i}]" for i in range(len(queries))] if batch else ["query"]
    vectors = await query_vectors(state, coll, queries, names)
    # one response, one space: parts that ran across a transform switch are searched again
    for _ in range(SAME_SPACE_TRIES):
        results, spaces = await run_search(state, coll, queries, vectors, req)
        if all(t is spaces[0] for t in spaces):
            break
    transform = spaces[0] if spaces else None
    used = transform is not None
    out: dict[str, Any] = {
        "results": None,
        "batches": None,
        "corrected": used,
        "transform": transform.method if used else None,
    }
    if batch:
        out["batches"] = [_hits(r) for r in results]
    else:
        out["results"] = _hits(results[0])
    return out
