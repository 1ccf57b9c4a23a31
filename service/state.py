"""The service's runtime objects (encoder, micro-batcher, search batcher, store) and their
start/stop/readiness. Vectors mode imports neither torch nor open_clip."""

from __future__ import annotations

import gc
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from anyio import to_thread

from gapfix.metrics import BATCH_ROWS, ENCODE_BATCH_SIZE, QUEUE_DEPTH, STAGE_LATENCY
from gapfix.store import CollectionStore, NotFoundError
from gapfix.transforms.registry import TransformRegistry
from service.fetching import ImageFetcher
from service.search_batching import SearchBatcher
from service.settings import Settings

log = logging.getLogger("gapfix.service")

STAGES = ("encode_pre", "encode_core", "encode_post", "correct", "search")
QUEUE_STAGES = ("text", "image", "text_pre", "image_pre")  # the encoder's batcher


@dataclass
class AppState:
    """Everything a request needs, built by the lifespan and reached through ``service.deps``."""

    settings: Settings
    store: CollectionStore | None = None  # embedded Store or gapfix.store.milvus.MilvusStore
    transforms: TransformRegistry | None = None  # named transforms (data_dir/transforms)
    encoder: Any = None  # gapfix.encoders.ClipEncoder (None in vectors mode)
    batcher: Any = None  # gapfix.encoders.MicroBatcher
    searcher: SearchBatcher | None = None
    fetcher: ImageFetcher | None = None  # image URLs (any route): fetcher.fetch_images(...)
    started: bool = False
    stopping: bool = False
    started_at: float = field(default_factory=time.time)

    @property
    def dim(self) -> int | None:
        """The model's embedding dimension (None in vectors mode)."""
        return None if self.encoder is None else int(self.encoder.dim)

    @property
    def model_id(self) -> str | None:
        return None if self.encoder is None else str(self.encoder.model_id)

    async def start(self) -> None:
        """Load the model (fails fast with ``ModelLoadError``), open the store, warn if open."""
        s = self.settings
        self.started = self.stopping = False
        for stage in STAGES:  # expose every series from the start (dashboards, alerts)
            STAGE_LATENCY.labels(stage)
        for modality in ("image", "text"):
            ENCODE_BATCH_SIZE.labels(modality)
        for stage in ("search",) if s.vectors_mode else ("search", *QUEUE_STAGES):
            QUEUE_DEPTH.labels(stage)
            if not stage.endswith("_pre"):
                BATCH_ROWS.labels(stage)
        keys = s.keys  # reads api_keys_file: a missing file fails start-up, not a request
        if not keys:
            log.warning(
                "!!! NO API KEY CONFIGURED: every endpoint, writes included, is open to anyone "
                "who can reach %s:%s. Set GAPFIX_API_KEYS or GAPFIX_API_KEYS_FILE. !!!",
                s.host,
                s.port,
            )
        else:
            log.info("API keys configured (%d); reads %s", len(keys),
                     "protected" if s.protect_reads else "open")  # fmt: skip
        self.searcher = SearchBatcher(
            max_batch=s.search_batch_rows,
            max_queue=s.queue_max_rows,
            max_wait_ms=s.search_wait_ms,
            budget_ms=s.queue_budget_ms,
        )
        if s.vectors_mode:
            log.info("vectors mode (GAPFIX_MODEL=none): no model loaded; clients send vectors")
        else:
            await to_thread.run_sync(self._load_model)
        self.fetcher = ImageFetcher(s)
        import faiss

        # Process-wide: merged query batches (e.g. 64 x 512) sit below FAISS's default BLAS
        # threshold and would take its much slower per-query path (see `make bench`).
        faiss.cvar.distance_compute_blas_threshold = s.faiss_blas_threshold
        self.store = await to_thread.run_sync(s.open_store)
        where = s.data_dir if s.store == "embedded" else s.store
        log.info("store opened at %s (%d collections)", where, len(self.store.names()))
        # named transforms: files in the data directory, or (Milvus) rows every replica shares
        artifacts = (
            s.data_dir / "transforms" if s.store == "embedded" else self.store.named_artifacts()
        )
        self.transforms = await to_thread.run_sync(
            lambda: TransformRegistry(artifacts, refresh_s=s.milvus_refresh_s)
        )
        if s.default_transform and s.default_transform not in self.transforms.names():
            log.warning(
                "GAPFIX_DEFAULT_TRANSFORM=%s is not registered yet: PUT /v1/transforms/%s; "
                "until then calls that rely on it answer 404",
                s.default_transform,
                s.default_transform,
            )
        # what start-up loaded (the store's item maps, the model) lives as long as the process:
        # moved out of the collector's reach, a full collection no longer walks it on the event
        # loop (wrk at 32 connections, hnsw 300k: p99 137-146 ms -> 63-82 ms)
        gc.collect()
        gc.freeze()
        self.started = True

    def _load_model(self) -> None:
        import torch

        from gapfix.encoders import MicroBatcher, load_encoder

        s = self.settings
        if s.torch_threads:
            torch.set_num_threads(s.torch_threads)
        self.encoder = load_encoder(
            s.model,
            s.pretrained,
            device=s.device,
            precision=s.precision,
            max_batch_size=s.max_batch_size,
            cache_dir=s.model_cache,
            max_pixels=s.max_image_pixels,
            backend=s.backend,
        )
        self.batcher = MicroBatcher(
            self.encoder,
            max_batch_size=s.max_batch_size,
            max_wait_ms=s.batch_wait_ms,
            max_queue=s.queue_max_rows,
            budget_ms=s.queue_budget_ms,
        )
        t0 = time.perf_counter()
        self.batcher.warm_up()  # before /readyz turns ready: the first request is not slow
        log.info("warm-up at batch %d took %.2f s", s.max_batch_size, time.perf_counter() - t0)

    async def stop(self) -> None:
        """Drain encode and search requests, then flush and close the store."""
        self.stopping = True
        if self.batcher is not None:
            await self.batcher.aclose()
        if self.searcher is not None:
            await self.searcher.aclose()
        if self.fetcher is not None:
            await self.fetcher.aclose()
            self.fetcher = None
        if self.transforms is not None:
            self.transforms.close()
        if self.store is not None:
            await to_thread.run_sync(self.store.close)
        gc.unfreeze()  # what start-up froze can be collected again (in-process apps, tests)
        self.started = False
        log.info("gapfix service stopped")

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        """``(ready, details)``: model loaded, store open, dimensions agreeing everywhere."""
        problems: list[str] = []
        if not self.started:
            problems.append("starting up")
        if self.stopping:
            problems.append("shutting down")
        if not self.settings.vectors_mode and self.encoder is None:
            problems.append("model not loaded")
        collections: dict[str, Any] = {}
        if self.store is not None and not self.stopping:
            dim = self.dim
            for info in self.store.list_collections():
                name, cdim = info["name"], info["dim"]
                collections[name] = {"dim": cdim, "transform_status": info["transform_status"]}
                if dim is not None and cdim is not None and cdim != dim:
                    problems.append(
                        f"collection {name!r} has dimension {cdim} but the model "
                        f"{self.model_id} embeds in {dim}"
                    )
                try:
                    transform = self.store.get(name).active_transform
                except NotFoundError:  # deleted since it was listed
                    continue
                if transform is not None and cdim is not None and int(transform.dim_) != cdim:
                    problems.append(
                        f"collection {name!r}: active transform has dimension "
                        f"{int(transform.dim_)}, the collection {cdim}"
                    )
        default = self.settings.default_transform
        entry = None if default is None or self.transforms is None else (
            self.transforms.get_or_none(default))  # fmt: skip
        if entry is not None and self.dim is not None and entry.dim != self.dim:
            problems.append(
                f"default transform {default!r} (GAPFIX_DEFAULT_TRANSFORM) has dimension "
                f"{entry.dim} but the model {self.model_id} embeds in {self.dim}"
            )
        return not problems, {
            "problems": problems,
            "model": self.model_id,
            "dim": self.dim,
            "vectors_mode": self.settings.vectors_mode,
            "collections": collections,
        }
