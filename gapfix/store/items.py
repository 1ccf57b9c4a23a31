"""Item model of a collection: what the caller sends (``ItemIn``), what it reads back (``Item``,
``Hit``), batch validation, and the FAISS id encoding.

FAISS ids are int64: ``modality_code << 56 | seq`` where ``seq`` is the item's SQLite row id
(never reused: an upsert gives the item a new seq). A modality filter is therefore an id range,
which FAISS applies inside the search through an ``IDSelectorRange``.
"""

from __future__ import annotations

import json
import math
import numbers
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gapfix.errors import InputError, PayloadTooLargeError

ITEM_MODALITIES = ("image", "text", "document")
QUERY_MODALITIES = ("image", "text")
MODALITY_CODE = {"image": 0, "text": 1, "document": 2}
CODE_MODALITY = {v: k for k, v in MODALITY_CODE.items()}
SEQ_BITS = 56
SEQ_MASK = (1 << SEQ_BITS) - 1

MAX_ID_CHARS = 256
MAX_METADATA_BYTES = 64 * 1024
MAX_METADATA_DEPTH = 64  # nested objects/arrays; far deeper breaks JSON serialisation of hits
MAX_THUMBNAIL_BYTES = 512 * 1024
MAX_CAPTION_BYTES = 64 * 1024
DEFAULT_WEIGHT = 0.5
_BAD_ID_CHARS = re.compile(r"[\x00-\x1f\x7f\ud800-\udfff]")  # control chars, lone surrogates


def encode_fids(seqs: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """FAISS ids for SQLite seqs and modality codes (int64 arrays of the same length)."""
    return (np.asarray(codes, np.int64) << SEQ_BITS) | np.asarray(seqs, np.int64)


def fid_seq(fids: np.ndarray) -> np.ndarray:
    """The SQLite seq part of FAISS ids."""
    return np.asarray(fids, np.int64) & SEQ_MASK


def fid_code(fids: np.ndarray) -> np.ndarray:
    """The modality code part of FAISS ids."""
    return np.asarray(fids, np.int64) >> SEQ_BITS


@dataclass
class ItemIn:
    """One item to add. ``image``/``text`` are RAW embeddings (1-D); both given = a document.

    ``weight`` is the image weight of a document's fused vector:
    ``normalise(weight * image + (1 - weight) * text)`` (ignored for single-modality items).
    ``thumbnail`` holds small opaque bytes (the service stores a JPEG) returned by
    ``Collection.get_thumbnail``. ``caption`` is the original text (at most 64 KiB), returned
    with the item and its search hits.
    """

    id: str
    image: Any = None
    text: Any = None
    metadata: dict[str, Any] | None = None
    weight: float = DEFAULT_WEIGHT
    thumbnail: bytes | None = None
    caption: str | None = None


@dataclass
class Item:
    """A stored item. Vectors are the stored raw embeddings (L2-normalised float32)."""

    id: str
    modality: str
    metadata: dict[str, Any]
    image: np.ndarray | None = None
    text: np.ndarray | None = None
    weight: float | None = None
    has_thumbnail: bool = False
    created_at: float = 0.0
    caption: str | None = None


@dataclass(frozen=True, slots=True)
class Hit:
    """One search result: item id, inner-product score (cosine), item modality, metadata,
    the item's caption (None if it has none) and whether it has a thumbnail."""

    id: str
    score: float
    modality: str
    metadata: dict[str, Any] = field(default_factory=dict)
    caption: str | None = None
    has_thumbnail: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "score": self.score,
            "modality": self.modality,
            "metadata": self.metadata,
            "caption": self.caption,
            "has_thumbnail": self.has_thumbnail,
        }


@dataclass
class Batch:
    """A validated batch, ready to store: unit-length components and the serialised fields."""

    ids: list[str]
    codes: np.ndarray  # (n,) int64 modality codes
    image: np.ndarray  # (n, d) float32; rows of items without an image are zero
    text: np.ndarray  # (n, d) float32; rows of items without a text are zero
    has_image: np.ndarray  # (n,) bool
    has_text: np.ndarray  # (n,) bool
    weights: np.ndarray  # (n,) float32, image weight of documents (1/0 for single modality)
    metadata_json: list[str]
    thumbnails: list[bytes | None]
    captions: list[str | None] = field(default_factory=list)

    @property
    def dim(self) -> int:
        return int(self.image.shape[1])

    def __len__(self) -> int:
        return len(self.ids)


def check_item_id(item_id: Any, param: str = "id") -> str:
    """Return a valid item id: a non-empty string of at most 256 characters, no control chars
    (nor lone surrogates, which SQLite cannot store)."""
    if not isinstance(item_id, str) or not item_id:
        raise InputError("item id must be a non-empty string", param=param)
    if len(item_id) > MAX_ID_CHARS:
        raise InputError(f"item id is longer than {MAX_ID_CHARS} characters", param=param)
    if _BAD_ID_CHARS.search(item_id):
        raise InputError(
            "item id must not contain control characters or unpaired surrogates", param=param
        )
    return item_id


