"""Crash-safe file helpers: write to a temp file, fsync, rename, fsync the directory."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import uuid
from pathlib import Path
from typing import Any

CHUNK = 1 << 20


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    """Make a rename inside ``path`` durable (no-op where directories cannot be opened)."""
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


def temp_path(final: Path) -> Path:
    """A unique temp name next to ``final`` (same file system, so the rename is atomic)."""
    return final.with_name(f".{final.name}.tmp-{uuid.uuid4().hex[:12]}")


def atomic_write_bytes(final: Path, data: bytes) -> None:
    tmp = temp_path(final)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_dir(final.parent)


def atomic_write_json(final: Path, obj: Any) -> None:
    atomic_write_bytes(final, json.dumps(obj, indent=1, sort_keys=True).encode())


def file_checksum(path: Path) -> str:
    """blake2b-128 hex digest of a file's bytes."""
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def remove_quietly(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink()
