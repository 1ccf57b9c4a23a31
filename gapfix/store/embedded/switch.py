"""The transform switch of an embedded collection, and HNSW tombstone compaction.

``set_transform`` / ``fit_transform`` start a background job (``gapfix.store.rebuild``):
(fit,) save the artifact and make it ``pending_transform`` (durable: a restart resumes the
switch), pin an SQLite snapshot while recording every later write, re-correct all stored
vectors into a new corrected index, then under the write lock replay the recorded writes,
persist, commit the new active transform and swap it in with its index in one assignment.
Searches use the old transform and index until that swap. Compaction rebuilds indexes whose
tombstones passed ``compact_ratio`` the same way.
"""

from __future__ import annotations

import logging
from typing import Any

from gapfix.atomic import file_checksum, fsync_dir, remove_quietly, temp_path
from gapfix.store.embedded.prepare import prepare
from gapfix.store.embedded.repair import Repair
from gapfix.store.embedded.state import View
from gapfix.store.index import VectorIndex
from gapfix.store.items import encode_fids
from gapfix.store.rebuild import (
    Job,
    check_fit_data,
    check_maps_finite,
    fit_job,
    fitted_dim,
    make_fit,
)
from gapfix.store.sums import Sums, add_sums

log = logging.getLogger(__name__)


