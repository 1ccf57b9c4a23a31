"""Test and benchmark data for the batch jobs: image folders, tables and WebDataset tars made
with Pillow, with the bad cases the jobs must survive (corrupt, truncated, header-bomb PNGs,
empty captions, missing files)."""

from __future__ import annotations

import csv
import io
import json
import struct
import tarfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np


def image_bytes(seed: int, size: tuple[int, int] = (48, 40), fmt: str = "PNG") -> bytes:
    """A small random RGB image encoded as ``fmt`` (PNG, JPEG, WEBP)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    w, h = size
    arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt)
    return buf.getvalue()


def huge_png_bytes(width: int = 30_000, height: int = 30_000) -> bytes:
    """A tiny PNG whose header claims ``width x height`` pixels (a decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


def truncated_bytes(seed: int) -> bytes:
    """A PNG cut in half (the header parses, the pixel data does not)."""
    data = image_bytes(seed, (64, 64))
    return data[: len(data) // 2]


BAD_FILES = {
    "bad/corrupt.jpg": lambda: b"this is not an image",
    "bad/truncated.png": lambda: truncated_bytes(99),
    "bad/huge.png": huge_png_bytes,
    "bad/empty.png": lambda: b"",
}


def make_image_folder(root: str | Path, n: int = 12, bad: bool = True) -> dict[str, Any]:
    """``n`` good images (PNG/JPEG in nested folders) plus the `BAD_FILES` and a non-image.

    Returns ``{"good": [relative paths], "bad": {relative path: kind}}``.
    """
    root = Path(root)
    good = []
    for i in range(n):
        rel = f"{'sub/' if i % 3 == 0 else ''}img{i:03d}.{'jpg' if i % 2 else 'png'}"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(image_bytes(i, fmt="JPEG" if i % 2 else "PNG"))
        good.append(rel)
    bads = {}
    if bad:
        for rel, make in BAD_FILES.items():
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_bytes(make())
            bads[rel] = rel.split("/")[-1].split(".")[0]
        (root / "README.txt").write_text("not an image, ignored")
    return {"good": sorted(good), "bad": bads}


def make_table(
    root: str | Path, n: int = 10, fmt: str = "csv", bad: bool = True
) -> tuple[Path, list[dict[str, Any]]]:
    """A table of ``n`` image+caption pairs (images in ``root/images``) plus bad rows.

    Bad rows: an empty caption, a missing image file, a corrupt image, an empty image path.
    ``fmt`` is csv, tsv or parquet. Returns the table path and its rows.
    """
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    for i in range(n):
        rel = f"images/p{i:03d}.png"
        (root / rel).write_bytes(image_bytes(100 + i))
        rows.append(
            {"id": f"pair-{i:03d}", "image": rel, "caption": f"a photo number {i}", "score": i}
        )
    if bad:
        (root / "images/corrupt.png").write_bytes(b"\x89PNG garbage")
        rows += [
            {"id": "empty-caption", "image": "images/p000.png", "caption": "  ", "score": -1},
            {"id": "missing-file", "image": "images/nope.png", "caption": "gone", "score": -2},
            {"id": "corrupt", "image": "images/corrupt.png", "caption": "bad", "score": -3},
            {"id": "no-image", "image": "", "caption": "text only", "score": -4},
        ]
    path = root / f"table.{fmt}"
    if fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=4)
    else:
        with open(path, "w", newline="") as fh:
            w = csv.DictWriter(
                fh, fieldnames=list(rows[0]), delimiter="\t" if fmt == "tsv" else ","
            )
            w.writeheader()
            w.writerows(rows)
    return path, rows


def make_webdataset(
    root: str | Path, shards: int = 2, per_shard: int = 4, bad: bool = True
) -> list[Path]:
    """WebDataset tars ``root/wds-00000.tar``...: each sample ``key.jpg`` (or .png/.webp),
    ``key.txt`` and ``key.json``; with ``bad``, the last shard also has a corrupt image and an
    empty caption."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    exts = ("jpg", "png", "webp")
    fmts = {"jpg": "JPEG", "png": "PNG", "webp": "WEBP"}
    for s in range(shards):
        path = root / f"wds-{s:05d}.tar"
        with tarfile.open(path, "w") as tf:
            members: list[tuple[str, bytes]] = []
            for j in range(per_shard):
                key = f"s{s:02d}/{j:04d}"
                ext = exts[j % 3]
                members.append((f"{key}.{ext}", image_bytes(1000 + s * 100 + j, fmt=fmts[ext])))
                members.append((f"{key}.txt", f"caption {s}-{j}".encode()))
                members.append((f"{key}.json", json.dumps({"shard": s, "j": j}).encode()))
            if bad and s == shards - 1:
                members.append(("bad/corrupt.jpg", b"not a jpeg"))
                members.append(("bad/corrupt.txt", b"still a caption"))
                members.append(("bad/emptycap.png", image_bytes(7)))
                members.append(("bad/emptycap.txt", b""))
            for name, data in members:
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
        paths.append(path)
    return paths


def write_tiny_checkpoint(path: str | Path, seed: int = 0) -> str:
    """Register ``gapfix-tiny`` and save a random-init checkpoint of it to ``path``.

    Loading it with ``load_encoder("gapfix-tiny", str(path))`` gives the same weights in every
    process (random init does not), so outputs of separate runs can be compared.
    """
    import open_clip
    import torch

    from gapfix.encoders.testing import register_tiny_model

    name = register_tiny_model()
    torch.manual_seed(seed)
    model = open_clip.create_model(name, pretrained=None)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), str(path))
    return str(path)


def read_rows(out: str | Path) -> Any:
    """Every row of a finished run (manifest folder), in order, as one ``ShardData``.

    Loads the whole run into memory: for tests and small comparisons, not for real runs.
    """
    from gapfix.jobs.shards import ShardData, iter_shard_batches

    parts = list(iter_shard_batches(out))
    return ShardData(
        ids=[i for p in parts for i in p.ids],
        modalities=[m for p in parts for m in p.modalities],
        embeddings=np.concatenate([p.embeddings for p in parts]),
        metadata=[x for p in parts for x in p.metadata],
        captions=[c for p in parts for c in p.captions],
        thumbnails=[t for p in parts for t in p.thumbnails],
    )


def tiny_options(ckpt: str, **overrides: Any) -> Any:
    """`EmbedOptions` for the tiny model: small batches and shards, one worker, no progress."""
    from gapfix.jobs import EmbedOptions

    base: dict[str, Any] = dict(
        model="gapfix-tiny", pretrained=ckpt, batch_size=4, shard_size=5, workers=1,
        progress="off",
    )  # fmt: skip
    base.update(overrides)
    return EmbedOptions(**base)


def write_pair_shards(
    out: str | Path,
    image: np.ndarray,
    text: np.ndarray,
    shard_size: int,
    ids: list[str] | None = None,
    model_id: str = "test-model",
) -> Path:
    """An embed job's output (``manifest.json`` + parquet shards) holding precomputed pairs:
    item *i* is an image row then a text row under one id, ``shard_size`` items per shard.

    Lets tests and benchmarks of `gapfix correct` start from real embeddings without an
    encoder. Returns the manifest path.
    """
    from gapfix.jobs.manifest import new_manifest, record_shard, write_manifest
    from gapfix.jobs.runner import SHARDS_DIR, shard_name
    from gapfix.jobs.shards import ShardData, write_shard

    out = Path(out)
    n, dim = image.shape
    ids = ids if ids is not None else [f"pair-{i:06d}" for i in range(n)]
    starts = list(range(0, n, shard_size))
    info = {"kind": "table", "path": "arrays", "fingerprint": f"arrays-{n}-{dim}",
            "shard_size": shard_size, "thumbnail_size": 0, "num_shards": len(starts),
            "total_items": n}  # fmt: skip
    model = {"id": model_id, "name": model_id, "pretrained": "none"}
    m = new_manifest("embed", model=model, dim=dim, input_info=info)
    for k, s in enumerate(starts):
        rows = range(s, min(s + shard_size, n))
        data = ShardData(
            ids=[ids[i] for r in rows for i in (r, r)],
            modalities=["image", "text"] * len(rows),
            embeddings=np.stack([v for r in rows for v in (image[r], text[r])]).astype(np.float32),
            metadata=[json.dumps({"row": r, "split": "dev"}) for r in rows for _ in (0, 1)],
            captions=[c for r in rows for c in (None, f"caption {r}")],
        )
        path = out / SHARDS_DIR / f"{shard_name(k)}.parquet"
        write_shard(path, data, dim)
        record_shard(m, {"index": k, "file": f"{SHARDS_DIR}/{path.name}", "rows": data.counts(),
                         "items": len(rows), "failures": 0})  # fmt: skip
    write_manifest(out / "manifest.json", m)
    return out / "manifest.json"
