"""FastAPI dependencies, all in one place: settings, store, collection, encoder, API-key auth.

Every dependency is ``async def``: FastAPI runs a plain ``def`` dependency in its thread pool,
one hand-off per dependency per request (four on a search), and none of these block. The one
that may (a collection another Milvus replica created, looked up over the network) runs its
slow path in the pool itself.
"""

from __future__ import annotations

import hmac
from typing import Annotated, Any

from fastapi import Depends, Path, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool

from gapfix.store import Collection, CollectionStore
from gapfix.transforms.registry import TransformRegistry
from service.errors import ApiError
from service.settings import Settings
from service.state import AppState

bearer = HTTPBearer(
    auto_error=False,
    description="An API key from GAPFIX_API_KEYS / GAPFIX_API_KEYS_FILE.",
)


async def get_state(request: Request) -> AppState:
    """The app's runtime state (built by the lifespan)."""
    return request.app.state.gapfix


async def get_settings(state: Annotated[AppState, Depends(get_state)]) -> Settings:
    return state.settings


async def get_store(state: Annotated[AppState, Depends(get_state)]) -> CollectionStore:
    """The open store; 503 before start-up finished or after shutdown began."""
    if state.store is None or not state.started or state.stopping:
        raise ApiError(503, "the service is not ready", type="not_ready")
    return state.store


async def get_transforms(state: Annotated[AppState, Depends(get_state)]) -> TransformRegistry:
    """The named-transform registry; 503 before start-up finished or after shutdown began."""
    if state.transforms is None or not state.started or state.stopping:
        raise ApiError(503, "the service is not ready", type="not_ready")
    return state.transforms


async def get_collection(
    store: Annotated[CollectionStore, Depends(get_store)],
    collection: Annotated[str, Path(description="Collection name.", examples=["photos"])],
) -> Collection:
    """The collection named in the path; 404 if it does not exist."""
    coll = store.peek(collection)
    if coll is not None:
        return coll
    return await run_in_threadpool(store.get, collection)


async def get_batcher(state: Annotated[AppState, Depends(get_state)]) -> Any:
    """The encoder's MicroBatcher, or None in vectors mode."""
    return state.batcher


def _check_key(state: AppState, creds: HTTPAuthorizationCredentials | None) -> None:
    keys = state.settings.keys
    if not keys:
        return
    challenge = {"WWW-Authenticate": 'Bearer realm="gapfix"'}
    if creds is None or not creds.credentials:
        raise ApiError(
            401,
            "missing API key: send 'Authorization: Bearer <key>'",
            param="Authorization",
            headers=challenge,
        )
    given = creds.credentials.encode()
    ok = False
    for key in keys:  # constant time per key; no early exit
        ok |= hmac.compare_digest(given, key.encode())
    if not ok:
        raise ApiError(401, "invalid API key", param="Authorization", headers=challenge)


async def require_write(
    state: Annotated[AppState, Depends(get_state)],
    creds: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)],
) -> None:
    """Every write endpoint: a valid key whenever keys are configured."""
    _check_key(state, creds)


async def require_read(
    state: Annotated[AppState, Depends(get_state)],
    creds: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)],
) -> None:
    """Read endpoints: a valid key when keys are configured and ``protect_reads`` is on."""
    if state.settings.protect_reads:
        _check_key(state, creds)


StateDep = Annotated[AppState, Depends(get_state)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
StoreDep = Annotated[CollectionStore, Depends(get_store)]
CollectionDep = Annotated[Collection, Depends(get_collection)]
TransformsDep = Annotated[TransformRegistry, Depends(get_transforms)]
BatcherDep = Annotated[Any, Depends(get_batcher)]
