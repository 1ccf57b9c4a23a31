"""A Qdrant collection as a `gapfix correct` sink (qdrant-client; server or local mode).

Points carry the named vectors ``raw`` and ``corrected`` (COSINE) and the payload
``{"id": key, "modality": ..., "metadata": {...}}``. Qdrant point ids are integers or UUIDs, so
a point's id is the UUID-5 of its key: the same key always lands on the same point.
"""

from __future__ import annotations

import uuid
from typing import Any

from qdrant_client import QdrantClient, models
from qdrant_client.http.exceptions import UnexpectedResponse

from gapfix.errors import InputError
from gapfix.jobs.sinks import Sink, SinkRows, SinkSpec, SinkUnavailable, one_line

KEY_NAMESPACE = uuid.UUID("6f1c3a52-6b1e-5c0e-9d7a-67617066697a")  # fixed: ids stay stable


def point_id(key: str) -> str:
    """The Qdrant point id of a row key (UUID-5)."""
    return str(uuid.uuid5(KEY_NAMESPACE, key))


class QdrantSink(Sink):
    """Upserts rows into one Qdrant collection."""

    def __init__(self, spec: SinkSpec, timeout: float = 30.0) -> None:
        self.spec = spec
        try:
            if spec.scheme == "qdrant+local":
                self.client = QdrantClient(path=spec.path)
            else:
                self.client = QdrantClient(
                    host=spec.host,
                    port=spec.port,
                    https=spec.scheme == "qdrant+https",
                    api_key=spec.secret or None,
                    timeout=int(timeout),
                )
                self.client.get_collections()  # fail now if it cannot be reached
        except Exception as exc:
            raise SinkUnavailable(
                f"cannot open Qdrant at {spec.display}: {one_line(exc)}"
            ) from None

    def prepare(self, dim: int) -> str:
        name = self.spec.collection
        try:
            if self.client.collection_exists(name):
                self._check_schema(self.client.get_collection(name), dim)
                return "exists"
            params = models.VectorParams(size=dim, distance=models.Distance.COSINE)
            self.client.create_collection(name, vectors_config={"raw": params, "corrected": params})
        except InputError:
            raise
        except Exception as exc:
            raise SinkUnavailable(f"{self.spec.display}: {one_line(exc)}") from None
        return "created"

    def _check_schema(self, info: Any, dim: int) -> None:
        vectors = info.config.params.vectors
        where = f"Qdrant collection {self.spec.collection!r} at {self.spec.display}"
        if not isinstance(vectors, dict):  # one unnamed vector
            raise InputError(
                f"{where} has another schema: one unnamed vector, not the named vectors "
                "'raw' and 'corrected'; use another collection name",
                param="sink",
            )
        for name in ("raw", "corrected"):
            v = vectors.get(name)
            what = None
            if v is None:
                what = "is missing"
            elif v.size != dim:
                what = f"has size {v.size}, the shards have {dim}"
            elif v.multivector_config is not None:
                what = "is a multivector"
            if what:
                raise InputError(
                    f"{where} has another schema: vector {name!r} {what}; use another "
                    "collection name",
                    param="sink",
                )

    def _payload(self, rows: SinkRows) -> list[Any]:
        raw, corrected = rows.raw.tolist(), rows.corrected.tolist()
        return [
            models.PointStruct(
                id=point_id(rows.keys[i]),
                vector={"raw": raw[i], "corrected": corrected[i]},
                payload={
                    "id": rows.keys[i],
                    "modality": rows.modalities[i],
                    "metadata": rows.meta(i),
                },
            )
            for i in range(len(rows))
        ]

    def _send(self, payload: list[Any]) -> None:
        self.client.upsert(self.spec.collection, points=payload, wait=True)

    def _refused(self, exc: Exception) -> bool:
        if isinstance(exc, UnexpectedResponse):  # the server answered: 4xx is about the data
            return 400 <= exc.status_code < 500 and exc.status_code not in (401, 403, 404)
        return isinstance(exc, ValueError | TypeError)  # local mode / client-side validation

    def count(self) -> int:
        return int(self.client.count(self.spec.collection, exact=True).count)

    def close(self) -> None:
        self.client.close()
