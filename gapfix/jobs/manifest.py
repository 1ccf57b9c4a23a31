"""The shard manifest (`manifest.json`): what a job produced, shard by shard.

It is rewritten atomically after every finished shard, so it is the single source of truth for
resuming: a shard counts as done only if the manifest lists it *and* its parquet file exists with
the recorded row counts. Layout (format version 1)::

    {"format": "gapfix-shards", "format_version": 1, "gapfix_version": "...",
     "kind": "embed" | "correct",
     "model": {"id": "...", "name": "...", "pretrained": "..."}, "model_id": "...", "dim": 512,
     "input": {"kind": "folder|table|webdataset|shards", "path": "...", "fingerprint": "sha256",
               "shard_size": 10000, "thumbnail_size": 0, "num_shards": 12,
               "total_items": 115000 | null},
     "transform": null | {"path", "sha256", "method", "summary"},
     "shards": [{"index": 0, "file": "shards/part-00000.parquet",
                 "rows": {"image": 9990, "text": 10000}, "items": 10000, "failures": 10}],
     "totals": {"rows", "image", "text", "items", "failures", "shards_done", "shards_total"},
     "complete": false, "created_at": "...", "updated_at": "..."}
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from gapfix.atomic import atomic_write_bytes
from gapfix.errors import ArtifactError, InputError

FORMAT = "gapfix-shards"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
MODALITIES = ("image", "text")


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("gapfix")
    except Exception:  # not installed (running from a source tree)
        return "0+unknown"


def manifest_path(path: str | Path) -> Path:
    """Accept either the manifest file or the job's output folder."""
    p = Path(path)
    return p / MANIFEST_NAME if p.is_dir() else p


def new_manifest(
    kind: str,
    *,
    model: dict[str, Any],
    dim: int,
    input_info: dict[str, Any],
    transform: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A fresh manifest with no finished shards."""
    m = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "gapfix_version": _version(),
        "kind": kind,
        "model": model,
        "model_id": model.get("id"),
        "dim": int(dim),
        "input": input_info,
        "transform": transform,
        "shards": [],
        "totals": {},
        "complete": False,
        "created_at": _now(),
        "updated_at": _now(),
    }
    refresh_totals(m)
    return m


def refresh_totals(m: dict[str, Any]) -> None:
    """Recompute ``totals`` and ``complete`` from the shard list."""
    shards = m["shards"]
    per = {mod: sum(int(s["rows"].get(mod, 0)) for s in shards) for mod in MODALITIES}
    total_shards = int(m["input"].get("num_shards", 0))
    m["totals"] = {
        "rows": sum(per.values()),
        **per,
        "items": sum(int(s.get("items", 0)) for s in shards),
        "failures": sum(int(s.get("failures", 0)) for s in shards),
        "shards_done": len(shards),
        "shards_total": total_shards,
    }
    m["complete"] = len(shards) == total_shards


def record_shard(m: dict[str, Any], record: dict[str, Any]) -> None:
    """Add (or replace) one finished shard's record, keeping the list ordered by index."""
    m["shards"] = [s for s in m["shards"] if s["index"] != record["index"]] + [record]
    m["shards"].sort(key=lambda s: s["index"])
    m["updated_at"] = _now()
    refresh_totals(m)


def write_manifest(path: Path, m: dict[str, Any]) -> None:
    """Write the manifest atomically (temp + fsync + rename)."""
    atomic_write_bytes(Path(path), (json.dumps(m, indent=2, sort_keys=False) + "\n").encode())


def read_manifest(path: str | Path) -> dict[str, Any]:
    """Read and check a shard manifest (a `manifest.json` path or the folder holding it).

    Shard ``file`` entries are relative to the manifest's folder; the returned dict has an extra
    ``"root"`` key with that folder's absolute path. Raises `ArtifactError` when the file is not a
    gapfix shard manifest or has an unknown major format version.
    """
    p = manifest_path(path)
    if not p.is_file():
        raise InputError(f"manifest not found: {p}", param="manifest")
    try:
        m = json.loads(p.read_text())
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"cannot read manifest {p}: {exc}", param="manifest") from None
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        raise ArtifactError(f"{p} is not a gapfix shard manifest", param="manifest")
    version = m.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION or version < 1:
        raise ArtifactError(
            f"{p}: unsupported manifest format version {version!r} "
            f"(this gapfix reads version {FORMAT_VERSION})",
            param="manifest",
        )
    for key in ("dim", "shards", "input", "model"):
        if key not in m:
            raise ArtifactError(f"{p}: manifest has no {key!r}", param="manifest")
    problem = _shape_problem(m)
    if problem:
        raise ArtifactError(f"{p}: damaged manifest: {problem}", param="manifest")
    refresh_totals(m)  # totals and complete follow from the shard list
    m["root"] = str(p.parent.resolve())
    return m


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _shape_problem(m: dict[str, Any]) -> str | None:
    """What is wrong with the fields the jobs read (None: nothing)."""
    if not _is_int(m["dim"]) or m["dim"] < 1:
        return f"dim must be a positive integer, got {m['dim']!r}"
    if not isinstance(m["model"], dict | None) or not isinstance(m["input"], dict):
        return "model and input must be objects"
    n = m["input"].get("num_shards")
    if not _is_int(n) or n < 0:
        return f"input.num_shards must be a non-negative integer, got {n!r}"
    if not isinstance(m["shards"], list):
        return "shards must be a list"
    seen = set()
    for i, rec in enumerate(m["shards"]):
        ok = (
            isinstance(rec, dict)
            and _is_int(rec.get("index"))
            and 0 <= rec["index"] < n
            and rec["index"] not in seen
            and isinstance(rec.get("file"), str)
            and isinstance(rec.get("rows"), dict)
            and all(_is_int(rec["rows"].get(mod, 0)) for mod in MODALITIES)
        )
        if not ok:
            return f"shards[{i}] is not a record of a distinct shard (index, file, rows)"
        seen.add(rec["index"])
    return None


def require_complete(m: dict[str, Any], manifest: str | Path) -> None:
    """Refuse a run whose shards are not all finished (``correct`` and ``index build`` read it)."""
    if not m.get("complete"):
        t = m.get("totals", {})
        raise InputError(
            f"{manifest}: the embed job is not finished ({t.get('shards_done')}/"
            f"{t.get('shards_total')} shards); rerun it to completion first",
            param="manifest",
        )


def shard_file(m: dict[str, Any], record: dict[str, Any]) -> Path:
    """Absolute path of a shard listed in a manifest returned by `read_manifest`."""
    return Path(m["root"]) / record["file"]