def check_modalities(
    modalities: Sequence[str] | None, param: str = "modalities"
) -> list[str] | None:
    """Validate a modality filter; None (or all three) means no filter."""
    if modalities is None:
        return None
    if isinstance(modalities, str):
        modalities = [modalities]
    mods = list(dict.fromkeys(modalities))
    if not mods:
        raise InputError("modalities must not be empty (omit it to search all)", param=param)
    bad = [m for m in mods if m not in ITEM_MODALITIES]
    if bad:
        raise InputError(
            f"unknown modality {bad[0]!r}; expected some of {list(ITEM_MODALITIES)}", param=param
        )
    return None if len(mods) == len(ITEM_MODALITIES) else mods


def _vector(x: Any, param: str) -> np.ndarray:
    try:
        v = np.asarray(x, dtype=np.float32)
    except (TypeError, ValueError):
        raise InputError("vector must be a list of numbers", param=param) from None
    if v.ndim != 1 or v.shape[0] < 1:
        raise InputError(
            f"vector must be 1-D and non-empty, got shape {tuple(v.shape)}", param=param
        )
    return v


def normalize(x: np.ndarray) -> np.ndarray:
    """Row-wise L2 normalisation into a new contiguous float32 array (zero rows stay zero)."""
    x = np.array(x, dtype=np.float32, order="C", copy=True)
    # float64 norms: float32 squares overflow above ~1.8e19 and underflow below ~1e-19
    norms = np.sqrt(np.einsum("ij,ij->i", x, x, dtype=np.float64))[:, None]
    np.divide(x, norms, out=x, where=norms > 0)
    return x


def check_query_vectors(vectors: Any, dim: int | None, param: str = "vectors") -> np.ndarray:
    """Validate raw query vectors ((nq, d) or (d,)) and return them unit-length float32."""
    try:
        q = np.asarray(vectors, dtype=np.float32)
    except (TypeError, ValueError):
        raise InputError("query vectors must be numbers", param=param) from None
    if q.ndim == 1:
        q = q[None, :]
    if q.ndim != 2 or q.shape[0] < 1 or q.shape[1] < 1:
        raise InputError(
            f"query vectors must be (nq, dim), got shape {tuple(q.shape)}", param=param
        )
    if dim is not None and q.shape[1] != dim:
        raise InputError(
            f"query vectors have dimension {q.shape[1]} but the collection has dimension {dim}",
            param=param,
        )
    if not np.isfinite(q).all():
        raise InputError("query vectors contain NaN or inf", param=param)
    if not q.any(axis=1).all():
        raise InputError("query vectors contain a zero vector", param=param)
    return normalize(q)


def nesting_depth(value: Any) -> int:
    """Levels of nested dicts/lists in a JSON value (a scalar is 0, ``{}`` is 1); iterative,
    so any depth is measured without recursion."""
    deepest = 0
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children = node.values()
        elif isinstance(node, list | tuple):
            children = node
        else:
            continue
        deepest = max(deepest, depth)
        stack.extend((child, depth + 1) for child in children)
    return deepest


