"""``gapfix_meta``: one row per collection (settings, active/pending transform, centroid sums)
and one per transform artifact, so that gapfix replicas keep no state of their own.

Rows: ``coll:<name>`` -- ``doc`` (JSON: index, dim, active fingerprint and slot, pending
switch, last error, base counts) and ``blob`` (the base centroid sums, ``.npz``);
``coll:<name>@<replica>`` -- one replica's running changes to the counts (``doc``) and sums
(``blob``) since the base, written by that replica only (totals = base + every replica's
changes, so replicas writing one collection at once never overwrite each other's updates); ``art:<name>:<fp>`` -- the
transform artifact (safetensors bytes) in ``blob``; ``named:<name>`` -- a named transform
(``doc``: fingerprint and creation time; ``blob``: the artifact), shared by every replica. A row is written with one upsert, so the
active transform, its slot and its sums change together or not at all.
"""

from __future__ import annotations

import base64
import io
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from gapfix.store.milvus.conn import (
    CHUNK_CHARS,
    META_COLLECTION,
    build_schema,
    check_schema,
    meta_fields,
    milvus_call,
)
from gapfix.store.sums import COMPONENTS, add_sums, zero_sums
from gapfix.store.sums import Sums as SpaceSums

__all__ = ["COMPONENTS", "Meta", "Sums", "add_sums", "zero_sums"]

Sums = dict[str, SpaceSums]  # space ("raw" or a slot) -> modality -> (n, sum)


def to_chunks(data: bytes) -> list[str]:
    """Bytes as base64 chunks that fit a VARCHAR array element."""
    text = base64.b64encode(data).decode()
    return [text[i : i + CHUNK_CHARS] for i in range(0, len(text), CHUNK_CHARS)] or [""]


def from_chunks(chunks: list[str] | None) -> bytes | None:
    return None if chunks is None else base64.b64decode("".join(chunks))


def pack_sums(sums: Sums) -> bytes:
    arrays = {}
    for space, per in sums.items():
        for m, (n, s) in per.items():
            arrays[f"{space}.{m}.n"] = np.asarray(n, np.int64)
            arrays[f"{space}.{m}.sum"] = np.asarray(s, np.float64)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def unpack_sums(data: bytes | None) -> Sums:
    if not data:
        return {}
    out: Sums = {}
    with np.load(io.BytesIO(data)) as z:
        for key in z.files:
            space, m, what = key.split(".")
            if what == "n":
                out.setdefault(space, {})[m] = (int(z[key]), z[f"{space}.{m}.sum"].copy())
    return out


@dataclass(frozen=True)
class CollectionState:
    """A collection's meta row (``doc``, ``base`` sums) and every replica's changes since the
    base: ``deltas[replica] = (counts, sums)``."""

    doc: dict[str, Any]
    base: Sums
    deltas: dict[str, tuple[dict[str, int], Sums]]


