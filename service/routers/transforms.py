"""Named transforms, independent of collections: upload (``PUT``), fit or snapshot
(``POST``), list, show, delete. ``/v1/correct``, ``/v1/embed`` and ``/v1/embeddings`` apply
one by name."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from starlette.concurrency import run_in_threadpool

from gapfix.errors import InputError
from service.deps import StateDep, TransformsDep, require_read, require_write
from service.errors import ApiError, responses
from service.routing import JSONRoute
from service.schemas_transforms import NamedTransformInfo, NamedTransformList, TransformFit

router = APIRouter(route_class=JSONRoute, prefix="/v1/transforms", tags=["transforms"])

NamePath = Annotated[
    str, Path(pattern=r"^[A-Za-z0-9_-]{1,64}$", description="1-64 letters, digits, '_' or '-'.")
]

_OCTET_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
    }
}


@router.put(
    "/{name}",
    response_model=NamedTransformInfo,
    status_code=201,
    summary="Upload a transform artifact",
    dependencies=[Depends(require_write)],
    openapi_extra=_OCTET_BODY,
    responses={
        200: {
            "model": NamedTransformInfo,
            "description": "Replaced (?replace=true), or the same bytes were registered already",
        },
        **responses(400, 401, 409, 413, 415),
    },
)
async def put_transform(
    name: NamePath,
    request: Request,
    registry: TransformsDep,
    response: Response,
    replace: Annotated[bool, Query(description="Replace other content of this name.")] = False,
) -> dict[str, Any]:
    """Register a ``.gapfix`` artifact (``gapfix fit --out``) sent as the body
    (``application/octet-stream``). 201 when new; 200 when the same bytes are registered
    already, or other bytes replaced them with ``?replace=true`` (else 409); 400 when the bytes do
    not load as a transform (nothing is written then)."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype not in ("application/octet-stream", ""):
        raise ApiError(
            415, f"unsupported content type {ctype!r}: send application/octet-stream", "body"
        )
    data = await request.body()
    entry, outcome = await run_in_threadpool(registry.put, name, data, replace)
    response.status_code = 201 if outcome == "created" else 200
    return entry.describe()


@router.post(
    "",
    response_model=NamedTransformInfo,
    status_code=201,
    summary="Fit a named transform, or snapshot a collection's",
    dependencies=[Depends(require_write)],
    responses={
        202: {"model": NamedTransformInfo, "description": "Still fitting (poll GET)."},
        200: {"model": NamedTransformInfo, "description": "Snapshot: the same content exists"},
        **responses(400, 401, 404, 409, 413, 422),
    },
)
async def fit_transform(
    req: TransformFit, registry: TransformsDep, state: StateDep, response: Response
) -> dict[str, Any]:
    """Fit ``method`` on posted ``image``/``text`` calibration vectors (rows paired for paired
    methods and ``auto``) and register it as ``name``: 201 when done within the wait, else 202
    with ``status: fitting`` (poll ``GET /v1/transforms/{name}``; a fit a restart interrupts
    is dropped). ``{name, from_collection}`` registers a collection's active transform under
    ``name`` (same fingerprint)."""
    if req.from_collection is not None:
        if state.store is None:
            raise ApiError(503, "the service is not ready", type="not_ready")
        coll = state.store.get(req.from_collection)
        art = await run_in_threadpool(coll.active_artifact)
        if art is None:
            raise InputError(
                f"collection {coll.name!r} has no active transform to snapshot",
                param="from_collection",
            )
        entry, outcome = await run_in_threadpool(registry.put, req.name, art[1], req.replace)
        response.status_code = 201 if outcome == "created" else 200
        return entry.describe()
    wait = state.settings.transform_wait_s if req.wait_seconds is None else req.wait_seconds
    done = await run_in_threadpool(
        lambda: registry.fit(
            req.name,
            str(req.method),
            req.image,
            req.text,
            params=req.params,
            objective=req.objective,
            labels=req.labels,
            replace=req.replace,
            wait_seconds=wait,
            query_text=req.query_text,
        )
    )
    response.status_code = 201 if done else 202
    return registry.describe(req.name)


@router.get(
    "",
    response_model=NamedTransformList,
    summary="List named transforms",
    dependencies=[Depends(require_read)],
    responses=responses(401),
)
async def list_transforms(registry: TransformsDep) -> dict[str, Any]:
    """Every named transform (and every running or failed fit), by name."""
    return {"transforms": registry.list_transforms()}


@router.get(
    "/{name}",
    response_model=NamedTransformInfo,
    summary="Show a named transform",
    dependencies=[Depends(require_read)],
    responses=responses(401, 404),
)
async def get_transform(name: NamePath, registry: TransformsDep) -> dict[str, Any]:
    """Method, params, dim, model, fit statistics, fingerprint, and ``status``: ready,
    fitting (a POST is still running) or failed (with the error)."""
    return registry.describe(name)


@router.delete(
    "/{name}",
    summary="Delete a named transform",
    dependencies=[Depends(require_write)],
    responses=responses(401, 404, 409),
)
async def delete_transform(name: NamePath, registry: TransformsDep) -> dict[str, str]:
    """Remove the transform and its artifact file."""
    await run_in_threadpool(registry.delete, name)
    return {"deleted": name}
