"""Collections: create, list, show, delete."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from starlette.concurrency import run_in_threadpool

from gapfix.errors import InputError
from service.deps import CollectionDep, StateDep, StoreDep, require_read, require_write
from service.errors import responses
from service.routing import JSONRoute
from service.schemas import CollectionCreate, CollectionInfo, CollectionList, Deleted

router = APIRouter(route_class=JSONRoute, prefix="/v1/collections", tags=["collections"])


@router.post(
    "",
    status_code=201,
    response_model=CollectionInfo,
    summary="Create a collection",
    dependencies=[Depends(require_write)],
    responses=responses(400, 401, 409, 422),
)
async def create_collection(req: CollectionCreate, state: StateDep, store: StoreDep) -> dict:
    """Create an empty collection with one FAISS index kind (flat, hnsw, ivfpq). With a model
    loaded its dimension is the model's."""
    dim = req.dim
    if state.dim is not None:
        if dim is not None and dim != state.dim:
            raise InputError(
                f"dim {dim} does not match the model's dimension {state.dim}", param="dim"
            )
        dim = state.dim
    coll = await run_in_threadpool(
        store.create_collection, req.name, req.index, dim, req.index_params
    )
    return coll.info()


@router.get(
    "",
    response_model=CollectionList,
    summary="List collections",
    dependencies=[Depends(require_read)],
    responses=responses(401),
)
async def list_collections(store: StoreDep) -> dict:
    """Every collection: name, index kind, dim, counts per modality, transform and status."""
    return {"collections": await run_in_threadpool(store.list_collections)}


@router.get(
    "/{collection}",
    response_model=CollectionInfo,
    summary="Show a collection",
    dependencies=[Depends(require_read)],
    responses=responses(401, 404),
)
async def get_collection(coll: CollectionDep) -> dict:
    return coll.info()


@router.delete(
    "/{collection}",
    response_model=Deleted,
    summary="Delete a collection",
    dependencies=[Depends(require_write)],
    responses=responses(401, 404),
)
async def delete_collection(collection: str, store: StoreDep) -> Deleted:
    """Delete the collection and all its files."""
    await run_in_threadpool(store.delete_collection, collection)
    return Deleted(deleted=collection)
