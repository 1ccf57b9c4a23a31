"""Ray Data backend of `gapfix embed` and `gapfix correct` (``--ray local`` or ``--ray ADDRESS``).

Embed pipeline: pending shard descriptors -> ``flat_map`` (list each shard's items, in tasks) ->
``map_batches`` (read + decode + preprocess + tokenize, CPU tasks) -> ``map_batches`` with a
callable class (the model, one copy per actor, ``num_gpus=1`` each where the cluster has GPUs)
-> streamed back to the driver, which assembles each shard as its last slot arrives and commits
it through the same `ShardJob` as the local backend: same files, same manifest, same resume.
The correct pipeline (shard descriptors -> read rows -> transform actors -> driver) lives in
`gapfix.jobs.ray_correct` and shares `init_ray` and `drain_shards` with this one.

Inputs and the output folder must be on storage every node can reach (a shared filesystem).
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from gapfix.errors import InputError
from gapfix.jobs.failures import Failure
from gapfix.jobs.prepare import Preparer, count_slots
from gapfix.jobs.progress import Progress
from gapfix.jobs.runner import ShardAssembler, ShardResult, SlotRow
from gapfix.jobs.sources import ImageRef, Plan, ShardSpec, Source, WorkItem


def init_ray(address: str) -> None:
    """Connect to Ray: ``local`` starts (or reuses) a local instance, else a cluster address.

    An instance already initialised in this process (e.g. ``ray.init(num_cpus=2)``) is reused.
    """
    import ray

    if ray.is_initialized():
        return
    kwargs: dict[str, Any] = {"include_dashboard": False}
    if address == "local":
        ray.init(**kwargs)
    else:
        ray.init(address=address, **kwargs)


def data_context() -> None:
    """Ray Data settings for gapfix runs: no Ray progress bars or start-up banners."""
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # gapfix shows its own progress
    ctx.print_on_execution_start = False


def _gpus() -> int:
    import ray

    return int(ray.cluster_resources().get("GPU", 0))


# ---------------------------------------------------------------------------------- embed


def _spec_row(spec: ShardSpec) -> dict[str, Any]:
    return {
        "shard": spec.index,
        "files": list(spec.files),
        "start": spec.start,
        "stop": spec.stop,
        "tar": spec.tar,
    }


def _item_row(shard: int, expected: int, it: WorkItem) -> dict[str, Any]:
    img = it.image
    return {
        "shard": shard,
        "expected": expected,
        "seq": it.seq,
        "id": it.id,
        "source": it.source,
        "metadata": json.dumps(it.metadata, default=str),
        "error": it.error or "",
        "has_image": it.has_image,
        "img_path": img.path if img else "",
        "img_offset": img.offset if img else -1,
        "img_size": img.size if img else -1,
        "img_data": (img.data or b"") if img else b"",
        "img_inline": bool(img is not None and img.data is not None),
        "has_image_ref": img is not None,
        "has_text": it.text is not None,
        "text": it.text or "",
    }


def _expand(row: dict[str, Any], source: Source) -> list[dict[str, Any]]:
    """flat_map: one shard descriptor -> one row per item (an "empty" row for empty shards)."""
    spec = ShardSpec(
        index=int(row["shard"]),
        files=tuple(row["files"]),
        start=int(row["start"]),
        stop=int(row["stop"]),
        tar=str(row["tar"]),
    )
    items = source.read_items(spec)
    expected = count_slots(items)
    if not items:
        empty = WorkItem(seq=-1, id="", source=spec.tar or "", error="")
        return [{**_item_row(spec.index, expected, empty), "error": "__empty__"}]
    return [_item_row(spec.index, expected, it) for it in items]


def _np_bytes(t: Any) -> bytes:
    buf = io.BytesIO()
    np.save(buf, t.numpy() if hasattr(t, "numpy") else np.asarray(t), allow_pickle=False)
    return buf.getvalue()


def _prepare(batch: dict[str, np.ndarray], preparer: Preparer) -> dict[str, Any]:
    """map_batches (tasks): items -> one row per slot with its preprocessed tensor as bytes."""
    out: dict[str, list[Any]] = {
        k: []
        for k in (
            "shard", "expected", "seq", "slot", "id", "metadata", "source", "reason", "lead",
            "caption", "thumbnail",
        )
    }  # fmt: skip
    payload: list[bytes] = []
    groups: dict[tuple[int, int], list[WorkItem]] = {}
    n = len(batch["shard"])
    for i in range(n):
        shard, expected = int(batch["shard"][i]), int(batch["expected"][i])
        if batch["error"][i] == "__empty__":
            for k, v in (
                ("shard", shard),
                ("expected", expected),
                ("seq", -1),
                ("slot", "empty"),
                ("id", ""),
                ("metadata", "{}"),
                ("source", ""),
                ("reason", ""),
                ("lead", False),
                ("caption", ""),
                ("thumbnail", b""),
            ):
                out[k].append(v)
            payload.append(b"")
            continue
        ref = None
        if batch["has_image_ref"][i]:
            data = bytes(batch["img_data"][i]) if batch["img_inline"][i] else None
            ref = ImageRef(
                str(batch["img_path"][i]),
                int(batch["img_offset"][i]),
                int(batch["img_size"][i]),
                data,
            )
        item = WorkItem(
            seq=int(batch["seq"][i]),
            id=str(batch["id"][i]),
            source=str(batch["source"][i]),
            image=ref,
            text=str(batch["text"][i]) if batch["has_text"][i] else None,
            metadata=json.loads(batch["metadata"][i]),
            error=str(batch["error"][i]) or None,
            has_image=bool(batch["has_image"][i]),
        )
        groups.setdefault((shard, expected), []).append(item)
    for (shard, expected), items in groups.items():
        prepared = preparer(shard, expected, items)
        tensors: dict[int, bytes] = {}
        for k, si in enumerate(prepared.image_slots):
            tensors[si] = _np_bytes(prepared.pixels[k])
        for k, si in enumerate(prepared.text_slots):
            tensors[si] = _np_bytes(prepared.tokens[k])
        seen: set[int] = set()
        for si, slot in enumerate(prepared.slots):
            f = slot.failure
            for k, v in (
                ("shard", shard),
                ("expected", expected),
                ("seq", slot.seq),
                ("slot", slot.slot),
                ("id", slot.id),
                ("metadata", slot.metadata),
                ("source", f.source if f else ""),
                ("reason", f.reason if f else ""),
                ("lead", slot.seq not in seen),
                ("caption", slot.caption or ""),  # "" / b"": none (no nulls through Arrow)
                ("thumbnail", slot.thumbnail or b""),
            ):
                out[k].append(v)
            seen.add(slot.seq)
            payload.append(tensors.get(si, b""))
    cols: dict[str, Any] = {k: np.asarray(v, dtype=object) for k, v in out.items()}
    for k in ("shard", "expected", "seq"):
        cols[k] = np.asarray(out[k], dtype=np.int64)
    cols["lead"] = np.asarray(out["lead"], dtype=bool)
    cols["payload"] = np.asarray(payload, dtype=object)
    return cols


class _EmbedActor:
    """map_batches callable class: loads the encoder once per actor, embeds prepared slots."""

    def __init__(self, spec: Any, dim: int, setup: Callable[[], None] | None = None) -> None:
        if setup is not None:
            setup()
        self.encoder = spec.load()
        self.dim = dim

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        import torch

        from gapfix.jobs.model import forward_images, forward_texts

        n = len(batch["shard"])
        emb = np.zeros((n, self.dim), np.float32)
        ok = batch["reason"] == ""
        for slot, fwd in (("image", forward_images), ("text", forward_texts)):
            rows = np.flatnonzero(ok & (batch["slot"] == slot))
            if rows.size:
                x = np.stack([np.load(io.BytesIO(batch["payload"][r])) for r in rows])
                with torch.inference_mode():
                    emb[rows] = fwd(self.encoder, torch.from_numpy(x))
        out = {k: v for k, v in batch.items() if k != "payload"}
        out["embedding"] = emb
        return out


def _slot_failure(batch: dict[str, np.ndarray], i: int) -> Failure:
    slot = str(batch["slot"][i])
    return Failure(
        id=str(batch["id"][i]),
        source=str(batch["source"][i]),
        reason=str(batch["reason"][i]),
        modality=slot if slot in ("image", "text") else None,
        shard=int(batch["shard"][i]),
    )


def drain_shards(
    ds: Any,
    dim: int,
    on_result: Callable[[ShardResult], None],
    progress: Progress | None,
    count_items: bool,
    timing: dict[str, float] | None = None,
) -> dict[int, ShardAssembler]:
    """Stream result rows to the driver; commit each shard as soon as it is complete.

    Returns the shards left incomplete (none unless rows were lost). ``timing`` gets
    ``first_result_s`` (seconds until the first results came back: worker start-up, model
    loads, the first batches), ``first_items`` and ``last_result_s`` (the last results), so a
    rate after start-up is (items - first_items) / (last_result_s - first_result_s).
    """
    assemblers: dict[int, ShardAssembler] = {}
    t0 = time.perf_counter()
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=2):
        n = len(batch["shard"])
        if timing is not None and "first_result_s" not in timing:
            timing["first_result_s"] = time.perf_counter() - t0
            timing["first_items"] = float(batch["lead"].sum()) if count_items else float(n)
        if timing is not None:
            timing["last_result_s"] = time.perf_counter() - t0
        items = fails = 0
        for i in range(n):
            shard = int(batch["shard"][i])
            a = assemblers.get(shard)
            if a is None:
                a = assemblers[shard] = ShardAssembler(shard, int(batch["expected"][i]))
            slot = str(batch["slot"][i])
            reason = str(batch["reason"][i]) if "reason" in batch else ""
            row = SlotRow(
                int(batch["seq"][i]),
                slot,
                str(batch["id"][i]),
                str(batch["metadata"][i]),
                caption=str(batch["caption"][i]) or None,
                thumbnail=bytes(batch["thumbnail"][i]) or None,
            )
            if reason:
                row.failure = _slot_failure(batch, i)
                fails += 1
            elif slot != "empty":
                row.embedding = np.array(batch["embedding"][i], dtype=np.float32)
            a.add(row)
            items += int(batch["lead"][i]) if count_items else int(slot != "empty")
            if a.done:
                on_result(a.result(dim))
                del assemblers[shard]
        if progress is not None:
            progress.update(items, fails)
    return assemblers


@dataclass(frozen=True)
class ActorPool:
    """How many model actors an embed run starts, and whether each takes a GPU."""

    actors: int
    gpus: int


def plan_actors(opts: Any) -> ActorPool:
    """Connect to Ray and size the model-actor pool; InputError when it cannot work (checked
    before the job writes anything)."""
    init_ray(opts.ray)
    data_context()
    gpus = _gpus()
    actors = opts.workers if opts.workers else max(1, gpus)
    if not gpus:
        import ray

        cpus = int(ray.cluster_resources().get("CPU", 0))
        if actors >= cpus:
            raise InputError(
                f"--workers {actors} model actors would take all {cpus} CPUs of the Ray cluster "
                "and leave none for decoding; use fewer (each actor takes 1 CPU)",
                param="workers",
            )
    return ActorPool(actors, gpus)


def run_embed_ray(
    source: Source,
    plan: Plan,
    pending: list[int],
    opts: Any,
    dim: int,
    on_result: Callable[[ShardResult], None],
    progress: Progress,
    preparer: Preparer,
    pool: ActorPool,
    setup: Callable[[], None] | None = None,
) -> dict[str, float]:
    """Run the embed pipeline for the ``pending`` shards on Ray Data with the model-actor
    ``pool`` from `plan_actors`; returns start-up timing (see `drain_shards`)."""
    import ray.data

    actors, gpus = pool.actors, pool.gpus
    specs = [_spec_row(plan.shards[i]) for i in pending]
    ds = ray.data.from_items(specs, override_num_blocks=len(specs))
    ds = ds.flat_map(_expand, fn_kwargs={"source": source})
    # one shard lists as one block: cut it into batches so that decode tasks and model actors
    # work on a shard in parallel
    ds = ds.repartition(target_num_rows_per_block=opts.batch_size)
    # Decode tasks ask for half a CPU (they also wait on I/O); model actors for a GPU, or a
    # whole CPU. The differing requests also keep Ray from fusing the two stages into one
    # actor: decoding runs in parallel tasks ahead of the model instead of inside it.
    ds = ds.map_batches(
        _prepare, fn_kwargs={"preparer": preparer}, batch_size=opts.batch_size, num_cpus=0.5
    )
    ds = ds.map_batches(
        _EmbedActor,
        fn_constructor_kwargs={"spec": opts.spec(), "dim": dim, "setup": setup},
        compute=ray.data.ActorPoolStrategy(size=actors),
        batch_size=opts.batch_size,
        num_gpus=1 if gpus else 0,
        num_cpus=1,
    )
    timing: dict[str, float] = {}
    left = drain_shards(ds, dim, on_result, progress, count_items=True, timing=timing)
    if left:
        raise RuntimeError(f"Ray run ended with shards incomplete: {sorted(left)}")
    return timing
