"""Exclusive folder locks (flock) that only the process which took them holds.

A flock belongs to the open file, so a forked child (a DataLoader worker, a multiprocessing
pool) would keep it alive after its parent is killed, and a rerun started at once would be
refused for as long as the orphan lingers. Every lock taken here is closed in forked children.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading

_held: set[int] = set()
_held_guard = threading.Lock()


def _close_in_child() -> None:
    # after fork only this thread exists; the guard may have been copied locked, so do not take it
    for fd in list(_held):
        with contextlib.suppress(OSError):
            os.close(fd)
    _held.clear()


os.register_at_fork(after_in_child=_close_in_child)


def try_lock(path: str | os.PathLike[str]) -> int | None:
    """Take an exclusive lock on ``path`` (created if missing); its fd, or None if held elsewhere."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    with _held_guard:
        _held.add(fd)
    return fd


def release(fd: int) -> None:
    """Release a lock taken by `try_lock`."""
    with _held_guard:
        _held.discard(fd)
    with contextlib.suppress(OSError):
        fcntl.flock(fd, fcntl.LOCK_UN)
    with contextlib.suppress(OSError):
        os.close(fd)
