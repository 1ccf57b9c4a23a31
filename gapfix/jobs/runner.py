"""Shard-level bookkeeping shared by every job and backend (local or Ray).

`ShardJob` owns an output folder: it checks that a rerun is the same job, keeps the finished
shards whose files are intact, hands out the pending ones, and commits each finished shard
(failures list, then parquet file, then manifest — each written atomically, in that order, so a
kill -9 at any point leaves either a shard the manifest lists and that is complete, or one the
next run redoes). `ShardAssembler` collects the per-slot results of one shard, in any order,
into its deterministic row order.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from gapfix.atomic import remove_stale_tmp
from gapfix.errors import InputError
from gapfix.jobs.failures import (
    FAILURES_DIR,
    Failure,
    merge_failures,
    write_shard_failures,
)
from gapfix.jobs.manifest import (
    MANIFEST_NAME,
    MODALITIES,
    new_manifest,
    read_manifest,
    record_shard,
    refresh_totals,
    write_manifest,
)
from gapfix.jobs.shards import ShardData, shard_row_counts, write_shard
from gapfix.locks import release, try_lock

SHARDS_DIR = "shards"
LOCK_NAME = ".lock"
SLOT_ORDER = {"item": 0, "image": 1, "text": 2, "empty": 3}


def shard_name(index: int) -> str:
    return f"part-{index:05d}"


def identity(m: dict[str, Any]) -> dict[str, Any]:
    """The fields that must match for a rerun to resume into an existing output folder."""
    model = m.get("model") or {}
    inp = m.get("input") or {}
    tr = m.get("transform") or {}
    return {
        "kind": m.get("kind"),
        "model": model.get("id"),
        "pretrained": model.get("pretrained"),
        "dim": m.get("dim"),
        "fingerprint": inp.get("fingerprint"),
        "shard_size": inp.get("shard_size"),
        "thumbnail_size": inp.get("thumbnail_size"),
        "num_shards": inp.get("num_shards"),
        "transform": tr.get("sha256"),
        "sink": (m.get("sink") or {}).get("uri"),
    }


@dataclass
class ShardResult:
    """A finished input shard: its rows, its failures and how many input items it had."""

    index: int
    data: ShardData
    failures: list[Failure]
    items: int
    seconds: float = 0.0


class ShardJob:
    """An output folder being filled shard by shard (resumable)."""

    def __init__(
        self,
        out: str | Path,
        *,
        kind: str,
        model: dict[str, Any],
        dim: int,
        input_info: dict[str, Any],
        transform: dict[str, Any] | None = None,
        log: Callable[[str], None] = print,
    ) -> None:
        self.out = Path(out)
        self.manifest_file = self.out / MANIFEST_NAME
        self.dim = int(dim)
        self.num_shards = int(input_info["num_shards"])
        self.log = log
        self.fresh = new_manifest(
            kind, model=model, dim=dim, input_info=input_info, transform=transform
        )
        self.manifest: dict[str, Any] = {}
        self.redone: list[int] = []
        self._lock_fd: int | None = None

    def open(self) -> list[int]:
        """Prepare the folder; return the indexes of shards still to do (all on a fresh run).

        Holds an exclusive lock on the folder until `finish` (a second run into it is refused).
        """
        if self.out.exists() and not self.out.is_dir():
            raise InputError(f"--out {self.out} exists and is not a folder", param="out")
        self.out.mkdir(parents=True, exist_ok=True)
        self._lock()
        try:
            return self._open()
        except BaseException:
            self._unlock()
            raise

    def _lock(self) -> None:
        fd = try_lock(self.out / LOCK_NAME)
        if fd is None:
            raise InputError(
                f"--out {self.out} is in use by another gapfix job; wait for it to finish",
                param="out",
            )
        self._lock_fd = fd

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            release(self._lock_fd)
            self._lock_fd = None

    def _open(self) -> list[int]:
        for sub in (self.out, self.out / SHARDS_DIR, self.out / FAILURES_DIR):
            remove_stale_tmp(sub)
        if not self.manifest_file.exists():
            if (self.out / SHARDS_DIR).is_dir() and any((self.out / SHARDS_DIR).iterdir()):
                raise InputError(
                    f"--out {self.out} holds shards but no manifest; use an empty folder",
                    param="out",
                )
            self.manifest = self.fresh
            write_manifest(self.manifest_file, self.manifest)
            return list(range(self.num_shards))
        old = read_manifest(self.manifest_file)
        old.pop("root", None)
        mine, theirs = identity(self.fresh), identity(old)
        if mine != theirs:
            diff = ", ".join(
                f"{k}: {theirs[k]!r} there vs {mine[k]!r} now" for k in mine if mine[k] != theirs[k]
            )
            raise InputError(
                f"--out {self.out} holds a different job ({diff}); use a new output folder",
                param="out",
            )
        kept = []
        for rec in old["shards"]:
            reason = self._verify(rec)
            if reason is None:
                kept.append(rec)
            else:
                self.redone.append(rec["index"])
                self.log(f"shard {rec['file']} {reason}; redoing it")
        old["shards"] = kept
        refresh_totals(old)
        self.manifest = old
        write_manifest(self.manifest_file, self.manifest)
        done = {r["index"] for r in kept}
        return [i for i in range(self.num_shards) if i not in done]

    def _verify(self, rec: dict[str, Any]) -> str | None:
        path = self.out / rec["file"]
        if not path.is_file():
            return "is missing"
        try:
            counts = shard_row_counts(path, self.dim)
        except Exception as exc:  # unreadable parquet: redo it
            return f"is unreadable ({exc})"
        want = {m: int(rec["rows"].get(m, 0)) for m in MODALITIES}
        if counts != want:
            return f"has rows {counts}, manifest says {want}"
        return None

    def shard_path(self, index: int) -> Path:
        return self.out / SHARDS_DIR / f"{shard_name(index)}.parquet"

    def commit(self, result: ShardResult) -> dict[str, Any]:
        """Write one finished shard (failures, parquet, manifest — in that order)."""
        name = shard_name(result.index)
        write_shard_failures(self.out, name, result.failures)
        path = self.shard_path(result.index)
        write_shard(path, result.data, self.dim)
        rec = {
            "index": result.index,
            "file": f"{SHARDS_DIR}/{path.name}",
            "rows": result.data.counts(),
            "items": result.items,
            "failures": len(result.failures),
            "seconds": round(result.seconds, 3),
        }
        record_shard(self.manifest, rec)
        write_manifest(self.manifest_file, self.manifest)
        return rec

    def finish(self) -> int:
        """Merge the per-shard failure lists into ``failures.jsonl``; returns its line count."""
        try:
            names = [shard_name(r["index"]) for r in self.manifest["shards"]]
            return merge_failures(self.out, names)
        finally:
            self._unlock()


@dataclass
class SlotRow:
    """The outcome of one slot (an item's image, its text, or the whole item)."""

    seq: int
    slot: str  # "image" | "text" | "item" | "empty"
    id: str
    metadata: str = "{}"
    embedding: np.ndarray | None = None
    failure: Failure | None = None
    caption: str | None = None  # text slots: the embedded text
    thumbnail: bytes | None = None  # image slots: a small JPEG, when asked for


@dataclass
class ShardAssembler:
    """Collects slot results of one shard until ``expected`` slots have arrived."""

    index: int
    expected: int
    started: float = field(default_factory=time.monotonic)
    rows: list[SlotRow] = field(default_factory=list)

    def add(self, row: SlotRow) -> None:
        self.rows.append(row)

    @property
    def done(self) -> bool:
        return len(self.rows) >= self.expected

    def result(self, dim: int) -> ShardResult:
        rows = sorted(self.rows, key=lambda r: (r.seq, SLOT_ORDER[r.slot]))
        ok = [r for r in rows if r.embedding is not None]
        data = ShardData(
            ids=[r.id for r in ok],
            modalities=[r.slot for r in ok],
            embeddings=(
                np.stack([r.embedding for r in ok]).astype(np.float32, copy=False)
                if ok
                else np.zeros((0, dim), np.float32)
            ),
            metadata=[r.metadata for r in ok],
            captions=[r.caption for r in ok],
            thumbnails=[r.thumbnail for r in ok],
        )
        failures = [r.failure for r in rows if r.failure is not None]
        for f in failures:
            f.shard = self.index
        items = len({r.seq for r in rows if r.slot != "empty"})
        return ShardResult(
            self.index, data, failures, items, seconds=time.monotonic() - self.started
        )


def run_with_writer(
    produce: Callable[[Callable[[ShardResult], None]], None],
    commit: Callable[[ShardResult], None],
) -> None:
    """Run ``produce(submit)``; one background thread commits the shards it submits, in order
    (so the model never waits on disk). A failed commit stops the run."""
    futures: list[Future[None]] = []
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="gapfix-shard-writer") as pool:

        def submit(res: ShardResult) -> None:
            # surface a failed write early instead of queueing more work behind it
            for f in [f for f in futures if f.done()]:
                f.result()
                futures.remove(f)
            futures.append(pool.submit(commit, res))

        try:
            produce(submit)
        finally:
            for f in futures:
                f.result()


