"""``client.transforms``: named transforms (``/v1/transforms``) — list, get, put an artifact,
fit from calibration vectors, snapshot a collection's, delete."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gapfix.client.errors import GapfixClientError
from gapfix.client.ops import Call, Op, Sleep
from gapfix.client.payloads import Part, as_rows, body, dumps, vector_json

if TYPE_CHECKING:
    from gapfix.client.ops import Operations


class Transforms:
    """Named transforms of the server the client talks to (methods of `AsyncClient`'s
    return awaitables)."""

    def __init__(self, client: Operations) -> None:
        self._c = client

    def _get(self, path: str) -> Op[Any]:
        return (yield Call("GET", path)).data

    def list(self) -> list[dict[str, Any]]:
        """Every named transform (and running or failed fits)."""
        return self._c._run(self._c._map(self._get("/v1/transforms"), lambda d: d["transforms"]))

    def get(self, name: str) -> dict[str, Any]:
        """One transform: method, params, dim, model, fit_stats, fingerprint, status."""
        return self._c._run(self._get(f"/v1/transforms/{name}"))

    def put(
        self, name: str, artifact: bytes | str | os.PathLike, *, replace: bool = False
    ) -> dict[str, Any]:
        """Register a ``.gapfix`` artifact (bytes or a file path) as ``name``; the same bytes
        again are fine, other bytes need ``replace=True`` (else a 409)."""
        data = artifact if isinstance(artifact, bytes) else Path(artifact).read_bytes()

        def op() -> Op[Any]:
            params = {"replace": "true"} if replace else None
            call = Call("PUT", f"/v1/transforms/{name}", data, "application/octet-stream", params)
            return (yield call).data

        return self._c._run(op())

    def fit(
        self,
        name: str,
        method: str,
        image: Any,
        text: Any,
        *,
        params: dict[str, Any] | None = None,
        objective: str | None = None,
        labels: Any = None,
        query_text: Any = None,
        replace: bool = False,
        wait: bool = True,
        poll_s: float = 0.5,
        timeout_s: float | None = None,
    ) -> dict[str, Any]:
        """Fit ``method`` on calibration vectors (arrays (n, d)) and register it as ``name``.
        With ``wait`` a slow fit (202) is polled until ready (a failed fit raises)."""
        lists = {"image": [Part(vector_json(r)) for r in as_rows(image)],
                 "text": [Part(vector_json(r)) for r in as_rows(text)]}  # fmt: skip
        if query_text is not None:
            lists["query_text"] = [Part(vector_json(r)) for r in as_rows(query_text)]
        fields = {"name": name, "method": method, "params": params or {},
                  "objective": objective, "replace": replace or None}  # fmt: skip
        raw = {"labels": dumps([int(x) for x in labels])} if labels is not None else None

        def op() -> Op[Any]:
            reply = yield Call("POST", "/v1/transforms", body(fields, lists, raw))
            info = reply.data
            deadline = None if timeout_s is None else time.monotonic() + timeout_s
            while wait and info.get("status") == "fitting":
                if deadline is not None and time.monotonic() > deadline:
                    raise GapfixClientError(
                        408, f"transform {name!r} still fitting after {timeout_s}s", "timeout"
                    )
                yield Sleep(poll_s)
                info = (yield Call("GET", f"/v1/transforms/{name}")).data
            if info.get("status") == "failed":
                raise GapfixClientError(
                    400, f"fitting {name!r} failed: {info.get('error')}", "fit_failed", body=info
                )
            return info

        return self._c._run(op())

    def snapshot(self, name: str, collection: str, *, replace: bool = False) -> dict[str, Any]:
        """Register ``collection``'s active transform under ``name`` (same fingerprint)."""

        def op() -> Op[Any]:
            fields = {"name": name, "from_collection": collection, "replace": replace or None}
            return (yield Call("POST", "/v1/transforms", body(fields, {}))).data

        return self._c._run(op())

    def delete(self, name: str) -> dict[str, Any]:
        """Remove the transform and its artifact."""

        def op() -> Op[Any]:
            return (yield Call("DELETE", f"/v1/transforms/{name}")).data

        return self._c._run(op())
