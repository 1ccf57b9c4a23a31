"""The transform lifecycle's background jobs, on ``concurrent.futures``; backend-neutral.

A collection owns one ``Rebuilder``. ``start`` supersedes the running job (it is cancelled: its
body stops at its next check, its waiters get ConflictError) and submits the new one to a
single-worker executor. A superseded job still inside a step that cannot be interrupted (a
fit) keeps its executor until it notices; the new job gets a fresh executor rather than
queueing behind it, so a request never waits for the one it superseded.

A job body (the backend's) fits if asked (``fit_job``), snapshots, re-corrects every stored
vector into the new space while later writes are recorded in ``Job.log``, then under the
collection's write lock replays the log and switches. Only a job that is still current may
switch; the backend checks ``Job.cancelled`` under its lock before committing.

Also here: the checks a transform request passes before anything starts.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gapfix.errors import InputError, NotFittedError
from gapfix.store.errors import ConflictError
from gapfix.store.sums import COMPONENTS

log = logging.getLogger(__name__)


class Cancelled(Exception):
    """Raised inside a job body that noticed it was superseded."""


@dataclass(eq=False)
class Job:
    """One background job: a transform switch (optionally fitting first) or a compaction."""

    kind: str  # "transform" | "compact"
    transform: Any = None
    fingerprint: str | None = None
    fit: Any = None  # an unfitted GapTransform to fit first
    spaces: tuple[str, ...] = ()
    log: list[tuple[Any, Any]] = field(default_factory=list)  # (old rows, new rows) per write
    recording: bool = False
    phase: str = "queued"
    error: str | None = None
    started_at: float = field(default_factory=time.time)
    future: futures.Future | None = None  # the body's run
    superseded: futures.Future = field(default_factory=futures.Future)  # set by cancel()

    @property
    def cancelled(self) -> bool:
        """Superseded (or the collection closed): the job must not switch."""
        return self.superseded.done()

    @property
    def finished(self) -> bool:
        return self.future is not None and self.future.done()

    def cancel(self) -> None:
        """Supersede the job: stop recording, wake its waiters, drop it if not started."""
        self.recording = False
        with contextlib.suppress(futures.InvalidStateError):
            self.superseded.set_result(None)
        if self.future is not None:
            self.future.cancel()

    def describe(self) -> dict[str, Any]:
        target = self.transform if self.transform is not None else self.fit
        return {
            "kind": self.kind,
            "phase": self.phase,
            "method": getattr(target, "method", None),
            "started_at": self.started_at,
        }


class Rebuilder:
    """The current background job of one collection, its outcome and its executor.

    ``lock`` is the collection's write lock (re-entrant): ``start`` and ``cancel`` take it (the
    collection calls them holding it already), and so does a job's end (clearing ``job``,
    recording a failure).
    """

    def __init__(self, name: str, lock: threading.RLock) -> None:
        self.name = name
        self.job: Job | None = None
        self.error: str | None = None  # the last switch's failure, shown as status "failed"
        self._lock = lock
        self._pool: futures.ThreadPoolExecutor | None = None
        self._last: futures.Future | None = None

    @property
    def status(self) -> dict[str, Any]:
        """``{"status": "active"|"rebuilding"|"failed", "error", "job"}``."""
        job = self.job
        if job is not None and not job.finished:
            return {"status": "rebuilding", "error": None, "job": job.describe()}
        if self.error is not None:
            return {"status": "failed", "error": self.error, "job": None}
        return {"status": "active", "error": None, "job": None}

    def start(
        self,
        job: Job,
        body: Callable[[Job], None],
        on_failed: Callable[[Job], None] | None = None,
    ) -> None:
        """Run ``body(job)`` in the background, superseding the current job.

        ``on_failed(job)`` runs under the lock when a transform job that is still current
        fails (after ``error`` is set), to undo what the job had made durable.
        """
        with self._lock:  # the body's end takes it too: it must find ``job`` current
            self.cancel()
            self.error = None
            if self._pool is None or (self._last is not None and not self._last.done()):
                if self._pool is not None:  # busy with a superseded job: let it finish alone
                    self._pool.shutdown(wait=False, cancel_futures=True)
                self._pool = futures.ThreadPoolExecutor(1, f"gapfix-rebuild-{self.name}")
            self.job = job
            job.future = self._last = self._pool.submit(self._run, job, body, on_failed)

    def cancel(self) -> Job | None:
        """Supersede the current job, if any; returns it."""
        with self._lock:
            job = self.job
            if job is not None:
                job.cancel()
                self.job = None
            return job

    def _run(self, job: Job, body: Callable[[Job], None], on_failed: Any) -> None:
        try:
            if job.cancelled:
                return
            body(job)
        except Cancelled:
            return
        except Exception as exc:
            log.exception("collection %s: %s job failed", self.name, job.kind)
            job.error = f"{type(exc).__name__}: {getattr(exc, 'message', exc)}"
            with self._lock:
                if not job.cancelled and self.job is job and job.kind == "transform":
                    # a failed compaction is only logged; a failed switch shows in the status
                    self.error = job.error
                    if on_failed is not None:
                        on_failed(job)
        finally:
            with self._lock:
                job.recording = False
                if self.job is job:
                    self.job = None

    def wait(self, timeout: float | None = None, job: Job | None = None) -> bool:
        """Wait for the current job (or ``job``); True when it finished and did not fail.

        Waiting on a ``job`` that was superseded raises ConflictError (its transform will never
        be active, whatever the collection's status says), as soon as it is superseded.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            current = self.job if job is None else job
            if current is None:
                return self.error is None
            assert current.future is not None
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            if job is None:
                done, _ = futures.wait([current.future], remaining)
                if not done:
                    return False
                continue  # the outcome, or the job started meanwhile
            futures.wait([job.future, job.superseded], remaining, futures.FIRST_COMPLETED)
            if job.cancelled:
                raise ConflictError(
                    "this transform was superseded by a later transform request before it "
                    "became active",
                    param="method",
                )
            if job.finished:
                return job.error is None
            return False

    def close(self) -> None:
        """Supersede the current job and wait for it to stop (call it holding no lock)."""
        job = self.cancel()
        if job is not None and job.future is not None:
            futures.wait([job.future])
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)


