"""Inputs of `gapfix embed`: image folders, CSV/TSV/parquet tables, WebDataset tar shards.

Every input is split into deterministic *input shards* (`ShardSpec`): the same input and shard
size always give the same shards with the same items in the same order, which is what makes a
rerun able to skip finished shards. Reading a shard's items (`Source.read_items`) only lists
ids, captions, metadata and where each image's bytes live; fetching and decoding the bytes
happens later, in parallel workers (`gapfix.jobs.prepare`).
"""

from __future__ import annotations

import functools
import glob
import hashlib
import json
import os
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gapfix.errors import InputError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff")
TABLE_EXTENSIONS = (".csv", ".tsv", ".tab", ".parquet", ".pq")
TAR_EXTENSIONS = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")
# WebDataset member extensions, in order of preference.
WDS_IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
WDS_TEXT_EXTS = ("txt",)
WDS_META_EXTS = ("json",)
CAPTION_COLUMNS = ("caption", "text")


@dataclass(frozen=True)
class ImageRef:
    """Where an image's bytes are: a file, a byte range of an uncompressed tar, or inline."""

    path: str
    offset: int = -1
    size: int = -1
    data: bytes | None = None

    def read(self) -> bytes:
        """Return the image bytes (raises OSError when the file is missing or unreadable)."""
        if self.data is not None:
            return self.data
        with open(self.path, "rb") as fh:
            if self.offset < 0:
                return fh.read()
            fh.seek(self.offset)
            data = fh.read(self.size)
        if len(data) != self.size:
            raise OSError(f"tar member truncated: read {len(data)} of {self.size} bytes")
        return data


@dataclass
class WorkItem:
    """One input item: an image, a caption, or both (a pair sharing one id)."""

    seq: int  # position inside its input shard
    id: str
    source: str  # human-readable origin, for failures.jsonl
    image: ImageRef | None = None
    text: str | None = None  # None = this item has no caption at all
    metadata: dict[str, Any] = field(default_factory=dict)
    error: str | None = None  # a problem found while listing the item (it is then skipped)
    has_image: bool = False  # the input declares an image for this item (even if unusable)


@dataclass(frozen=True)
class ShardSpec:
    """A deterministic slice of the input: files (folder), a row range (table) or one tar."""

    index: int
    files: tuple[str, ...] = ()
    start: int = 0
    stop: int = 0
    tar: str = ""

    @property
    def name(self) -> str:
        return f"part-{self.index:05d}"


@dataclass
class Plan:
    """The input's shards, its fingerprint and (when known without reading it) its size."""

    shards: list[ShardSpec]
    fingerprint: str
    total_items: int | None
    ignored_files: int = 0


