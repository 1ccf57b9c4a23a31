"""Transform lifecycle of a Milvus collection: fit, save the artifact in ``gapfix_meta``, and
switch spaces in the background while the old space keeps answering.

A switch to transform T (fingerprint ``fp``):

1. the meta row gets ``pending = {fp, slot}``, ``slot`` being the corrected field the active
   transform does not use; from now on every write also fills that slot with T's vectors;
2. a job (one ``concurrent.futures`` worker per collection) walks every id and, per batch
   under the write lock, re-computes T's vectors from the stored raw components and upserts
   them into the pending slot only -- the active slot is never touched;
3. the flip: the meta row (active = fp, slot = the new slot, pending = none, and the new
   centroid sums) is written with ONE upsert.

A kill -9 before 3 leaves the old transform active over its untouched slot and ``pending``
set, so the next start resumes the job from the beginning (batches are idempotent); after 3
the new slot is complete. Either way no answer mixes the two spaces.
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gapfix.errors import InputError, NotFittedError
from gapfix.store.collection import SUPERSEDED_POLL_S, _check_maps_finite
from gapfix.store.errors import ConflictError
from gapfix.store.milvus.conn import SLOTS, unavailable_as_503
from gapfix.store.milvus.meta import add_sums, zero_sums

log = logging.getLogger(__name__)


def transform_to_bytes(transform: Any) -> bytes:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "t.safetensors"
        transform.save(path)
        return path.read_bytes()


def transform_from_bytes(data: bytes) -> Any:
    from gapfix.transforms.artifact import load_transform

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "t.safetensors"
        path.write_bytes(data)
        return load_transform(path)


class _Cancelled(Exception):
    pass


@dataclass
class SwitchJob:
    transform: Any = None
    fingerprint: str | None = None
    fit: Any = None
    cancelled: bool = False
    phase: str = "queued"
    error: str | None = None
    started_at: float = field(default_factory=time.time)
    done: threading.Event = field(default_factory=threading.Event)
    future: Future | None = None

    def describe(self) -> dict[str, Any]:
        target = self.transform if self.transform is not None else self.fit
        return {
            "kind": "transform",
            "phase": self.phase,
            "method": getattr(target, "method", None),
            "started_at": self.started_at,
        }


class TransformSwitch:
    """Mixin of ``MilvusCollection``: the transform methods of the embedded ``Collection``."""

    name: str
    switch_batch: int
    _job: SwitchJob | None

    @property
    def active_transform(self) -> Any:
        """The active GapTransform, or None (corrected = raw)."""
        with unavailable_as_503():
            return self.view().transform  # type: ignore[attr-defined]

    @property
    def transform_status(self) -> dict[str, Any]:
        """``{"status": "active"|"rebuilding"|"failed", "error", "job"}``."""
        job = self._job
        if job is not None and not job.done.is_set():
            return {"status": "rebuilding", "error": None, "job": job.describe()}
        doc = self.view().doc  # type: ignore[attr-defined]
        if doc.get("pending"):
            return {
                "status": "rebuilding",
                "error": None,
                "job": {
                    "kind": "transform",
                    "phase": "indexing",
                    "method": None,
                    "started_at": doc["pending"].get("at"),
                },
            }
        if doc.get("error"):
            return {"status": "failed", "error": doc["error"], "job": None}
        return {"status": "active", "error": None, "job": None}

    def transform_info(self) -> dict[str, Any]:
        """Active transform summary + status."""
        with unavailable_as_503():
            v = self.view()  # type: ignore[attr-defined]
            summary = v.transform.to_summary() if v.transform is not None else {"method": None}
            return {**self.transform_status, "fingerprint": v.doc.get("active"), "active": summary}

    def wait_transform(self, timeout: float | None = None, job: SwitchJob | None = None) -> bool:
        """Wait for the running switch (or ``job``); True when it finished and is active.
        A superseded ``job`` raises ConflictError."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            current = self._job if job is None else job
            if current is None:
                return self.transform_status["status"] == "active"
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            step = SUPERSEDED_POLL_S if remaining is None else min(SUPERSEDED_POLL_S, remaining)
            finished = current.done.wait(step)
            if job is not None and job.cancelled:
                raise ConflictError(
                    "this transform was superseded by a later transform request before it "
                    "became active",
                    param="method",
                )
            if finished:
                return current.error is None
            if deadline is not None and time.monotonic() >= deadline:
                return False

    def set_transform(self, transform: Any, wait_seconds: float | None = None) -> bool:
        """Activate a fitted transform (None: no correction), switching in the background."""
        dim = self.dim  # type: ignore[attr-defined]
        if transform is not None:
            try:
                tdim = int(transform.dim_)
            except (AttributeError, NotFittedError):
                raise InputError("the transform is not fitted", param="transform") from None
            if dim is not None and tdim != dim:
                raise InputError(
                    f"transform dimension {tdim} does not match the collection's dimension {dim}",
                    param="transform",
                )
            _check_maps_finite(transform, "transform")
        with self._write_lock, unavailable_as_503():  # type: ignore[attr-defined]
            v = self.view(fresh=True)  # type: ignore[attr-defined]
            self._cancel_job()
            doc = {**v.doc, "pending": None, "error": None}
            sums = dict(v.sums or {})
            if transform is None:
                doc["active"] = None
                sums = {"raw": sums["raw"]} if "raw" in sums else {}
                self._write_meta(doc, sums)  # type: ignore[attr-defined]
                self.meta.prune_artifacts(self.name, set())  # type: ignore[attr-defined]
                return True
            fp = self._save_artifact(transform)
            if v.doc.get("dim") is None:  # nothing stored: activate at once, fix the dimension
                tdim = int(transform.dim_)
                self.ensure_data_collection(tdim)  # type: ignore[attr-defined]
                doc.update(dim=tdim, active=fp, slot=SLOTS[0])
                self._write_meta(doc, {"raw": zero_sums(tdim), SLOTS[0]: zero_sums(tdim)})  # type: ignore[attr-defined]
                return True
            job = SwitchJob(transform=self._load_transform(fp), fingerprint=fp)  # type: ignore[attr-defined]
            self._start(job)
        return self.wait_transform(wait_seconds, job)

    def fit_transform(
        self,
        method: str,
        params: dict[str, Any] | None = None,
        objective: str | None = None,
        wait_seconds: float | None = None,
    ) -> bool:
        """Fit ``method`` on the stored raw vectors and activate it (in the background)."""
        from gapfix.transforms import make_transform

        params = dict(params or {})
        if method == "auto":
            if objective is not None:
                params.setdefault("objective", objective)
            if params.get("objective", "balanced") == "zeroshot":
                raise InputError(
                    "objective 'zeroshot' needs class labels; collections have none", "objective"
                )
        if params.get("query_text_mean"):
            raise InputError(
                "query_text_mean needs separate query texts to fit; a collection has none",
                param="params.query_text_mean",
            )
        transform = make_transform(method, **params)
        with self._write_lock, unavailable_as_503():  # type: ignore[attr-defined]
            c = self.counts()  # type: ignore[attr-defined]
            need = 4 if method == "auto" else 2
            if transform.paired and c["document"] < need:
                raise InputError(
                    f"method {method!r} needs paired data: documents (items with both an image "
                    f"and a text vector); this collection has {c['document']}",
                    param="method",
                )
            n_img, n_txt = c["image"] + c["document"], c["text"] + c["document"]
            if not transform.paired and (n_img < 2 or n_txt < 2):
                raise InputError(
                    f"fitting needs at least 2 image and 2 text vectors; this collection has "
                    f"{n_img} and {n_txt}",
                    param="method",
                )
            job = SwitchJob(fit=transform)
            self._start(job)
        return self.wait_transform(wait_seconds, job)

    def resume_switch(self) -> None:
        """Resume a switch that a restart interrupted (``pending`` in the meta row)."""
        v = self.view(fresh=True)  # type: ignore[attr-defined]
        pending = v.doc.get("pending")
        if pending and v.pending is not None:
            log.info("collection %s: resuming the switch to transform %s", self.name, pending["fp"])
            self._start(SwitchJob(transform=v.pending, fingerprint=pending["fp"]))

    # ------------------------------------------------------------------ the job
    def _save_artifact(self, transform: Any) -> str:
        data = transform_to_bytes(transform)
        fp = hashlib.sha256(data).hexdigest()[:16]
        self.meta.put_artifact(self.name, fp, data)  # type: ignore[attr-defined]
        return fp

    def _cancel_job(self) -> None:
        job = self._job
        if job is not None:
            job.cancelled = True
            self._job = None

    def _start(self, job: SwitchJob) -> None:
        self._cancel_job()
        self._job = job
        job.future = self._executor.submit(self._run, job)  # type: ignore[attr-defined]

    def _run(self, job: SwitchJob) -> None:
        try:
            with unavailable_as_503():
                self._switch(job)
        except _Cancelled:
            pass
        except Exception as exc:
            log.exception("collection %s: transform switch failed", self.name)
            job.error = f"{type(exc).__name__}: {getattr(exc, 'message', exc)}"
            try:
                with self._write_lock:  # type: ignore[attr-defined]
                    if not job.cancelled and self._job is job:
                        v = self.view(fresh=True)  # type: ignore[attr-defined]
                        doc = {**v.doc, "pending": None, "error": job.error}
                        self._write_meta(doc, v.sums or {})  # type: ignore[attr-defined]
            except Exception:
                log.exception("collection %s: recording the failed switch failed", self.name)
        finally:
            with self._write_lock:  # type: ignore[attr-defined]
                if self._job is job:
                    self._job = None
                job.done.set()

    def _check(self, job: SwitchJob) -> None:
        if job.cancelled or self._closed:  # type: ignore[attr-defined]
            raise _Cancelled

    def _switch(self, job: SwitchJob) -> None:
        from gapfix.store.milvus.rows import COMPONENT_FIELDS, Components

        if job.fit is not None:
            job.phase = "fitting"
            rv = self.raw_vectors()  # type: ignore[attr-defined]
            t = job.fit
            img, txt = (rv.pair_image, rv.pair_text) if t.paired else (rv.image, rv.text)
            t.fit(img, txt)
            _check_maps_finite(t, "params")
            self._check(job)
            job.fingerprint = self._save_artifact(t)
            job.transform = self._load_transform(job.fingerprint)  # type: ignore[attr-defined]
        with self._write_lock:  # type: ignore[attr-defined]
            self._check(job)
            v = self.view(fresh=True)  # type: ignore[attr-defined]
            dim = v.doc["dim"]
            pending = v.doc.get("pending") or {}
            if pending.get("fp") != job.fingerprint:
                slot = SLOTS[1] if v.slot == SLOTS[0] else SLOTS[0]
                pending = {"fp": job.fingerprint, "slot": slot, "at": time.time()}
                self._write_meta({**v.doc, "pending": pending, "error": None}, v.sums or {})  # type: ignore[attr-defined]
        slot = pending["slot"]
        job.phase = "indexing"
        for rows in self._iterate(["id"], self.switch_batch):  # type: ignore[attr-defined]
            ids = [r["id"] for r in rows]
            with self._write_lock:  # type: ignore[attr-defined]
                self._check(job)
                # whole rows, re-read under the lock (a write in between cannot be undone);
                # every field but the pending slot is written back as it was
                full = self.client.get(self.name, ids=ids, output_fields=["*"])  # type: ignore[attr-defined]
                if full:
                    comps = Components.from_rows(full, dim)
                    vecs, _ = comps.corrected(job.transform)
                    for n, row in enumerate(full):
                        row[slot] = vecs[n].tolist()
                    self.client.upsert(self.name, full)  # type: ignore[attr-defined]
        with self._write_lock:  # type: ignore[attr-defined]
            self._check(job)
            job.phase = "switching"
            sums = zero_sums(dim)
            for rows in self._iterate(COMPONENT_FIELDS):  # type: ignore[attr-defined]
                sums = add_sums(
                    sums, Components.from_rows(rows, dim).corrected(job.transform)[1], 1
                )
            v = self.view(fresh=True)  # type: ignore[attr-defined]
            new_sums = {"raw": (v.sums or {}).get("raw") or zero_sums(dim), slot: sums}
            doc = {**v.doc, "active": job.fingerprint, "slot": slot, "pending": None, "error": None}
            self._write_meta(doc, new_sums)  # type: ignore[attr-defined]
            self.meta.prune_artifacts(self.name, {job.fingerprint})  # type: ignore[attr-defined]
            job.phase = "done"
            self.update_gauges(self._view)  # type: ignore[attr-defined]
        log.info("collection %s: switched to transform %s (%s)", self.name, job.fingerprint, slot)
