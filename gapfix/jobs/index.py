"""`gapfix index build`: load embedding shards into a store collection that `gapfix serve` serves.

The shards' raw embeddings go into the collection (the store keeps raw vectors and corrects
them with the collection's active transform, so ``--transform`` activates a transform instead
of baking it in). The store is the embedded one in ``data_dir`` or (``store="milvus://HOST:PORT[/db]"``) a
Milvus database that ``gapfix serve --store`` serves. Rows of one id with both an image and a
text embedding become one
``document`` item (``pairs="document"``, fused with ``weight``) or two items
``<id>#image`` / ``<id>#text`` (``pairs="split"``). Everything is validated before the
collection is created; a build that fails half-way removes the collection it created.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from gapfix.errors import InputError
from gapfix.jobs.manifest import read_manifest, require_complete
from gapfix.jobs.progress import Progress, check_mode
from gapfix.jobs.shards import iter_shard_batches

PAIRS = ("document", "split")
ADD_BATCH = 2048


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def iter_items(
    manifest: str | Path, pairs: str = "document", weight: float = 0.5, batch: int = ADD_BATCH
) -> Iterator[list[Any]]:
    """Yield lists of `gapfix.store.ItemIn` built from a manifest's shards, in shard order."""
    from gapfix.store import ItemIn

    if pairs not in PAIRS:
        raise InputError(f"pairs must be one of {PAIRS}, got {pairs!r}", param="pairs")
    out: list[Any] = []
    pending: dict[str, Any] | None = None  # rows of one id: adjacent within a shard

    def emit(group: dict[str, Any]) -> list[Any]:
        meta = json.loads(group["metadata"]) if group["metadata"] else {}
        vecs, extra = group["vecs"], group["extra"]  # extra: caption / thumbnail per modality
        if len(vecs) == 2 and pairs == "document":
            return [
                ItemIn(
                    group["id"], vecs["image"], vecs["text"], meta, weight=weight,
                    thumbnail=extra["image"], caption=extra["text"],
                )
            ]  # fmt: skip
        ids = {m: f"{group['id']}#{m}" if len(vecs) == 2 else group["id"] for m in vecs}
        return [
            ItemIn(
                ids[m], **{m: v}, metadata=meta,
                **({"thumbnail": extra[m]} if m == "image" else {"caption": extra[m]}),
            )
            for m, v in vecs.items()
        ]  # fmt: skip

    for data in iter_shard_batches(manifest, batch_rows=batch):
        emb = data.embeddings
        assert emb is not None
        for i, (rid, mod) in enumerate(zip(data.ids, data.modalities, strict=True)):
            extra = data.thumbnails[i] if mod == "image" else data.captions[i]
            if pending is not None and pending["id"] == rid and mod not in pending["vecs"]:
                pending["vecs"][mod] = emb[i]
                pending["extra"][mod] = extra
                continue
            if pending is not None:
                out.extend(emit(pending))
            pending = {
                "id": rid,
                "metadata": data.metadata[i],
                "vecs": {mod: emb[i]},
                "extra": {mod: extra},
            }
        if len(out) >= batch:
            yield out
            out = []
    if pending is not None:
        out.extend(emit(pending))
    if out:
        yield out


def _check_all(manifest: str | Path, pairs: str, weight: float, dim: int) -> tuple[int, int]:
    """Validate every item as the store will (ids, metadata, vectors) and find duplicate ids
    across batches; returns (items, rows). Raises InputError naming the first problem."""
    from gapfix.store.items import validate_batch

    hashes: list[np.ndarray] = []
    n_items = n_rows = 0
    for items in iter_items(manifest, pairs, weight):
        validate_batch(items, dim)
        n_items += len(items)
        n_rows += sum((it.image is not None) + (it.text is not None) for it in items)
        hashes.append(
            np.array(
                [
                    int.from_bytes(hashlib.blake2b(it.id.encode(), digest_size=8).digest())
                    for it in items
                ],
                dtype=np.uint64,
            )
        )
    if hashes:
        h = np.sort(np.concatenate(hashes))
        dup = np.flatnonzero(h[1:] == h[:-1])
        if dup.size:
            target = h[dup[0]]
            for items in iter_items(manifest, pairs, weight):
                for it in items:
                    d = int.from_bytes(hashlib.blake2b(it.id.encode(), digest_size=8).digest())
                    if d == target:
                        raise InputError(
                            f"id {it.id!r} occurs more than once in the shards; ids must be "
                            "unique within a collection",
                            param="manifest",
                        )
    return n_items, n_rows


def open_store(
    store: str, data_dir: str | Path | None, token: str = "", secure: bool = False
) -> tuple[Any, str]:
    """The store a build writes to and a description of where it is: the embedded store in
    ``data_dir`` (``store="embedded"``) or a Milvus one (``milvus://HOST:PORT[/db]``)."""
    if store == "embedded":
        if data_dir is None:
            raise InputError("the embedded store needs --data-dir", param="--data-dir")
        from gapfix.store import Store

        return Store(data_dir, flush_interval=None), str(data_dir)
    from gapfix.store.milvus import MilvusStore, parse_store_uri

    return MilvusStore(parse_store_uri(store, secure), token=token), store