class Switch(Repair):
    """The transform lifecycle: status, set / fit / wait, the job body, compaction."""

    @property
    def active_transform(self) -> Any:
        """The active GapTransform, or None (corrected = raw)."""
        return self._view.transform

    def transform_view(self) -> tuple[Any, str | None]:
        """The active transform and its fingerprint, read together from one view (a
        concurrent switch replaces both at once, so they always belong together)."""
        view = self._view
        return view.transform, view.fingerprint

    def active_artifact(self) -> tuple[str, bytes] | None:
        """Fingerprint and artifact bytes of the active transform (None: no transform)."""
        with self._write_lock:  # replaced artifacts are removed under it
            fp = self._view.fingerprint
            if fp is None:
                return None
            return fp, self._artifact_path(fp).read_bytes()

    @property
    def transform_status(self) -> dict[str, Any]:
        """``{"status": "active"|"rebuilding"|"failed", "error", "job"}``."""
        return self._rebuilder.status

    def transform_info(self) -> dict[str, Any]:
        """Active transform summary (method, params, fit stats, auto's fit table) + status."""
        view = self._view
        summary = view.transform.to_summary() if view.transform is not None else {"method": None}
        return {**self.transform_status, "fingerprint": view.fingerprint, "active": summary}

    def wait_transform(self, timeout: float | None = None, job: Job | None = None) -> bool:
        """Wait for the running transform job (or ``job``); True when it finished and is active.

        Waiting on a ``job`` that a later request superseded raises ConflictError: its
        transform will never be active, whatever the collection's status says.
        """
        return self._rebuilder.wait(timeout, job)

    def set_transform(self, transform: Any, wait_seconds: float | None = None) -> bool:
        """Activate a fitted transform (None: no correction); re-corrects in the background.

        Returns True when the new transform is active within ``wait_seconds`` (None: wait
        until done), False while it is still rebuilding (see ``transform_status``).
        """
        if transform is not None:
            tdim = fitted_dim(transform, self._dim)
            self.index_params.check_dim(self.index_kind, tdim)
            check_maps_finite(transform, "transform")
        with self._write_lock:
            self._check_open()
            if transform is None:
                self._activate_none()
                return True
            fp = self._save_artifact(transform)
            from gapfix.transforms.artifact import load_transform

            own = load_transform(self._artifact_path(fp))
            if self._dim is None:  # nothing stored: activate at once and fix the dimension
                self._rebuilder.cancel()
                with self._db.tx():
                    self._db.set_meta("dim", tdim)
                    self._db.set_meta("active_transform", fp)
                    self._db.set_meta("pending_transform", None)
                self._view = View(own, fp, None)
                self._init_dim(tdim)
                self._rebuilder.error = None
                self._cleanup_files()
                return True
            job = Job("transform", transform=own, fingerprint=fp)
            self._start_job(job)
        return self.wait_transform(wait_seconds, job)

    def fit_transform(
        self,
        method: str,
        params: dict[str, Any] | None = None,
        objective: str | None = None,
        wait_seconds: float | None = None,
    ) -> bool:
        """Fit ``method`` on the stored raw vectors and activate it (in the background).

        Paired methods (and ``auto``) fit on documents (items with both vectors); unpaired
        methods on every image vs every text vector. ``objective`` is ``auto``'s (default
        balanced). Bad method/params or too little data -> InputError before anything starts.
        Returns like ``set_transform``; a failed fit leaves the old transform active and
        ``transform_status`` "failed" with the error.
        """
        transform = make_fit(method, params, objective)
        with self._write_lock:
            self._check_open()
            check_fit_data(transform, method, self.counts())
            job = Job("transform", fit=transform)
            self._start_job(job)
        return self.wait_transform(wait_seconds, job)

    def _save_artifact(self, transform: Any) -> str:
        tdir = self.path / "transforms"
        tdir.mkdir(exist_ok=True)
        tmp = temp_path(tdir / "transform.safetensors")
        try:
            transform.save(tmp)
            fp = file_checksum(tmp)[:16]
            tmp.replace(self._artifact_path(fp))
        finally:
            remove_quietly(tmp)
        fsync_dir(tdir)
        return fp

    def _activate_none(self) -> None:
        self._rebuilder.cancel()
        with self._db.tx() as conn:
            self._db.set_meta("active_transform", None)
            self._db.set_meta("pending_transform", None)
            self._db.clear_centroids(conn, "corrected")
        with self._index_lock.write():
            self._view = View()
        self._sums.pop("corrected", None)
        for p in (self.path / "indexes").glob("corrected*"):
            remove_quietly(p)
        self._rebuilder.error = None
        self._cleanup_files()
        self._update_gauges()

    def _maybe_compact(self) -> None:
        if self._rebuilder.job is not None or self._raw is None:
            return
        spaces = tuple(
            space
            for space, idx in (("raw", self._raw), ("corrected", self._view.corrected))
            if idx is not None
            and len(idx.deleted) >= self.compact_min_tombstones
            and idx.tombstone_ratio >= self.compact_ratio
        )
        if spaces:
            self._start_job(Job("compact", spaces=spaces))

    def _start_job(self, job: Job) -> None:
        """Start ``job`` (under the write lock), superseding a running one."""
        old = self._rebuilder.job
        if old is not None and old.kind == "transform":
            with self._db.tx():  # the superseded switch must not resume after a restart
                self._db.set_meta("pending_transform", None)
        self._rebuilder.start(job, self._run_job, self._switch_failed)

    def _switch_failed(self, job: Job) -> None:
        """Under the write lock: a current switch failed; it must not resume at restart."""
        try:
            with self._db.tx():
                self._db.set_meta("pending_transform", None)
        except Exception:
            log.exception("collection %s: clearing the failed switch failed", self.name)
        self._cleanup_files()

    def _run_job(self, job: Job) -> None:
        """The job body: (fit,) snapshot and record, build, then replay and switch."""
        if job.fit is not None:
            fit_job(job, self.raw_vectors)
        with self._write_lock:
            if job.cancelled:
                return
            if job.kind == "transform":
                if job.fingerprint is None:
                    job.fingerprint = self._save_artifact(job.transform)
                    from gapfix.transforms.artifact import load_transform

                    job.transform = load_transform(self._artifact_path(job.fingerprint))
                with self._db.tx():
                    self._db.set_meta("pending_transform", job.fingerprint)
                spaces = ["corrected"]
                if self._raw is not None and self._raw.tombstone_ratio >= self.compact_ratio:
                    spaces.append("raw")
                job.spaces = tuple(spaces)
            else:
                job.transform = self._view.transform
                job.fingerprint = self._view.fingerprint
            snap = self._db.snapshot()
            conn = snap.__enter__()
            job.recording = True
        try:
            job.phase = "indexing"
            built, sums = self._build(conn, job.spaces, job.transform, job)
        finally:
            snap.__exit__(None, None, None)
        with self._write_lock:
            if job.cancelled:
                return
            job.phase = "switching"
            self._commit_job(job, built, sums)

    def _commit_job(self, job: Job, built: dict[str, VectorIndex], sums: Sums | None) -> None:
        """Under the write lock: replay the log, persist, commit, swap."""
        for old, new in job.log:
            prep = prepare(new, job.transform if "corrected" in built else None)
            old_f, new_f = encode_fids(old.seqs, old.codes), encode_fids(new.seqs, new.codes)
            for s, idx in built.items():
                idx.remove(old_f)
                idx.add(prep.vectors(s), new_f)
            if sums is not None:
                sums = add_sums(sums, prepare(old, job.transform).sums["corrected"], -1)
                sums = add_sums(sums, prep.sums["corrected"], 1)
        job.recording = False
        for s, idx in built.items():
            self._persist(s, idx, job.fingerprint)
        if job.kind == "transform":
            with self._db.tx() as conn:
                self._db.set_meta("active_transform", job.fingerprint)
                self._db.set_meta("pending_transform", None)
                self._db.put_centroids(conn, "corrected", sums)
        with self._index_lock.write():
            if "raw" in built:
                self._raw = built["raw"]
            if job.kind == "transform":
                self._view = View(job.transform, job.fingerprint, built["corrected"])
            elif "corrected" in built:
                self._view = View(self._view.transform, self._view.fingerprint, built["corrected"])
        if job.kind == "transform":
            self._sums["corrected"] = sums
        self._rebuilder.error = None
        job.phase = "done"
        self._cleanup_files()
        self._update_gauges()
        log.info("collection %s: %s job done (%s)", self.name, job.kind, ", ".join(built))
