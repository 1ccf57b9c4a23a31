"""Where `gapfix correct --sink URI` writes: a vector database instead of parquet shards.

Every sink holds one row per shard row with the same schema: a string key, ``modality``,
``metadata`` (JSON) and two vectors, ``raw`` (the input embedding) and ``corrected``. Writes
are upserts by key, so a rerun after a crash rewrites what was already there instead of
adding duplicates. URIs:

- ``milvus://[USER:PASSWORD@]HOST:PORT/COLLECTION[?db=NAME]`` (``milvus+https://`` for TLS);
- ``qdrant://[:API_KEY@]HOST:PORT/COLLECTION`` (``qdrant+https://`` for TLS);
- ``qdrant+local:///PATH/COLLECTION``: qdrant-client's local mode on a folder (tests, small
  jobs; one process at a time).

Keys follow `gapfix index build --pairs split`: the shard id, or ``ID#image`` / ``ID#text``
when an id has both rows. Rows the database refuses are returned as `Failure` records (the
batch is split until the refused rows are isolated); a database that cannot be reached raises
`SinkUnavailable` and the job stops with its finished shards recorded.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import numpy as np

from gapfix.errors import GapfixError, InputError
from gapfix.jobs.failures import Failure

SCHEMES = ("milvus", "milvus+https", "qdrant", "qdrant+https", "qdrant+local")
SINK_BATCH = 1000  # rows per upsert request
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]{0,254}$")


class SinkUnavailable(GapfixError, RuntimeError):
    """The database could not be reached or stopped answering (the job stops; rerun it)."""


@dataclass(frozen=True)
class SinkSpec:
    """A parsed sink URI (``secret`` holds the credentials, never shown)."""

    scheme: str
    collection: str
    host: str = ""
    port: int = 0
    path: str = ""  # qdrant+local: the storage folder
    db: str = ""
    secret: str = field(default="", repr=False)

    @property
    def kind(self) -> str:
        return self.scheme.split("+")[0]

    @property
    def display(self) -> str:
        """The URI without credentials (logs, manifest, failures)."""
        if self.scheme == "qdrant+local":
            return f"qdrant+local://{self.path}/{self.collection}"
        db = f"?db={self.db}" if self.db else ""
        return f"{self.scheme}://{self.host}:{self.port}/{self.collection}{db}"


def parse_sink(uri: str) -> SinkSpec:
    """Parse ``--sink``; InputError (exit 2) for an unknown scheme or a malformed URI."""
    parts = urlsplit(uri)
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        raise InputError(
            f"--sink {uri!r}: unknown scheme {parts.scheme or '(none)'!r}; expected one of "
            + ", ".join(f"{s}://" for s in SCHEMES),
            param="sink",
        )
    if scheme == "qdrant+local":
        folder, _, coll = parts.path.rstrip("/").rpartition("/")
        if parts.netloc or not folder.startswith("/") or not coll:
            raise InputError(
                f"--sink {uri!r}: expected qdrant+local:///ABSOLUTE/FOLDER/COLLECTION",
                param="sink",
            )
        _check_name(coll, uri)
        return SinkSpec(scheme, coll, path=folder)
    try:
        host, port = parts.hostname, parts.port
    except ValueError as exc:  # a port that is not a number
        raise InputError(f"--sink {uri!r}: {exc}", param="sink") from None
    coll = parts.path.strip("/")
    if not host or not port or not coll or "/" in coll:
        raise InputError(f"--sink {uri!r}: expected {scheme}://HOST:PORT/COLLECTION", param="sink")
    _check_name(coll, uri)
    if parts.password is not None:
        user = unquote(parts.username or "")
        secret = f"{user}:{unquote(parts.password)}" if user else unquote(parts.password)
    else:
        secret = ""
    db = (parse_qs(parts.query).get("db") or [""])[0]
    return SinkSpec(scheme, coll, host=host, port=port, db=db, secret=secret)


def _check_name(name: str, uri: str) -> None:
    if not _NAME.match(name):
        raise InputError(
            f"--sink {uri!r}: collection name {name!r} must start with a letter or _ and hold "
            "only letters, digits, _ and -",
            param="sink",
        )


@dataclass
class SinkRows:
    """Rows to upsert: keys, modalities, metadata (JSON strings) and both vectors."""

    keys: list[str]
    modalities: list[str]
    metadata: list[str]
    raw: np.ndarray
    corrected: np.ndarray

    def __len__(self) -> int:
        return len(self.keys)

    def take(self, sl: slice) -> SinkRows:
        return SinkRows(
            self.keys[sl], self.modalities[sl], self.metadata[sl], self.raw[sl], self.corrected[sl]
        )

    def meta(self, i: int) -> dict[str, Any]:
        value = json.loads(self.metadata[i]) if self.metadata[i] else {}
        return value if isinstance(value, dict) else {"value": value}


def sink_keys(ids: list[str], modalities: list[str]) -> list[str]:
    """One key per row: the id, or ``ID#MODALITY`` when the id has another (adjacent) row."""
    n = len(ids)
    keys = list(ids)
    for i in range(n):
        if (i > 0 and ids[i - 1] == ids[i]) or (i + 1 < n and ids[i + 1] == ids[i]):
            keys[i] = f"{ids[i]}#{modalities[i]}"
    return keys


