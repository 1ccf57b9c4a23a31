"""Connecting to Milvus: ``milvus://HOST:PORT[/db]`` URIs, the client, error mapping, schemas.

A gapfix collection ``NAME`` is the Milvus collection ``NAME`` with the fields of
``DATA_FIELDS``: primary key ``id`` (VARCHAR), ``modality``, ``text`` (the caption),
``metadata`` (JSON), ``weight``, ``created_at``, ``has_thumbnail``, ``thumbnail`` (the JPEG,
base64 in chunks of an ARRAY of VARCHAR), the raw components ``image_vector`` / ``text_vector``
(ARRAY of FLOAT, null when absent) and three vector fields: ``raw`` (the fused raw vector) and
the two corrected slots ``corrected`` / ``corrected_b`` (one holds the active transform's space,
the other the next one while a switch runs). The collection ``gapfix_meta`` holds the settings,
active transform and centroid sums of every collection, and the transform artifacts.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import logging
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

from gapfix.errors import GapfixError, InputError
from gapfix.store.errors import ConflictError

META_COLLECTION = "gapfix_meta"
SLOTS = ("corrected", "corrected_b")
MILVUS_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
CHUNK_CHARS = 65535
MAX_ID_BYTES = 1024  # 256 characters of at most 4 UTF-8 bytes
MAX_TEXT_BYTES = 65536
THUMB_CHUNKS = 16  # 16 x 65535 base64 characters > 512 KiB of thumbnail
BLOB_CHUNKS = 4096

F = TypeVar("F", bound=Callable[..., Any])


class _NoMvccWarning(logging.Filter):
    """Milvus Lite answers query iterators without an MVCC timestamp; pymilvus then warns
    on every iteration (and falls back to a client-side one, which is what we want)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "mvccTs" not in record.getMessage()


logging.getLogger("pymilvus.client.iterator.query_iterator").addFilter(_NoMvccWarning())