class Meta:
    """Reads and writes ``gapfix_meta`` through one ``MilvusClient``."""

    def __init__(self, client: Any) -> None:
        self.client = client
        if client.has_collection(META_COLLECTION):
            check_schema(
                META_COLLECTION, client.describe_collection(META_COLLECTION), meta_fields()
            )
        else:
            index = client.prepare_index_params()
            index.add_index("v", index_type="FLAT", metric_type="L2")
            client.create_collection(
                META_COLLECTION,
                schema=build_schema(client, meta_fields()),
                index_params=index,
                consistency_level="Strong",
            )
        client.load_collection(META_COLLECTION)

    def _put(self, key: str, doc: dict[str, Any], blob: bytes | None) -> None:
        row = {"key": key, "doc": doc, "blob": None if blob is None else to_chunks(blob)}
        self.client.upsert(META_COLLECTION, [{**row, "v": [0.0, 0.0]}])

    def _get(self, key: str, blob: bool) -> tuple[dict[str, Any], bytes | None] | None:
        fields = ["doc", "blob"] if blob else ["doc"]
        rows = self.client.get(META_COLLECTION, ids=[key], output_fields=fields)
        if not rows:
            return None
        return rows[0]["doc"], from_chunks(rows[0].get("blob")) if blob else None

    # -- collections
    def collection_names(self) -> list[str]:
        rows = self.client.query(META_COLLECTION, filter='key like "coll:%"', output_fields=["key"])
        return sorted(r["key"][5:] for r in rows if "@" not in r["key"])

    def _state_rows(self, name: str, fields: list[str]) -> list[dict[str, Any]]:
        """The collection's row and its replicas' rows (exact keys: '_' is a LIKE wildcard)."""
        own = f"coll:{name}"
        rows = self.client.query(
            META_COLLECTION, filter=f'key like "{own}%"', output_fields=["key", *fields]
        )
        return [r for r in rows if r["key"] == own or r["key"].startswith(own + "@")]

    def read_state(self, name: str) -> CollectionState | None:
        """The meta row and every replica's changes, in one query (None: no such collection)."""
        own = f"coll:{name}"
        doc, base, deltas = None, {}, {}
        for r in self._state_rows(name, ["doc", "blob"]):
            sums = unpack_sums(from_chunks(r.get("blob")))
            if r["key"] == own:
                doc, base = r["doc"], sums
            else:
                counts = {m: int(n) for m, n in (r["doc"].get("counts") or {}).items()}
                deltas[r["key"][len(own) + 1 :]] = (counts, sums)
        return None if doc is None else CollectionState(doc, base, deltas)

    def put_delta(self, name: str, replica: str, counts: dict[str, int], sums: Sums) -> None:
        """Write one replica's changes since the base (only that replica writes this row)."""
        self._put(f"coll:{name}@{replica}", {"counts": counts}, pack_sums(sums))

    def get_collection(self, name: str, sums: bool = False) -> tuple[dict, Sums] | None:
        got = self._get(f"coll:{name}", blob=sums)
        return None if got is None else (got[0], unpack_sums(got[1]))

    def put_collection(self, name: str, doc: dict[str, Any], sums: Sums) -> None:
        """Write the collection's document and sums in one upsert (atomic)."""
        self._put(f"coll:{name}", doc, pack_sums(sums))

    def delete_collection(self, name: str) -> None:
        self.prune_artifacts(name, set())
        keys = [r["key"] for r in self._state_rows(name, [])] or [f"coll:{name}"]
        self.client.delete(META_COLLECTION, ids=keys)

    # -- transform artifacts
    def put_artifact(self, name: str, fp: str, data: bytes) -> None:
        self._put(f"art:{name}:{fp}", {"fingerprint": fp}, data)

    def get_artifact(self, name: str, fp: str) -> bytes | None:
        got = self._get(f"art:{name}:{fp}", blob=True)
        return None if got is None else got[1]

    def prune_artifacts(self, name: str, keep: set[str]) -> None:
        rows = self.client.query(
            META_COLLECTION, filter=f'key like "art:{name}:%"', output_fields=["key"]
        )
        prefix = f"art:{name}:"  # exact prefix: '_' in a name may be a LIKE wildcard
        drop = [
            r["key"]
            for r in rows
            if r["key"].startswith(prefix) and r["key"][len(prefix) :] not in keep
        ]
        if drop:
            self.client.delete(META_COLLECTION, ids=drop)


class MilvusArtifacts:
    """Named transforms' artifact bytes as ``gapfix_meta`` rows ``named:<name>``: an artifact
    store (``gapfix.transforms.artifact_stores``) that every replica over this Milvus shares.
    Milvus failures raise StoreUnavailableError (the service's 503)."""

    shared = True
    PREFIX = "named:"

    def __init__(self, meta: Meta) -> None:
        self.meta = meta

    @milvus_call
    def listing(self) -> dict[str, tuple[str, float]]:
        rows = self.meta.client.query(
            META_COLLECTION, filter=f'key like "{self.PREFIX}%"', output_fields=["key", "doc"]
        )
        return {
            r["key"][len(self.PREFIX) :]: (str(r["doc"]["fingerprint"]), float(r["doc"]["created"]))
            for r in rows
            if r["key"].startswith(self.PREFIX)
        }

    @milvus_call
    def read(self, name: str) -> bytes | None:
        got = self.meta._get(self.PREFIX + name, blob=True)
        return None if got is None else got[1]

    @milvus_call
    def write(self, name: str, data: bytes) -> float:
        from gapfix.transforms.artifact_stores import fingerprint

        created = time.time()
        doc = {"fingerprint": fingerprint(data), "created": created}
        self.meta._put(self.PREFIX + name, doc, data)  # one upsert: old bytes or new
        return created

    @milvus_call
    def remove(self, name: str) -> None:
        self.meta.client.delete(META_COLLECTION, ids=[self.PREFIX + name])