def validate_batch(items: Sequence[ItemIn], dim: int | None) -> Batch:
    """Check a whole batch before anything is written; raise InputError naming the bad field.

    Checks: ids (valid, unique in the batch), at least one vector per item, 1-D finite non-zero
    vectors of one dimension (the collection's, when fixed), weight in [0, 1], metadata a
    JSON object (finite numbers) of at most 64 KiB nesting at most 64 levels, thumbnail bytes of at most 512 KiB.
    """
    if isinstance(items, ItemIn):
        items = [items]
    if len(items) == 0:
        raise InputError("no items given", param="items")
    n = len(items)
    seen: dict[str, int] = {}
    vecs: dict[str, list[tuple[int, np.ndarray]]] = {"image": [], "text": []}
    weights = np.empty(n, np.float32)
    metadata_json: list[str] = []
    thumbnails: list[bytes | None] = []
    captions: list[str | None] = []
    for i, it in enumerate(items):
        p = f"items[{i}]"
        if not isinstance(it, ItemIn):
            raise InputError(f"{p} must be an ItemIn", param=p)
        check_item_id(it.id, f"{p}.id")
        if it.id in seen:
            raise InputError(
                f"duplicate id {it.id!r} in batch (items {seen[it.id]} and {i})", f"{p}.id"
            )
        seen[it.id] = i
        if it.image is None and it.text is None:
            raise InputError(f"{p} needs an image and/or a text vector", param=p)
        for m in ("image", "text"):
            x = getattr(it, m)
            if x is not None:
                vecs[m].append((i, _vector(x, f"{p}.{m}")))
        if it.image is not None and it.text is not None:
            w = it.weight
            if (
                not isinstance(w, numbers.Real)  # numpy scalars too
                or isinstance(w, bool | np.bool_)
                or not math.isfinite(w)
                or not 0 <= w <= 1
            ):
                raise InputError(f"{p}.weight must be a number in [0, 1], got {w!r}", f"{p}.weight")
            weights[i] = w
        else:
            weights[i] = 1.0 if it.image is not None else 0.0
        meta = {} if it.metadata is None else it.metadata
        if not isinstance(meta, dict):
            raise InputError(f"{p}.metadata must be a JSON object", param=f"{p}.metadata")
        if nesting_depth(meta) > MAX_METADATA_DEPTH:
            raise InputError(
                f"{p}.metadata nests deeper than {MAX_METADATA_DEPTH} levels of objects and arrays",
                param=f"{p}.metadata",
            )
        try:
            js = json.dumps(meta, allow_nan=False, separators=(",", ":"), ensure_ascii=False)
            size = len(js.encode())  # UnicodeEncodeError (a ValueError): lone surrogates
        except (TypeError, ValueError) as exc:
            raise InputError(
                f"{p}.metadata is not JSON-serialisable: {exc}", f"{p}.metadata"
            ) from None
        if size > MAX_METADATA_BYTES:
            raise PayloadTooLargeError(
                f"{p}.metadata is larger than {MAX_METADATA_BYTES} bytes", param=f"{p}.metadata"
            )
        metadata_json.append(js)
        th = it.thumbnail
        if th is not None:
            if not isinstance(th, bytes | bytearray | memoryview):
                raise InputError(f"{p}.thumbnail must be bytes", param=f"{p}.thumbnail")
            th = bytes(th)
            if len(th) > MAX_THUMBNAIL_BYTES:
                raise PayloadTooLargeError(
                    f"{p}.thumbnail is larger than {MAX_THUMBNAIL_BYTES} bytes", f"{p}.thumbnail"
                )
        thumbnails.append(th)
        cap = it.caption
        if cap is not None:
            if not isinstance(cap, str):
                raise InputError(f"{p}.caption must be a string", param=f"{p}.caption")
            try:
                size = len(cap.encode())
            except UnicodeEncodeError:
                raise InputError(
                    f"{p}.caption is not valid text (an unpaired surrogate)", f"{p}.caption"
                ) from None
            if size > MAX_CAPTION_BYTES:
                raise PayloadTooLargeError(
                    f"{p}.caption is larger than {MAX_CAPTION_BYTES} bytes", f"{p}.caption"
                )
        captions.append(cap)

    d = dim
    for m in ("image", "text"):
        for i, v in vecs[m]:
            if d is None:
                d = v.shape[0]
            if v.shape[0] != d:
                what = "the collection's" if dim is not None else "the batch's"
                raise InputError(
                    f"items[{i}].{m} has dimension {v.shape[0]}, {what} dimension is {d}",
                    param=f"items[{i}].{m}",
                )
    assert d is not None
    out: dict[str, np.ndarray] = {}
    has: dict[str, np.ndarray] = {}
    for m in ("image", "text"):
        mat = np.zeros((n, d), np.float32)
        mask = np.zeros(n, bool)
        for i, v in vecs[m]:
            mat[i] = v
            mask[i] = True
        finite = np.isfinite(mat).all(axis=1)
        if not finite.all():
            i = int(np.argmin(finite))
            raise InputError(f"items[{i}].{m} contains NaN or inf", param=f"items[{i}].{m}")
        zero = mask & ~mat.any(axis=1)
        if zero.any():
            i = int(np.argmax(zero))
            raise InputError(f"items[{i}].{m} is a zero vector", param=f"items[{i}].{m}")
        out[m] = normalize(mat)
        has[m] = mask
    codes = np.where(
        has["image"] & has["text"],
        MODALITY_CODE["document"],
        np.where(has["image"], MODALITY_CODE["image"], MODALITY_CODE["text"]),
    ).astype(np.int64)
    return Batch(
        ids=[it.id for it in items],
        codes=codes,
        image=out["image"],
        text=out["text"],
        has_image=has["image"],
        has_text=has["text"],
        weights=weights,
        metadata_json=metadata_json,
        thumbnails=thumbnails,
        captions=captions,
    )


def fuse(image: np.ndarray, text: np.ndarray, codes: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Index vectors from per-item components: the image or text row, or for documents
    ``normalise(w * image + (1 - w) * text)``. Rows of a missing component are ignored."""
    w = np.where(codes == MODALITY_CODE["image"], 1.0, weights).astype(np.float32)
    w = np.where(codes == MODALITY_CODE["text"], 0.0, w).astype(np.float32)[:, None]
    fused = w * image
    fused += (1.0 - w) * text
    return normalize(fused)