class StoreUnavailableError(GapfixError):
    """Milvus did not answer (down, unreachable, timed out); the service answers 503."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message
        self.param = None


@dataclass(frozen=True)
class MilvusTarget:
    """Where a Milvus store lives: the client URI and the database (``""``: default)."""

    uri: str
    db_name: str = ""

    @property
    def address(self) -> str:
        return self.uri.split("://", 1)[1]


def parse_store_uri(value: str, secure: bool = False) -> MilvusTarget:
    """``milvus://HOST:PORT[/db]`` -> the pymilvus URI (``http``, or ``https`` when ``secure``)
    and database name; anything else -> InputError (param ``--store``)."""
    parts = urlsplit(value.strip())
    if parts.scheme != "milvus" or not parts.hostname:
        raise InputError(
            f"--store must be 'embedded' or milvus://HOST:PORT[/db], got {value!r}", "--store"
        )
    try:
        port = parts.port or 19530
    except ValueError:
        raise InputError(f"--store {value!r}: the port is not a number", "--store") from None
    db = parts.path.strip("/")
    if db and not MILVUS_NAME_RE.fullmatch(db):
        raise InputError(f"--store {value!r}: {db!r} is not a Milvus database name", "--store")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return MilvusTarget(f"{'https' if secure else 'http'}://{host}:{port}", db)


CONNECT_RETRY_S = 10.0  # how long a refused connect is retried (at most the timeout)
CONNECT_BACKOFF_S = (0.1, 0.2, 0.5, 1.0)  # then every 1 s


def connect(target: MilvusTarget, token: str = "", timeout: float = 10.0, **tls: Any) -> Any:
    """A ``MilvusClient`` for ``target``; StoreUnavailableError when it cannot connect.

    A refused first call (the server is still starting, or it just closed the shared gRPC
    connection with a GOAWAY) is retried with a short backoff for up to ``CONNECT_RETRY_S``
    (at most ``timeout``).
    ``tls``: pymilvus's own keywords (``server_pem_path``, ``server_name``, ``ca_pem_path``,
    ``client_pem_path``, ``client_key_path``); empty values are left out.
    """
    try:
        from pymilvus import MilvusClient
    except ImportError:
        raise GapfixError("the Milvus store needs pymilvus: pip install 'gapfix[milvus]'") from None

    kwargs = {k: v for k, v in tls.items() if v}
    plog = logging.getLogger("pymilvus")
    level = plog.level
    plog.setLevel(logging.CRITICAL)  # pymilvus logs a traceback per failed connect
    start = time.monotonic()
    deadline, retry_until = start + timeout, start + min(timeout, CONNECT_RETRY_S)
    try:
        for attempt in itertools.count():
            try:
                return MilvusClient(
                    uri=target.uri,
                    token=token,
                    db_name=target.db_name,
                    timeout=max(deadline - time.monotonic(), 0.5),
                    **kwargs,
                )
            except Exception as exc:
                pause = CONNECT_BACKOFF_S[min(attempt, len(CONNECT_BACKOFF_S) - 1)]
                if not _retryable(exc) or time.monotonic() + pause > retry_until:
                    raise StoreUnavailableError(
                        f"cannot reach Milvus at {target.address}: {_reason(exc)}"
                    ) from None
                time.sleep(pause)
        raise AssertionError("unreachable")
    finally:
        plog.setLevel(level)


def _retryable(exc: BaseException) -> bool:
    """A failed connect that may succeed on a second try (not bad credentials or TLS files)."""
    from pymilvus.exceptions import MilvusException

    text = _reason(exc).lower()
    if any(w in text for w in ("auth", "credential", "password", "permission", "pem")):
        return False
    return isinstance(exc, MilvusException) or type(exc).__module__.startswith("grpc")


def _reason(exc: BaseException) -> str:
    msg = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    return " ".join(str(msg).split())


@contextlib.contextmanager
def unavailable_as_503() -> Iterator[None]:
    """Turn a pymilvus/gRPC failure into StoreUnavailableError (the service's 503)."""
    from pymilvus.exceptions import MilvusException

    try:
        yield
    except MilvusException as exc:
        raise StoreUnavailableError(f"Milvus request failed: {_reason(exc)}") from None
    except Exception as exc:
        if type(exc).__module__.startswith(("grpc", "pymilvus")):
            raise StoreUnavailableError(f"Milvus request failed: {_reason(exc)}") from None
        raise


def milvus_call(fn: F) -> F:
    """Decorator form of ``unavailable_as_503``."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with unavailable_as_503():
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def check_milvus_name(name: str) -> str:
    """Gapfix names allow '-' and a leading digit; Milvus collection names do not."""
    if not MILVUS_NAME_RE.fullmatch(name) or name == META_COLLECTION:
        raise InputError(
            f"collection name {name!r} cannot be a Milvus collection: use letters, digits and "
            f"'_', starting with a letter or '_' (and not {META_COLLECTION!r})",
            param="name",
        )
    return name


def data_fields(dim: int) -> list[tuple[str, str, dict[str, Any]]]:
    """``(name, DataType name, params)`` of a gapfix collection's fields, in order."""
    return [
        ("id", "VARCHAR", {"is_primary": True, "max_length": MAX_ID_BYTES}),
        ("modality", "VARCHAR", {"max_length": 16}),
        ("text", "VARCHAR", {"max_length": MAX_TEXT_BYTES, "nullable": True}),
        ("metadata", "JSON", {}),
        ("weight", "FLOAT", {}),
        ("created_at", "DOUBLE", {}),
        ("has_thumbnail", "BOOL", {}),
        (
            "thumbnail",
            "ARRAY",
            {
                "element_type": "VARCHAR",
                "max_capacity": THUMB_CHUNKS,
                "max_length": CHUNK_CHARS,
                "nullable": True,
            },
        ),
        (
            "image_vector",
            "ARRAY",
            {"element_type": "FLOAT", "max_capacity": dim, "nullable": True},
        ),
        (
            "text_vector",
            "ARRAY",
            {"element_type": "FLOAT", "max_capacity": dim, "nullable": True},
        ),
        ("raw", "FLOAT_VECTOR", {"dim": dim}),
        ("corrected", "FLOAT_VECTOR", {"dim": dim}),
        ("corrected_b", "FLOAT_VECTOR", {"dim": dim}),
    ]


def meta_fields() -> list[tuple[str, str, dict[str, Any]]]:
    """Fields of ``gapfix_meta``: key, a JSON document, a blob (base64 chunks), a dummy vector
    (Milvus needs one per collection)."""
    return [
        ("key", "VARCHAR", {"is_primary": True, "max_length": 512}),
        ("doc", "JSON", {}),
        (
            "blob",
            "ARRAY",
            {
                "element_type": "VARCHAR",
                "max_capacity": BLOB_CHUNKS,
                "max_length": CHUNK_CHARS,
                "nullable": True,
            },
        ),
        ("v", "FLOAT_VECTOR", {"dim": 2}),
    ]


def build_schema(client: Any, fields: list[tuple[str, str, dict[str, Any]]]) -> Any:
    from pymilvus import DataType

    schema = client.create_schema(auto_id=False, enable_dynamic_field=False)
    for name, dtype, params in fields:
        p = dict(params)
        if "element_type" in p:
            p["element_type"] = DataType[p["element_type"]]
        schema.add_field(name, DataType[dtype], **p)
    return schema


def check_schema(name: str, described: dict[str, Any], fields: list[tuple[str, str, dict]]) -> None:
    """ConflictError naming the first field of ``fields`` that the Milvus collection ``name``
    lacks or types differently (``described``: ``describe_collection``)."""
    have = {f["name"]: f for f in described.get("fields", [])}
    for fname, dtype, params in fields:
        f = have.get(fname)
        why = None
        if f is None:
            why = "is missing"
        else:
            ftype = getattr(f.get("type"), "name", str(f.get("type")))
            fp = f.get("params") or {}
            if ftype != dtype:
                why = f"is {ftype}, gapfix needs {dtype}"
            elif params.get("is_primary") and not f.get("is_primary"):
                why = "is not the primary key"
            elif "dim" in params and int(fp.get("dim", -1)) != params["dim"]:
                why = f"has dimension {fp.get('dim')}, gapfix needs {params['dim']}"
            elif "element_type" in params:
                etype = getattr(f.get("element_type"), "name", str(f.get("element_type")))
                if etype != params["element_type"]:
                    why = f"holds {etype}, gapfix needs {params['element_type']}"
        if why is not None:
            raise ConflictError(
                f"Milvus collection {name!r} is not a gapfix collection: field {fname!r} {why}",
                param=fname,
            )
