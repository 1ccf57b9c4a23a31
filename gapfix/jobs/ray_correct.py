"""Ray Data backend of `gapfix correct` (``--ray local`` or ``--ray ADDRESS``).

Pipeline: pending shard descriptors -> read rows (tasks, one shard each) -> transform actors
(the artifact loaded once per actor) -> streamed back to the driver, which assembles each shard
and commits it through the same `ShardJob` as the local path (`gapfix.jobs.ray_backend.drain_shards`).
With a sink, the actors also upsert the rows they corrected, so each block writes its own
batches and only the row outcomes travel back.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from gapfix.jobs.progress import Progress
from gapfix.jobs.ray_backend import data_context, drain_shards, init_ray
from gapfix.jobs.runner import ShardResult


def _read_rows(batch: dict[str, np.ndarray]) -> dict[str, Any]:
    """map_batches (tasks): shard descriptors -> the rows of those shards, numbered."""
    from gapfix.jobs.shards import read_shard
    from gapfix.jobs.sinks import sink_keys

    cols: dict[str, list[Any]] = {
        k: []
        for k in (
            "shard",
            "expected",
            "seq",
            "slot",
            "id",
            "metadata",
            "lead",
            "caption",
            "thumbnail",
            "key",
        )
    }
    embs = []
    for shard, path in zip(batch["shard"], batch["path"], strict=True):
        data = read_shard(path)
        n = len(data)
        if n == 0:
            for k, v in (
                ("shard", int(shard)),
                ("expected", 1),
                ("seq", -1),
                ("slot", "empty"),
                ("id", ""),
                ("metadata", "{}"),
                ("lead", False),
                ("caption", ""),
                ("thumbnail", b""),
                ("key", ""),
            ):
                cols[k].append(v)
            embs.append(None)
            continue
        keys = sink_keys(data.ids, data.modalities)
        for i in range(n):
            for k, v in (
                ("shard", int(shard)),
                ("expected", n),
                ("seq", i),
                ("slot", data.modalities[i]),
                ("id", data.ids[i]),
                ("metadata", data.metadata[i]),
                ("lead", True),
                ("caption", data.captions[i] or ""),
                ("thumbnail", data.thumbnails[i] or b""),
                ("key", keys[i]),
            ):
                cols[k].append(v)
        embs.append(data.embeddings)
    dim = next((e.shape[1] for e in embs if e is not None), 1)
    out: dict[str, Any] = {k: np.asarray(v, dtype=object) for k, v in cols.items()}
    for k in ("shard", "expected", "seq"):
        out[k] = np.asarray(cols[k], dtype=np.int64)
    out["lead"] = np.asarray(cols["lead"], dtype=bool)
    out["embedding"] = np.concatenate(
        [e if e is not None else np.zeros((1, dim), np.float32) for e in embs]
    )
    return out


class _CorrectActor:
    """map_batches callable class: loads the transform once per actor, corrects rows; with a
    sink, also upserts them (each block writes its own batches) and returns only the row
    outcomes (refused rows carry a ``reason``), not the vectors."""

    def __init__(self, transform_path: str, sink: str | None = None, batch: int = 0) -> None:
        from gapfix import load_transform

        self.transform = load_transform(transform_path)
        self.sink = None
        self.batch = batch
        if sink is not None:
            from gapfix.jobs.sinks import open_sink

            self.sink = open_sink(sink)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        emb = np.array(batch["embedding"], dtype=np.float32)
        raw = emb.copy() if self.sink is not None else None
        for modality in ("image", "text"):
            rows = np.flatnonzero(batch["slot"] == modality)
            if rows.size:
                emb[rows] = self.transform.transform(emb[rows], modality)
        out = dict(batch)
        out["embedding"] = emb
        if self.sink is not None and raw is not None:
            out.update(self._write(batch, raw, emb))
        return out

    def _write(
        self, batch: dict[str, np.ndarray], raw: np.ndarray, emb: np.ndarray
    ) -> dict[str, Any]:
        from gapfix.jobs.sinks import SinkRows

        assert self.sink is not None
        rows = np.flatnonzero(batch["slot"] != "empty")
        keys = [str(batch["key"][i]) for i in rows]
        data = SinkRows(
            keys=keys,
            modalities=[str(batch["slot"][i]) for i in rows],
            metadata=[str(batch["metadata"][i]) for i in rows],
            raw=raw[rows],
            corrected=emb[rows],
        )
        refused = {f.id: f.reason for f in self.sink.write(data, batch=self.batch)}
        n = len(batch["slot"])
        reason = np.full(n, "", dtype=object)
        ids = np.array(batch["id"], dtype=object)  # failures name the row's key, as locally
        for i, k in zip(rows, keys, strict=True):
            if k in refused:
                reason[i], ids[i] = refused[k], k
        return {
            "reason": reason,
            "id": ids,
            "source": np.full(n, self.sink.spec.display, dtype=object),
            "embedding": np.zeros((n, 1), np.float32),  # the vectors are in the sink
        }


def run_correct_ray(
    address: str,
    shards: list[tuple[int, str]],
    transform_path: str,
    workers: int | None,
    dim: int,
    on_result: Callable[[ShardResult], None],
    progress: Progress,
    batch_rows: int = 4096,
    sink: str | None = None,
    sink_batch: int = 1000,
) -> None:
    """Correct the given ``(index, parquet path)`` shards on Ray Data; with ``sink`` (a URI),
    the actors upsert the rows and only their outcomes come back."""
    import ray.data

    init_ray(address)
    data_context()
    items = [{"shard": i, "path": p} for i, p in shards]
    ds = ray.data.from_items(items, override_num_blocks=len(items))
    ds = ds.map_batches(_read_rows, batch_size=1, num_cpus=1)
    ds = ds.map_batches(
        _CorrectActor,
        fn_constructor_kwargs={"transform_path": transform_path, "sink": sink, "batch": sink_batch},
        compute=ray.data.ActorPoolStrategy(size=workers or 1),
        batch_size=batch_rows,
        num_cpus=1,
    )
    left = drain_shards(ds, dim, on_result, progress, count_items=False)
    if left:
        raise RuntimeError(f"Ray run ended with shards incomplete: {sorted(left)}")
