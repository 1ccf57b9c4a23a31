"""`gapfix embed`: encode an image folder, a table or WebDataset shards into parquet shards.

Single machine: a torch DataLoader whose workers read, decode and preprocess batches (and
tokenize captions) ahead of the model, which runs in the main process; finished shards are
written by one background thread so the model never waits on disk. With ``ray=...`` the same
work runs on Ray Data (`gapfix.jobs.ray_backend`). Either way the output folder is a resumable
`ShardJob`.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gapfix.errors import InputError
from gapfix.jobs.model import (
    DEFAULT_MAX_PIXELS,
    DEFAULT_MODEL,
    DEFAULT_PRETRAINED,
    ModelSpec,
    embed_batch,
    make_preparer,
)
from gapfix.jobs.prepare import PreparedBatch, Preparer, count_slots
from gapfix.jobs.progress import Progress, check_mode
from gapfix.jobs.runner import ShardAssembler, ShardJob, ShardResult, run_with_writer, summarize
from gapfix.jobs.sources import Plan, Source, open_source

DEFAULT_SHARD_SIZE = 10_000
DEFAULT_BATCH_SIZE = 64


def default_workers() -> int:
    """Decode workers: all cores but the one the model runs on (at least 1, at most 8)."""
    return max(1, min(8, (os.cpu_count() or 2) - 1))


@dataclass
class EmbedOptions:
    """Options of `gapfix embed` (the CLI flags)."""

    model: str = DEFAULT_MODEL
    pretrained: str = DEFAULT_PRETRAINED
    batch_size: int = DEFAULT_BATCH_SIZE
    workers: int | None = None
    shard_size: int = DEFAULT_SHARD_SIZE
    max_pixels: int = DEFAULT_MAX_PIXELS
    thumbnail_size: int = 0  # > 0: keep a JPEG thumbnail (longest side, px) of each image
    device: str = "auto"
    precision: str = "auto"
    backend: str = "torch"  # torch | onnx | compile (gapfix.encoders.backends)
    exact_decode: bool = False  # False: JPEGs decoded at a reduced scale >= the model input
    prefetch: int = 4  # batches each worker prepares ahead
    ray: str | None = None  # None: single machine; "local" or a cluster address
    progress: str = "auto"  # auto | bar | log | off
    log_interval: float = 10.0

    def check(self) -> None:
        for name in ("batch_size", "shard_size", "max_pixels", "prefetch"):
            if int(getattr(self, name)) < 1:
                raise InputError(f"--{name.replace('_', '-')} must be >= 1", param=name)
        if not 0 <= int(self.thumbnail_size) <= 1024:
            raise InputError("--thumbnails must be between 0 (none) and 1024", "thumbnail_size")
        if self.workers is not None and self.workers < 0:
            raise InputError("--workers must be >= 0", param="workers")
        check_mode(self.progress)
        from gapfix.encoders.backends import check_backend

        self.backend = check_backend(self.backend)

    def spec(self) -> ModelSpec:
        return ModelSpec(
            self.model,
            self.pretrained,
            self.device,
            self.precision,
            max(self.batch_size, 1),
            self.max_pixels,
            self.backend,
        )


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _batches(
    source: Source, plan: Plan, pending: list[int], batch_size: int
) -> Iterator[tuple[int, int, list[Any]]]:
    """Batch descriptors ``(shard, slots in shard, items)``; never crosses a shard boundary."""
    for idx in pending:
        items = source.read_items(plan.shards[idx])
        expected = count_slots(items)
        if not items:
            yield idx, expected, []
        for s in range(0, len(items), batch_size):
            yield idx, expected, items[s : s + batch_size]


class _Prepare:
    """Map-style "dataset" whose index is a batch descriptor; runs in DataLoader workers."""

    def __init__(self, preparer: Preparer) -> None:
        self.preparer = preparer

    def __getitem__(self, desc: tuple[int, int, list[Any]]) -> PreparedBatch:
        return self.preparer(*desc)


class _Descriptors:
    """An iterable "sampler" yielding batch descriptors lazily (shards are read on demand)."""

    def __init__(self, make: Callable[[], Iterator[Any]]) -> None:
        self.make = make

    def __iter__(self) -> Iterator[Any]:
        return self.make()


def _identity(batch: Any) -> Any:
    return batch


def _worker_init(_: int) -> None:
    import torch

    torch.set_num_threads(1)


def run_local(
    source: Source,
    plan: Plan,
    pending: list[int],
    encoder: Any,
    opts: EmbedOptions,
    dim: int,
    on_result: Callable[[ShardResult], None],
    progress: Progress,
) -> dict[str, float]:
    """The single-machine pipeline: DataLoader workers prepare, the model embeds here.

    Returns timings: seconds spent in the model and waiting for prepared batches (when the
    wait is a large share, more ``workers`` would help).
    """
    import torch
    from torch.utils.data import DataLoader

    workers = default_workers() if opts.workers is None else opts.workers
    preparer = make_preparer(
        encoder, opts.max_pixels, opts.thumbnail_size, draft=not opts.exact_decode
    )
    sampler = _Descriptors(lambda: _batches(source, plan, pending, opts.batch_size))
    loader_kw: dict[str, Any] = {}
    if workers > 0:
        loader_kw = {
            "num_workers": workers,
            "prefetch_factor": opts.prefetch,
            "worker_init_fn": _worker_init,
            "persistent_workers": False,
        }
    device = getattr(encoder, "device", None)
    loader = DataLoader(
        _Prepare(preparer),  # type: ignore[arg-type]
        batch_size=None,
        sampler=sampler,  # type: ignore[arg-type]
        collate_fn=_identity,
        pin_memory=getattr(device, "type", "cpu") == "cuda",
        **loader_kw,
    )
    assemblers: dict[int, ShardAssembler] = {}
    timing = {"model_s": 0.0, "wait_s": 0.0}
    with torch.inference_mode():
        it = iter(loader)
        while True:
            t0 = time.perf_counter()
            batch = next(it, None)
            t1 = time.perf_counter()
            timing["wait_s"] += t1 - t0
            if batch is None:
                break
            a = assemblers.get(batch.shard)
            if a is None:
                a = assemblers[batch.shard] = ShardAssembler(batch.shard, batch.expected)
            embed_batch(encoder, batch)
            timing["model_s"] += time.perf_counter() - t1
            for row in batch.slots:
                a.add(row)
            progress.update(batch.n_items, batch.failures)
            if a.done:
                on_result(a.result(dim))
                del assemblers[batch.shard]
    if assemblers:  # cannot happen unless a worker lost batches; never commit a partial shard
        raise RuntimeError(f"shards left incomplete: {sorted(assemblers)}")
    return timing


def _model_info(encoder: Any, opts: EmbedOptions) -> dict[str, Any]:
    return {"id": str(encoder.model_id), "name": opts.model, "pretrained": opts.pretrained}


def run_embed(
    input_spec: str,
    out: str | Path,
    opts: EmbedOptions | None = None,
    *,
    encoder: Any = None,
    setup: Callable[[], None] | None = None,
    log: Callable[[str], None] = _stderr,
) -> dict[str, Any]:
    """Embed ``input_spec`` into shards under ``out`` (resuming a previous run); returns a summary.

    ``encoder`` may be passed pre-loaded (tests, benchmarks); otherwise it is loaded from
    ``opts.model``/``opts.pretrained``. ``setup`` (picklable, no arguments) runs in each Ray
    model actor before it loads the encoder (e.g. to register a custom open_clip config).
    """
    opts = opts or EmbedOptions()
    opts.check()
    source = open_source(str(input_spec))
    plan = source.plan(opts.shard_size)
    if plan.ignored_files:
        log(f"embed: ignoring {plan.ignored_files} non-image files under {source.path}")
    if encoder is None:
        spec = opts.spec()
        if opts.ray:  # the driver only needs dim, id and the CPU stage; actors load their own
            spec = dataclasses.replace(spec, device="cpu", backend="torch")
        encoder = spec.load()
    dim = int(encoder.dim)
    input_info = {
        **source.describe(),
        "path": str(Path(source.path).resolve()) if os.path.exists(source.path) else source.path,
        "fingerprint": plan.fingerprint,
        "shard_size": opts.shard_size if source.kind != "webdataset" else None,
        "thumbnail_size": opts.thumbnail_size,
        "num_shards": len(plan.shards),
        "total_items": plan.total_items,
    }
    job = ShardJob(
        out, kind="embed", model=_model_info(encoder, opts), dim=dim, input_info=input_info, log=log
    )
    pool = None
    if opts.ray:
        from gapfix.jobs.ray_backend import plan_actors

        pool = plan_actors(opts)  # a cluster that cannot run the job: refused before --out
    pending = job.open()
    skipped = len(plan.shards) - len(pending)
    if skipped:
        log(f"embed: resuming: {skipped} of {len(plan.shards)} shards already done")
    remaining = None
    if plan.total_items is not None:
        remaining = plan.total_items - sum(int(r["items"]) for r in job.manifest["shards"])
    progress = Progress("embed", remaining, mode=opts.progress, interval=opts.log_interval)
    counts = {"image": 0, "text": 0, "items": 0, "failures": 0, "shards": 0}
    timing: dict[str, float] = {}
    t0 = time.monotonic()

    def commit_and_count(res: ShardResult) -> None:
        job.commit(res)
        c = res.data.counts()
        counts["image"] += c["image"]
        counts["text"] += c["text"]
        counts["items"] += res.items
        counts["failures"] += len(res.failures)
        counts["shards"] += 1

    try:
        if pending:
            if pool is not None:
                from gapfix.jobs.ray_backend import run_embed_ray

                preparer = make_preparer(
                    encoder, opts.max_pixels, opts.thumbnail_size, draft=not opts.exact_decode
                )

                def produce(on_result: Callable[[ShardResult], None]) -> None:
                    timing.update(
                        run_embed_ray(
                            source,
                            plan,
                            pending,
                            opts,
                            dim,
                            on_result,
                            progress,
                            preparer,
                            pool,
                            setup,
                        )
                    )
            else:

                def produce(on_result: Callable[[ShardResult], None]) -> None:
                    timing.update(
                        run_local(source, plan, pending, encoder, opts, dim, on_result, progress)
                    )

            run_with_writer(produce, commit_and_count)
    finally:
        progress.close()
        job.finish()
    summary = summarize("embed", job, counts, time.monotonic() - t0, skipped, log)
    if "first_result_s" in timing:  # Ray: time until results came back (start-up, model loads)
        summary["first_result_s"] = round(timing["first_result_s"], 3)
        summary["first_items"] = int(timing["first_items"])
        summary["last_result_s"] = round(timing["last_result_s"], 3)
    if "model_s" in timing:
        busy = timing["model_s"] / max(timing["model_s"] + timing["wait_s"], 1e-9)
        summary["model_s"] = round(timing["model_s"], 3)
        summary["wait_s"] = round(timing["wait_s"], 3)
        summary["model_busy"] = round(busy, 3)
        log(
            f"embed: model busy {100 * busy:.0f}% of the loop ({timing['wait_s']:.1f}s waiting "
            "for decoded batches; raise --workers if that is large)"
        )
    return summary
