"""A Milvus collection as a `gapfix correct` sink (pymilvus ``MilvusClient``).

Schema: ``id`` VARCHAR primary key, ``modality`` VARCHAR, ``metadata`` JSON, ``raw`` and
``corrected`` FLOAT_VECTOR(dim), each vector field with an AUTOINDEX (COSINE).
"""

from __future__ import annotations

import logging
from typing import Any

from pymilvus import DataType, MilvusClient
from pymilvus.exceptions import ConnectError, MilvusException, MilvusUnavailableException

from gapfix.errors import InputError
from gapfix.jobs.sinks import Sink, SinkRows, SinkSpec, SinkUnavailable, one_line
from gapfix.store.milvus.conn import MilvusTarget, StoreUnavailableError, connect

ID_MAX_LENGTH = 1024
MODALITY_MAX_LENGTH = 16
METRIC = "COSINE"
# codes of pymilvus' Status that mean "not reachable / not allowed", not "bad row"
_DOWN_CODES = {1, 2, 3, 4}


def _quiet_pymilvus() -> None:
    """pymilvus logs every failed call with a traceback; the job reports refusals itself."""
    logging.getLogger("pymilvus").setLevel(logging.CRITICAL)


class MilvusSink(Sink):
    """Upserts rows into one Milvus collection."""

    def __init__(self, spec: SinkSpec, timeout: float = 30.0) -> None:
        _quiet_pymilvus()
        self.spec = spec
        self.timeout = timeout
        try:
            scheme = "https" if spec.scheme == "milvus+https" else "http"
            host = f"[{spec.host}]" if ":" in spec.host else spec.host
            self.client = connect(
                MilvusTarget(f"{scheme}://{host}:{spec.port}", spec.db),
                token=spec.secret,
                timeout=timeout,
            )
        except StoreUnavailableError as exc:
            raise SinkUnavailable(
                f"cannot connect to Milvus at {spec.display}: {exc.message}"
            ) from None

    def prepare(self, dim: int) -> str:
        name = self.spec.collection
        try:
            if self.client.has_collection(name):
                self._check_schema(self.client.describe_collection(name), dim)
                return "exists"  # upserts need no load: a released collection is fine
            self.client.create_collection(
                name, schema=self._schema(dim), index_params=self._indexes()
            )
        except InputError:
            raise
        except Exception as exc:
            raise SinkUnavailable(f"{self.spec.display}: {one_line(exc)}") from None
        return "created"

    def _schema(self, dim: int) -> Any:
        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=ID_MAX_LENGTH)
        schema.add_field("modality", DataType.VARCHAR, max_length=MODALITY_MAX_LENGTH)
        schema.add_field("metadata", DataType.JSON)
        schema.add_field("raw", DataType.FLOAT_VECTOR, dim=dim)
        schema.add_field("corrected", DataType.FLOAT_VECTOR, dim=dim)
        return schema

    def _indexes(self) -> Any:
        params = self.client.prepare_index_params()
        for vec in ("raw", "corrected"):
            params.add_index(vec, index_type="AUTOINDEX", metric_type=METRIC)
        return params

    def _check_schema(self, desc: dict[str, Any], dim: int) -> None:
        """InputError naming the first field that differs from the sink schema."""
        fields = {f["name"]: f for f in desc.get("fields", [])}
        want = {
            "id": DataType.VARCHAR,
            "modality": DataType.VARCHAR,
            "metadata": DataType.JSON,
            "raw": DataType.FLOAT_VECTOR,
            "corrected": DataType.FLOAT_VECTOR,
        }
        where = f"Milvus collection {self.spec.collection!r} at {self.spec.display}"
        for name, dtype in want.items():
            f = fields.get(name)
            if f is None:
                raise self._mismatch(where, name, "is missing")
            if f.get("type") != dtype:
                got = getattr(f.get("type"), "name", f.get("type"))
                raise self._mismatch(where, name, f"has type {got}, expected {dtype.name}")
            if dtype == DataType.FLOAT_VECTOR:
                have = int((f.get("params") or {}).get("dim", -1))
                if have != dim:
                    raise self._mismatch(where, name, f"has dim {have}, the shards have {dim}")
        if not fields["id"].get("is_primary") or desc.get("auto_id"):
            raise self._mismatch(where, "id", "is not the (non-auto) primary key")
        for name, f in fields.items():
            if name not in want and not f.get("nullable") and "default_value" not in f:
                raise self._mismatch(where, name, "is not gapfix's and has no default")

    def _mismatch(self, where: str, field: str, what: str) -> InputError:
        return InputError(
            f"{where} has another schema: field {field!r} {what}; use another collection name",
            param="sink",
        )

    def _payload(self, rows: SinkRows) -> list[dict[str, Any]]:
        raw, corrected = rows.raw.tolist(), rows.corrected.tolist()
        return [
            {
                "id": rows.keys[i],
                "modality": rows.modalities[i],
                "metadata": rows.meta(i),
                "raw": raw[i],
                "corrected": corrected[i],
            }
            for i in range(len(rows))
        ]

    def _send(self, payload: list[dict[str, Any]]) -> None:
        self.client.upsert(self.spec.collection, payload, timeout=self.timeout)

    def _refused(self, exc: Exception) -> bool:
        if isinstance(exc, ConnectError | MilvusUnavailableException):
            return False
        if isinstance(exc, MilvusException):
            return exc.code not in _DOWN_CODES
        return isinstance(exc, ValueError | TypeError)  # client-side checks of a row

    def count(self) -> int:
        res = self.client.query(self.spec.collection, filter="", output_fields=["count(*)"])
        return int(res[0]["count(*)"])

    def close(self) -> None:
        self.client.close()
