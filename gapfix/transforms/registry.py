"""Named transforms, independent of collections, kept in an artifact store
(``gapfix.transforms.artifact_stores``): ``<folder>/<name>.gapfix`` files by default, or the
Milvus store's ``gapfix_meta`` rows, which every gapfix replica over that Milvus shares.

A name maps to one artifact. ``put`` validates the bytes by loading them, then has the store
write them atomically, so a ``kill -9`` leaves the old artifact or the new one, never a torn
one. The fingerprint is the artifact's content hash (blake2b-128, first 16 hex digits), the
same one a collection gives its transform, so a snapshot of a collection's transform keeps its
fingerprint.

Readers get a ``NamedTransform`` (transform + fingerprint + metadata, immutable): a concurrent
replace swaps the whole entry in one assignment, so vectors and the name/fingerprint reported
with them always belong together. On a shared store the registry looks again at most every
``refresh_s`` seconds (at once for a name it does not know, and before every write), so a
transform registered, replaced or deleted through one replica reaches the others. ``fit`` fits
from calibration vectors on a background thread (``auto`` can take minutes) and waits a bounded
time for it; a fit that a restart interrupts is dropped (its vectors were never stored).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gapfix.errors import ArtifactError, GapfixError, InputError
from gapfix.metrics import TRANSFORM_GAP
from gapfix.store.errors import ConflictError, NotFoundError
from gapfix.store.store import NAME_RE
from gapfix.transforms.artifact_stores import (
    SUFFIX,
    ArtifactStore,
    FolderArtifacts,
    decode_artifact,
    fingerprint,
)
from gapfix.validation import check_embeddings, check_labels, check_paired, check_same_dim

log = logging.getLogger(__name__)

MAX_ARTIFACT_BYTES = 1 << 30
MISS_RECHECK_S = 0.2  # an unknown name looks in a shared store again at most this often

__all__ = ["SUFFIX", "NamedTransform", "TransformRegistry", "fingerprint"]


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
    """Named transforms in an artifact store (a folder path: ``FolderArtifacts``), loaded at
    open; a shared store is looked at again every ``refresh_s`` seconds."""

    def __init__(
        self, store: ArtifactStore | str | os.PathLike[str], refresh_s: float = 1.0
    ) -> None:
        self.store: ArtifactStore = (
            store if hasattr(store, "listing") else FolderArtifacts(store)  # type: ignore[arg-type]
        )
        self.refresh_s = refresh_s
        self._lock = threading.Lock()  # the dicts below
        self._write_lock = threading.Lock()  # one writer at a time (put, delete)
        self._entries: dict[str, NamedTransform] = {}
        self._jobs: dict[str, _FitJob] = {}
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gapfix-fit")
        self._synced_at = 0.0
        self._missed_at = 0.0
        self._sync()

    def _sync(self) -> None:
        """Load what the store holds that this registry does not (new or replaced names) and
        drop what it no longer holds. Unreadable artifacts are logged and not served."""
        listing = self.store.listing()
        with self._lock:
            current = dict(self._entries)
        loaded: dict[str, NamedTransform] = {}
        for name, (fp, created) in listing.items():
            if not NAME_RE.fullmatch(name):
                continue
            have = current.get(name)
            if have is not None and have.fingerprint == fp:
                continue
            data = self.store.read(name)
            if data is None:  # removed meanwhile
                continue
            try:
                loaded[name] = self._decode(name, data, created)
            except ArtifactError as exc:
                log.error("named transform %s is unreadable and is not served: %s", name, exc)
        with self._lock:
            gone = [n for n in self._entries if n not in listing]
            for n in gone:
                self._entries.pop(n)
            self._entries.update(loaded)
        for entry in loaded.values():
            _set_gauges(entry)
        for n in gone:
            _remove_gauges(n)
        self._synced_at = time.monotonic()

    def _refresh(self, missed: bool = False) -> None:
        """On a shared store: look again when the last look is ``refresh_s`` old (or, for an
        unknown name, ``MISS_RECHECK_S``). A store that does not answer leaves the loaded
        transforms serving (logged); writes look again themselves and fail instead."""
        if not self.store.shared:
            return
        now = time.monotonic()
        due = now - self._synced_at >= self.refresh_s
        if missed and now - self._missed_at >= MISS_RECHECK_S:
            self._missed_at, due = now, True
        if not due:
            return
        try:
            self._sync()
        except Exception as exc:
            self._synced_at = now  # do not hammer a store that is down
            log.warning("named transforms: could not look at the store again: %s", exc)

    # ------------------------------------------------------------------ reading
    def get(self, name: str) -> NamedTransform:
        """The named transform; NotFoundError if there is none."""
        entry = self.get_or_none(name)
        if entry is None:
            raise NotFoundError(f"transform {name!r} not found", param="transform")
        return entry

    def get_or_none(self, name: str) -> NamedTransform | None:
        """The named transform, or None."""
        if not isinstance(name, str):
            return None
        self._refresh()
        entry = self._entries.get(name)
        if entry is None and self.store.shared and NAME_RE.fullmatch(name):
            self._refresh(missed=True)
            entry = self._entries.get(name)
        return entry

    def names(self) -> list[str]:
        self._refresh()
        with self._lock:
            return sorted(self._entries)

    def describe(self, name: str) -> dict[str, Any]:
        """An entry's summary, with a running or failed fit of that name (``status``)."""
        self.get_or_none(name)
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
        self._refresh()
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
    def _decode(self, name: str, data: bytes, created: float) -> NamedTransform:
        transform, meta = decode_artifact(data)
        return NamedTransform(name, fingerprint(data), transform, meta, created)

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
            if self.store.shared:
                self._sync()  # another replica may have registered or replaced it
            old = self._entries.get(name)
            if old is not None and old.fingerprint == fp:
                return old, "unchanged"
            if old is not None and not replace:
                raise ConflictError(
                    f"transform {name!r} exists with other content (fingerprint "
                    f"{old.fingerprint}, this one {fp}); use ?replace=true to replace it",
                    param="name",
                )
            try:
                entry = self._decode(name, data, 0.0)  # validates: arrays, dims, format
            except ArtifactError as exc:
                raise InputError(str(exc.message), param="body") from None
            created = self.store.write(name, data)
            entry = NamedTransform(name, fp, entry.transform, entry.meta, created)
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
            if self.store.shared:
                self._sync()
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
                self.store.remove(name)
                _remove_gauges(name)

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


def _remove_gauges(name: str) -> None:
    for space in ("raw", "corrected"):
        with contextlib.suppress(KeyError):
            TRANSFORM_GAP.remove(name, space)


def _set_gauges(entry: NamedTransform) -> None:
    stats = entry.meta.get("fit_stats") or {}
    for space, key in (("raw", "gap_before"), ("corrected", "gap_after")):
        value = stats.get(key)
        if isinstance(value, int | float):
            TRANSFORM_GAP.labels(entry.name, space).set(float(value))