def build_index(
    manifest: str | Path,
    data_dir: str | Path | None,
    collection: str,
    *,
    store: str = "embedded",
    milvus_token: str = "",
    milvus_secure: bool = False,
    index: str = "flat",
    transform: str | Path | None = None,
    pairs: str = "document",
    weight: float = 0.5,
    upsert: bool = False,
    progress_mode: str = "auto",
    log: Callable[[str], None] = _stderr,
) -> dict[str, Any]:
    """Add every row of ``manifest``'s shards to ``collection`` in the store at ``data_dir``
    (``store="embedded"``) or in Milvus (``store="milvus://HOST:PORT[/db]"``, with
    ``milvus_token`` / ``milvus_secure`` as ``gapfix serve`` takes them).

    Creates the collection (``index`` kind) unless ``upsert`` and it exists. ``transform``: an
    artifact to activate on the collection. Returns a summary.
    """
    from gapfix import load_transform
    from gapfix.store import INDEX_KINDS, check_collection_name

    check_collection_name(collection)
    if store == "embedded" and data_dir is None:  # store checks first: before any shard is read
        raise InputError("the embedded store needs --data-dir", param="--data-dir")
    if store != "embedded":
        from gapfix.store.milvus import parse_store_uri

        parse_store_uri(store)
    if index not in INDEX_KINDS:  # before the store folder is created
        raise InputError(
            f"unknown index kind {index!r}; expected one of {list(INDEX_KINDS)}", param="index"
        )
    check_mode(progress_mode)
    m = read_manifest(manifest)
    if m.get("kind") != "embed":
        tr = (m.get("transform") or {}).get("path")
        raise InputError(
            f"{manifest} holds corrected vectors (a `gapfix correct` output); collections store "
            f"raw embeddings: pass the embed job's manifest and --transform {tr or 'FILE'}",
            param="manifest",
        )
    require_complete(m, manifest)
    dim = int(m["dim"])
    tr_obj = None
    if transform is not None:
        tr_obj = load_transform(transform)
        if int(tr_obj.dim_) != dim:
            raise InputError(
                f"transform {transform} was fitted on dimension {tr_obj.dim_}, the shards have "
                f"dimension {dim}",
                param="transform",
            )
        tr_model, model = getattr(tr_obj, "model_id", None), (m.get("model") or {}).get("id")
        if tr_model and model and tr_model != model:
            raise InputError(
                f"transform {transform} was fitted on model {tr_model!r}, the shards come "
                f"from {model!r}",
                param="transform",
            )
    t0 = time.monotonic()
    n_items, n_rows = _check_all(manifest, pairs, weight, dim)
    if n_items == 0:
        raise InputError(f"{manifest}: the shards hold no rows", param="manifest")
    log(f"index build: {n_rows} rows -> {n_items} items checked in {time.monotonic() - t0:.1f}s")
    added = replaced = 0
    st, where = open_store(store, data_dir, milvus_token, milvus_secure)
    with contextlib.closing(st):
        created = False
        if collection in st.names():
            if not upsert:
                raise InputError(
                    f"collection {collection!r} already exists in {where}; pass --upsert to "
                    "add to it (existing ids are replaced)",
                    param="collection",
                )
            coll = st.get(collection)
        else:
            coll = st.create_collection(collection, index=index, dim=dim)
            created = True
        progress = Progress("index build", n_items, mode=progress_mode)
        try:
            if tr_obj is not None and coll.count() == 0:
                coll.set_transform(tr_obj, wait_seconds=None)  # empty: active at once
                tr_obj = None
            for items in iter_items(manifest, pairs, weight):
                res = coll.add(items, upsert=upsert)
                added += res["added"]
                replaced += res["replaced"]
                progress.update(len(items))
            # an existing collection: re-correct and rebuild in the background, then swap
            if tr_obj is not None and not coll.set_transform(tr_obj, wait_seconds=None):
                raise InputError(
                    f"activating the transform failed: {coll.transform_status}",
                    param="transform",
                )
            coll.flush()
        except BaseException:
            progress.close()
            if created:
                st.delete_collection(collection)
            raise
        progress.close()
        info = coll.info()
    seconds = time.monotonic() - t0
    summary = {
        "collection": collection,
        "data_dir": None if data_dir is None else str(data_dir),
        "store": store,
        "index": info.get("index", index),
        "items": n_items,
        "rows": n_rows,
        "added": added,
        "replaced": replaced,
        "transform": str(transform) if transform else None,
        "seconds": round(seconds, 3),
        "info": info,
    }
    serve = f"--data-dir {data_dir}" if store == "embedded" else f"--store {store}"
    log(
        f"index build: {added} items added, {replaced} replaced in collection {collection!r} "
        f"({info.get('index', index)}) in {seconds:.1f}s; serve it with `gapfix serve {serve}`"
    )
    return summary
