"""Transform lifecycle of a Milvus collection: fit, save the artifact in ``gapfix_meta``, and
switch spaces in the background while the old space keeps answering.

A switch to transform T (fingerprint ``fp``):

1. the meta row gets ``pending = {fp, slot}``, ``slot`` being the corrected field the active
   transform does not use; from now on every write also fills that slot with T's vectors;
2. a job (``gapfix.store.rebuild.Rebuilder``, as on the embedded store) walks every id and, per batch
   under the write lock, re-computes T's vectors from the stored raw components and upserts
   them into the pending slot only -- the active slot is never touched;
3. the flip: the meta row (active = fp, slot = the new slot, pending = none, and the new
   centroid sums) is written with ONE upsert.

A kill -9 before 3 leaves the old transform active over its untouched slot and ``pending``
set, so the next start resumes the job from the beginning (batches are idempotent); after 3
the new slot is complete. Either way no answer mixes the two spaces.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from gapfix.store.milvus.conn import SLOTS, unavailable_as_503
from gapfix.store.milvus.meta import add_sums, zero_sums
from gapfix.store.rebuild import (
    Cancelled,
    Job,
    Rebuilder,
    check_fit_data,
    check_maps_finite,
    fit_job,
    fitted_dim,
    make_fit,
)

log = logging.getLogger(__name__)


def transform_from_bytes(data: bytes) -> Any:
    """The transform of artifact bytes."""
    from gapfix.transforms.artifact_stores import decode_artifact

    return decode_artifact(data)[0]


class TransformSwitch:
    """Mixin of ``MilvusCollection``: the transform methods of the ``Collection`` protocol."""

    name: str
    switch_batch: int
    _rebuilder: Rebuilder

    @property
    def active_transform(self) -> Any:
        """The active GapTransform, or None (corrected = raw)."""
        with unavailable_as_503():
            return self.view().transform  # type: ignore[attr-defined]

    def transform_view(self) -> tuple[Any, str | None]:
        """The active transform and its fingerprint, read together from one meta view."""
        with unavailable_as_503():
            v = self.view()  # type: ignore[attr-defined]
        return v.transform, v.doc.get("active") if v.transform is not None else None

    def active_artifact(self) -> tuple[str, bytes] | None:
        """Fingerprint and artifact bytes of the active transform (None: no transform)."""
        with unavailable_as_503():
            fp = self.view(fresh=True).doc.get("active")  # type: ignore[attr-defined]
            data = self.meta.get_artifact(self.name, fp) if fp else None  # type: ignore[attr-defined]
        return None if data is None else (fp, data)

    @property
    def transform_status(self) -> dict[str, Any]:
        """``{"status": "active"|"rebuilding"|"failed", "error", "job"}``: this replica's
        running switch, else the meta row's (a switch another replica runs, or a failure)."""
        job = self._rebuilder.job
        if job is not None and not job.finished:
            return {"status": "rebuilding", "error": None, "job": job.describe()}
        with unavailable_as_503():
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

    def wait_transform(self, timeout: float | None = None) -> bool:
        """Wait for this replica's running switch; True when none runs and the collection's
        transform status is "active"."""
        if not self._rebuilder.wait(timeout) and self._rebuilder.job is not None:
            return False
        return self.transform_status["status"] == "active"

    def set_transform(self, transform: Any, wait_seconds: float | None = None) -> bool:
        """Activate a fitted transform (None: no correction), switching in the background.
        True when active within ``wait_seconds``; ConflictError if a later request
        superseded it meanwhile."""
        if transform is not None:
            fitted_dim(transform, self.dim)  # type: ignore[attr-defined]
            check_maps_finite(transform, "transform")
        with self._write_lock, unavailable_as_503():  # type: ignore[attr-defined]
            v = self.view(fresh=True)  # type: ignore[attr-defined]
            self._rebuilder.cancel()
            self._rebuilder.error = None
            doc = {**v.doc, "pending": None, "error": None}
            if transform is None:
                doc["active"] = None
                base = {"raw": v.base["raw"]} if "raw" in v.base else {}
                self._write_meta(doc, base)  # type: ignore[attr-defined]
                self.meta.prune_artifacts(self.name, set())  # type: ignore[attr-defined]
                return True
            fp = self._save_artifact(transform)
            if v.doc.get("dim") is None:  # nothing stored: activate at once, fix the dimension
                tdim = int(transform.dim_)
                self.ensure_data_collection(tdim)  # type: ignore[attr-defined]
                doc.update(dim=tdim, active=fp, slot=SLOTS[0])
                self._write_meta(doc, {"raw": zero_sums(tdim), SLOTS[0]: zero_sums(tdim)})  # type: ignore[attr-defined]
                return True
            job = Job("transform", transform=self._load_transform(fp), fingerprint=fp)  # type: ignore[attr-defined]
            self._start(job)
        return self._rebuilder.wait(wait_seconds, job)

    def fit_transform(
        self,
        method: str,
        params: dict[str, Any] | None = None,
        objective: str | None = None,
        wait_seconds: float | None = None,
    ) -> bool:
        """Fit ``method`` on the stored raw vectors and activate it (in the background)."""
        transform = make_fit(method, params, objective)
        with self._write_lock, unavailable_as_503():  # type: ignore[attr-defined]
            check_fit_data(transform, method, self.counts())  # type: ignore[attr-defined]
            job = Job("transform", fit=transform)
            self._start(job)
        return self._rebuilder.wait(wait_seconds, job)

    def resume_switch(self) -> None:
        """Resume a switch that a restart interrupted (``pending`` in the meta row)."""
        v = self.view(fresh=True)  # type: ignore[attr-defined]
        pending = v.doc.get("pending")
        if pending and v.pending is not None:
            log.info("collection %s: resuming the switch to transform %s", self.name, pending["fp"])
            self._start(Job("transform", transform=v.pending, fingerprint=pending["fp"]))

    # ------------------------------------------------------------------ the job
    def _save_artifact(self, transform: Any) -> str:
        from gapfix.transforms.artifact import transform_bytes
        from gapfix.transforms.registry import fingerprint

        data = transform_bytes(transform)
        fp = fingerprint(data)  # as the embedded store's and the named-transform registry's
        self.meta.put_artifact(self.name, fp, data)  # type: ignore[attr-defined]
        return fp

    def _start(self, job: Job) -> None:
        self._rebuilder.start(job, self._run, self._failed)

    def _run(self, job: Job) -> None:
        with unavailable_as_503():
            self._switch(job)

    def _failed(self, job: Job) -> None:
        """A current switch failed (called under the write lock): record it in the meta row
        (status "failed"); the old transform stays active over its untouched slot."""
        try:
            v = self.view(fresh=True)  # type: ignore[attr-defined]
            doc = {**v.doc, "pending": None, "error": job.error}
            self._write_meta(doc, v.base)  # type: ignore[attr-defined]
        except Exception:
            log.exception("collection %s: recording the failed switch failed", self.name)

    def _check(self, job: Job) -> None:
        if job.cancelled or self._closed:  # type: ignore[attr-defined]
            raise Cancelled

    def _switch(self, job: Job) -> None:
        from gapfix.store.milvus.rows import COMPONENT_FIELDS, Components

        if job.fit is not None:
            fit_job(job, self.raw_vectors)  # type: ignore[attr-defined]
            self._check(job)
            job.fingerprint = self._save_artifact(job.transform)
            job.transform = self._load_transform(job.fingerprint)  # type: ignore[attr-defined]
        with self._write_lock:  # type: ignore[attr-defined]
            self._check(job)
            v = self.view(fresh=True)  # type: ignore[attr-defined]
            dim = v.doc["dim"]
            pending = v.doc.get("pending") or {}
            if pending.get("fp") != job.fingerprint:
                slot = SLOTS[1] if v.slot == SLOTS[0] else SLOTS[0]
                pending = {"fp": job.fingerprint, "slot": slot, "at": time.time()}
                self._write_meta({**v.doc, "pending": pending, "error": None}, v.base)  # type: ignore[attr-defined]
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
            # the base that, with every replica's changes to this slot so far, totals the scan
            if slot in v.delta:
                sums = add_sums(sums, v.delta[slot], -1)
            new_sums = {"raw": v.base.get("raw") or zero_sums(dim), slot: sums}
            doc = {**v.doc, "active": job.fingerprint, "slot": slot, "pending": None, "error": None}
            self._write_meta(doc, new_sums)  # type: ignore[attr-defined]
            self.meta.prune_artifacts(self.name, {job.fingerprint})  # type: ignore[attr-defined]
            job.phase = "done"
            self.update_gauges(self._view)  # type: ignore[attr-defined]
        log.info("collection %s: switched to transform %s (%s)", self.name, job.fingerprint, slot)