def printable(name: str) -> str:
    """``name`` as valid UTF-8: bytes of a file or tar member name that are not UTF-8 (which
    Python keeps as lone surrogates, unwritable to parquet and JSON) become ``\\xNN``."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _fingerprint(kind: str, entries: list[tuple[str, int, int]], extra: str = "") -> str:
    h = hashlib.sha256()
    h.update(f"{kind}\n{extra}\n".encode("utf-8", "surrogateescape"))
    for name, size, mtime in entries:
        h.update(f"{name}\t{size}\t{mtime}\n".encode("utf-8", "surrogateescape"))
    return h.hexdigest()


def _stat_entry(path: Path, name: str) -> tuple[str, int, int]:
    st = path.stat()
    return (name, st.st_size, st.st_mtime_ns)


class Source:
    """Base class: an input that can be planned into shards and read shard by shard."""

    kind = ""

    def __init__(self, path: str) -> None:
        self.path = path

    def plan(self, shard_size: int) -> Plan:  # pragma: no cover - abstract
        raise NotImplementedError

    def read_items(self, spec: ShardSpec) -> list[WorkItem]:  # pragma: no cover - abstract
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "path": self.path}


class FolderSource(Source):
    """A folder of images, walked recursively in sorted order; id = path relative to it."""

    kind = "folder"

    def _list(self) -> tuple[list[tuple[str, int, int]], int]:
        root = Path(self.path)
        entries: list[tuple[str, int, int]] = []
        ignored = 0
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            for fname in sorted(filenames):
                p = Path(dirpath) / fname
                rel = p.relative_to(root).as_posix()
                if fname.lower().endswith(IMAGE_EXTENSIONS):
                    try:
                        entries.append(_stat_entry(p, rel))
                    except OSError:  # vanished or unreadable: still listed, fails when read
                        entries.append((rel, -1, -1))
                else:
                    ignored += 1
        entries.sort()
        return entries, ignored

    def plan(self, shard_size: int) -> Plan:
        entries, ignored = self._list()
        if not entries:
            raise InputError(
                f"no image files ({', '.join(IMAGE_EXTENSIONS)}) under {self.path}", "input"
            )
        names = [e[0] for e in entries]
        shards = [
            ShardSpec(index=i, files=tuple(names[s : s + shard_size]))
            for i, s in enumerate(range(0, len(names), shard_size))
        ]
        return Plan(shards, _fingerprint(self.kind, entries), len(names), ignored)

    def read_items(self, spec: ShardSpec) -> list[WorkItem]:
        root = Path(self.path)
        return [
            WorkItem(
                seq=i,
                id=printable(rel),
                source=printable(str(root / rel)),
                image=ImageRef(str(root / rel)),
                has_image=True,
            )
            for i, rel in enumerate(spec.files)
        ]


@functools.lru_cache(maxsize=4)
def _read_table_cached(path: str, size: int, mtime_ns: int) -> Any:
    """Read a whole CSV/TSV (cached per process, keyed on the file's size and mtime)."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    delimiter = "\t" if path.lower().endswith((".tsv", ".tab")) else ","
    forced = {name: pa.string() for name in ("id", "image", *CAPTION_COLUMNS)}
    return pacsv.read_csv(
        path,
        parse_options=pacsv.ParseOptions(delimiter=delimiter),
        convert_options=pacsv.ConvertOptions(column_types=forced, strings_can_be_null=True),
    )


class TableSource(Source):
    """A CSV/TSV/parquet table: `id`, `image` (path relative to the table) and/or `caption`.

    Other columns become each item's metadata. Without an `id` column the id is the image
    path, or the row number for caption-only tables.
    """

    kind = "table"

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self._is_parquet = path.lower().endswith((".parquet", ".pq"))

    def _schema_names(self) -> list[str]:
        if self._is_parquet:
            import pyarrow.parquet as pq

            return list(pq.ParquetFile(self.path).schema_arrow.names)
        return list(self._csv().column_names)

    def _csv(self) -> Any:
        st = os.stat(self.path)
        return _read_table_cached(self.path, st.st_size, st.st_mtime_ns)

    def _num_rows(self) -> int:
        if self._is_parquet:
            import pyarrow.parquet as pq

            return pq.ParquetFile(self.path).metadata.num_rows
        return self._csv().num_rows

    def columns(self) -> tuple[str | None, str | None]:
        """The image and caption column names (either may be None, not both)."""
        names = self._schema_names()
        image_col = "image" if "image" in names else None
        text_col = next((c for c in CAPTION_COLUMNS if c in names), None)
        if image_col is None and text_col is None:
            raise InputError(
                f"table {self.path} needs an 'image' and/or a 'caption' (or 'text') column; "
                f"it has {names}",
                param="input",
            )
        return image_col, text_col

    def plan(self, shard_size: int) -> Plan:
        image_col, text_col = self.columns()
        n = self._num_rows()
        if n == 0:
            raise InputError(f"table {self.path} has no rows", param="input")
        shards = [
            ShardSpec(index=i, start=s, stop=min(s + shard_size, n))
            for i, s in enumerate(range(0, n, shard_size))
        ]
        entry = _stat_entry(Path(self.path), Path(self.path).name)
        return Plan(shards, _fingerprint(self.kind, [entry], f"{image_col},{text_col}"), n)

    def _rows(self, start: int, stop: int) -> list[dict[str, Any]]:
        if not self._is_parquet:
            return self._csv().slice(start, stop - start).to_pylist()
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(self.path)
        groups, first, offset = [], None, 0
        for g in range(pf.metadata.num_row_groups):
            n = pf.metadata.row_group(g).num_rows
            if offset + n > start and offset < stop:
                groups.append(g)
                first = offset if first is None else first
            offset += n
        table = pf.read_row_groups(groups)
        return table.slice(start - (first or 0), stop - start).to_pylist()

    def read_items(self, spec: ShardSpec) -> list[WorkItem]:
        image_col, text_col = self.columns()
        has_id = "id" in self._schema_names()
        base = Path(self.path).parent
        used = {"id", image_col, text_col}
        items = []
        for i, row in enumerate(self._rows(spec.start, spec.stop)):
            rownum = spec.start + i
            img = row.get(image_col) if image_col else None
            img = str(img).strip() if img is not None else ""
            rid = row.get("id")
            item = WorkItem(
                seq=i,
                id=str(rid) if rid is not None else (img or str(rownum)),
                source=printable(f"{self.path}:row {rownum}" + (f" ({img})" if img else "")),
                metadata={k: v for k, v in row.items() if k not in used},
                has_image=image_col is not None,  # an empty path is reported, not skipped
            )
            if img:
                p = Path(img)
                item.image = ImageRef(str(p if p.is_absolute() else base / p))
            if text_col is not None:
                cap = row.get(text_col)
                item.text = "" if cap is None else str(cap)
            if has_id and (rid is None or not str(rid).strip()):
                item.error = "empty id"
            items.append(item)
        return items


def _tar_compressed(path: str) -> bool:
    with open(path, "rb") as fh:
        head = fh.read(6)
    return head.startswith((b"\x1f\x8b", b"BZh", b"\xfd7zXZ"))


def _has_end_marker(path: str, offset: int) -> bool:
    """Whether an uncompressed tar has its zero end-of-archive block at ``offset``."""
    with open(path, "rb") as fh:
        fh.seek(offset)
        block = fh.read(512)
    return len(block) == 512 and not any(block)


def _split_key(name: str) -> tuple[str, str]:
    """WebDataset convention: key = path up to the first dot of the basename; rest = ext."""
    d, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    return (f"{d}/{stem}" if d else stem), (ext.lower() if dot else "")


class WebDatasetSource(Source):
    """WebDataset tar shards (one file, a folder of .tar, or a brace pattern); one shard each.

    Members are grouped into samples by key; a sample's image is its first of .jpg/.jpeg/
    .png/.webp, its caption the .txt member and its metadata the .json member. Uncompressed
    tars are read by byte range (workers seek straight to each image).
    """

    kind = "webdataset"

    def __init__(self, path: str, tars: list[str]) -> None:
        super().__init__(path)
        self.tars = tars

    def plan(self, shard_size: int) -> Plan:
        entries = []
        for t in self.tars:
            try:
                entries.append(_stat_entry(Path(t), t))
            except OSError as exc:
                raise InputError(f"cannot read tar shard {t}: {exc}", param="input") from None
        shards = [ShardSpec(index=i, tar=t) for i, t in enumerate(self.tars)]
        return Plan(shards, _fingerprint(self.kind, entries), None)

    def read_items(self, spec: ShardSpec) -> list[WorkItem]:
        inline = _tar_compressed(spec.tar)
        samples: dict[str, dict[str, Any]] = {}
        damage: str | None = None
        try:
            with tarfile.open(spec.tar, "r:*") as tf:
                for m in tf:
                    if not m.isfile():
                        continue
                    key, ext = _split_key(m.name)
                    s = samples.setdefault(key, {"members": {}})
                    if ext in WDS_IMAGE_EXTS:
                        if inline:
                            f = tf.extractfile(m)
                            s["members"][ext] = ImageRef(spec.tar, data=f.read() if f else b"")
                        else:
                            s["members"][ext] = ImageRef(spec.tar, m.offset_data, m.size)
                    elif ext in WDS_TEXT_EXTS or ext in WDS_META_EXTS:
                        f = tf.extractfile(m)
                        s["members"][ext] = (f.read() if f else b"").decode("utf-8", "replace")
                end = tf.offset
            if not inline and not _has_end_marker(spec.tar, end):
                damage = "truncated tar: it ends without the end-of-archive marker"
        except (tarfile.TarError, EOFError, OSError) as exc:
            damage = f"corrupt tar: {exc}"
        if damage is not None:
            # samples after the damage are unknown: report the shard, keep what was listed
            last = next(reversed(samples), None)
            where = f" (after sample {last!r})" if last is not None else ""
            samples[printable(f"{Path(spec.tar).name}#damaged")] = {
                "members": {},
                "error": damage + where,
            }
        items = []
        for i, (key, s) in enumerate(samples.items()):
            mem = s["members"]
            item = WorkItem(
                seq=i,
                id=printable(key),
                source=printable(f"{spec.tar}:{key}"),
                error=s.get("error"),
            )
            img_ext = next((e for e in WDS_IMAGE_EXTS if e in mem), None)
            if img_ext:
                item.image = mem[img_ext]
                item.has_image = True
            txt_ext = next((e for e in WDS_TEXT_EXTS if e in mem), None)
            if txt_ext:
                item.text = mem[txt_ext]
            if "json" in mem:
                try:
                    meta = json.loads(mem["json"])
                except ValueError as exc:
                    item.error = f"invalid JSON metadata: {exc}"
                    meta = {}
                item.metadata = meta if isinstance(meta, dict) else {"json": meta}
            if item.error is None and not img_ext and not txt_ext:
                item.error = f"sample has no image ({'/'.join(WDS_IMAGE_EXTS)}) or .txt caption"
            items.append(item)
        return items

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "path": self.path, "tars": len(self.tars)}


