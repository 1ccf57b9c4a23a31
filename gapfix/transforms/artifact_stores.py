"""Where named transforms' artifact bytes live: a folder of ``<name>.gapfix`` files (one
process owns it), or a store that several gapfix replicas share (``MilvusStore``'s
``gapfix_meta`` rows). The registry (``gapfix.transforms.registry``) keeps the loaded
transforms; a store only keeps bytes.

A store answers ``listing()`` (name -> fingerprint and creation time, without the bytes),
``read``, ``write`` (atomic: a reader sees the old bytes or the new ones) and ``remove``.
``shared`` says whether other processes may change it, i.e. whether the registry must look
again now and then.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Any, Protocol

from gapfix.atomic import atomic_write_bytes, fsync_dir, remove_quietly, remove_stale_tmp

SUFFIX = ".gapfix"


def fingerprint(data: bytes) -> str:
    """Content hash of artifact bytes (the same as a collection's transform fingerprint)."""
    return hashlib.blake2b(data, digest_size=16).hexdigest()[:16]


def decode_artifact(data: bytes) -> tuple[Any, dict[str, Any]]:
    """The transform and metadata of artifact bytes (ArtifactError when they are not one)."""
    from gapfix.errors import ArtifactError
    from gapfix.transforms.artifact import load_transform, read_metadata

    with tempfile.TemporaryDirectory(prefix="gapfix-artifact-") as d:
        path = Path(d) / f"t{SUFFIX}"
        path.write_bytes(data)
        try:
            return load_transform(path), read_metadata(path)
        except ArtifactError as exc:  # the message names the artifact, not a temp file
            raise ArtifactError(str(exc.message).replace(str(path), "the artifact")) from None


class ArtifactStore(Protocol):
    """Named artifact bytes (see the module docstring)."""

    shared: bool

    def listing(self) -> dict[str, tuple[str, float]]: ...

    def read(self, name: str) -> bytes | None: ...

    def write(self, name: str, data: bytes) -> float: ...

    def remove(self, name: str) -> None: ...


class FolderArtifacts:
    """``<folder>/<name>.gapfix`` files, written atomically; a killed writer's temp files are
    removed at open. One process owns the folder (``shared`` is False).

    ``listing`` reads each file to fingerprint it and keeps the bytes until the next
    ``listing``: a ``read`` right after it (the registry loading what it listed) takes them
    from there while the file's size and mtime are unchanged, so opening reads each file once.
    """

    shared = False

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        remove_stale_tmp(self.folder)
        self._listed: dict[str, tuple[tuple[int, int], bytes]] = {}

    def _path(self, name: str) -> Path:
        return self.folder / f"{name}{SUFFIX}"

    def listing(self) -> dict[str, tuple[str, float]]:
        out, listed = {}, {}
        for path in sorted(self.folder.glob(f"*{SUFFIX}")):
            try:
                before = path.stat()
                data = path.read_bytes()
            except OSError:
                continue
            name = path.name[: -len(SUFFIX)]
            out[name] = (fingerprint(data), before.st_mtime)
            listed[name] = ((before.st_size, before.st_mtime_ns), data)
        self._listed = listed
        return out

    def read(self, name: str) -> bytes | None:
        path = self._path(name)
        kept = self._listed.pop(name, None)
        try:
            st = path.stat()
            if kept is not None and kept[0] == (st.st_size, st.st_mtime_ns):
                return kept[1]
            return path.read_bytes()
        except OSError:
            return None

    def write(self, name: str, data: bytes) -> float:
        atomic_write_bytes(self._path(name), data)
        return self._path(name).stat().st_mtime

    def remove(self, name: str) -> None:
        remove_quietly(self._path(name))
        fsync_dir(self.folder)
