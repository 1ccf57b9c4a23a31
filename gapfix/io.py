"""Reading embedding arrays (.npy, .npz:key, .parquet:column) and writing them atomically."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from gapfix.errors import InputError


def _split_spec(spec: str) -> tuple[Path, str | None]:
    """Split ``file.npz:key`` into path and key; a path that exists as given has no key."""
    text = str(spec)
    if Path(text).exists() or ":" not in text:
        return Path(text), None
    path, key = text.rsplit(":", 1)
    return Path(path), (key or None)


def load_array(spec: str, mmap: bool = False, param: str = "input") -> np.ndarray:
    """Load a 2-D array from ``x.npy``, ``x.npz:key`` or ``x.parquet:column``.

    ``mmap=True`` memory-maps ``.npy`` files so large inputs are streamed, not loaded.
    A parquet column may hold lists or fixed-size lists of floats.
    """
    path, key = _split_spec(spec)
    if not path.exists():
        raise InputError(f"{param}: file not found: {path}", param=param)
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            if key is not None:
                raise InputError(
                    f"{param}: {path} is a .npy file, which holds one array; ':{key}' names an "
                    "array in a .npz or a column in a .parquet file",
                    param=param,
                )
            _check_npy_header(path, param)
            arr = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
        elif suffix == ".npz":
            with path.open("rb") as f:
                if not zipfile.is_zipfile(f):  # numpy would read it as a pickle and say so
                    raise InputError(
                        f"{param}: {path} is not a NumPy .npz file (not a zip archive)", param=param
                    )
            with np.load(path, allow_pickle=False) as archive:
                names = list(archive.keys())
                if key is None:
                    if len(names) != 1:
                        raise InputError(
                            f"{param}: {path} holds {names}; name one as {path}:KEY", param=param
                        )
                    key = names[0]
                if key not in names:
                    raise InputError(
                        f"{param}: {path} has no array {key!r} (has {names})", param=param
                    )
                arr = archive[key]
        elif suffix == ".parquet":
            arr = _load_parquet_column(path, key, param)
        else:
            raise InputError(
                f"{param}: unsupported file type {suffix!r} (use .npy, .npz:key or .parquet:column)",
                param=param,
            )
    except InputError:
        raise
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        if "pickle" in str(exc):
            raise InputError(
                f"{param}: {path} holds Python objects, not numbers (save a float array)",
                param=param,
            ) from None
        raise InputError(f"{param}: cannot read {path}: {exc}", param=param) from None
    return arr


def _check_npy_header(path: Path, param: str) -> None:
    """Refuse a file that is not a NumPy .npy array before numpy tries to parse it."""
    with open(path, "rb") as fh:
        if fh.read(6) != b"\x93NUMPY":
            raise InputError(f"{param}: {path} is not a NumPy .npy file", param=param)


def _load_parquet_column(path: Path, column: str | None, param: str) -> np.ndarray:
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    def is_list(t: pa.DataType) -> bool:
        return pa.types.is_list(t) or pa.types.is_fixed_size_list(t) or pa.types.is_large_list(t)

    schema = pq.read_schema(path)
    if column is None:
        candidates = [f.name for f in schema if is_list(f.type)]
        if len(candidates) != 1:
            raise InputError(
                f"{param}: name the embedding column as {path}:COLUMN (list columns: {candidates})",
                param=param,
            )
        column = candidates[0]
    if column not in schema.names:
        raise InputError(f"{param}: {path} has no column {column!r}", param=param)
    col = pq.read_table(path, columns=[column]).column(column).combine_chunks()
    if not is_list(col.type):
        raise InputError(
            f"{param}: column {column!r} is not a list of floats ({col.type})", param=param
        )
    if col.null_count:
        raise InputError(f"{param}: column {column!r} has null rows", param=param)
    n = len(col)
    if n == 0:
        raise InputError(f"{param}: column {column!r} is empty", param=param)
    lengths = pc.list_value_length(col).to_numpy(zero_copy_only=False)
    if lengths.min() != lengths.max():
        raise InputError(f"{param}: column {column!r} has rows of different lengths", param=param)
    flat = pc.list_flatten(col).to_numpy(zero_copy_only=False)
    return flat.reshape(n, int(lengths[0]))
