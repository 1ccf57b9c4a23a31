"""Skipped items: one JSON line each (id, source, modality, reason), never dropped silently.

Each shard's failures go to ``failures/part-NNNNN.jsonl`` (written atomically with the shard, so a
redone shard replaces its own list); ``failures.jsonl`` is the merge over finished shards.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from gapfix.atomic import atomic_write_bytes

FAILURES_DIR = "failures"
FAILURES_FILE = "failures.jsonl"


@dataclass
class Failure:
    """One skipped item (or one modality of an item)."""

    id: str
    source: str
    reason: str
    modality: str | None = None  # None: the whole item
    shard: int = -1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def shard_failures_path(out: Path, shard_name: str) -> Path:
    return Path(out) / FAILURES_DIR / f"{shard_name}.jsonl"


def _dumps(failures: list[Failure]) -> bytes:
    return "".join(json.dumps(f.to_dict(), ensure_ascii=False) + "\n" for f in failures).encode()


def write_shard_failures(out: Path, shard_name: str, failures: list[Failure]) -> None:
    """Write (or clear) one shard's failure list atomically."""
    path = shard_failures_path(out, shard_name)
    if failures:
        atomic_write_bytes(path, _dumps(failures))
    else:
        path.unlink(missing_ok=True)


def merge_failures(out: Path, shard_names: list[str]) -> int:
    """Rewrite ``failures.jsonl`` from the given shards' lists; returns the number of lines."""
    chunks: list[bytes] = []
    n = 0
    for name in shard_names:
        p = shard_failures_path(out, name)
        if p.is_file():
            data = p.read_bytes()
            n += data.count(b"\n")
            chunks.append(data)
    atomic_write_bytes(Path(out) / FAILURES_FILE, b"".join(chunks))
    return n


def read_failures(path: Path) -> list[dict[str, Any]]:
    """Read a failures file into a list of dicts."""
    p = Path(path)
    if p.is_dir():
        p = p / FAILURES_FILE
    if not p.is_file():
        return []
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]