class Sink:
    """A collection in a vector database that takes upserts of `SinkRows`."""

    spec: SinkSpec

    def prepare(self, dim: int) -> str:
        """Create the collection (``raw``/``corrected`` of ``dim``) or check the existing one's
        schema (InputError naming the field). Returns "created" or "exists"."""
        raise NotImplementedError

    def _payload(self, rows: SinkRows) -> Any:
        """The request body of an upsert of ``rows`` (the client's row objects)."""
        raise NotImplementedError

    def _send(self, payload: Any) -> None:
        """Upsert one payload in one request; raise on refusal (see `_refused`)."""
        raise NotImplementedError

    def _refused(self, exc: Exception) -> bool:
        """True when ``exc`` means the database refused the data (not that it is down)."""
        raise NotImplementedError

    def count(self) -> int:
        """Rows in the collection."""
        raise NotImplementedError

    def close(self) -> None:
        """Release the client."""

    def write(self, rows: SinkRows, shard: int = -1, batch: int = SINK_BATCH) -> list[Failure]:
        """Upsert ``rows`` in batches; returns the rows the database refused as failures.

        One request is in flight while the next batch's payload is built (the client waits on
        the server with the GIL released). A refused batch is split until the refused rows are
        isolated; the others still go in.
        """
        failures: list[Failure] = []
        parts = [rows.take(slice(s, s + batch)) for s in range(0, len(rows), batch)]
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="gapfix-sink") as pool:
            inflight: tuple[SinkRows, Future[None]] | None = None
            for part in parts:
                payload = self._build(part, shard, failures)
                if inflight is not None:
                    self._settle(*inflight, shard, failures)
                inflight = (part, pool.submit(self._send, payload)) if payload is not None else None
            if inflight is not None:
                self._settle(*inflight, shard, failures)
        return failures

    def _build(self, rows: SinkRows, shard: int, failures: list[Failure]) -> Any:
        try:
            return self._payload(rows)
        except (ValueError, TypeError):  # a row the client cannot express: isolate it
            self._isolate(rows, shard, failures)
            return None

    def _settle(
        self, rows: SinkRows, done: Future[None], shard: int, failures: list[Failure]
    ) -> None:
        try:
            done.result()
        except Exception as exc:
            self._check(exc)
            self._isolate(rows, shard, failures)

    def _check(self, exc: Exception) -> None:
        if not self._refused(exc):
            raise SinkUnavailable(f"{self.spec.display}: {one_line(exc)}") from exc

    def _isolate(self, rows: SinkRows, shard: int, failures: list[Failure]) -> None:
        """Upsert ``rows`` (known to hold a refused row) by halves, down to single rows."""
        if len(rows) == 1:
            try:
                self._send(self._payload(rows))
            except Exception as exc:
                self._check(exc)
                failures.append(
                    Failure(
                        id=rows.keys[0],
                        source=self.spec.display,
                        reason=f"refused by the database: {one_line(exc)}",
                        modality=rows.modalities[0],
                        shard=shard,
                    )
                )
            return
        half = len(rows) // 2
        for part in (rows.take(slice(0, half)), rows.take(slice(half, None))):
            try:
                self._send(self._payload(part))
            except Exception as exc:
                self._check(exc)
                self._isolate(part, shard, failures)


def one_line(exc: Exception) -> str:
    text = " ".join(str(exc).split())
    return text[:500]


def open_sink(spec: SinkSpec | str, timeout: float = 30.0) -> Sink:
    """Connect to the sink (SinkUnavailable when it cannot be reached)."""
    if isinstance(spec, str):
        spec = parse_sink(spec)
    opener: Callable[[SinkSpec, float], Sink]
    try:
        if spec.kind == "milvus":
            from gapfix.jobs.sinks.milvus import MilvusSink as opener
        else:
            from gapfix.jobs.sinks.qdrant import QdrantSink as opener
    except ImportError as exc:
        raise InputError(
            f"--sink {spec.scheme}:// needs {exc.name}: pip install 'gapfix[{spec.kind}]'",
            param="sink",
        ) from None
    return opener(spec, timeout)


__all__ = [
    "SINK_BATCH",
    "Sink",
    "SinkRows",
    "SinkSpec",
    "SinkUnavailable",
    "open_sink",
    "parse_sink",
    "sink_keys",
]
