"""Named transforms, independent of collections: ``<folder>/<name>.gapfix`` artifact files.

A name maps to one artifact. ``put`` validates the bytes by loading them, then writes them
atomically (temp file + fsync + rename), so a ``kill -9`` leaves the old artifact or the new
one, never a torn file; a killed writer's temp files are removed at the next open. The
fingerprint is the artifact's content hash (blake2b-128, first 16 hex digits), the same one a
collection gives its transform, so a snapshot of a collection's transform keeps its
fingerprint.

Readers get a ``NamedTransform`` (transform + fingerprint + metadata, immutable): a concurrent
replace swaps the whole entry in one assignment, so vectors and the name/fingerprint reported
with them always belong together. ``fit`` fits from calibration vectors on a background thread
(``auto`` can take minutes) and waits a bounded time for it; a fit that a restart interrupts
is dropped (its vectors were never stored).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from gapfix.atomic import atomic_path, fsync_dir, remove_quietly, remove_stale_tmp, temp_path
from gapfix.errors import ArtifactError, GapfixError, InputError
from gapfix.metrics import TRANSFORM_GAP
from gapfix.store.errors import ConflictError, NotFoundError
from gapfix.store.store import NAME_RE
from gapfix.validation import check_embeddings, check_labels, check_paired, check_same_dim

log = logging.getLogger(__name__)

SUFFIX = ".gapfix"
MAX_ARTIFACT_BYTES = 1 << 30


def fingerprint(data: bytes) -> str:
    """Content hash of artifact bytes (the same as a collection's transform fingerprint)."""
    return hashlib.blake2b(data, digest_size=16).hexdigest()[:16]


def check_transform_name(name: Any) -> str:
    """Return ``name`` if it matches ``[A-Za-z0-9_-]{1,64}``, else raise InputError."""
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise InputError(
            f"invalid transform name {name!r}: use 1-64 letters, digits, '_' or '-'", "name"
        )
    return name


@dataclass(frozen=True)
class NamedTransform:
    """One registered transform: the fitted object, its content fingerprint and metadata."""

    name: str
    fingerprint: str
    transform: Any
    meta: dict[str, Any]
    created: float

    @property
    def dim(self) -> int:
        return int(self.transform.dim_)

    @property
    def method(self) -> str:
        return str(self.meta.get("method"))

    def describe(self) -> dict[str, Any]:
        """JSON-safe summary: name, fingerprint, method, params, dim, model, fit_stats, created."""
        out = {
            "name": self.name,
            "status": "ready",
            "fingerprint": self.fingerprint,
            "method": self.method,
            "params": self.meta.get("params") or {},
            "dim": self.dim,
            "model": self.meta.get("model_id"),
            "fit_stats": self.meta.get("fit_stats") or {},
            "created": self.created,
            "has_query_text_mean": getattr(
                getattr(self.transform, "best_", self.transform), "mean_query_text_", None
            )
            is not None,
        }
        if "chosen" in self.meta:
            out["chosen"] = self.meta["chosen"]
        return out


@dataclass
class _FitJob:
    name: str
    method: str
    started: float
    future: Future | None = None
    error: str | None = None
    done_at: float | None = field(default=None)

    def describe(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "started": self.started,
            "elapsed_s": round((self.done_at or time.time()) - self.started, 3),
        }


class TransformRegistry:
    """Named transform artifacts in ``folder`` (created if missing), loaded at open."""

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        remove_stale_tmp(self.folder)
        self._lock = threading.Lock()  # the dicts below
        self._write_lock = threading.Lock()  # one writer at a time (put, delete)
        self._entries: dict[str, NamedTransform] = {}
        self._jobs: dict[str, _FitJob] = {}
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gapfix-fit")
        for path in sorted(self.folder.glob(f"*{SUFFIX}")):
            name = path.name[: -len(SUFFIX)]
            if not NAME_RE.fullmatch(name):
                continue
            try:
                self._entries[name] = self._load(name, path.read_bytes(), path)
            except (OSError, ArtifactError) as exc:
                log.error("named transform %s is unreadable and is not served: %s", name, exc)
        for entry in self._entries.values():
            _set_gauges(entry)

    # ------------------------------------------------------------------ reading
    def get(self, name: str) -> NamedTransform:
        """The named transform; NotFoundError if there is none."""
        entry = self._entries.get(name) if isinstance(name, str) else None
        if entry is None:
            raise NotFoundError(f"transform {name!r} not found", param="transform")
        return entry

    def get_or_none(self, name: str) -> NamedTransform | None:
        """The named transform, or None."""
        return self._entries.get(name) if isinstance(name, str) else None

    def names(self) -> list[str]:
        with self._lock:
            return sorted(self._entries)

    def describe(self, name: str) -> dict[str, Any]:
        """An entry's summary, with a running or failed fit of that name (``status``)."""
        with self._lock:
            entry, job = self._entries.get(name), self._jobs.get(name)
        if entry is None and job is None:
            raise NotFoundError(f"transform {name!r} not found", param="transform")
        out = entry.describe() if entry is not None else {"name": name}
        if job is not None:
            running = job.future is not None and not job.future.done()
            out["status"] = "fitting" if running else "failed"
            out["job"] = job.describe()
            out["error"] = job.error
        return out

    def list_transforms(self) -> list[dict[str, Any]]:
        """Summaries of every transform and every running or failed fit, by name."""
        with self._lock:
            names = sorted(set(self._entries) | set(self._jobs))
        out = []
        for name in names:
            try:
                out.append(self.describe(name))
            except NotFoundError:  # deleted meanwhile
                continue
        return out

    # ------------------------------------------------------------------ writing
    def _load(self, name: str, data: bytes, path: Path) -> NamedTransform:
        from gapfix.transforms.artifact import load_transform, read_metadata

        transform = load_transform(path)
        meta = read_metadata(path)
        return NamedTransform(name, fingerprint(data), transform, meta, path.stat().st_mtime)

    def put(self, name: str, data: bytes, replace: bool = False) -> tuple[NamedTransform, str]:
        """Register artifact ``data`` under ``name``; returns ``(entry, outcome)`` with outcome
        ``created``, ``replaced`` or ``unchanged`` (the same bytes were registered already).

        Other bytes under an existing name: ConflictError unless ``replace``. Bytes that do not load as a gapfix
        transform: InputError; nothing is written then.
        """
        check_transform_name(name)
        if not isinstance(data, bytes | bytearray) or not data:
            raise InputError("the artifact is empty: send a .gapfix file as the body", "body")
        if len(data) > MAX_ARTIFACT_BYTES:
            raise InputError(f"the artifact is larger than {MAX_ARTIFACT_BYTES} bytes", "body")
        data = bytes(data)
        fp = fingerprint(data)
        with self._write_lock:
            self._check_open()
            old = self._entries.get(name)
            if old is not None and old.fingerprint == fp:
                return old, "unchanged"
            if old is not None and not replace:
                raise ConflictError(
                    f"transform {name!r} exists with other content (fingerprint "
                    f"{old.fingerprint}, this one {fp}); use ?replace=true to replace it",
                    param="name",
                )
            final = self.folder / f"{name}{SUFFIX}"
            tmp = temp_path(final)
            try:
                tmp.write_bytes(data)
                try:
                    entry = self._load(name, data, tmp)  # validates: arrays, dims, format
                except ArtifactError as exc:
                    msg = str(exc.message).replace(str(tmp), "the artifact")
                    raise InputError(msg, param="body") from None
                with atomic_path(final) as dst:
                    os.replace(tmp, dst)
            finally:
                remove_quietly(tmp)
            entry = NamedTransform(name, fp, entry.transform, entry.meta, final.stat().st_mtime)
            with self._lock:
                self._entries[name] = entry
                job = self._jobs.get(name)
                if job is not None and job.future is not None and job.future.done():
                    self._jobs.pop(name)  # a failed fit's record: superseded
            _set_gauges(entry)
            return entry, "created" if old is None else "replaced"

    def put_transform(
        self, name: str, transform: Any, replace: bool = False, model_id: str | None = None
    ) -> tuple[NamedTransform, str]:
        """Register a fitted transform object (serialised as its artifact bytes)."""
        from gapfix.transforms.artifact import transform_bytes

        return self.put(name, transform_bytes(transform, model_id), replace=replace)

    def delete(self, name: str) -> None:
        """Remove a transform (and any failed fit record of that name); NotFoundError if none."""
        with self._write_lock:
            with self._lock:
                entry = self._entries.pop(name, None)
                job = self._jobs.get(name)
                if job is not None and (job.future is None or job.future.done()):
                    self._jobs.pop(name)
                elif job is not None and entry is None:
                    raise ConflictError(f"transform {name!r} is still being fitted", "name")
            if entry is None and job is None:
                raise NotFoundError(f"transform {name!r} not found", param="transform")
            if entry is not None:
                remove_quietly(self.folder / f"{name}{SUFFIX}")
                fsync_dir(self.folder)
                for space in ("raw", "corrected"):
                    with contextlib.suppress(KeyError):
                        TRANSFORM_GAP.remove(name, space)

    def fit(
        self,
        name: str,
        method: str,
        image: Any,
        text: Any,
        params: dict[str, Any] | None = None,
        objective: str | None = None,
        labels: Any = None,
        replace: bool = False,
        wait_seconds: float | None = None,
        model_id: str | None = None,
        query_text: Any = None,
    ) -> bool:
        """Fit ``method`` on calibration vectors and register it as ``name`` in the background.

        Bad parameters or data raise InputError before anything starts; an existing name
        raises ConflictError unless ``replace``. Returns True when the transform is registered
        within ``wait_seconds`` (None: wait until done); False while it is still fitting
        (``describe(name)`` shows the status). A fit that fails raises its error when it
        fails within the wait, else leaves ``status: failed`` with the error.
        """
        from gapfix.transforms import make_transform

        check_transform_name(name)
        params = dict(params or {})
        if method == "auto" and objective is not None:
            params.setdefault("objective", objective)
        elif objective is not None:
            raise InputError("objective is only used by method 'auto'", param="objective")
        transform = make_transform(method, **params)
        img = check_embeddings(image, "image", min_rows=2)
        txt = check_embeddings(text, "text", min_rows=2)
        check_same_dim(img, txt)
        if getattr(transform, "objective", None) == "zeroshot" and labels is None:
            raise InputError("objective 'zeroshot' needs labels (one class per image row)",
                             param="labels")  # fmt: skip
        if labels is not None:
            labels = check_labels(labels, img.shape[0], txt.shape[0])
        elif transform.paired:
            check_paired(img, txt, f"method {method!r}")
        extra: dict[str, Any] = {}
        if bool(getattr(transform, "query_text_mean", False)) != (query_text is not None):
            raise InputError(
                "query_text goes with method centering and params.query_text_mean=true",
                param="query_text",
            )
        if query_text is not None:
            extra["query_text"] = check_embeddings(query_text, "query_text", min_rows=2)
        with self._write_lock, self._lock:
            self._check_open()
            job = self._jobs.get(name)
            if job is not None and job.future is not None and not job.future.done():
                raise ConflictError(f"transform {name!r} is already being fitted", "name")
            if name in self._entries and not replace:
                raise ConflictError(
                    f"transform {name!r} exists; use replace: true to replace it", "name"
                )
            job = _FitJob(name, method, time.time())
            job.future = self._executor.submit(
                self._run_fit, job, transform, img, txt, labels, replace, model_id, extra
            )
            self._jobs[name] = job
        try:
            job.future.result(timeout=wait_seconds)
        except FutureTimeout:
            return False
        except BaseException:
            with self._lock:  # the caller gets the error itself: no failed record
                if self._jobs.get(name) is job:
                    self._jobs.pop(name)
            raise
        return True

    def _run_fit(
        self,
        job: _FitJob,
        transform: Any,
        img: np.ndarray,
        txt: np.ndarray,
        labels: Any,
        replace: bool,
        model_id: str | None,
        extra: dict[str, Any],
    ) -> None:
        try:
            transform.fit(img, txt, labels, **extra)
            self.put_transform(job.name, transform, replace=replace, model_id=model_id)
            with self._lock:
                if self._jobs.get(job.name) is job:
                    self._jobs.pop(job.name)
        except BaseException as exc:
            job.error = getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}"
            if not isinstance(exc, GapfixError):
                log.exception("fitting transform %s failed", job.name)
            raise
        finally:
            job.done_at = time.time()

    def _check_open(self) -> None:
        if getattr(self, "_closed", False):
            raise GapfixError("the transform registry is closed")

    def close(self) -> None:
        """Stop taking work; a running fit is abandoned (its vectors were never stored)."""
        self._closed = True
        self._executor.shutdown(wait=False, cancel_futures=True)


def _set_gauges(entry: NamedTransform) -> None:
    stats = entry.meta.get("fit_stats") or {}
    for space, key in (("raw", "gap_before"), ("corrected", "gap_after")):
        value = stats.get(key)
        if isinstance(value, int | float):
            TRANSFORM_GAP.labels(entry.name, space).set(float(value))
