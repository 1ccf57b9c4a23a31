"""Crash-safe files: write a temp sibling, fsync, rename over the target, fsync the folder.

The one place gapfix writes files that must never be seen half-written (artifacts, corrected
arrays, index files, manifests, shards). A reader sees the old file or the new one, never a
partial one; a killed writer leaves only a ``*.tmp-*`` sibling that ``remove_stale_tmp``
clears.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

TMP_MARK = ".tmp-"
CHUNK = 1 << 20


def temp_path(final: str | os.PathLike[str]) -> Path:
    """A unique temp name next to ``final`` (same file system, so the rename is atomic)."""
    final = Path(final)
    return final.with_name(f".{final.name}{TMP_MARK}{uuid.uuid4().hex[:12]}")


def fsync_file(path: str | os.PathLike[str]) -> None:
    """Flush one file's contents to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Make a rename inside ``path`` durable (no-op where folders cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def remove_quietly(path: str | os.PathLike[str]) -> None:
    """Delete a file if it exists; ignore errors."""
    with contextlib.suppress(OSError):
        Path(path).unlink()


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temp path to write; on success it is fsynced and renamed onto ``final``.

    On any exception the temp file is removed and ``final`` is left untouched.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(final)
    try:
        yield tmp
        fsync_file(tmp)
        os.replace(tmp, final)
    except BaseException:
        remove_quietly(tmp)
        raise
    fsync_dir(final.parent)


def atomic_write_bytes(final: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``final`` atomically."""
    with atomic_path(final) as tmp:
        tmp.write_bytes(data)


def atomic_write_json(final: str | os.PathLike[str], obj: Any) -> None:
    """Write ``obj`` as JSON to ``final`` atomically."""
    atomic_write_bytes(final, json.dumps(obj, indent=1, sort_keys=True).encode())


def remove_stale_tmp(folder: str | os.PathLike[str]) -> int:
    """Delete temp files left by a killed writer in ``folder``; returns how many."""
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    removed = 0
    for p in folder.iterdir():
        if TMP_MARK in p.name and p.is_file():
            with contextlib.suppress(OSError):
                p.unlink()
                removed += 1
    return removed


def file_checksum(path: str | os.PathLike[str]) -> str:
    """blake2b-128 hex digest of a file's bytes."""
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()