def summarize(
    kind: str,
    job: ShardJob,
    counts: dict[str, int],
    seconds: float,
    skipped: int,
    log: Callable[[str], None],
) -> dict[str, Any]:
    """The end-of-run summary (this run's counts, the folder's totals), also logged."""
    totals = job.manifest["totals"]
    rate = counts["items"] / seconds if seconds > 0 else 0.0
    summary = {
        "kind": kind,
        "out": str(job.out),
        "items": counts["items"],
        "rows": {"image": counts["image"], "text": counts["text"]},
        "failures": counts["failures"],
        "shards_written": counts["shards"],
        "shards_skipped": skipped,
        "seconds": round(seconds, 3),
        "items_per_s": round(rate, 2),
        "totals": totals,
        "complete": job.manifest["complete"],
        "manifest": str(job.manifest_file),
    }
    log(
        f"{kind}: {counts['items']} items in {seconds:.1f}s ({rate:.1f} items/s): "
        f"{counts['image']} image + {counts['text']} text rows, {counts['failures']} failures; "
        f"{counts['shards']} shards written, {skipped} already done"
    )
    log(
        f"{kind}: totals {totals['rows']} rows ({totals['image']} image, {totals['text']} text), "
        f"{totals['failures']} failures (see {job.out / 'failures.jsonl'}), "
        f"{totals['shards_done']}/{totals['shards_total']} shards"
    )
    return summary
