"""Folder locks: exclusive, released on close, and never kept alive by a forked child."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from gapfix.errors import GapfixError, InputError
from gapfix.jobs.runner import ShardJob
from gapfix.locks import release, try_lock
from gapfix.store import Store


def idle(started, stop) -> None:
    started.set()
    stop.wait(30)


def forked_child():
    """A forked process (like a DataLoader worker) that lives until told to stop."""
    ctx = multiprocessing.get_context("fork")
    started, stop = ctx.Event(), ctx.Event()
    child = ctx.Process(target=idle, args=(started, stop))
    child.start()
    assert started.wait(30)  # past fork: the child runs its target
    return child, stop


def test_lock_is_exclusive_until_released(tmp_path: Path) -> None:
    fd = try_lock(tmp_path / "lock")
    assert fd is not None
    assert try_lock(tmp_path / "lock") is None
    release(fd)
    again = try_lock(tmp_path / "lock")
    assert again is not None
    release(again)


def test_a_forked_child_does_not_hold_the_lock(tmp_path: Path) -> None:
    fd = try_lock(tmp_path / "lock")
    assert fd is not None
    child, stop = forked_child()
    try:
        # the parent lets go (as a killed parent would) while the child lives on
        os.close(fd)
        other = try_lock(tmp_path / "lock")
        assert other is not None, "the forked child kept the lock"
        release(other)
    finally:
        stop.set()
        child.join(10)


HOLDER = """
import multiprocessing, os, signal, sys, time
kind, path, pid_file = sys.argv[1], sys.argv[2], sys.argv[3]
if kind == "job":
    from gapfix.jobs.runner import ShardJob
    info = {"kind": "folder", "fingerprint": "f", "num_shards": 2}
    ShardJob(path, kind="embed", model={}, dim=4, input_info=info).open()
else:
    from gapfix.store import Store
    Store(path, flush_interval=None)
ctx = multiprocessing.get_context("fork")
started = ctx.Event()
worker = ctx.Process(target=lambda: (started.set(), time.sleep(60)), daemon=True)
worker.start()
started.wait(30)
open(pid_file, "w").write(str(worker.pid))
os.kill(os.getpid(), signal.SIGKILL)  # dies holding the lock; the worker is orphaned
"""


def open_job(path: Path) -> ShardJob:
    info = {"kind": "folder", "fingerprint": "f", "num_shards": 2}
    job = ShardJob(path, kind="embed", model={}, dim=4, input_info=info)
    job.open()
    return job


@pytest.mark.parametrize("kind", ["job", "store"])
def test_killed_holder_frees_the_folder_while_its_worker_lives(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "out"
    pid_file = tmp_path / "worker.pid"
    # no pipes: the orphaned worker would hold them open
    code = subprocess.call(
        [sys.executable, "-c", HOLDER, kind, str(path), str(pid_file)],
        stdout=subprocess.DEVNULL,
        timeout=120,
    )
    assert code == -signal.SIGKILL
    worker = int(pid_file.read_text())
    try:
        os.kill(worker, 0)  # the orphaned worker still runs ...
        # ... and a rerun is not refused because of it
        if kind == "job":
            open_job(path).finish()
        else:
            Store(path, flush_interval=None).close()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(worker, signal.SIGKILL)


def test_a_second_holder_is_refused(tmp_path: Path) -> None:
    job = open_job(tmp_path / "out")
    with pytest.raises(InputError, match="in use by another"):
        open_job(tmp_path / "out")
    job.finish()
    open_job(tmp_path / "out").finish()
    store = Store(tmp_path / "data", flush_interval=None)
    with pytest.raises(GapfixError, match="in use by another gapfix store"):
        Store(tmp_path / "data", flush_interval=None)
    store.close()
    Store(tmp_path / "data", flush_interval=None).close()