# ---------------------------------------------------------------- checks before a job starts
def check_maps_finite(transform: Any, param: str) -> None:
    """InputError unless ``transform`` maps generic vectors to finite non-zero ones: a NaN, inf
    or overflowing parameter would otherwise fill the corrected space with garbage."""
    probe = np.random.default_rng(0).standard_normal((16, int(transform.dim_)))
    probe = (probe / np.linalg.norm(probe, axis=1, keepdims=True)).astype(np.float32)
    for modality in COMPONENTS:
        for role in (None, "query"):
            y = transform.transform(probe, modality, role=role)
            if not np.isfinite(y).all() or not y.any(axis=1).all():
                raise InputError(
                    f"the transform maps {modality} vectors to NaN, inf or zero; check its "
                    "parameters",
                    param=param,
                )


def fitted_dim(transform: Any, dim: int | None) -> int:
    """The dimension of a fitted ``transform`` matching the collection's ``dim`` (None:
    unset), else InputError."""
    try:
        tdim = int(transform.dim_)
    except (AttributeError, NotFittedError):
        raise InputError("the transform is not fitted", param="transform") from None
    if dim is not None and tdim != dim:
        raise InputError(
            f"transform dimension {tdim} does not match the collection's dimension {dim}",
            param="transform",
        )
    return tdim


def make_fit(method: str, params: dict[str, Any] | None, objective: str | None) -> Any:
    """The unfitted transform a ``fit_transform`` request asks for, else InputError."""
    from gapfix.transforms import make_transform

    params = dict(params or {})
    if method == "auto":
        if objective is not None:
            params.setdefault("objective", objective)
        wanted = params.get("objective", "balanced")
        if wanted in ("zeroshot", "fair"):
            raise InputError(
                f"objective {wanted!r} needs class labels (and 'fair' image groups); "
                "collections have none",
                "objective",
            )
    if params.get("query_text_mean"):
        raise InputError(
            "query_text_mean needs separate query texts to fit; a collection has none",
            param="params.query_text_mean",
        )
    return make_transform(method, **params)


def check_fit_data(transform: Any, method: str, counts: dict[str, int]) -> None:
    """InputError unless a collection with ``counts`` has enough data to fit ``transform``:
    paired methods (and ``auto``) fit on documents, unpaired ones on every image vs text."""
    need = 4 if method == "auto" else 2
    if transform.paired:
        if counts["document"] < need:
            raise InputError(
                f"method {method!r} needs paired data: documents (items with both an image "
                f"and a text vector); this collection has {counts['document']}",
                param="method",
            )
    else:
        n_img, n_txt = counts["image"] + counts["document"], counts["text"] + counts["document"]
        if n_img < 2 or n_txt < 2:
            raise InputError(
                f"fitting needs at least 2 image and 2 text vectors; this collection has "
                f"{n_img} and {n_txt}",
                param="method",
            )


def fit_job(job: Job, raw_vectors: Callable[[], Any]) -> None:
    """The fit phase of a job with ``fit``: fit on ``raw_vectors()`` (a ``RawVectors``)."""
    job.phase = "fitting"
    rv = raw_vectors()
    t = job.fit
    img, txt = (rv.pair_image, rv.pair_text) if t.paired else (rv.image, rv.text)
    t.fit(img, txt)
    check_maps_finite(t, "params")
    job.transform = t
