"""Which transform corrects a request's vectors, read once: a named transform, a collection's
active one, the server's default (``GAPFIX_DEFAULT_TRANSFORM``), or none.

A ``Target`` holds the transform object together with the name and fingerprint reported with
the vectors, taken from one view (a collection's ``transform_view``, a registry entry), so a
transform switched while a request runs can never be named with the other one's vectors.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from gapfix.metrics import STAGE_LATENCY
from gapfix.store.items import check_query_vectors
from service.errors import ApiError
from service.state import AppState

Role = Literal["query", "document"]


@dataclass(frozen=True)
class Target:
    """A transform (None: raw vectors) and what a response says about it."""

    transform: Any = None
    fingerprint: str | None = None
    name: str | None = None  # the named transform, if one was used
    collection: str | None = None  # the collection whose active transform it is
    dim: int | None = None

    @property
    def method(self) -> str | None:
        return None if self.transform is None else str(self.transform.method)

    def apply(self, vectors: Any, modality: str, role: Role = "document") -> np.ndarray:
        """Raw vectors of ``modality`` -> corrected unit float32 rows (raw: normalised only).

        ``role="query"`` on text uses the query-text mean where the artifact has one."""
        if len(vectors) == 0:
            return np.zeros((0, self.dim or 0), np.float32)
        q = check_query_vectors(vectors, self.dim)
        if self.transform is None:
            return q
        with STAGE_LATENCY.labels("correct").time():
            out = self.transform.transform(q, modality, role="query" if role == "query" else None)
        return np.ascontiguousarray(out, np.float32)


def _registry(state: AppState) -> Any:
    if state.transforms is None or not state.started or state.stopping:
        raise ApiError(503, "the service is not ready", type="not_ready")
    return state.transforms


def named(state: AppState, name: str) -> Target:
    """The named transform as a Target (404 when there is none)."""
    entry = _registry(state).get(name)
    return Target(entry.transform, entry.fingerprint, entry.name, None, entry.dim)


def of_collection(state: AppState, name: str) -> Target:
    """A collection's active transform (None: raw) with its fingerprint, from one view."""
    if state.store is None or not state.started or state.stopping:
        raise ApiError(503, "the service is not ready", type="not_ready")
    coll = state.store.get(name)
    transform, fp = coll.transform_view()
    return Target(transform, fp, None, coll.name, coll.dim)


def default(state: AppState) -> Target:
    """``GAPFIX_DEFAULT_TRANSFORM`` as a Target (none configured: raw); 404 if unregistered."""
    name = state.settings.default_transform
    if name is None:
        return Target(dim=state.dim)
    entry = _registry(state).get_or_none(name)
    if entry is None:
        raise ApiError(
            404,
            f"the default transform {name!r} (GAPFIX_DEFAULT_TRANSFORM) is not registered: "
            f"PUT /v1/transforms/{name}",
            param="transform",
            type="not_found",
        )
    return Target(entry.transform, entry.fingerprint, entry.name, None, entry.dim)


def resolve(
    state: AppState,
    transform: str | None,
    collection: str | None,
    use_default: bool,
) -> Target:
    """The target a request names: ``transform`` or ``collection`` (not both), else the
    default when ``use_default``, else raw."""
    if transform is not None and collection is not None:
        raise ApiError(400, "give either `transform` or `collection`, not both", "transform")
    if transform is not None:
        return named(state, transform)
    if collection is not None:
        return of_collection(state, collection)
    return default(state) if use_default else Target(dim=state.dim)


def check_model_dim(state: AppState, target: Target, param: str = "transform") -> None:
    """409 when the target's dimension differs from the model's (naming both)."""
    dim = state.dim
    if target.dim is not None and dim is not None and target.dim != dim:
        what = f"transform {target.name!r}" if target.name else f"collection {target.collection!r}"
        raise ApiError(
            409,
            f"{what} has dimension {target.dim} but the model {state.model_id} embeds in {dim}",
            param=param,
            type="dimension_mismatch",
        )