def open_source(spec: str) -> Source:
    """Pick the reader for ``spec``: a folder, a table file, a tar, or a brace/glob pattern."""
    import braceexpand

    p = Path(spec)
    low = spec.lower()
    # an existing path is taken literally, even with "[", "{", "*" or "?" in its name
    if not p.exists() and any(ch in spec for ch in "{*?["):
        paths: list[str] = []
        for pat in braceexpand.braceexpand(spec):
            literal = os.path.exists(pat) or not any(c in pat for c in "*?[")
            paths.extend([pat] if literal else sorted(glob.glob(pat)))
        tars = [q for q in paths if q.lower().endswith(TAR_EXTENSIONS)]
        if not tars:
            raise InputError(f"pattern {spec} matches no tar shards", param="input")
        missing = [q for q in tars if not os.path.isfile(q)]
        if missing:
            raise InputError(f"tar shard not found: {missing[0]}", param="input")
        return WebDatasetSource(spec, tars)
    if not p.exists():
        raise InputError(f"input not found: {spec}", param="input")
    if p.is_dir():
        tars = sorted(str(q) for q in p.iterdir() if q.name.lower().endswith(TAR_EXTENSIONS))
        if tars:
            return WebDatasetSource(spec, tars)
        return FolderSource(spec)
    if low.endswith(TAR_EXTENSIONS):
        return WebDatasetSource(spec, [spec])
    if low.endswith(TABLE_EXTENSIONS):
        return TableSource(spec)
    raise InputError(
        f"unsupported input {spec}: expected a folder of images, a .csv/.tsv/.parquet table "
        "or WebDataset .tar shards",
        param="input",
    )
